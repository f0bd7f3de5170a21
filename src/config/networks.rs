//! The `[[network]]` table: which authentication policy applies to a client address.
//!
//! Rules: the most specific range containing the address wins. An address
//! listed in a range's `exclude` is not trusted by that range: it is judged by
//! the next enclosing range, but never better than auth = "required" — an
//! excluded address (the router that NATs Internet traffic in) can never relay
//! without AUTH. An address in no range may relay only after AUTH.

use super::{IpRange, NetworkAuth, NetworkConfig};
use std::net::IpAddr;

#[derive(Debug, Clone)]
pub struct NetworkTable {
    /// Entries with their config index, most specific first.
    entries: Vec<(usize, NetworkConfig)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkMatch {
    /// The policy in force for this client.
    pub auth: NetworkAuth,
    /// The config index of the range that decided, if any.
    pub index: Option<usize>,
    pub range: Option<IpRange>,
    /// The steps taken, for logs and `explain`.
    pub trace: Vec<String>,
}

impl NetworkTable {
    pub fn from_config(networks: &[NetworkConfig]) -> Self {
        let mut entries: Vec<(usize, NetworkConfig)> =
            networks.iter().cloned().enumerate().collect();
        // Longest prefix first; IPv4 and IPv6 prefixes are compared on the same
        // scale (an IPv4 /24 is as specific as an IPv6 /120).
        entries.sort_by_key(|(i, n)| (std::cmp::Reverse(specificity(&n.range)), *i));
        Self { entries }
    }

    /// The policy for `ip`, with the steps that led to it in words (for
    /// logs and `explain`).
    pub fn lookup(&self, ip: IpAddr) -> NetworkMatch {
        let mut trace = Vec::new();
        let m = self.walk(ip, Some(&mut trace));
        NetworkMatch { trace, ..m }
    }

    /// The range that decides for `ip` (the most specific one containing it).
    pub fn deciding(&self, ip: IpAddr) -> Option<&NetworkConfig> {
        let index = self.walk(ip, None).index?;
        self.entries
            .iter()
            .find(|(i, _)| *i == index)
            .map(|(_, n)| n)
    }

    /// The policy for `ip` without the words: what every MAIL and RCPT asks
    /// ("is this client trusted?"), so it formats nothing.
    pub fn auth_for(&self, ip: IpAddr) -> NetworkAuth {
        self.walk(ip, None).auth
    }

