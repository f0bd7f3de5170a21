//! `Counters` shared by the nodes of a cluster: rate windows, bans,
//! blocks and quota ledgers, read from memory and mirrored through
//! `SharedSync`.
//!
//! Rate windows are aligned on the database's clock (window n covers
//! [n·len, (n+1)·len)), so that every node's count of a window adds up:
//! the estimate is the sum of this window's counts over the nodes plus the
//! previous window's sum, weighted by how much of it still lies within the
//! sliding window (as `MemoryCounters` does for one node).

use super::{Row, SharedClock, SharedSource};
use crate::counters::{Counters, Ledger};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const RATE: &str = "rate";
const LEDGER: &str = "ledger";
const BAN: &str = "ban";
const BLOCK: &str = "block";
const FORGET: &str = "forget";
const KINDS: &[&str] = &[RATE, LEDGER, BAN, BLOCK, FORGET];

/// Keys remembered before stale ones are swept.
const MAX_KEYS: usize = 100_000;
/// How long a lifted ban or a forget stays readable for the other nodes.
const ANNOUNCED_MS: i64 = 3_600_000;
/// Ledger rows hold one minute of entries each.
const LEDGER_ROW_SECS: i64 = 60;

/// A rate key and its window length (ms).
type RateKey = (String, i64);

/// One node's counts in two consecutive aligned windows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Slots {
    /// The window number of `count`.
    slot: i64,
    count: u64,
    /// The count of window `slot - 1`.
    prev: u64,
}

impl Slots {
    /// The count of window `slot`.
    fn of(&self, slot: i64) -> u64 {
        if self.slot == slot {
            self.count
        } else if self.slot == slot + 1 {
            self.prev
        } else {
            0
        }
    }

    /// Moves forward to window `slot`.
    fn advance(&mut self, slot: i64) {
        if slot == self.slot + 1 {
            self.prev = self.count;
            self.count = 0;
        } else if slot > self.slot + 1 {
            self.prev = 0;
            self.count = 0;
        }
        self.slot = self.slot.max(slot);
    }
}

#[derive(Serialize, Deserialize)]
struct Until {
    until_ms: i64,
}

#[derive(Serialize, Deserialize)]
struct LedgerRow {
    keep: u64,
    entries: Vec<(i64, u64)>,
}

#[derive(Default)]
struct State {
    own: HashMap<RateKey, Slots>,
    others: HashMap<RateKey, HashMap<i16, Slots>>,
    /// Until when (Unix ms) each address is banned.
    bans: HashMap<IpAddr, i64>,
    blocks: HashMap<String, i64>,
    own_ledgers: HashMap<String, Ledger>,
    /// Other nodes' ledger rows: key → (node, minute) → entries.
    other_ledgers: HashMap<String, HashMap<(i16, i64), LedgerRow>>,
    /// Rate windows changed here since the last write.
    dirty_rates: HashSet<RateKey>,
    /// Other rows changed here since the last write.
    outbox: Vec<Row>,
}

pub struct ClusterCounters {
    node: i16,
    clock: Arc<SharedClock>,
    state: Mutex<State>,
}

