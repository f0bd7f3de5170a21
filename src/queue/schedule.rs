//! Retry and expiry arithmetic, kept pure so it can be tested exhaustively.

use std::time::Duration;

/// When to try again after `attempts` counted failures (1 = the first failure):
/// the schedule's entries in turn, then its last interval forever.
pub fn next_attempt(now: i64, attempts: u32, schedule: &[Duration]) -> i64 {
    let idx = (attempts.max(1) as usize - 1).min(schedule.len().saturating_sub(1));
    let wait = schedule
        .get(idx)
        .copied()
        .unwrap_or(Duration::from_secs(300));
    now + wait.as_secs().max(1) as i64
}

/// Whether a message received at `received_at` has outlived the queue lifetime.
pub fn expired(now: i64, received_at: i64, lifetime: Duration) -> bool {
    now.saturating_sub(received_at) >= lifetime.as_secs() as i64
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sched() -> Vec<Duration> {
        [60, 300, 900]
            .iter()
            .map(|s| Duration::from_secs(*s))
            .collect()
    }

    #[test]
    fn follows_the_schedule_then_repeats_the_last() {
        assert_eq!(next_attempt(1000, 1, &sched()), 1060);
        assert_eq!(next_attempt(1000, 2, &sched()), 1300);
        assert_eq!(next_attempt(1000, 3, &sched()), 1900);
        assert_eq!(next_attempt(1000, 9, &sched()), 1900);
        // An attempt that did not count (DNS down) waits the first interval.
        assert_eq!(next_attempt(1000, 0, &sched()), 1060);
    }

    #[test]
    fn expiry() {
        assert!(!expired(100, 0, Duration::from_secs(101)));
        assert!(expired(101, 0, Duration::from_secs(101)));
    }

    proptest! {
        #[test]
        fn always_in_the_future_and_never_shrinking(now in 0i64..1_000_000_000, a in 0u32..1000) {
            let s = sched();
            let t1 = next_attempt(now, a, &s);
            let t2 = next_attempt(now, a + 1, &s);
            prop_assert!(t1 > now);
            prop_assert!(t2 >= t1);
            prop_assert!(t1 - now <= 900);
        }
    }
}
