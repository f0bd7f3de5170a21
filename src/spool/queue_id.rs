//! Queue IDs: 20 upper-case hex digits — microseconds since the epoch (14),
//! the node that minted it (2), a per-process counter (4) — so that IDs sort
//! by arrival, never repeat within one process, and two nodes sharing a queue
//! (each with its own `server.node_id`) can never mint the same one.
//! IDs of 18 digits (no node part) from older spools are still read.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::atomic::{AtomicU8, AtomicU16, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

static COUNTER: AtomicU16 = AtomicU16::new(0);
static NODE: AtomicU8 = AtomicU8::new(0);

/// A queue ID, known to have the right shape (so it is also safe in a path).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct QueueId(String);

impl QueueId {
    /// Mints a new ID for this node.
    pub fn new() -> QueueId {
        let micros = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(0);
        let node = NODE.load(Ordering::Relaxed);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        QueueId(format!("{micros:014X}{node:02X}{n:04X}"))
    }

    /// Parses an ID given by a person or a file name.
    pub fn parse(s: &str) -> Option<QueueId> {
        is_valid(s).then(|| QueueId(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for QueueId {
    fn default() -> Self {
        Self::new()
    }
}

/// Sets the node part of IDs minted from now on (`server.node_id`).
pub fn set_node(node: u8) {
    NODE.store(node, Ordering::Relaxed);
}

impl std::ops::Deref for QueueId {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl std::borrow::Borrow<str> for QueueId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl AsRef<std::path::Path> for QueueId {
    fn as_ref(&self) -> &std::path::Path {
        std::path::Path::new(&self.0)
    }
}

impl fmt::Display for QueueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for QueueId {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        if is_valid(&s) {
            Ok(QueueId(s))
        } else {
            Err(format!("{s:?} is not a queue ID"))
        }
    }
}

impl From<QueueId> for String {
    fn from(id: QueueId) -> String {
        id.0
    }
}

/// Whether `s` has the shape of a queue ID (also keeps paths like "../x" out).
pub fn is_valid(s: &str) -> bool {
    (s.len() == 20 || s.len() == 18)
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_valid_and_ordered() {
        let ids: Vec<QueueId> = (0..1000).map(|_| QueueId::new()).collect();
        assert!(ids.iter().all(|i| is_valid(i)));
        let mut set = ids.clone();
        set.dedup();
        assert_eq!(set.len(), 1000);
        assert!(!is_valid("../../etc/passwd0"));
        assert!(QueueId::parse("0123456789ABCDEF01").is_some(), "old IDs");
        assert!(QueueId::parse("0123456789abcdef0123").is_none());
    }

    #[test]
    fn the_node_part_tells_nodes_apart() {
        let a = QueueId::new();
        assert_eq!(&a[14..16], "00");
        set_node(0x2A);
        let b = QueueId::new();
        set_node(0);
        assert_eq!(&b[14..16], "2A");
    }
}
