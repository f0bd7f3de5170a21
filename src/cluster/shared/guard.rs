//! The guard's decisions (an address's trust withdrawn by the sentinel or
//! an admin, or given back by an admin), shared by the nodes: what one
//! node's sentinel learns, every node acts on. And the flood hold's
//! observations: each (source, recipient domain) pair one node sees counts
//! on every node, so a sender spread over the nodes is judged by its whole
//! spread, and the baselines every node learns from it agree.

use super::{Row, SharedSource};
use crate::guard::{Decision, Guard};
use std::net::IpAddr;
use std::sync::Arc;

const GUARD: &str = "guard";
const FLOOD: &str = "flood";

/// A decision stays until another replaces it.
const NEVER: i64 = i64::MAX;

pub struct SharedGuard(Arc<Guard>);

impl SharedGuard {
    pub fn new(guard: Arc<Guard>) -> SharedGuard {
        guard.share_changes();
        SharedGuard(guard)
    }
}

impl SharedSource for SharedGuard {
    fn kinds(&self) -> &'static [&'static str] {
        &[GUARD, FLOOD]
    }

    fn changes(&self, now_ms: i64) -> Vec<Row> {
        let decisions = self
            .0
            .take_shared_changes()
            .into_iter()
            .map(|(ip, decision)| Row {
                kind: GUARD,
                key: ip.to_string(),
                node: 0,
                value: serde_json::to_string(&decision).unwrap_or_default(),
                expires_ms: NEVER,
            });
        let window_ms = self.0.flood_window().as_millis() as i64;
        let seen = self
            .0
            .take_shared_observations()
            .into_iter()
            .map(|pair| Row {
                kind: FLOOD,
                key: serde_json::to_string(&pair).unwrap_or_default(),
                node: 0,
                value: now_ms.to_string(),
                expires_ms: now_ms + window_ms,
            });
        decisions.chain(seen).collect()
    }

    fn apply(&self, row: &Row, _mine: bool, now_ms: i64) {
        if row.kind == FLOOD {
            // Seen within the window (a row read again later is still the
            // same pair: counting it twice changes nothing).
            if let (Ok((source, domain)), true) = (
                serde_json::from_str::<(String, String)>(&row.key),
                row.expires_ms > now_ms,
            ) {
                self.0.observe_elsewhere(&source, &domain);
            }
            return;
        }
        let (Ok(ip), Ok(decision)) = (
            row.key.parse::<IpAddr>(),
            serde_json::from_str::<Decision>(&row.value),
        ) else {
            return;
        };
        self.0.adopt(ip, decision);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::GuardConfig;

    #[test]
    fn an_untrust_on_one_node_reaches_the_other_and_a_trust_undoes_it() {
        let a = SharedGuard::new(Arc::new(Guard::new(GuardConfig::default(), None)));
        let b = SharedGuard::new(Arc::new(Guard::new(GuardConfig::default(), None)));
        let ip: IpAddr = "192.168.1.1".parse().unwrap();
        a.0.untrust(ip, "sent as 50 different names");
        for row in a.changes(0) {
            b.apply(&row, false, 0);
        }
        assert!(b.0.is_untrusted(ip));
        assert!(
            b.changes(0).is_empty(),
            "an adopted decision is not sent back"
        );
        b.0.trust(ip);
        for row in b.changes(0) {
            a.apply(&row, false, 0);
        }
        assert!(!a.0.is_untrusted(ip));
        assert!(a.0.state().trusted_by_admin.contains(&ip));
    }

    #[test]
    fn a_sender_spread_over_two_nodes_is_judged_by_its_whole_spread() {
        let config = GuardConfig {
            flood_recipient_domains: 4,
            ..GuardConfig::default()
        };
        let a = SharedGuard::new(Arc::new(Guard::new(config.clone(), None)));
        let b = SharedGuard::new(Arc::new(Guard::new(config, None)));
        // Three domains on node A, each under its allowance there.
        for d in ["one.example", "two.example", "three.example"] {
            assert!(a.0.observe_recipient("192.0.2.5", d).is_none());
        }
        for row in a.changes(1_000) {
            b.apply(&row, false, 1_000);
        }
        // Node B sees two more: five in all, over the allowance of four.
        assert!(b.0.observe_recipient("192.0.2.5", "four.example").is_none());
        let flood = b.0.observe_recipient("192.0.2.5", "five.example");
        assert!(
            flood.is_some_and(|f| f.domains == 5),
            "judged by both nodes' spread"
        );
    }
}
