//! Recipient verification for inbound domains: a list of valid addresses
//! (re-read when the file changes), or callout answers remembered for a
//! while (a "yes" longer than a "no").

use crate::policy::Lookup;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

/// `relay.valid_recipients_file`: one address or `@domain` a line, `#` comments.
pub struct RecipientList {
    path: PathBuf,
    cache: Mutex<(Option<SystemTime>, Vec<crate::config::AddressPattern>)>,
}

impl RecipientList {
    pub fn new(path: PathBuf) -> RecipientList {
        RecipientList {
            path,
            cache: Mutex::new((None, Vec::new())),
        }
    }

    /// Whether `address` is listed; Err when the file cannot be read.
    pub fn contains(&self, address: &str) -> Result<bool, String> {
        let mtime = std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .map_err(|e| format!("{}: {e}", self.path.display()))?;
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.0 != Some(mtime) {
            cache.1 = crate::config::AddressPattern::read_list(&self.path)?;
            cache.0 = Some(mtime);
        }
        Ok(cache.1.iter().any(|p| p.matches(address)))
    }
}

/// Callout answers by address, each kept for its lifetime.
pub struct CalloutCache {
    positive: Duration,
    negative: Duration,
    answers: Mutex<HashMap<String, (Instant, bool)>>,
}

/// Addresses remembered before the oldest answers are dropped.
const MAX_ANSWERS: usize = 50_000;

impl CalloutCache {
    pub fn new(positive: Duration, negative: Duration) -> CalloutCache {
        CalloutCache {
            positive,
            negative,
            answers: Mutex::new(HashMap::new()),
        }
    }

    pub fn get(&self, address: &str) -> Option<Lookup> {
        let key = address.to_lowercase();
        let answers = self.answers.lock().unwrap_or_else(|p| p.into_inner());
        let (until, valid) = answers.get(&key)?;
        (*until > Instant::now()).then(|| {
            if *valid {
                Lookup::Pass("the next hop takes it (callout, remembered)".into())
            } else {
                Lookup::Fail("the next hop has no such user (callout, remembered)".into())
            }
        })
    }

    /// Remembers a definite answer (a failure to ask is not remembered).
    pub fn put(&self, address: &str, answer: &Lookup) {
        let (valid, ttl) = match answer {
            Lookup::Pass(_) => (true, self.positive),
            Lookup::Fail(_) => (false, self.negative),
            Lookup::DnsError(_) => return,
        };
        let now = Instant::now();
        let mut answers = self.answers.lock().unwrap_or_else(|p| p.into_inner());
        if answers.len() >= MAX_ANSWERS {
            answers.retain(|_, (until, _)| *until > now);
        }
        answers.insert(address.to_lowercase(), (now + ttl, valid));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_file_is_reread_when_it_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("valid");
        std::fs::write(&path, "# staff\nboss@example.lan\n@sales.example.lan\n").unwrap();
        let list = RecipientList::new(path.clone());
        assert_eq!(list.contains("Boss@example.lan"), Ok(true));
        assert_eq!(list.contains("anyone@sales.example.lan"), Ok(true));
        assert_eq!(list.contains("nobody@example.lan"), Ok(false));
        std::thread::sleep(Duration::from_millis(20));
        std::fs::write(&path, "nobody@example.lan\n").unwrap();
        assert_eq!(list.contains("nobody@example.lan"), Ok(true));
        std::fs::write(&path, "not an address\n").unwrap();
        assert!(
            crate::config::AddressPattern::read_list(&path)
                .unwrap_err()
                .contains(":1:")
        );
    }

    #[test]
    fn callout_answers_expire() {
        let c = CalloutCache::new(Duration::from_secs(60), Duration::from_millis(30));
        c.put("a@x", &Lookup::Pass("yes".into()));
        c.put("b@x", &Lookup::Fail("no".into()));
        c.put("c@x", &Lookup::DnsError("down".into()));
        assert!(matches!(c.get("A@x"), Some(Lookup::Pass(_))));
        assert!(matches!(c.get("b@x"), Some(Lookup::Fail(_))));
        assert!(c.get("c@x").is_none(), "a failure to ask is not remembered");
        std::thread::sleep(Duration::from_millis(40));
        assert!(c.get("b@x").is_none());
        assert!(c.get("a@x").is_some());
    }
}
