//! The next hops taken for down, shared by the nodes: when one node finds a
//! host unreachable, the others skip it too for the rest of the window
//! instead of each knocking on it in turn; an admin's `queue retry` on any
//! node lets every node try again.

use super::{Row, SharedSource};
use crate::attempt::AttemptResult;
use crate::delivery::Deliverer;
use crate::delivery::down::DownChange;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

const DOWN: &str = "down";
/// The key of an admin's "try every host again".
const EVERY_HOST: &str = "*";

#[derive(Serialize, Deserialize)]
struct Down {
    /// Unix ms (the database's clock) until which the host is skipped, or
    /// when every host was forgiven.
    until_ms: i64,
    why: Option<AttemptResult>,
}

pub struct SharedDownHosts(Arc<Deliverer>);

impl SharedDownHosts {
    pub fn new(deliverer: Arc<Deliverer>) -> SharedDownHosts {
        deliverer.down_hosts().share_changes();
        SharedDownHosts(deliverer)
    }
}

impl SharedSource for SharedDownHosts {
    fn kinds(&self) -> &'static [&'static str] {
        &[DOWN]
    }

    fn changes(&self, now_ms: i64) -> Vec<Row> {
        self.0
            .down_hosts()
            .take_changes()
            .into_iter()
            .map(|change| {
                let (key, value) = match change {
                    DownChange::Marked(addr, why, left) => (
                        addr.to_string(),
                        Down {
                            until_ms: now_ms + left.as_millis() as i64,
                            why: Some(why),
                        },
                    ),
                    DownChange::ForgotAll => (
                        EVERY_HOST.to_string(),
                        Down {
                            until_ms: now_ms,
                            why: None,
                        },
                    ),
                };
                Row {
                    kind: DOWN,
                    key,
                    node: 0,
                    expires_ms: value.until_ms + 600_000,
                    value: serde_json::to_string(&value).unwrap_or_default(),
                }
            })
            .collect()
    }

    fn apply(&self, row: &Row, _mine: bool, now_ms: i64) {
        let Ok(down) = serde_json::from_str::<Down>(&row.value) else {
            return;
        };
        let hosts = self.0.down_hosts();
        if row.key == EVERY_HOST {
            // Only a fresh one: at start, an old "try again" undoes nothing.
            if now_ms - down.until_ms < 60_000 {
                hosts.adopt(DownChange::ForgotAll);
            }
            return;
        }
        if let (Ok(addr), Some(why), true) = (
            row.key.parse::<SocketAddr>(),
            down.why,
            down.until_ms > now_ms,
        ) {
            let left = Duration::from_millis((down.until_ms - now_ms) as u64);
            hosts.adopt(DownChange::Marked(addr, why, left));
        }
    }
}
