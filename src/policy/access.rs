//! The connection filter, applied before the banner.

use crate::config::{AccessConfig, FilterMode, IpRange};
use std::net::IpAddr;

#[derive(Debug, Clone)]
pub struct AccessFilter {
    mode: FilterMode,
    allow: Vec<IpRange>,
    deny: Vec<IpRange>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessDecision {
    pub allowed: bool,
    pub reason: String,
}

impl AccessFilter {
    pub fn from_config(c: &AccessConfig) -> Self {
        Self {
            mode: c.filter,
            allow: c.allow.clone(),
            deny: c.deny.clone(),
        }
    }

    /// Whether a client at `ip` (canonical) may connect at all.
    pub fn check(&self, ip: IpAddr) -> AccessDecision {
        let find = |list: &[IpRange]| list.iter().find(|r| r.contains(ip)).map(|r| r.to_string());
        match self.mode {
            FilterMode::Off => AccessDecision {
                allowed: true,
                reason: "connection filter is off".into(),
            },
            FilterMode::Allow => match find(&self.allow) {
                Some(r) => AccessDecision {
                    allowed: true,
                    reason: format!("access.allow lists {r}"),
                },
                None => AccessDecision {
                    allowed: false,
                    reason: "not in access.allow (filter = \"allow\")".into(),
                },
            },
            FilterMode::Deny => match find(&self.deny) {
                Some(r) => AccessDecision {
                    allowed: false,
                    reason: format!("access.deny lists {r}"),
                },
                None => AccessDecision {
                    allowed: true,
                    reason: "not in access.deny".into(),
                },
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(mode: FilterMode, allow: &[&str], deny: &[&str]) -> AccessFilter {
        AccessFilter::from_config(&AccessConfig {
            filter: mode,
            allow: allow.iter().map(|s| s.parse().unwrap()).collect(),
            deny: deny.iter().map(|s| s.parse().unwrap()).collect(),
        })
    }

    #[test]
    fn modes() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(
            filter(FilterMode::Off, &[], &[])
                .check(ip("8.8.8.8"))
                .allowed
        );
        let allow = filter(FilterMode::Allow, &["192.168.1.0/24"], &[]);
        assert!(allow.check(ip("192.168.1.9")).allowed);
        assert!(!allow.check(ip("192.168.2.9")).allowed);
        let deny = filter(FilterMode::Deny, &[], &["203.0.113.0/24"]);
        assert!(!deny.check(ip("203.0.113.5")).allowed);
        assert!(deny.check(ip("198.51.100.5")).allowed);
    }
}
