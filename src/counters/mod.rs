//! Rate counters and bans behind a trait, so that several nodes can later
//! share them (e.g. in Redis) without the rest of the code noticing. The
//! in-memory implementation counts with a sliding window approximated from
//! two fixed windows: O(1) memory per key, whatever the rate.

pub mod durable;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub trait Counters: Send + Sync {
    /// Events recorded for `key` within the last `window` (approximately, never less).
    fn count(&self, key: &str, window: Duration) -> u64;
    /// Records one event for `key` and returns the count including it.
    fn add(&self, key: &str, window: Duration) -> u64;
    /// Bans `ip` for `duration`.
    fn ban(&self, ip: IpAddr, duration: Duration);
    /// How long `ip` stays banned, if it is.
    fn banned(&self, ip: IpAddr) -> Option<Duration>;
    /// Every address banned now, with the time its ban has left.
    fn bans(&self) -> Vec<(IpAddr, Duration)>;
    /// Ends `ip`'s ban; whether it was banned.
    fn lift(&self, ip: IpAddr) -> bool;
    /// Forgets the events counted for `key`.
    fn forget(&self, key: &str);
    /// Blocks `key` (a network prefix, an account) for `duration`.
    fn block(&self, key: &str, duration: Duration);
    /// How long `key` stays blocked, if it is.
    fn blocked(&self, key: &str) -> Option<Duration>;
    /// Records `amount` under `key` at `at` (Unix seconds), exactly, kept
    /// for `keep`: the ledger quotas are judged by (the rate windows above
    /// are approximate; a provider's quota is not).
    fn record(&self, key: &str, at: i64, amount: u64, keep: Duration);
    /// What was recorded under `key` since `since`: the sum, and when the
    /// oldest of those entries was recorded.
    fn recorded_since(&self, key: &str, since: i64) -> (u64, Option<i64>);
}

/// One key's exact ledger: (Unix seconds, amount), oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Ledger {
    /// Seconds an entry is kept.
    pub keep: u64,
    pub entries: std::collections::VecDeque<(i64, u64)>,
}

impl Ledger {
    /// Adds an entry and drops those older than `keep` before it.
    pub fn record_entry(&mut self, at: i64, amount: u64, keep: Duration) {
        self.keep = self.keep.max(keep.as_secs());
        self.entries.push_back((at, amount));
        let oldest_kept = at - self.keep as i64;
        while self.entries.front().is_some_and(|(t, _)| *t < oldest_kept) {
            self.entries.pop_front();
        }
    }

    /// The sum of the entries since `since`, and the oldest of them.
    pub fn entries_since(&self, since: i64) -> (u64, Option<i64>) {
        let mut sum = 0;
        let mut oldest = None;
        for (t, amount) in self.entries.iter().filter(|(t, _)| *t >= since) {
            sum += amount;
            oldest = Some(oldest.map_or(*t, |o: i64| o.min(*t)));
        }
        (sum, oldest)
    }
}

/// Keys remembered before idle ones are swept.
const MAX_KEYS: usize = 100_000;

#[derive(Debug, Clone, Copy)]
struct Window {
    start: Instant,
    current: u64,
    previous: u64,
}

impl Window {
    /// Moves the window forward to `now` and returns the estimated count.
    fn estimate(&mut self, now: Instant, len: Duration) -> u64 {
        let elapsed = now.duration_since(self.start);
        if elapsed >= len * 2 {
            *self = Window {
                start: now,
                current: 0,
                previous: 0,
            };
        } else if elapsed >= len {
            self.previous = self.current;
            self.current = 0;
            self.start += len;
        }
        let into = now.duration_since(self.start).as_secs_f64() / len.as_secs_f64().max(1e-9);
        let carried = (self.previous as f64 * (1.0 - into.min(1.0))).ceil() as u64;
        self.current + carried
    }
}

#[derive(Default)]
pub struct MemoryCounters {
    windows: Mutex<HashMap<String, Window>>,
    ledgers: Mutex<HashMap<String, Ledger>>,
    bans: Mutex<HashMap<IpAddr, Instant>>,
    blocks: Mutex<HashMap<String, Instant>>,
}

impl MemoryCounters {
    pub fn new() -> MemoryCounters {
        MemoryCounters::default()
    }

    /// Every ledger, for saving them.
    pub fn ledgers(&self) -> HashMap<String, Ledger> {
        self.ledgers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Takes ledgers saved before (at start).
    pub fn restore_ledgers(&self, saved: HashMap<String, Ledger>) {
        *self.ledgers.lock().unwrap_or_else(|p| p.into_inner()) = saved;
    }
}

impl Counters for MemoryCounters {
    fn count(&self, key: &str, window: Duration) -> u64 {
        let mut map = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        map.get_mut(key)
            .map_or(0, |w| w.estimate(Instant::now(), window))
    }

    fn add(&self, key: &str, window: Duration) -> u64 {
        let now = Instant::now();
        let mut map = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_KEYS {
            map.retain(|_, w| now.duration_since(w.start) < window * 2);
        }
        let w = map.entry(key.to_string()).or_insert(Window {
            start: now,
            current: 0,
            previous: 0,
        });
        let before = w.estimate(now, window);
        w.current += 1;
        before + 1
    }

