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
}

impl DownHosts {
    pub fn new(window: Duration) -> DownHosts {
        DownHosts {
            window,
            hosts: Mutex::new(HashMap::new()),
        }
    }

    /// Remembers that `addr` could not be reached, and why.
    pub fn mark(&self, addr: SocketAddr, why: AttemptResult) {
        let mut hosts = self.hosts.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        hosts.retain(|_, (since, _)| now.duration_since(*since) < self.window);
        hosts.insert(addr, (now, why));
    }

    /// Forgets every host (an admin's `queue retry` means "try for real now").
    pub fn forget_all(&self) {
        self.hosts.lock().unwrap_or_else(|p| p.into_inner()).clear();
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
