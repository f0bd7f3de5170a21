//! Admin logins: a random session token in an HttpOnly, SameSite=Strict
//! cookie, with its own CSRF token; sessions end on logout, after
//! `admin.session_idle` without use, or `admin.session_lifetime` at most.

use base64::Engine;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub const COOKIE: &str = "portcullis_session";
/// Logins kept at once; the least recently used goes first beyond it.
const MAX_SESSIONS: usize = 256;

#[derive(Debug, Clone)]
pub struct Login {
    pub user: String,
    pub csrf: String,
    created: Instant,
    last_used: Instant,
}

pub struct Sessions {
    by_token: Mutex<HashMap<String, Login>>,
}

fn random_token() -> String {
    let bytes: [u8; 32] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

impl Sessions {
    pub fn new() -> Sessions {
        Sessions {
            by_token: Mutex::new(HashMap::new()),
        }
    }

    /// A new login for `user`: its token (for the cookie).
    pub fn create(&self, user: &str) -> String {
        let token = random_token();
        let now = Instant::now();
        let mut map = self.by_token.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_SESSIONS
            && let Some(oldest) = map
                .iter()
                .min_by_key(|(_, l)| l.last_used)
                .map(|(t, _)| t.clone())
        {
            map.remove(&oldest);
        }
        map.insert(
            token.clone(),
            Login {
                user: user.to_string(),
                csrf: random_token(),
                created: now,
                last_used: now,
            },
        );
        token
    }

    /// The login behind `token`, if it is still valid (and marks it used).
    pub fn get(&self, token: &str, idle: Duration, lifetime: Duration) -> Option<Login> {
        let now = Instant::now();
        let mut map = self.by_token.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, l| {
            now.duration_since(l.last_used) < idle && now.duration_since(l.created) < lifetime
        });
        let login = map.get_mut(token)?;
        login.last_used = now;
        Some(login.clone())
    }

    pub fn remove(&self, token: &str) {
        self.by_token
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(token);
    }

    /// Ends every login of a user no longer allowed in (after a reload).
    pub fn retain_users(&self, allowed: &[String]) {
        self.by_token
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, l| allowed.contains(&l.user));
    }
}

impl Default for Sessions {
    fn default() -> Self {
        Sessions::new()
    }
}

/// The session token in a Cookie header.
pub fn token_from_cookies(header: &str) -> Option<&str> {
    header
        .split(';')
        .filter_map(|c| c.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, v)| v)
}

/// Constant-time comparison for tokens.
pub fn same_token(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_expire_when_idle_or_old() {
        let s = Sessions::new();
        let t = s.create("alice");
        let long = Duration::from_secs(3600);
        assert_eq!(s.get(&t, long, long).unwrap().user, "alice");
        std::thread::sleep(Duration::from_millis(20));
        assert!(s.get(&t, Duration::from_millis(10), long).is_none());
        let t = s.create("alice");
        std::thread::sleep(Duration::from_millis(20));
        assert!(s.get(&t, long, Duration::from_millis(10)).is_none());
        let t = s.create("bob");
        s.retain_users(&["alice".to_string()]);
        assert!(s.get(&t, long, long).is_none());
    }

    #[test]
    fn cookie_parsing_and_comparison() {
        assert_eq!(
            token_from_cookies("a=b; portcullis_session=XYZ; c=d"),
            Some("XYZ")
        );
        assert_eq!(token_from_cookies("a=b"), None);
        assert!(same_token("abc", "abc"));
        assert!(!same_token("abc", "abd"));
        assert!(!same_token("abc", "ab"));
    }
}
