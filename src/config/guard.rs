//! The open-relay guard: finds every `[[network]]` entry that would let an
//! unauthenticated client from a globally routable address relay anywhere.

use super::{Config, IpRange, NetworkAuth};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// One entry that opens the relay, with the words to show the admin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenRelayEntry {
    /// `network[N]` (0-based, as in TOML array order).
    pub key: String,
    pub range: IpRange,
    pub reason: String,
}

/// Address blocks that are never reachable from the Internet at large.
const NON_GLOBAL_V4: &[&str] = &[
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.0.2.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "198.51.100.0/24",
    "203.0.113.0/24",
];
const NON_GLOBAL_V6: &[&str] = &["::1/128", "fc00::/7", "fe80::/10", "2001:db8::/32"];

/// Whether every address of `range` is local (private, loopback, link-local …).
pub fn is_non_global(range: &IpRange) -> bool {
    match range.net() {
        IpNet::V4(n) => inside_any_v4(n),
        IpNet::V6(n) => {
            // A v6 range that reaches into the IPv4-mapped block covers IPv4 too.
            if range.ipv4_part().is_some() {
                return false;
            }
            NON_GLOBAL_V6.iter().any(|b| {
                b.parse::<Ipv6Net>()
                    .map(|block| block.contains(&n))
                    .unwrap_or(false)
            })
        }
    }
}

fn inside_any_v4(n: Ipv4Net) -> bool {
    NON_GLOBAL_V4.iter().any(|b| {
        b.parse::<Ipv4Net>()
            .map(|block| block.contains(&n))
            .unwrap_or(false)
    })
}

/// The entries that make this configuration an open relay, whatever `allow_open_relay` says.
pub fn open_relay_entries(config: &Config) -> Vec<OpenRelayEntry> {
    config
        .network
        .iter()
        .enumerate()
        .filter(|(_, n)| n.auth == NetworkAuth::None && !is_non_global(&n.range))
        .map(|(i, n)| OpenRelayEntry {
            key: format!("network[{i}]"),
            range: n.range,
            reason: if n.range.prefix_len() == 0 || n.range.ipv4_part().is_some_and(|v4| v4.prefix_len() == 0) {
                format!(
                    "range = \"{}\" with auth = \"none\" lets anyone on the Internet relay without authentication",
                    n.range
                )
            } else {
                format!(
                    "range = \"{}\" with auth = \"none\" contains globally routable addresses that could relay without authentication",
                    n.range
                )
            },
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(ranges: &[(&str, &str)]) -> Config {
        let mut text = String::new();
        for (range, auth) in ranges {
            text.push_str(&format!(
                "[[network]]\nrange = \"{range}\"\nauth = \"{auth}\"\n"
            ));
        }
        text.push_str("[relay]\nallow_open_relay = true\n");
        Config::parse(&text, "t").unwrap()
    }

    #[test]
    fn private_ranges_are_safe() {
        let c = config(&[
            ("192.168.1.0/24", "none"),
            ("10.0.0.0/8", "none"),
            ("::1", "none"),
            ("fd00::/8", "none"),
        ]);
        assert!(open_relay_entries(&c).is_empty());
    }

    #[test]
    fn the_whole_internet_is_caught_in_every_spelling() {
        for r in [
            "0.0.0.0/0",
            "::/0",
            "::ffff:0:0/96",
            "0.0.0.0/1",
            "8.8.8.0/24",
            "2001:4860::/32",
            "::/64",
        ] {
            let c = config(&[("10.0.0.0/8", "none"), (r, "none")]);
            let found = open_relay_entries(&c);
            assert_eq!(found.len(), 1, "{r}");
            assert_eq!(found[0].key, "network[1]");
        }
    }

    #[test]
    fn public_ranges_needing_auth_are_fine() {
        let c = config(&[("0.0.0.0/0", "required"), ("::/0", "deny")]);
        assert!(open_relay_entries(&c).is_empty());
    }
}