    /// The most specific range containing `ip` decides; an exclusion sends
    /// the search on to the enclosing ranges, capped at "required".
    fn walk(&self, ip: IpAddr, mut trace: Option<&mut Vec<String>>) -> NetworkMatch {
        let mut note = |text: &dyn Fn() -> String| {
            if let Some(t) = trace.as_deref_mut() {
                t.push(text());
            }
        };
        let mut excluded = false;
        for (i, n) in &self.entries {
            if !n.range.contains(ip) {
                continue;
            }
            if let Some(ex) = n.exclude.iter().find(|e| e.contains(ip)) {
                note(&|| {
                    format!(
                        "{ip} is in network[{i}] ({}) but excluded there by {ex}: never trusted without AUTH",
                        n.range
                    )
                });
                excluded = true;
                continue;
            }
            let auth = if excluded && n.auth == NetworkAuth::None {
                note(&|| {
                    format!(
                        "network[{i}] ({}) says auth = \"none\", capped to \"required\" for an excluded address",
                        n.range
                    )
                });
                NetworkAuth::Required
            } else {
                note(&|| {
                    format!(
                        "{ip} matches network[{i}] ({}), auth = \"{}\" (most specific match)",
                        n.range,
                        n.auth.name()
                    )
                });
                n.auth
            };
            return NetworkMatch {
                auth,
                index: Some(*i),
                range: Some(n.range),
                trace: Vec::new(),
            };
        }
        note(&|| format!("{ip} is in no [[network]] range: relaying needs AUTH"));
        NetworkMatch {
            auth: NetworkAuth::Required,
            index: None,
            range: None,
            trace: Vec::new(),
        }
    }
}

impl NetworkTable {
    /// The table in words, one line per range in config order, as the lookup
    /// applies it: "192.168.0.0/16 except 192.168.5.0/24, 192.168.1.1: relay
    /// without AUTH". More specific ranges and exclusions are the exceptions.
    pub fn describe(&self) -> Vec<String> {
        let mut by_index: Vec<&(usize, NetworkConfig)> = self.entries.iter().collect();
        by_index.sort_by_key(|(i, _)| *i);
        let mut lines: Vec<String> = by_index
            .iter()
            .map(|(_, n)| {
                let mut holes: Vec<String> = self
                    .entries
                    .iter()
                    .map(|(_, other)| other.range)
                    .filter(|r| *r != n.range && nested_in(r, &n.range))
                    .map(|r| r.to_string())
                    .collect();
                holes.extend(n.exclude.iter().map(|e| e.to_string()));
                let what = match n.auth {
                    NetworkAuth::None => "relay without AUTH",
                    NetworkAuth::Required => "relay after AUTH",
                    NetworkAuth::Deny => "never relay, even after AUTH",
                };
                if holes.is_empty() {
                    format!("{}: {what}", n.range)
                } else {
                    format!("{} except {}: {what}", n.range, holes.join(", "))
                }
            })
            .collect();
        lines.push("any other address: relay after AUTH".into());
        lines
    }
}

/// Whether every address of `inner` lies in `outer`.
fn nested_in(inner: &IpRange, outer: &IpRange) -> bool {
    use ipnet::IpNet;
    match (inner.net(), outer.net(), outer.ipv4_part()) {
        (IpNet::V4(i), IpNet::V6(_), Some(o)) => o.contains(&i),
        (i, o, _) => o.contains(&i),
    }
}

fn specificity(r: &IpRange) -> u8 {
    match r.net() {
        ipnet::IpNet::V4(n) => n.prefix_len() + 96,
        ipnet::IpNet::V6(n) => n.prefix_len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(entries: &[(&str, NetworkAuth, &[&str])]) -> NetworkTable {
        let nets: Vec<NetworkConfig> = entries
            .iter()
            .map(|(r, a, ex)| NetworkConfig {
                range: r.parse().unwrap(),
                auth: *a,
                exclude: ex.iter().map(|e| e.parse().unwrap()).collect(),
                bare_newline: None,
                offer_starttls: None,
            })
            .collect();
        NetworkTable::from_config(&nets)
    }

    fn auth(t: &NetworkTable, ip: &str) -> NetworkAuth {
        let ip = ip.parse().unwrap();
        let m = t.lookup(ip);
        assert_eq!(
            m.auth,
            t.auth_for(ip),
            "the explained and the quick lookup agree"
        );
        m.auth
    }

    #[test]
    fn most_specific_wins_regardless_of_order() {
        let t = table(&[
            ("10.0.0.0/8", NetworkAuth::Required, &[]),
            ("10.1.0.0/16", NetworkAuth::None, &[]),
            ("10.1.2.0/24", NetworkAuth::Deny, &[]),
        ]);
        assert_eq!(auth(&t, "10.9.9.9"), NetworkAuth::Required);
        assert_eq!(auth(&t, "10.1.9.9"), NetworkAuth::None);
        assert_eq!(auth(&t, "10.1.2.3"), NetworkAuth::Deny);
        assert_eq!(auth(&t, "192.0.2.1"), NetworkAuth::Required);
    }

    #[test]
    fn excluded_router_is_never_trusted() {
        let t = table(&[
            ("192.168.0.0/16", NetworkAuth::None, &[]),
            ("192.168.1.0/24", NetworkAuth::None, &["192.168.1.1"]),
        ]);
        assert_eq!(auth(&t, "192.168.1.50"), NetworkAuth::None);
        assert_eq!(auth(&t, "192.168.1.1"), NetworkAuth::Required);
        let m = t.lookup("192.168.1.1".parse().unwrap());
        assert!(m.trace.iter().any(|s| s.contains("excluded")));
    }

    #[test]
    fn excluded_address_keeps_a_stricter_outer_policy() {
        let t = table(&[
            ("10.0.0.0/8", NetworkAuth::Deny, &[]),
            ("10.0.0.0/24", NetworkAuth::None, &["10.0.0.1"]),
        ]);
        assert_eq!(auth(&t, "10.0.0.1"), NetworkAuth::Deny);
    }

    #[test]
    fn description_names_the_exceptions() {
        let t = table(&[
            ("192.168.0.0/16", NetworkAuth::None, &["192.168.1.1"]),
            ("192.168.5.0/24", NetworkAuth::Required, &[]),
        ]);
        assert_eq!(
            t.describe(),
            [
                "192.168.0.0/16 except 192.168.5.0/24, 192.168.1.1: relay without AUTH",
                "192.168.5.0/24: relay after AUTH",
                "any other address: relay after AUTH",
            ]
        );
    }

    #[test]
    fn ipv4_mapped_client_matches_ipv4_range() {
        let t = table(&[("192.168.1.0/24", NetworkAuth::None, &[])]);
        let mapped: IpAddr = "::ffff:192.168.1.5".parse().unwrap();
        assert_eq!(t.lookup(mapped.to_canonical()).auth, NetworkAuth::None);
    }
}
