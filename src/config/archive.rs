//! `[archive]`: a copy of every relayed message, for organisations with a
//! legal archive obligation — to an address (envelope only), or into a
//! directory (one .eml per message, synced before the 250).

use serde::{Deserialize, Serialize};
use std::net::IpAddr;
use std::path::PathBuf;

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ArchiveConfig {
    /// Each archived message also goes to this address (an extra envelope
    /// recipient: no header shows it).
    pub to: Option<String>,
    /// Each archived message is written here as DATE/QUEUEID.eml before the 250.
    pub dir: Option<PathBuf>,
    /// Files in `dir` older than this many days are removed.
    pub retention_days: Option<u32>,
    /// Archive only mail from these client ranges ...
    pub networks: Vec<ipnet::IpNet>,
    /// ... or from these logins. Both empty: every accepted message.
    pub users: Vec<String>,
}

impl ArchiveConfig {
    pub fn is_on(&self) -> bool {
        self.to.is_some() || self.dir.is_some()
    }

    /// Whether mail from `ip` (logged in as `user`) is archived.
    pub fn covers(&self, ip: IpAddr, user: Option<&str>) -> bool {
        if !self.is_on() {
            return false;
        }
        if self.networks.is_empty() && self.users.is_empty() {
            return true;
        }
        let ip = ip.to_canonical();
        self.networks.iter().any(|n| n.contains(&ip))
            || user.is_some_and(|u| self.users.iter().any(|x| x == u))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_by_network_or_user() {
        let a: ArchiveConfig = toml::from_str(
            "to = \"archive@example.org\"\nnetworks = [\"10.0.0.0/8\"]\nusers = [\"app1\"]\n",
        )
        .unwrap();
        assert!(a.covers("10.1.2.3".parse().unwrap(), None));
        assert!(a.covers("192.0.2.1".parse().unwrap(), Some("app1")));
        assert!(!a.covers("192.0.2.1".parse().unwrap(), Some("app2")));
        let all: ArchiveConfig = toml::from_str("dir = \"/var/archive\"\n").unwrap();
        assert!(all.covers("192.0.2.1".parse().unwrap(), None));
        assert!(!ArchiveConfig::default().covers("10.0.0.1".parse().unwrap(), None));
    }
}
