//! Our own pacing of a profile, to stay inside the provider's limits: each
//! transaction reserves its place in the profile's exact ledgers (messages,
//! recipients; behind the `Counters` trait, saved across restarts) before it
//! is sent, or learns when the window has room again. Reserving before
//! sending keeps concurrent deliveries from overshooting together; a
//! transaction that then fails still counts, as it does at the provider.

use crate::config::Quota;
use crate::counters::Counters;
use std::sync::Mutex;
use std::time::Duration;

const MINUTE: i64 = 60;
const DAY: i64 = 86_400;

fn messages_key(profile: &str) -> String {
    format!("quota:{profile}:messages")
}

fn recipients_key(profile: &str) -> String {
    format!("quota:{profile}:recipients")
}

/// A window with no room: which limit, and when it has room again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Full {
    pub limit: String,
    pub until: i64,
}

/// Checks every window of `quota` for one message of `recipients` and, when
/// all have room, records it. `lock` makes check-and-record one step.
pub fn reserve(
    ledger: &dyn Counters,
    lock: &Mutex<()>,
    profile: &str,
    quota: &Quota,
    recipients: u64,
    now: i64,
) -> Result<(), Full> {
    if !quota.is_limited() {
        return Ok(());
    }
    let _one = lock.lock().unwrap_or_else(|p| p.into_inner());
    let msgs = messages_key(profile);
    let rcpts = recipients_key(profile);
    let checks = [
        (
            quota.messages_per_minute,
            &msgs,
            MINUTE,
            1,
            "messages a minute",
        ),
        (quota.messages_per_day, &msgs, DAY, 1, "messages a day"),
        (
            quota.recipients_per_day,
            &rcpts,
            DAY,
            recipients,
            "recipients a day",
        ),
    ];
    for (limit, key, window, adding, what) in checks {
        let Some(limit) = limit else { continue };
        let (used, oldest) = ledger.recorded_since(key, now - window + 1);
        if used + adding > limit {
            return Err(Full {
                limit: format!("{limit} {what}"),
                // The oldest entry leaving the window frees room (perhaps not
                // enough: then the next try learns a later time).
                until: oldest.map_or(now + window, |t| t + window).max(now + 1),
            });
        }
    }
    let keep = Duration::from_secs(DAY as u64);
    ledger.record(&msgs, now, 1, keep);
    ledger.record(&rcpts, now, recipients, keep);
    Ok(())
}

/// The profile's use of its quota now, in words, for the dashboard:
/// "12 of 30 messages this minute", "340 of 10000 recipients today".
pub fn usage(ledger: &dyn Counters, profile: &str, quota: &Quota, now: i64) -> Vec<String> {
    let msgs = messages_key(profile);
    let rcpts = recipients_key(profile);
    let mut out = Vec::new();
    let rows = [
        (
            quota.messages_per_minute,
            &msgs,
            MINUTE,
            "messages in the last minute",
        ),
        (quota.messages_per_day, &msgs, DAY, "messages in 24 hours"),
        (
            quota.recipients_per_day,
            &rcpts,
            DAY,
            "recipients in 24 hours",
        ),
    ];
    for (limit, key, window, what) in rows {
        if let Some(limit) = limit {
            let (used, _) = ledger.recorded_since(key, now - window + 1);
            out.push(format!("{used} of {limit} {what}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::counters::MemoryCounters;

    #[test]
    fn no_more_than_the_limit_in_any_window_and_the_time_room_comes_back() {
        let ledger = MemoryCounters::new();
        let lock = Mutex::new(());
        let q = Quota {
            messages_per_minute: Some(3),
            recipients_per_day: Some(10),
            ..Quota::default()
        };
        for t in [1000, 1010, 1020] {
            assert!(reserve(&ledger, &lock, "p", &q, 2, t).is_ok());
        }
        let full = reserve(&ledger, &lock, "p", &q, 2, 1030).unwrap_err();
        assert_eq!(
            full.until, 1060,
            "when the message at 1000 leaves the minute"
        );
        assert!(full.limit.contains("3 messages a minute"));
        assert!(reserve(&ledger, &lock, "p", &q, 2, 1060).is_ok());
        // 8 recipients used of 10: a message of 3 does not fit today.
        let full = reserve(&ledger, &lock, "p", &q, 3, 1200).unwrap_err();
        assert!(full.limit.contains("10 recipients a day"));
        assert_eq!(full.until, 1000 + 86_400);
        assert_eq!(
            usage(&ledger, "p", &q, 1200),
            vec![
                "0 of 3 messages in the last minute",
                "8 of 10 recipients in 24 hours"
            ]
        );
    }
}
