//! The listeners bound now (port 0 resolved), as the daemon keeps them
//! across reloads: the admin page, its relay test and `status` read them.

use crate::config::ListenerKind;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

#[derive(Clone, Default)]
pub struct BoundListeners(Arc<RwLock<Vec<(SocketAddr, ListenerKind)>>>);

impl BoundListeners {
    pub fn new(bound: Vec<(SocketAddr, ListenerKind)>) -> BoundListeners {
        BoundListeners(Arc::new(RwLock::new(bound)))
    }

    pub fn set(&self, bound: Vec<(SocketAddr, ListenerKind)>) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = bound;
    }

    pub fn get(&self) -> Vec<(SocketAddr, ListenerKind)> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The addresses of one kind of listener.
    pub fn of_kind(&self, kind: ListenerKind) -> Vec<SocketAddr> {
        self.get()
            .into_iter()
            .filter(|(_, k)| *k == kind)
            .map(|(a, _)| a)
            .collect()
    }

    /// "ADDRESS (kind)" for each.
    pub fn describe(&self) -> Vec<String> {
        self.get()
            .iter()
            .map(|(a, k)| format!("{a} ({})", k.name()))
            .collect()
    }
}
