//! Successful password checks, remembered for a short while, so that an
//! application that logs in for every message does not pay a full argon2
//! hash each time (mature auth servers keep such a cache too). What is kept
//! is never a password or a hash anyone could reuse:
//! - the key is an HMAC-SHA256 of the user name and password under a random
//!   key made at start and never written anywhere;
//! - the value is an HMAC of the stored hash the password was checked
//!   against, so a changed password (a new stored hash) or a deleted user
//!   (none) no longer matches, at once, whatever the entry's age;
//! - the whole cache is dropped when the users file is read again.
//!
//! Failed checks are never remembered: every wrong password pays full price.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A MAC under the cache's key: of a user and password (a check's key) or
/// of a stored hash (what it was checked against).
pub type Digest = [u8; 32];

/// How long a successful check is remembered.
pub const LIFETIME: Duration = Duration::from_secs(300);
/// At most this many remembered checks (oldest forgotten first).
pub const CAPACITY: usize = 10_000;

pub struct VerifiedCache {
    key: [u8; 32],
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<Digest, (Digest, Instant)>,
    order: VecDeque<Digest>,
    /// The users file generation the entries were made under.
    generation: u64,
}

/// The cache's contents are digests only; even so, Debug shows their count.
impl std::fmt::Debug for VerifiedCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self
            .inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entries
            .len();
        write!(f, "VerifiedCache({n} entries)")
    }
}

impl Default for VerifiedCache {
    fn default() -> Self {
        Self::new()
    }
}

impl VerifiedCache {
    pub fn new() -> VerifiedCache {
        VerifiedCache {
            key: rand::random(),
            inner: Mutex::default(),
        }
    }

    fn mac(&self, parts: &[&[u8]]) -> Digest {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key)
            .expect("HMAC takes a key of any length");
        for part in parts {
            // Length first: ("ab", "c") and ("a", "bc") differ.
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        mac.finalize().into_bytes().into()
    }

    /// The key identifying checks of `password` for `user` (never the
    /// password itself): the same for two identical attempts.
    pub fn attempt_key(&self, user: &str, password: &str) -> Digest {
        self.mac(&[user.as_bytes(), password.as_bytes()])
    }

    /// Whether `password` was found right for `user` against `stored_hash`
    /// lately, under users file `generation`.
    pub fn remembers(
        &self,
        user: &str,
        password: &str,
        stored_hash: &str,
        generation: u64,
    ) -> bool {
        let key = self.attempt_key(user, password);
        let expected = self.mac(&[stored_hash.as_bytes()]);
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if inner.generation != generation {
            *inner = Inner {
                generation,
                ..Inner::default()
            };
            return false;
        }
        matches!(inner.entries.get(&key), Some((fp, at)) if *fp == expected && at.elapsed() < LIFETIME)
    }

    /// Remembers a successful check.
    pub fn remember(&self, user: &str, password: &str, stored_hash: &str, generation: u64) {
        let key = self.attempt_key(user, password);
        let fingerprint = self.mac(&[stored_hash.as_bytes()]);
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if inner.generation != generation {
            *inner = Inner {
                generation,
                ..Inner::default()
            };
        }
        if inner
            .entries
            .insert(key, (fingerprint, Instant::now()))
            .is_none()
        {
            inner.order.push_back(key);
        }
        while inner.entries.len() > CAPACITY {
            match inner.order.pop_front() {
                Some(oldest) => {
                    inner.entries.remove(&oldest);
                }
                None => break,
            }
        }
    }

    pub fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entries
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every byte the cache holds, for the test that no password is among them.
    #[cfg(test)]
    fn raw_bytes(&self) -> Vec<u8> {
        let inner = self.inner.lock().unwrap();
        let mut out = self.key.to_vec();
        for (k, (v, _)) in &inner.entries {
            out.extend_from_slice(k);
            out.extend_from_slice(v);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_only_the_same_user_password_and_stored_hash() {
        let c = VerifiedCache::new();
        c.remember("alice", "right", "$argon2id$h1", 1);
        assert!(c.remembers("alice", "right", "$argon2id$h1", 1));
        assert!(!c.remembers("alice", "wrong", "$argon2id$h1", 1));
        assert!(!c.remembers("alicer", "ight", "$argon2id$h1", 1));
        assert!(
            !c.remembers("alice", "right", "$argon2id$h2", 1),
            "a changed password"
        );
        assert!(
            !c.remembers("alice", "right", "$argon2id$h1", 2),
            "file re-read"
        );
        assert!(c.is_empty(), "a new generation forgets everything");
    }

    #[test]
    fn holds_no_password_and_stays_bounded() {
        let c = VerifiedCache::new();
        let password = "correct horse battery staple";
        c.remember("alice", password, "$argon2id$h1", 1);
        let raw = c.raw_bytes();
        assert!(
            !raw.windows(password.len())
                .any(|w| w == password.as_bytes())
        );
        assert!(!raw.windows(5).any(|w| w == b"alice"));
        for i in 0..CAPACITY + 10 {
            c.remember(&format!("u{i}"), "pw", "h", 1);
        }
        assert_eq!(c.len(), CAPACITY);
        assert!(
            !c.remembers("alice", password, "$argon2id$h1", 1),
            "the oldest went first"
        );
    }
}
