//! Connection caps: in total, per client address, and per client address per
//! minute. Slots are held by a guard and given back when it drops, however
//! the session ends. So that a flood of slow strangers cannot lock the office
//! out, the last `reserved` slots are kept for privileged clients (trusted
//! networks; a stranger on an AUTH-only listener is no exception), strangers' connection rate is
//! capped, and past three quarters of the slots the server is "under
//! stress": sessions then get short waits (see `stressed`).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// The window the connection rate is counted over.
const RATE_WINDOW: Duration = Duration::from_secs(60);
/// Addresses remembered for the rate before stale ones are swept.
const RATE_MEMORY: usize = 10_000;

#[derive(Debug, Clone, Copy)]
pub struct LimitSettings {
    pub max_total: usize,
    pub max_per_ip: usize,
    /// Slots only privileged clients may take.
    pub reserved: usize,
    /// New connections per address per minute (strangers only; 0 = no cap).
    pub rate_per_ip: u32,
}

#[derive(Debug)]
pub struct ConnectionLimits {
    settings: LimitSettings,
    inner: Mutex<Counts>,
    stress: watch::Sender<bool>,
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
    /// Start of the current window and connections in it, per stranger address.
    rate: HashMap<IpAddr, (Instant, u32)>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// All slots are taken (or all but the reserved ones, for a stranger).
    Total,
    PerIp,
    /// Too many new connections from this address in the last minute.
    Rate,
}

pub struct Slot {
    limits: Arc<ConnectionLimits>,
    ip: IpAddr,
}

impl ConnectionLimits {
    pub fn new(settings: LimitSettings) -> Arc<Self> {
        Arc::new(Self {
            settings,
            inner: Mutex::new(Counts::default()),
            stress: watch::Sender::new(false),
        })
    }

    /// A slot for a client at `ip`. `privileged`: a trusted network's
    /// client, which may use the reserved slots and is not rate-capped.
    pub fn acquire(self: &Arc<Self>, ip: IpAddr, privileged: bool) -> Result<Slot, Refusal> {
        let s = &self.settings;
        let mut c = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let cap = if privileged {
            s.max_total
        } else {
            s.max_total.saturating_sub(s.reserved)
        };
        if c.total >= cap {
            return Err(Refusal::Total);
        }
        if c.per_ip.get(&ip).copied().unwrap_or(0) >= s.max_per_ip {
            return Err(Refusal::PerIp);
        }
        if !privileged && s.rate_per_ip > 0 && !c.count_connection(ip, s.rate_per_ip) {
            return Err(Refusal::Rate);
        }
        *c.per_ip.entry(ip).or_insert(0) += 1;
        c.total += 1;
        self.update_stress(c.total);
        Ok(Slot {
            limits: Arc::clone(self),
            ip,
        })
    }

    pub fn active(&self) -> usize {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).total
    }

    /// Whether three quarters of the slots or more are taken.
    pub fn stressed(&self) -> bool {
        *self.stress.borrow()
    }

    /// Changes to `stressed`, for sessions that wait and should wait less.
    pub fn watch_stress(&self) -> watch::Receiver<bool> {
        self.stress.subscribe()
    }

    fn update_stress(&self, total: usize) {
        let stressed = total * 4 >= self.settings.max_total * 3;
        self.stress
            .send_if_modified(|s| std::mem::replace(s, stressed) != stressed);
    }
}

impl Counts {
    /// Counts one more connection from `ip`; false when that is over `limit` this minute.
    fn count_connection(&mut self, ip: IpAddr, limit: u32) -> bool {
        let now = Instant::now();
        if self.rate.len() >= RATE_MEMORY {
            self.rate
                .retain(|_, (start, _)| now.duration_since(*start) < RATE_WINDOW);
        }
        let (start, n) = self.rate.entry(ip).or_insert((now, 0));
        if now.duration_since(*start) >= RATE_WINDOW {
            *start = now;
            *n = 0;
        }
        *n = n.saturating_add(1);
        *n <= limit
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut c = self.limits.inner.lock().unwrap_or_else(|p| p.into_inner());
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                c.per_ip.remove(&self.ip);
            }
        }
        let total = c.total;
        drop(c);
        self.limits.update_stress(total);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(
        max_total: usize,
        max_per_ip: usize,
        reserved: usize,
        rate: u32,
    ) -> Arc<ConnectionLimits> {
        ConnectionLimits::new(LimitSettings {
            max_total,
            max_per_ip,
            reserved,
            rate_per_ip: rate,
        })
    }

    #[test]
    fn caps_and_release() {
        let l = limits(3, 2, 0, 0);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let s1 = l.acquire(a, false).unwrap();
        let _s2 = l.acquire(a, false).unwrap();
        assert_eq!(l.acquire(a, false).err(), Some(Refusal::PerIp));
        let _s3 = l.acquire(b, false).unwrap();
        assert_eq!(l.acquire(b, false).err(), Some(Refusal::Total));
        drop(s1);
        assert!(l.acquire(a, false).is_ok());
    }

    #[test]
    fn reserved_slots_are_for_privileged_clients() {
        let l = limits(4, 10, 2, 0);
        let stranger: IpAddr = "203.0.113.1".parse().unwrap();
        let office: IpAddr = "192.168.1.5".parse().unwrap();
        let _a = l.acquire(stranger, false).unwrap();
        let _b = l.acquire(stranger, false).unwrap();
        assert_eq!(l.acquire(stranger, false).err(), Some(Refusal::Total));
        let _c = l.acquire(office, true).unwrap();
        let _d = l.acquire(office, true).unwrap();
        assert_eq!(l.acquire(office, true).err(), Some(Refusal::Total));
    }

    #[test]
    fn strangers_connection_rate_is_capped() {
        let l = limits(100, 100, 0, 3);
        let ip: IpAddr = "203.0.113.1".parse().unwrap();
        for _ in 0..3 {
            drop(l.acquire(ip, false).unwrap());
        }
        assert_eq!(l.acquire(ip, false).err(), Some(Refusal::Rate));
        assert!(
            l.acquire(ip, true).is_ok(),
            "privileged clients are not rate-capped"
        );
        assert!(l.acquire("203.0.113.2".parse().unwrap(), false).is_ok());
    }

    #[test]
    fn stress_begins_at_three_quarters_and_ends_below() {
        let l = limits(4, 10, 0, 0);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let mut rx = l.watch_stress();
        let slots: Vec<Slot> = (0..3).map(|_| l.acquire(ip, false).unwrap()).collect();
        assert!(l.stressed());
        assert!(rx.has_changed().unwrap());
        rx.mark_unchanged();
        drop(slots);
        assert!(!l.stressed());
        assert!(rx.has_changed().unwrap());
    }
}
