//! The open-relay guard: finds every `[[network]]` entry that would let an
//! unauthenticated client from a globally routable address relay anywhere.

use super::{Config, IpRange, NetworkAuth, NetworkTable};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use std::collections::BTreeMap;

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

/// The entries that make this configuration an open relay, whatever
/// `allow_open_relay` says. It asks the very lookup the server runs for every
/// globally routable block under a range with auth = "none" (most specific
/// range wins, exclusions): an entry is reported when some Internet address
/// would be trusted without AUTH through it.
pub fn open_relay_entries(config: &Config) -> Vec<OpenRelayEntry> {
    let table = NetworkTable::from_config(&config.network);
    let mut boundaries: Vec<IpNet> = Vec::new();
    for n in &config.network {
        for r in std::iter::once(&n.range).chain(&n.exclude) {
            boundaries.push(r.net());
            if let (IpNet::V6(_), Some(v4)) = (r.net(), r.ipv4_part()) {
                boundaries.push(IpNet::V4(v4));
            }
        }
    }
    let skip = skipped_blocks();
    let mut search = Search {
        table: &table,
        boundaries: &boundaries,
        skip: &skip,
        budget: SEARCH_BUDGET,
        open: BTreeMap::new(),
    };
    for n in config
        .network
        .iter()
        .filter(|n| n.auth == NetworkAuth::None)
    {
        search.visit(n.range.net());
        if let (IpNet::V6(_), Some(v4)) = (n.range.net(), n.range.ipv4_part()) {
            search.visit(IpNet::V4(v4));
        }
    }
    let exhausted = search.budget == 0;
    let mut open = search.open;
    if exhausted {
        // Too intricate to prove safe: treat every trusting entry as open.
        for (i, n) in config.network.iter().enumerate() {
            if n.auth == NetworkAuth::None {
                open.entry(i).or_insert(n.range.net());
            }
        }
    }
    open.into_iter()
        .map(|(i, example)| {
            let range = config.network[i].range;
            let everything = range.prefix_len() == 0
                || range.ipv4_part().is_some_and(|v4| v4.prefix_len() == 0);
            OpenRelayEntry {
                key: format!("network[{i}]"),
                range,
                reason: if everything {
                    format!(
                        "range = \"{range}\" with auth = \"none\" lets anyone on the Internet relay without authentication"
                    )
                } else {
                    format!(
                        "range = \"{range}\" with auth = \"none\" contains globally routable addresses (such as {example}) that could relay without authentication"
                    )
                },
            }
        })
        .collect()
}

/// Blocks the search can stop at: never on the Internet, or (for IPv6) the
/// IPv4-mapped block, whose clients are looked up as IPv4.
fn skipped_blocks() -> Vec<IpNet> {
    NON_GLOBAL_V4
        .iter()
        .chain(NON_GLOBAL_V6)
        .chain(&["::ffff:0:0/96"])
        .filter_map(|b| b.parse().ok())
        .collect()
}

/// Blocks visited at most; far more than any real table needs.
const SEARCH_BUDGET: usize = 1_000_000;

struct Search<'a> {
    table: &'a NetworkTable,
    /// Every range and exclusion: the lookup's answer is the same across a
    /// block that none of them cuts.
    boundaries: &'a [IpNet],
    skip: &'a [IpNet],
    budget: usize,
    /// Entry that trusts an Internet address → an example block.
    open: BTreeMap<usize, IpNet>,
}

impl Search<'_> {
    fn visit(&mut self, block: IpNet) {
        if self.budget == 0 {
            return;
        }
        self.budget -= 1;
        if self.skip.iter().any(|s| s.contains(&block)) {
            return;
        }
        let cut = |b: &IpNet| b.prefix_len() > block.prefix_len() && block.contains(b);
        if self.boundaries.iter().chain(self.skip).any(cut) {
            if let Ok(halves) = block.subnets(block.prefix_len() + 1) {
                for half in halves {
                    self.visit(half);
                }
            }
            return;
        }
        let m = self.table.lookup(block.network());
        if m.auth == NetworkAuth::None
            && let Some(i) = m.index
        {
            self.open.entry(i).or_insert(block);
        }
    }
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
    fn the_same_lookup_as_the_server_decides() {
        // A trusted public range whose every address is carved out by more
        // specific ranges needing AUTH (or denied): not open.
        let mut text = String::from("[[network]]\nrange = \"8.0.0.0/8\"\nauth = \"none\"\n");
        text.push_str("[[network]]\nrange = \"8.0.0.0/9\"\nauth = \"required\"\n");
        text.push_str("[[network]]\nrange = \"8.128.0.0/9\"\nauth = \"deny\"\n");
        let c = Config::parse(&format!("{text}[relay]\nallow_open_relay = true\n"), "t").unwrap();
        assert!(open_relay_entries(&c).is_empty(), "fully carved out");
        // An exclusion holds back only what it names.
        let mut text = String::from(
            "[[network]]\nrange = \"8.8.8.0/24\"\nauth = \"none\"\nexclude = [\"8.8.8.0/25\"]\n",
        );
        text.push_str("[relay]\nallow_open_relay = true\n");
        let found = open_relay_entries(&Config::parse(&text, "t").unwrap());
        assert_eq!(found.len(), 1);
        assert!(
            found[0].reason.contains("8.8.8.128/25"),
            "{}",
            found[0].reason
        );
        // A public range inside a private trusted one is still the private one's business.
        let c = config(&[("10.0.0.0/8", "none"), ("10.1.0.0/16", "required")]);
        assert!(open_relay_entries(&c).is_empty());
    }

    #[test]
    fn public_ranges_needing_auth_are_fine() {
        let c = config(&[("0.0.0.0/0", "required"), ("::/0", "deny")]);
        assert!(open_relay_entries(&c).is_empty());
    }
}
