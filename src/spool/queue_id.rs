//! Queue IDs: 18 upper-case hex digits, microseconds since the epoch then a
//! counter, so that IDs sort by arrival and never repeat within one process.

use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

static COUNTER: AtomicU16 = AtomicU16::new(0);

pub fn new_queue_id() -> String {
    let micros = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{micros:014X}{n:04X}")
}

/// Whether `s` has the shape of a queue ID (also keeps paths like "../x" out).
pub fn is_valid(s: &str) -> bool {
    s.len() == 18
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_valid_and_ordered() {
        let ids: Vec<String> = (0..1000).map(|_| new_queue_id()).collect();
        assert!(ids.iter().all(|i| is_valid(i)));
        let mut set = ids.clone();
        set.dedup();
        assert_eq!(set.len(), 1000);
        assert!(!is_valid("../../etc/passwd0"));
    }
}
