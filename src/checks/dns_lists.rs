//! DNS black and white lists (RFC 5782): the client's address, reversed
//! (nibbles for IPv6), looked up under each zone, all zones at once under one
//! deadline; only the return codes a zone is configured with count. Zones are
//! tested for health (127.0.0.2 must be listed, 127.0.0.1 must not): a zone
//! that does not answer or lists everything is set aside instead of refusing
//! all mail or none. Answers are cached by the resolver for their TTL.

use crate::config::DnsListZone;
use crate::dns::{Resolver, reverse_name};
use crate::policy::ListFindings;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// The name to look `ip` up as under `zone`.
pub fn query_name(ip: IpAddr, zone: &str) -> String {
    let reversed = reverse_name(ip);
    let stem = reversed
        .strip_suffix("in-addr.arpa.")
        .or_else(|| reversed.strip_suffix("ip6.arpa."))
        .unwrap_or(&reversed);
    format!("{stem}{zone}")
}

/// What one zone says of one address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ZoneAnswer {
    Listed {
        code: Ipv4Addr,
        reason: Option<String>,
    },
    NotListed,
    /// No answer in time, or a DNS failure.
    Failed(String),
}

/// A configured zone and whether its last health check passed.
pub struct Zone {
    pub config: DnsListZone,
    healthy: AtomicBool,
}

impl Zone {
    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }
}

#[derive(Clone)]
pub struct DnsLists {
    resolver: Resolver,
    pub black: Arc<Vec<Zone>>,
    pub white: Arc<Vec<Zone>>,
}

/// A zone-health problem found, for the log and events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZoneHealth {
    pub zone: String,
    pub healthy: bool,
    pub problem: Option<String>,
}

impl DnsLists {
    pub fn new(resolver: Resolver, black: &[DnsListZone], white: &[DnsListZone]) -> DnsLists {
        let zones = |list: &[DnsListZone]| {
            Arc::new(
                list.iter()
                    .map(|z| Zone {
                        config: z.clone(),
                        healthy: AtomicBool::new(true),
                    })
                    .collect::<Vec<_>>(),
            )
        };
        DnsLists {
            resolver,
            black: zones(black),
            white: zones(white),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.black.is_empty() && self.white.is_empty()
    }

    /// Asks every healthy zone about `ip` at once; zones that do not answer
    /// by `deadline` count as failed.
    pub async fn check(&self, ip: IpAddr, deadline: Duration) -> ListFindings {
        let ask = |zones: Arc<Vec<Zone>>| {
            let resolver = self.resolver.clone();
            async move {
                let healthy: Vec<&Zone> = zones.iter().filter(|z| z.healthy()).collect();
                let answers = futures_join(
                    healthy.iter().map(|z| ask_zone(&resolver, &z.config, ip)),
                    deadline,
                )
                .await;
                healthy
                    .iter()
                    .zip(answers)
                    .map(|(z, a)| (z.config.zone.clone(), a))
                    .collect::<Vec<_>>()
            }
        };
        let (white, black) =
            tokio::join!(ask(Arc::clone(&self.white)), ask(Arc::clone(&self.black)));
        let mut out = ListFindings::default();
        for (zone, answer) in white {
            match answer {
                ZoneAnswer::Listed { .. } if out.whitelisted.is_none() => {
                    out.whitelisted = Some(zone)
                }
                ZoneAnswer::Failed(_) => out.failed.push(zone),
                _ => {}
            }
        }
        for (zone, answer) in black {
            match answer {
                ZoneAnswer::Listed { reason, .. } => out.listed.push((zone, reason)),
                ZoneAnswer::Failed(_) => out.failed.push(zone),
                ZoneAnswer::NotListed => {}
            }
        }
        out
    }

    /// Tests every zone with its test entries and sets aside the broken ones.
    /// Returns what changed.
    pub async fn health_check(&self, deadline: Duration) -> Vec<ZoneHealth> {
        let mut changes = Vec::new();
        for zone in self.black.iter().chain(self.white.iter()) {
            let probe = |last: u8| {
                ask_zone(
                    &self.resolver,
                    &zone.config,
                    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last)),
                )
            };
            let (listed, clean) = tokio::join!(
                tokio::time::timeout(deadline, probe(2)),
                tokio::time::timeout(deadline, probe(1))
            );
            let problem = match (listed, clean) {
                (Err(_), _) | (_, Err(_)) => Some("does not answer".to_string()),
                (Ok(ZoneAnswer::Failed(e)), _) | (_, Ok(ZoneAnswer::Failed(e))) => {
                    Some(format!("does not answer ({e})"))
                }
                (_, Ok(ZoneAnswer::Listed { .. })) => {
                    Some("lists 127.0.0.1, so it would list everything".to_string())
                }
                (Ok(ZoneAnswer::NotListed), _) => {
                    Some("does not list its test entry 127.0.0.2".to_string())
                }
                _ => None,
            };
            let healthy = problem.is_none();
            if zone.healthy.swap(healthy, Ordering::Relaxed) != healthy || !healthy {
                changes.push(ZoneHealth {
                    zone: zone.config.zone.clone(),
                    healthy,
                    problem,
                });
            }
        }
        changes
    }
}

/// Runs the lookups together; those not done by `deadline` are Failed.
async fn futures_join<F>(lookups: impl Iterator<Item = F>, deadline: Duration) -> Vec<ZoneAnswer>
where
    F: std::future::Future<Output = ZoneAnswer>,
{
    let timed: Vec<_> = lookups
        .map(|f| async move {
            tokio::time::timeout(deadline, f)
                .await
                .unwrap_or_else(|_| ZoneAnswer::Failed("no answer in time".into()))
        })
        .collect();
    join_all(timed).await
}

/// Polls every future to completion concurrently, in order.
async fn join_all<F: std::future::Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut futures: Vec<_> = futures.into_iter().map(Box::pin).collect();
    let mut results: Vec<Option<F::Output>> = (0..futures.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut done = true;
        for (i, f) in futures.iter_mut().enumerate() {
            if results[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => results[i] = Some(v),
                    std::task::Poll::Pending => done = false,
                }
            }
        }
        if done {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    results
        .into_iter()
        .map(|r| r.expect("every future completed"))
        .collect()
}

/// One zone's answer for one address.
async fn ask_zone(resolver: &Resolver, zone: &DnsListZone, ip: IpAddr) -> ZoneAnswer {
    let name = query_name(ip, &zone.zone);
    let addrs = match resolver.addresses(&name).await {
        Ok(a) => a,
        Err(e) => return ZoneAnswer::Failed(e.to_string()),
    };
    let code = addrs.into_iter().find_map(|a| match a {
        IpAddr::V4(v4)
            if v4.octets()[0] == 127 && (zone.codes.is_empty() || zone.codes.contains(&v4)) =>
        {
            Some(v4)
        }
        _ => None,
    });
    match code {
        None => ZoneAnswer::NotListed,
        Some(code) => {
            let reason = resolver
                .txt(&name)
                .await
                .ok()
                .and_then(|t| t.into_iter().next())
                .map(|t| t.chars().filter(|c| !c.is_control()).take(200).collect());
            ZoneAnswer::Listed { code, reason }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_names_follow_rfc_5782() {
        assert_eq!(
            query_name("192.0.2.99".parse().unwrap(), "bl.example"),
            "99.2.0.192.bl.example"
        );
        assert_eq!(
            query_name("2001:db8::1".parse().unwrap(), "bl.example"),
            "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.bl.example"
        );
    }
}
