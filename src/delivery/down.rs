//! Next hops that did not answer moments ago. While one is remembered as
//! down, attempts skip it and defer at once with the remembered reason,
//! instead of every queued message knocking on a dead host in turn.

use super::result::AttemptResult;
use crate::config::ConfigDuration;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The longest a host is taken for down without a new try.
const MAX_DOWN: Duration = Duration::from_secs(300);

/// How long to remember a failed host: the first retry interval (so the next
/// retry round tries it again), at most five minutes.
pub fn down_for(schedule: &[ConfigDuration]) -> Duration {
    schedule
        .first()
        .map_or(Duration::from_secs(60), |d| d.get())
        .min(MAX_DOWN)
}

pub struct DownHosts {
    window: Duration,
    hosts: Mutex<HashMap<SocketAddr, (Instant, AttemptResult)>>,
    /// In a cluster: what changed here since the cluster last took it
    /// (None: not in a cluster, nothing is kept).
    shared: Mutex<Option<Vec<DownChange>>>,
}

/// A change the other nodes of a cluster learn.
#[derive(Debug, Clone, PartialEq)]
pub enum DownChange {
    /// Taken for down, for this long yet.
    Marked(SocketAddr, AttemptResult, Duration),
    /// An admin's `queue retry`: every host may be tried again.
    ForgotAll,
}

/// Changes kept for the cluster at most between two rounds.
const MAX_SHARED: usize = 10_000;

impl DownHosts {
    pub fn new(window: Duration) -> DownHosts {
        DownHosts {
            window,
            hosts: Mutex::new(HashMap::new()),
            shared: Mutex::new(None),
        }
    }

    /// Remembers that `addr` could not be reached, and why.
    pub fn mark(&self, addr: SocketAddr, why: AttemptResult) {
        self.note(DownChange::Marked(addr, why.clone(), self.window));
        self.insert(addr, why, Instant::now());
    }

    fn insert(&self, addr: SocketAddr, why: AttemptResult, since: Instant) {
        let mut hosts = self.hosts.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        hosts.retain(|_, (since, _)| now.duration_since(*since) < self.window);
        hosts.insert(addr, (since, why));
    }

    /// Forgets every host (an admin's `queue retry` means "try for real now").
    pub fn forget_all(&self) {
        self.note(DownChange::ForgotAll);
        self.hosts.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// From now on, keeps what changes, for the other nodes.
    pub fn share_changes(&self) {
        self.shared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert_with(Vec::new);
    }

    /// What changed here since the last call.
    pub fn take_changes(&self) -> Vec<DownChange> {
        self.shared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    fn note(&self, change: DownChange) {
        if let Some(changes) = self
            .shared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_mut()
            && changes.len() < MAX_SHARED
        {
            changes.push(change);
        }
    }

    /// What another node learnt (kept here, not sent back): `addr` is
    /// down for `left` more, or (None) every host may be tried again.
    pub fn adopt(&self, change: DownChange) {
        match change {
            DownChange::Marked(addr, why, left) => {
                let left = left.min(self.window);
                let since = Instant::now()
                    .checked_sub(self.window - left)
                    .unwrap_or_else(Instant::now);
                self.insert(addr, why, since);
            }
            DownChange::ForgotAll => self.hosts.lock().unwrap_or_else(|p| p.into_inner()).clear(),
        }
    }

    /// Why `addr` is still taken for down, or None when it may be tried.
    pub fn check(&self, addr: SocketAddr) -> Option<AttemptResult> {
        let mut hosts = self.hosts.lock().unwrap_or_else(|p| p.into_inner());
        match hosts.get(&addr) {
            Some((since, why)) if since.elapsed() < self.window => Some(why.clone()),
            Some(_) => {
                hosts.remove(&addr);
                None
            }
            None => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::result::Stage;

    #[test]
    fn what_one_node_learns_another_adopts_without_sending_it_back() {
        let (a, b) = (
            DownHosts::new(Duration::from_secs(60)),
            DownHosts::new(Duration::from_secs(60)),
        );
        a.share_changes();
        b.share_changes();
        let addr: SocketAddr = "192.0.2.1:25".parse().unwrap();
        let why = AttemptResult::local(
            Stage::Connect,
            crate::attempt::EnhancedStatus::new(4, 4, 1),
            "refused",
        );
        a.mark(addr, why.clone());
        for change in a.take_changes() {
            b.adopt(change);
        }
        assert_eq!(b.check(addr), Some(why));
        assert!(b.take_changes().is_empty(), "adopted, not sent back");
        a.forget_all();
        assert_eq!(a.take_changes(), vec![DownChange::ForgotAll]);
        b.adopt(DownChange::ForgotAll);
        assert!(b.check(addr).is_none());
        // Down for 10 ms more only: then it may be tried again.
        b.adopt(DownChange::Marked(
            addr,
            AttemptResult::local(
                Stage::Connect,
                crate::attempt::EnhancedStatus::new(4, 4, 1),
                "x",
            ),
            Duration::from_millis(10),
        ));
        assert!(b.check(addr).is_some());
        std::thread::sleep(Duration::from_millis(20));
        assert!(b.check(addr).is_none());
    }

    #[test]
    fn a_down_host_is_skipped_until_the_window_ends() {
        let hosts = DownHosts::new(Duration::from_millis(50));
        let addr: SocketAddr = "192.0.2.1:25".parse().unwrap();
        assert!(hosts.check(addr).is_none());
        hosts.mark(
            addr,
            AttemptResult::local(
                Stage::Connect,
                crate::attempt::EnhancedStatus::new(4, 4, 1),
                "refused",
            ),
        );
        assert_eq!(hosts.check(addr).unwrap().text, "refused");
        std::thread::sleep(Duration::from_millis(60));
        assert!(hosts.check(addr).is_none());
    }
}
