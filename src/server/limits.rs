//! Connection caps, in total and per client IP. A slot is held by a guard
//! and given back when the guard drops, however the session ends.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

#[derive(Debug)]
pub struct ConnectionLimits {
    max_total: usize,
    max_per_ip: usize,
    inner: Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    Total,
    PerIp,
}

pub struct Slot {
    limits: Arc<ConnectionLimits>,
    ip: IpAddr,
}

impl ConnectionLimits {
    pub fn new(max_total: usize, max_per_ip: usize) -> Arc<Self> {
        Arc::new(Self {
            max_total,
            max_per_ip,
            inner: Mutex::new(Counts::default()),
        })
    }

    pub fn acquire(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, Refusal> {
        let mut c = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if c.total >= self.max_total {
            return Err(Refusal::Total);
        }
        let n = c.per_ip.entry(ip).or_insert(0);
        if *n >= self.max_per_ip {
            return Err(Refusal::PerIp);
        }
        *n += 1;
        c.total += 1;
        Ok(Slot {
            limits: Arc::clone(self),
            ip,
        })
    }

    pub fn active(&self) -> usize {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).total
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_and_release() {
        let l = ConnectionLimits::new(3, 2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let s1 = l.acquire(a).unwrap();
        let _s2 = l.acquire(a).unwrap();
        assert_eq!(l.acquire(a).err(), Some(Refusal::PerIp));
        let _s3 = l.acquire(b).unwrap();
        assert_eq!(l.acquire(b).err(), Some(Refusal::Total));
        drop(s1);
        assert!(l.acquire(a).is_ok());
    }
}