    fn ban(&self, ip: IpAddr, duration: Duration) {
        let now = Instant::now();
        let mut bans = self.bans.lock().unwrap_or_else(|p| p.into_inner());
        if bans.len() >= MAX_KEYS {
            bans.retain(|_, until| *until > now);
        }
        bans.insert(ip, now + duration);
    }

    fn banned(&self, ip: IpAddr) -> Option<Duration> {
        let mut bans = self.bans.lock().unwrap_or_else(|p| p.into_inner());
        let until = *bans.get(&ip)?;
        let now = Instant::now();
        if until > now {
            Some(until - now)
        } else {
            bans.remove(&ip);
            None
        }
    }

    fn bans(&self) -> Vec<(IpAddr, Duration)> {
        let now = Instant::now();
        let mut bans = self.bans.lock().unwrap_or_else(|p| p.into_inner());
        bans.retain(|_, until| *until > now);
        let mut list: Vec<(IpAddr, Duration)> =
            bans.iter().map(|(ip, until)| (*ip, *until - now)).collect();
        list.sort();
        list
    }

    fn lift(&self, ip: IpAddr) -> bool {
        let now = Instant::now();
        let mut bans = self.bans.lock().unwrap_or_else(|p| p.into_inner());
        bans.remove(&ip).is_some_and(|until| until > now)
    }

    fn forget(&self, key: &str) {
        let mut map = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        map.remove(key);
    }

    fn block(&self, key: &str, duration: Duration) {
        let now = Instant::now();
        let mut blocks = self.blocks.lock().unwrap_or_else(|p| p.into_inner());
        if blocks.len() >= MAX_KEYS {
            blocks.retain(|_, until| *until > now);
        }
        blocks.insert(key.to_string(), now + duration);
    }

    fn blocked(&self, key: &str) -> Option<Duration> {
        let mut blocks = self.blocks.lock().unwrap_or_else(|p| p.into_inner());
        let until = *blocks.get(key)?;
        let now = Instant::now();
        if until > now {
            Some(until - now)
        } else {
            blocks.remove(key);
            None
        }
    }

    fn record(&self, key: &str, at: i64, amount: u64, keep: Duration) {
        let mut ledgers = self.ledgers.lock().unwrap_or_else(|p| p.into_inner());
        ledgers
            .entry(key.to_string())
            .or_default()
            .record_entry(at, amount, keep);
    }

    fn recorded_since(&self, key: &str, since: i64) -> (u64, Option<i64>) {
        let ledgers = self.ledgers.lock().unwrap_or_else(|p| p.into_inner());
        ledgers
            .get(key)
            .map_or((0, None), |l| l.entries_since(since))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ledger_is_exact_and_forgets_what_it_need_not_keep() {
        let c = MemoryCounters::new();
        let day = Duration::from_secs(86400);
        c.record("k", 1000, 3, day);
        c.record("k", 1050, 2, day);
        assert_eq!(c.recorded_since("k", 1000), (5, Some(1000)));
        assert_eq!(c.recorded_since("k", 1001), (2, Some(1050)));
        assert_eq!(c.recorded_since("other", 0), (0, None));
        c.record("k", 1000 + 86400 + 10, 1, day);
        assert_eq!(
            c.recorded_since("k", 0),
            (3, Some(1050)),
            "the first entry aged out"
        );
    }

    #[test]
    fn counts_within_the_window() {
        let c = MemoryCounters::new();
        let w = Duration::from_secs(3600);
        assert_eq!(c.count("ip:a", w), 0);
        for n in 1..=5 {
            assert_eq!(c.add("ip:a", w), n);
        }
        assert_eq!(c.count("ip:a", w), 5);
        assert_eq!(c.count("ip:b", w), 0);
    }

    #[test]
    fn old_events_fade_out() {
        let c = MemoryCounters::new();
        let w = Duration::from_millis(50);
        c.add("k", w);
        c.add("k", w);
        std::thread::sleep(Duration::from_millis(110));
        assert_eq!(c.count("k", w), 0);
    }

    #[test]
    fn bans_are_listed_and_lifted() {
        let c = MemoryCounters::new();
        let (a, b): (IpAddr, IpAddr) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        c.ban(a, Duration::from_secs(60));
        c.ban(b, Duration::from_millis(1));
        std::thread::sleep(Duration::from_millis(5));
        let list = c.bans();
        assert_eq!(list.len(), 1, "an expired ban is not listed");
        assert_eq!(list[0].0, a);
        assert!(list[0].1 <= Duration::from_secs(60));
        assert!(c.lift(a));
        assert!(!c.lift(a), "lifted once");
        assert!(!c.lift(b), "an expired ban is nothing to lift");
        assert!(c.banned(a).is_none());
    }

    #[test]
    fn bans_expire() {
        let c = MemoryCounters::new();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        c.ban(ip, Duration::from_millis(50));
        assert!(c.banned(ip).is_some());
        std::thread::sleep(Duration::from_millis(60));
        assert!(c.banned(ip).is_none());
    }
}
