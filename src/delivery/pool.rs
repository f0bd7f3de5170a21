//! Open connections kept for a few seconds after a message, so that the next
//! message to the same host reuses them instead of connecting again.

use super::client::SmtpConnection;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const IDLE_LIMIT: Duration = Duration::from_secs(5);
const MAX_IDLE_PER_KEY: usize = 16;

#[derive(Default)]
pub struct Pool {
    idle: Mutex<HashMap<String, Vec<(Instant, SmtpConnection)>>>,
}

impl Pool {
    /// A fresh-enough idle connection for `key`, if one is waiting.
    pub fn take(&self, key: &str) -> Option<SmtpConnection> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = idle.get_mut(key)?;
        while let Some((since, conn)) = list.pop() {
            if since.elapsed() < IDLE_LIMIT {
                return Some(conn);
            }
        }
        None
    }

    pub fn put(&self, key: String, conn: SmtpConnection) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = idle.entry(key).or_default();
        if list.len() < MAX_IDLE_PER_KEY {
            list.push((Instant::now(), conn));
        }
    }

    /// Closes connections idle for too long (politely, with QUIT).
    pub async fn sweep(&self) {
        let stale: Vec<SmtpConnection> = {
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            let mut out = Vec::new();
            for list in idle.values_mut() {
                let (keep, old): (Vec<_>, Vec<_>) =
                    list.drain(..).partition(|(t, _)| t.elapsed() < IDLE_LIMIT);
                *list = keep;
                out.extend(old.into_iter().map(|(_, c)| c));
            }
            idle.retain(|_, l| !l.is_empty());
            out
        };
        for c in stale {
            c.quit().await;
        }
    }

    /// Closes everything (at shutdown).
    pub async fn close_all(&self) {
        let all: Vec<SmtpConnection> = {
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            idle.drain()
                .flat_map(|(_, l)| l.into_iter().map(|(_, c)| c))
                .collect()
        };
        for c in all {
            c.quit().await;
        }
    }
}