impl ClusterCounters {
    pub fn new(node: u8, clock: Arc<SharedClock>) -> ClusterCounters {
        ClusterCounters {
            node: i16::from(node),
            clock,
            state: Mutex::new(State::default()),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn window_ms(window: Duration) -> i64 {
        (window.as_millis() as i64).max(1)
    }

    fn estimate(state: &State, key: &RateKey, now: i64) -> u64 {
        let len = key.1;
        let slot = now.div_euclid(len);
        let into = (now - slot * len) as f64 / len as f64;
        let mut current = 0;
        let mut previous = 0;
        let own = state.own.get(key).into_iter();
        let others = state.others.get(key).into_iter().flat_map(|m| m.values());
        for slots in own.chain(others) {
            current += slots.of(slot);
            previous += slots.of(slot - 1);
        }
        current + (previous as f64 * (1.0 - into)).ceil() as u64
    }

    fn announce(
        state: &mut State,
        kind: &'static str,
        key: String,
        value: &impl Serialize,
        expires_ms: i64,
    ) {
        state.outbox.push(Row {
            kind,
            key,
            node: 0,
            value: serde_json::to_string(value).unwrap_or_default(),
            expires_ms,
        });
    }

    /// Drops windows no longer counted when there are too many keys.
    fn sweep(state: &mut State, now: i64) {
        let live = |key: &RateKey, s: &Slots| s.slot + 1 >= now.div_euclid(key.1);
        if state.own.len() >= MAX_KEYS {
            state.own.retain(|k, s| live(k, s));
        }
        if state.others.len() >= MAX_KEYS {
            state.others.retain(|k, m| {
                m.retain(|_, s| live(k, s));
                !m.is_empty()
            });
        }
        if state.bans.len() >= MAX_KEYS {
            state.bans.retain(|_, until| *until > now);
        }
        if state.blocks.len() >= MAX_KEYS {
            state.blocks.retain(|_, until| *until > now);
        }
    }

    fn until(map_until: Option<i64>, now: i64) -> Option<Duration> {
        map_until
            .filter(|until| *until > now)
            .map(|until| Duration::from_millis((until - now) as u64))
    }

    fn forget_here(state: &mut State, key: &str) {
        let windows: Vec<RateKey> = state
            .own
            .keys()
            .chain(state.others.keys())
            .filter(|(k, _)| k == key)
            .cloned()
            .collect();
        for window in windows {
            state.others.remove(&window);
            if let Some(slots) = state.own.get_mut(&window) {
                slots.count = 0;
                slots.prev = 0;
                // The zero is written, so that the others' sums drop too.
                state.dirty_rates.insert(window);
            }
        }
    }
}

impl Counters for ClusterCounters {
    fn count(&self, key: &str, window: Duration) -> u64 {
        let now = self.clock.now_ms();
        let state = self.state();
        Self::estimate(&state, &(key.to_string(), Self::window_ms(window)), now)
    }

    fn add(&self, key: &str, window: Duration) -> u64 {
        let now = self.clock.now_ms();
        let rate = (key.to_string(), Self::window_ms(window));
        let mut state = self.state();
        Self::sweep(&mut state, now);
        let slot = now.div_euclid(rate.1);
        let slots = state.own.entry(rate.clone()).or_insert(Slots {
            slot,
            ..Slots::default()
        });
        slots.advance(slot);
        slots.count += 1;
        state.dirty_rates.insert(rate.clone());
        Self::estimate(&state, &rate, now)
    }

    fn ban(&self, ip: IpAddr, duration: Duration) {
        let now = self.clock.now_ms();
        let until = now + duration.as_millis() as i64;
        let mut state = self.state();
        Self::sweep(&mut state, now);
        state.bans.insert(ip, until);
        Self::announce(
            &mut state,
            BAN,
            ip.to_string(),
            &Until { until_ms: until },
            until + ANNOUNCED_MS,
        );
    }

    fn banned(&self, ip: IpAddr) -> Option<Duration> {
        let now = self.clock.now_ms();
        Self::until(self.state().bans.get(&ip).copied(), now)
    }

    fn bans(&self) -> Vec<(IpAddr, Duration)> {
        let now = self.clock.now_ms();
        let state = self.state();
        let mut list: Vec<(IpAddr, Duration)> = state
            .bans
            .iter()
            .filter_map(|(ip, until)| Self::until(Some(*until), now).map(|left| (*ip, left)))
            .collect();
        list.sort();
        list
    }

    fn lift(&self, ip: IpAddr) -> bool {
        let now = self.clock.now_ms();
        let mut state = self.state();
        let was = state.bans.remove(&ip).is_some_and(|until| until > now);
        Self::announce(
            &mut state,
            BAN,
            ip.to_string(),
            &Until { until_ms: now },
            now + ANNOUNCED_MS,
        );
        was
    }

    fn forget(&self, key: &str) {
        let now = self.clock.now_ms();
        let mut state = self.state();
        Self::forget_here(&mut state, key);
        Self::announce(
            &mut state,
            FORGET,
            key.to_string(),
            &Until { until_ms: now },
            now + ANNOUNCED_MS,
        );
    }

    fn block(&self, key: &str, duration: Duration) {
        let now = self.clock.now_ms();
        let until = now + duration.as_millis() as i64;
        let mut state = self.state();
        Self::sweep(&mut state, now);
        state.blocks.insert(key.to_string(), until);
        Self::announce(
            &mut state,
            BLOCK,
            key.to_string(),
            &Until { until_ms: until },
            until + ANNOUNCED_MS,
        );
    }

    fn blocked(&self, key: &str) -> Option<Duration> {
        let now = self.clock.now_ms();
        Self::until(self.state().blocks.get(key).copied(), now)
    }

    fn record(&self, key: &str, at: i64, amount: u64, keep: Duration) {
        let mut state = self.state();
        let ledger = state.own_ledgers.entry(key.to_string()).or_default();
        ledger.record_entry(at, amount, keep);
        let minute = at.div_euclid(LEDGER_ROW_SECS);
        let row = LedgerRow {
            keep: ledger.keep,
            entries: ledger
                .entries
                .iter()
                .filter(|(t, _)| t.div_euclid(LEDGER_ROW_SECS) == minute)
                .copied()
                .collect(),
        };
        let expires_ms = ((minute + 1) * LEDGER_ROW_SECS + row.keep as i64) * 1000;
        state.outbox.push(Row {
            kind: LEDGER,
            key: format!("{minute}|{key}"),
            node: self.node,
            value: serde_json::to_string(&row).unwrap_or_default(),
            expires_ms,
        });
    }

    fn recorded_since(&self, key: &str, since: i64) -> (u64, Option<i64>) {
        let state = self.state();
        let (mut sum, mut oldest) = state
            .own_ledgers
            .get(key)
            .map_or((0, None), |l| l.entries_since(since));
        for row in state
            .other_ledgers
            .get(key)
            .into_iter()
            .flat_map(|m| m.values())
        {
            for (t, amount) in row.entries.iter().filter(|(t, _)| *t >= since) {
                sum += amount;
                oldest = Some(oldest.map_or(*t, |o: i64| o.min(*t)));
            }
        }
        (sum, oldest)
    }
}

impl SharedSource for ClusterCounters {
    fn kinds(&self) -> &'static [&'static str] {
        KINDS
    }

    fn changes(&self, now_ms: i64) -> Vec<Row> {
        let mut state = self.state();
        let mut rows = std::mem::take(&mut state.outbox);
        for rate in std::mem::take(&mut state.dirty_rates) {
            let Some(mut slots) = state.own.get(&rate).copied() else {
                continue;
            };
            slots.advance(now_ms.div_euclid(rate.1));
            rows.push(Row {
                kind: RATE,
                key: format!("{}|{}", rate.1, rate.0),
                node: self.node,
                value: serde_json::to_string(&slots).unwrap_or_default(),
                expires_ms: (slots.slot + 2) * rate.1,
            });
        }
        rows
    }

    fn apply(&self, row: &Row, mine: bool, now_ms: i64) {
        let mut state = self.state();
        match row.kind {
            RATE => {
                let Some((len, key)) = row.key.split_once('|') else {
                    return;
                };
                let (Ok(len), Ok(slots)) = (
                    len.parse::<i64>(),
                    serde_json::from_str::<Slots>(&row.value),
                ) else {
                    return;
                };
                let rate = (key.to_string(), len.max(1));
                if mine {
                    state.own.insert(rate, slots);
                } else {
                    state
                        .others
                        .entry(rate)
                        .or_default()
                        .insert(row.node, slots);
                }
            }
            LEDGER => {
                let Some((minute, key)) = row.key.split_once('|') else {
                    return;
                };
                let (Ok(minute), Ok(ledger)) = (
                    minute.parse::<i64>(),
                    serde_json::from_str::<LedgerRow>(&row.value),
                ) else {
                    return;
                };
                let keep = Duration::from_secs(ledger.keep);
                if mine {
                    let own = state.own_ledgers.entry(key.to_string()).or_default();
                    for (at, amount) in ledger.entries {
                        own.record_entry(at, amount, keep);
                    }
                } else {
                    let oldest_kept = now_ms / 1000 - ledger.keep as i64;
                    let rows = state.other_ledgers.entry(key.to_string()).or_default();
                    rows.retain(|_, r| r.entries.iter().any(|(t, _)| *t >= oldest_kept));
                    rows.insert((row.node, minute), ledger);
                }
            }
            BAN => {
                let (Ok(ip), Ok(until)) = (
                    row.key.parse::<IpAddr>(),
                    serde_json::from_str::<Until>(&row.value),
                ) else {
                    return;
                };
                set_until(&mut state.bans, ip, until, now_ms);
            }
            BLOCK => {
                let Ok(until) = serde_json::from_str::<Until>(&row.value) else {
                    return;
                };
                set_until(&mut state.blocks, row.key.clone(), until, now_ms);
            }
            FORGET if !mine => Self::forget_here(&mut state, &row.key),
            _ => {}
        }
    }
}

/// A ban or block as another node set it: in force until its end, or
/// lifted (an end already past).
fn set_until<K: std::hash::Hash + Eq>(
    map: &mut HashMap<K, i64>,
    key: K,
    until: Until,
    now_ms: i64,
) {
    if until.until_ms > now_ms {
        map.insert(key, until.until_ms);
    } else {
        map.remove(&key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(n: u8) -> ClusterCounters {
        ClusterCounters::new(n, Arc::new(SharedClock::default()))
    }

    /// Carries `from`'s changes to `to`, as the database would.
    fn carry(from: &ClusterCounters, to: &ClusterCounters) {
        let now = from.clock.now_ms();
        for row in from.changes(now) {
            to.apply(&row, false, now);
        }
    }

    #[test]
    fn counts_on_two_nodes_add_up() {
        let (a, b) = (node(1), node(2));
        let hour = Duration::from_secs(3600);
        for _ in 0..3 {
            a.add("msg-ip:192.0.2.1", hour);
        }
        carry(&a, &b);
        assert_eq!(
            b.add("msg-ip:192.0.2.1", hour),
            4,
            "b sees a's three and its own"
        );
        carry(&b, &a);
        assert_eq!(a.count("msg-ip:192.0.2.1", hour), 4);
        carry(&a, &b);
        assert_eq!(
            b.count("msg-ip:192.0.2.1", hour),
            4,
            "a row read twice is not counted twice"
        );
    }

    #[test]
    fn a_ban_and_its_lift_reach_the_other_node() {
        let (a, b) = (node(1), node(2));
        let ip: IpAddr = "192.0.2.9".parse().unwrap();
        a.ban(ip, Duration::from_secs(600));
        carry(&a, &b);
        assert!(b.banned(ip).is_some());
        assert_eq!(b.bans().len(), 1);
        b.lift(ip);
        carry(&b, &a);
        assert!(a.banned(ip).is_none());
    }

    #[test]
    fn a_forget_clears_every_node_s_count() {
        let (a, b) = (node(1), node(2));
        let w = Duration::from_secs(600);
        a.add("authfail:192.0.2.1", w);
        b.add("authfail:192.0.2.1", w);
        carry(&a, &b);
        carry(&b, &a);
        assert_eq!(a.count("authfail:192.0.2.1", w), 2);
        a.forget("authfail:192.0.2.1");
        assert_eq!(a.count("authfail:192.0.2.1", w), 0);
        carry(&a, &b);
        assert_eq!(b.count("authfail:192.0.2.1", w), 0);
    }

    #[test]
    fn ledgers_add_up_exactly_and_a_restart_takes_its_own_back() {
        let (a, b) = (node(1), node(2));
        let day = Duration::from_secs(86400);
        a.record("quota:p", 1_000, 3, day);
        a.record("quota:p", 1_070, 2, day);
        let rows = a.changes(1_100_000);
        for row in &rows {
            b.apply(row, false, 1_100_000);
        }
        b.record("quota:p", 1_080, 1, day);
        assert_eq!(b.recorded_since("quota:p", 0), (6, Some(1_000)));
        assert_eq!(b.recorded_since("quota:p", 1_050), (3, Some(1_070)));
        let restarted = node(1);
        for row in &rows {
            restarted.apply(row, true, 1_100_000);
        }
        assert_eq!(restarted.recorded_since("quota:p", 0), (5, Some(1_000)));
    }

    #[test]
    fn windows_slide_over_node_boundaries() {
        let mut s = Slots {
            slot: 10,
            count: 4,
            prev: 2,
        };
        assert_eq!((s.of(10), s.of(9), s.of(8)), (4, 2, 0));
        s.advance(11);
        assert_eq!((s.of(11), s.of(10)), (0, 4));
        s.advance(20);
        assert_eq!((s.of(20), s.of(19)), (0, 0));
    }
}
