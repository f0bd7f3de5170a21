//! Wall-clock time as the queue, tokens, quotas and notifications store it:
//! whole seconds since the Unix epoch. One function, so that every part
//! reads the same clock the same way.

pub fn unix_now() -> i64 {
    chrono::Utc::now().timestamp()
}
