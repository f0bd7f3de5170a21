//! Counters whose ledgers (the quota counts) survive a restart and kill -9:
//! the rate windows and bans stay in memory as in `MemoryCounters`; every
//! `record` saves all ledgers to one file, replaced durably (`fsio`), before
//! it returns. A message counted before a crash still counts after it.

use super::{Counters, Ledger, MemoryCounters};
use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;
use tracing::error;

pub struct DurableCounters {
    inner: MemoryCounters,
    path: PathBuf,
    /// One save at a time, in the order of the records.
    saving: Mutex<()>,
}

#[derive(serde::Serialize, serde::Deserialize, Default)]
struct Saved {
    version: u32,
    ledgers: HashMap<String, Ledger>,
}

impl DurableCounters {
    /// Counters whose ledgers live in `path` (read now when it exists).
    pub fn open(path: &Path) -> std::io::Result<DurableCounters> {
        let inner = MemoryCounters::new();
        match std::fs::read(path) {
            Ok(bytes) => {
                let saved: Saved = serde_json::from_slice(&bytes).map_err(|e| {
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("{}: {e}", path.display()),
                    )
                })?;
                inner.restore_ledgers(saved.ledgers);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        Ok(DurableCounters {
            inner,
            path: path.to_path_buf(),
            saving: Mutex::new(()),
        })
    }

    fn save(&self) {
        let _one = self.saving.lock().unwrap_or_else(|p| p.into_inner());
        let saved = Saved {
            version: 1,
            ledgers: self.inner.ledgers(),
        };
        let result = serde_json::to_vec(&saved)
            .map_err(std::io::Error::other)
            .and_then(|bytes| {
                crate::fsio::replace(&self.path, &bytes, crate::fsio::NewFile::PRIVATE)
            });
        if let Err(e) = result {
            error!(file = %self.path.display(), error = %e, "cannot save the quota counts (a restart would forget the latest)");
        }
    }
}

impl Counters for DurableCounters {
    fn count(&self, key: &str, window: Duration) -> u64 {
        self.inner.count(key, window)
    }
    fn add(&self, key: &str, window: Duration) -> u64 {
        self.inner.add(key, window)
    }
    fn ban(&self, ip: IpAddr, duration: Duration) {
        self.inner.ban(ip, duration)
    }
    fn banned(&self, ip: IpAddr) -> Option<Duration> {
        self.inner.banned(ip)
    }
    fn bans(&self) -> Vec<(IpAddr, Duration)> {
        self.inner.bans()
    }
    fn lift(&self, ip: IpAddr) -> bool {
        self.inner.lift(ip)
    }
    fn forget(&self, key: &str) {
        self.inner.forget(key)
    }
    fn block(&self, key: &str, duration: Duration) {
        self.inner.block(key, duration)
    }
    fn blocked(&self, key: &str) -> Option<Duration> {
        self.inner.blocked(key)
    }
    fn record(&self, key: &str, at: i64, amount: u64, keep: Duration) {
        self.inner.record(key, at, amount, keep);
        self.save();
    }
    fn recorded_since(&self, key: &str, since: i64) -> (u64, Option<i64>) {
        self.inner.recorded_since(key, since)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ledgers_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("quota.json");
        let c = DurableCounters::open(&path).unwrap();
        c.record("quota:m365:messages", 100, 1, Duration::from_secs(86400));
        c.record("quota:m365:messages", 101, 1, Duration::from_secs(86400));
        drop(c);
        let c = DurableCounters::open(&path).unwrap();
        assert_eq!(c.recorded_since("quota:m365:messages", 0), (2, Some(100)));
    }
}
