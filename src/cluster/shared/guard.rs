//! The guard's decisions (an address's trust withdrawn by the sentinel or
//! an admin, or given back by an admin), shared by the nodes: what one
//! node's sentinel learns, every node acts on.

use super::{Row, SharedSource};
use crate::guard::{Decision, Guard};
use std::net::IpAddr;
use std::sync::Arc;

const GUARD: &str = "guard";

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
        &[GUARD]
    }

    fn changes(&self, _now_ms: i64) -> Vec<Row> {
        self.0
            .take_shared_changes()
            .into_iter()
            .map(|(ip, decision)| Row {
                kind: GUARD,
                key: ip.to_string(),
                node: 0,
                value: serde_json::to_string(&decision).unwrap_or_default(),
                expires_ms: NEVER,
            })
            .collect()
    }

    fn apply(&self, row: &Row, _mine: bool, _now_ms: i64) {
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
}
