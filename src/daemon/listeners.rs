//! The listeners a running server has open, so that a reload can keep,
//! close and open them by their configured address.

use crate::config::ListenerKind;
use std::collections::HashMap;
use std::net::SocketAddr;
use tokio_util::sync::CancellationToken;

/// The running listeners, by their configured address and kind: the address
/// actually bound (port 0 resolved) and what stops it.
pub type Listeners = HashMap<(SocketAddr, ListenerKind), (SocketAddr, CancellationToken)>;

/// The running listener a config entry means: the same configured address, or
/// the address it is bound to (a config that pins the port it got).
pub fn matching(
    running: &Listeners,
    addr: SocketAddr,
    kind: ListenerKind,
) -> Option<(SocketAddr, ListenerKind)> {
    running
        .iter()
        .find(|((configured, k), (bound, _))| *k == kind && (*configured == addr || *bound == addr))
        .map(|(key, _)| *key)
}
