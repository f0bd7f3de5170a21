//! The guard's decisions (an address's trust withdrawn by the sentinel or
//! an admin, or given back by an admin), shared by the nodes: what one
//! node's sentinel learns, every node acts on. And the flood hold's
//! observations: each (source, recipient domain) pair one node sees counts
//! on every node, so a sender spread over the nodes is judged by its whole
//! spread, and the baselines every node learns from it agree. And how each
//! source's mail fares (delivered, bounced) on each node, so that a source
//! whose mail bounces is judged by its bounces on all the nodes.

use super::{Row, SharedSource};
use crate::guard::{Decision, Guard, Outcomes};
use std::net::IpAddr;
use std::sync::Arc;

const GUARD: &str = "guard";
const FLOOD: &str = "flood";
const OUTCOMES: &str = "outcomes";

/// A decision stays until another replaces it.
const NEVER: i64 = i64::MAX;

pub struct SharedGuard {
    guard: Arc<Guard>,
    /// This node's number: outcomes are per node, summed by the readers.
    node: i16,
}

impl SharedGuard {
    pub fn new(guard: Arc<Guard>, node: u8) -> SharedGuard {
        guard.share_changes();
        SharedGuard {
            guard,
            node: i16::from(node),
        }
    }
}

impl SharedSource for SharedGuard {
    fn kinds(&self) -> &'static [&'static str] {
        &[GUARD, FLOOD, OUTCOMES]
    }

    fn changes(&self, now_ms: i64) -> Vec<Row> {
        let decisions = self
            .guard
            .take_shared_changes()
            .into_iter()
            .map(|(ip, decision)| Row {
                kind: GUARD,
                key: ip.to_string(),
                node: 0,
                value: serde_json::to_string(&decision).unwrap_or_default(),
                expires_ms: NEVER,
            });
        let window_ms = self.guard.flood_window().as_millis() as i64;
        let seen = self
            .guard
            .take_shared_observations()
            .into_iter()
            .map(|pair| Row {
                kind: FLOOD,
                key: serde_json::to_string(&pair).unwrap_or_default(),
                node: 0,
                value: now_ms.to_string(),
                expires_ms: now_ms + window_ms,
            });
        let fared = self
            .guard
            .take_shared_outcomes()
            .into_iter()
            .map(|(source, outcomes)| Row {
                kind: OUTCOMES,
                key: source,
                node: self.node,
                value: serde_json::to_string(&outcomes).unwrap_or_default(),
                expires_ms: now_ms + window_ms,
            });
        decisions.chain(seen).chain(fared).collect()
    }

    fn apply(&self, row: &Row, mine: bool, now_ms: i64) {
        if row.kind == OUTCOMES {
            // Another node's count within its window (this node's own, read
            // back after a restart, is not taken again: a restart starts
            // its outcomes afresh).
            if let (false, Ok(outcomes), Ok(left)) = (
                mine || row.node == self.node,
                serde_json::from_str::<Outcomes>(&row.value),
                u64::try_from(row.expires_ms - now_ms),
            ) {
                self.guard.outcomes_elsewhere(
                    &row.key,
                    row.node,
                    outcomes,
                    std::time::Duration::from_millis(left),
                );
            }
            return;
        }
        if row.kind == FLOOD {
            // Seen within the window (a row read again later is still the
            // same pair: counting it twice changes nothing).
            if let (Ok((source, domain)), true) = (
                serde_json::from_str::<(String, String)>(&row.key),
                row.expires_ms > now_ms,
            ) {
                self.guard.observe_elsewhere(&source, &domain);
            }
            return;
        }
        let (Ok(ip), Ok(decision)) = (
            row.key.parse::<IpAddr>(),
            serde_json::from_str::<Decision>(&row.value),
        ) else {
            return;
        };
        self.guard.adopt(ip, decision);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::GuardConfig;

    #[test]
    fn an_untrust_on_one_node_reaches_the_other_and_a_trust_undoes_it() {
        let a = SharedGuard::new(Arc::new(Guard::new(GuardConfig::default(), None)), 1);
        let b = SharedGuard::new(Arc::new(Guard::new(GuardConfig::default(), None)), 2);
        let ip: IpAddr = "192.168.1.1".parse().unwrap();
        a.guard.untrust(ip, "sent as 50 different names");
        for row in a.changes(0) {
            b.apply(&row, false, 0);
        }
        assert!(b.guard.is_untrusted(ip));
        assert!(
            b.changes(0).is_empty(),
            "an adopted decision is not sent back"
        );
        b.guard.trust(ip);
        for row in b.changes(0) {
            a.apply(&row, false, 0);
        }
        assert!(!a.guard.is_untrusted(ip));
        assert!(a.guard.state().trusted_by_admin.contains(&ip));
    }

    #[test]
    fn a_sender_spread_over_two_nodes_is_judged_by_its_whole_spread() {
        let config = GuardConfig {
            flood_recipient_domains: 4,
            ..GuardConfig::default()
        };
        let a = SharedGuard::new(Arc::new(Guard::new(config.clone(), None)), 1);
        let b = SharedGuard::new(Arc::new(Guard::new(config, None)), 2);
        // Three domains on node A, each under its allowance there.
        for d in ["one.example", "two.example", "three.example"] {
            assert!(a.guard.observe_recipient("192.0.2.5", d).is_none());
        }
        for row in a.changes(1_000) {
            b.apply(&row, false, 1_000);
        }
        // Node B sees two more: five in all, over the allowance of four.
        assert!(
            b.guard
                .observe_recipient("192.0.2.5", "four.example")
                .is_none()
        );
        let flood = b.guard.observe_recipient("192.0.2.5", "five.example");
        assert!(
            flood.is_some_and(|f| f.domains == 5),
            "judged by both nodes' spread"
        );
    }

    #[test]
    fn a_source_whose_mail_bounces_on_two_nodes_is_judged_by_both() {
        let config = GuardConfig {
            flood_min_failures: 4,
            flood_failure_rate: 0.5,
            ..GuardConfig::default()
        };
        let a = SharedGuard::new(Arc::new(Guard::new(config.clone(), None)), 1);
        let b = SharedGuard::new(Arc::new(Guard::new(config, None)), 2);
        // Three bounces on each node: under four on either alone.
        for _ in 0..3 {
            a.guard.record_outcome("192.0.2.9", true);
            b.guard.record_outcome("192.0.2.9", true);
        }
        assert!(
            a.guard
                .observe_recipient("192.0.2.9", "x.example")
                .is_none()
        );
        assert!(
            b.guard
                .observe_recipient("192.0.2.9", "x.example")
                .is_none()
        );
        let rows = a.changes(1_000);
        assert!(
            rows.iter().any(|r| r.kind == OUTCOMES && r.node == 1),
            "{rows:?}"
        );
        for row in &rows {
            b.apply(row, false, 1_000);
            // A node reads its own rows back: they do not count twice.
            a.apply(row, false, 1_000);
        }
        let flood = b.guard.observe_recipient("192.0.2.9", "x.example");
        assert!(
            flood.is_some_and(|f| f.reason.starts_with("6 of its last 6")),
            "judged by both nodes' bounces"
        );
        assert!(
            a.guard
                .observe_recipient("192.0.2.9", "x.example")
                .is_none(),
            "node A's own outcomes were not counted twice"
        );
    }
}
