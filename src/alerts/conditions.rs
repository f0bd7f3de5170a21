//! Whether an alert rule's condition holds, from what events told
//! (`Facts`) and what was just observed: a pure function, so every rule
//! can be tested without a server.

use super::facts::Facts;
use crate::config::{AlertConfig, AlertOn};
use crate::queue::QueueStats;
use std::net::IpAddr;

/// States observed at one evaluation.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    pub now: i64,
    pub queue: Option<QueueStats>,
    /// Since when mail has been waiting without a break (held mail aside).
    pub waiting_since: Option<i64>,
    /// Bytes free for us on the data directory's file system.
    pub disk_free: Option<u64>,
    /// Addresses whose trust the guard withdrew, with its evidence.
    pub untrusted: Vec<(IpAddr, String)>,
    /// Our public address, and the DNS lists it was last found on.
    pub public_ip: Option<IpAddr>,
    pub listed_on: Vec<String>,
}

/// A condition that holds: since when (None: since it was first seen so),
/// and what is wrong in plain words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holding {
    pub since: Option<i64>,
    pub detail: String,
}

fn holds(detail: String) -> Option<Holding> {
    Some(Holding {
        since: None,
        detail,
    })
}

pub fn evaluate(rule: &AlertConfig, facts: &Facts, seen: &Observed) -> Option<Holding> {
    let now = seen.now;
    let threshold = rule.threshold_or_default();
    match rule.on {
        AlertOn::DeliveryStalled => {
            let q = seen.queue.as_ref()?;
            let waiting = q.messages.saturating_sub(q.held);
            if waiting == 0 {
                return None;
            }
            let since = facts.last_delivered.max(seen.waiting_since.unwrap_or(now));
            Some(Holding {
                since: Some(since),
                detail: format!(
                    "{waiting} message(s) waiting and nothing delivered for {}; the oldest came {} ago. Look at `portcullis queue list` and the next hop",
                    words(now - since),
                    words(now - q.oldest_received_at.unwrap_or(now)),
                ),
            })
        }
        AlertOn::QueueSize => {
            let q = seen.queue.as_ref()?;
            (q.messages as u64 > threshold).then(|| Holding {
                since: None,
                detail: format!(
                    "{} message(s) in the queue (threshold {threshold}), {} held",
                    q.messages, q.held
                ),
            })
        }
        AlertOn::Bounce => {
            let window = rule.hold_time().as_secs() as i64;
            let count = facts.bounces.iter().filter(|&&t| t > now - window).count() as u64;
            (count >= threshold).then(|| Holding {
                since: None,
                detail: format!(
                    "{count} recipient(s) bounced in the last {} (threshold {threshold})",
                    words(window)
                ),
            })
        }
        AlertOn::ProfileAuthFailed | AlertOn::ProfileQuotaExhausted => {
            let problem = if rule.on == AlertOn::ProfileAuthFailed {
                "auth"
            } else {
                "quota"
            };
            let troubled: Vec<String> = facts
                .profiles
                .iter()
                .filter(|(_, t)| t.problem == problem && (problem == "auth" || t.until > now))
                .map(|(name, t)| format!("profile {name}: {}", t.advice))
                .collect();
            (!troubled.is_empty()).then(|| Holding {
                since: None,
                detail: troubled.join("; "),
            })
        }
        AlertOn::FloodHeld => {
            let q = seen.queue.as_ref()?;
            if q.held == 0 || facts.floods.is_empty() {
                return None;
            }
            let mut sources: Vec<&str> = facts.floods.iter().map(|(_, s)| s.as_str()).collect();
            sources.sort_unstable();
            sources.dedup();
            holds(format!(
                "{} message(s) held by the guard (flood from {}); `portcullis queue release --source SOURCE` sends them, `queue delete --source SOURCE` drops them",
                q.held,
                sources.join(", ")
            ))
        }
        AlertOn::NatSuspected => {
            if seen.untrusted.is_empty() {
                return None;
            }
            let list: Vec<String> = seen
                .untrusted
                .iter()
                .map(|(ip, why)| format!("{ip} ({why})"))
                .collect();
            holds(format!(
                "trusted address(es) carrying many clients' traffic lost their trust: {}; `portcullis guard trust IP` if that is wrong",
                list.join("; ")
            ))
        }
        AlertOn::OpenRelay => {
            let open: Vec<String> = facts
                .self_tests
                .iter()
                .filter(|(_, relayed)| !relayed.is_empty())
                .map(|(l, relayed)| format!("{l} relayed {}", relayed.join(", ")))
                .collect();
            (!open.is_empty()).then(|| Holding {
                since: None,
                detail: format!(
                    "the open-relay self-test got mail relayed for a stranger: {}",
                    open.join("; ")
                ),
            })
        }
        AlertOn::DnsblListed => {
            let ip = seen.public_ip?;
            (!seen.listed_on.is_empty()).then(|| Holding {
                since: None,
                detail: format!(
                    "our public address {ip} is listed on {}; receivers may refuse our mail",
                    seen.listed_on.join(", ")
                ),
            })
        }
        AlertOn::DiskLow => {
            let free = seen.disk_free?;
            (free < threshold).then(|| Holding {
                since: None,
                detail: format!(
                    "{} free on the data directory's file system (threshold {})",
                    bytes(free),
                    bytes(threshold)
                ),
            })
        }
    }
}

/// Seconds in words ("45s", "12m", "3h 20m").
pub fn words(secs: i64) -> String {
    let s = secs.max(0);
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        _ if s % 3600 / 60 == 0 => format!("{}h", s / 3600),
        _ => format!("{}h {}m", s / 3600, s % 3600 / 60),
    }
}

fn bytes(n: u64) -> String {
    match n {
        0..1_000_000 => format!("{n} bytes"),
        1_000_000..1_000_000_000 => format!("{:.1} MB", n as f64 / 1e6),
        _ => format!("{:.1} GB", n as f64 / 1e9),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerts::facts::ProfileTrouble;

    fn rule(text: &str) -> AlertConfig {
        toml::from_str(&format!("{text}\nwebhook = \"x\"\n")).unwrap()
    }

    fn queue(messages: usize, held: usize) -> Option<QueueStats> {
        Some(QueueStats {
            messages,
            held,
            recipients_queued: messages,
            oldest_received_at: Some(0),
            ..Default::default()
        })
    }

    #[test]
    fn a_stall_counts_from_the_later_of_last_delivery_and_first_wait() {
        let r = rule("on = \"delivery_stalled\"");
        let facts = Facts {
            last_delivered: 100,
            ..Facts::default()
        };
        let mut seen = Observed {
            now: 1000,
            queue: queue(3, 0),
            waiting_since: Some(500),
            ..Observed::default()
        };
        assert_eq!(evaluate(&r, &facts, &seen).unwrap().since, Some(500));
        seen.waiting_since = Some(50);
        assert_eq!(evaluate(&r, &facts, &seen).unwrap().since, Some(100));
        // Held mail is not waiting for delivery.
        seen.queue = queue(3, 3);
        assert!(evaluate(&r, &facts, &seen).is_none());
    }

    #[test]
    fn bounces_count_within_the_window() {
        let r = rule("on = \"bounce\"\nfor = \"10m\"\nthreshold = 2");
        let mut facts = Facts::default();
        facts.bounces.extend([10, 900, 950]);
        let seen = Observed {
            now: 1000,
            ..Observed::default()
        };
        assert!(
            evaluate(&r, &facts, &seen)
                .unwrap()
                .detail
                .starts_with("2 recipient(s)")
        );
        let seen = Observed {
            now: 1500,
            ..Observed::default()
        };
        assert!(evaluate(&r, &facts, &seen).is_none());
    }

    #[test]
    fn a_queue_over_its_threshold_and_low_disk() {
        let seen = Observed {
            now: 1,
            queue: queue(11, 0),
            disk_free: Some(500),
            ..Observed::default()
        };
        let facts = Facts::default();
        assert!(evaluate(&rule("on = \"queue_size\"\nthreshold = 10"), &facts, &seen).is_some());
        assert!(evaluate(&rule("on = \"queue_size\"\nthreshold = 11"), &facts, &seen).is_none());
        assert!(evaluate(&rule("on = \"disk_low\"\nthreshold = 1000"), &facts, &seen).is_some());
        assert!(evaluate(&rule("on = \"disk_low\"\nthreshold = 100"), &facts, &seen).is_none());
    }

    #[test]
    fn profile_troubles_by_kind() {
        let mut facts = Facts::default();
        facts.profiles.insert(
            "m365".into(),
            ProfileTrouble {
                problem: "quota".into(),
                advice: "quota spent".into(),
                until: 2000,
            },
        );
        let seen = Observed {
            now: 1000,
            ..Observed::default()
        };
        assert!(evaluate(&rule("on = \"profile_auth_failed\""), &facts, &seen).is_none());
        let q = rule("on = \"profile_quota_exhausted\"");
        assert!(evaluate(&q, &facts, &seen).unwrap().detail.contains("m365"));
        let later = Observed {
            now: 2001,
            ..Observed::default()
        };
        assert!(evaluate(&q, &facts, &later).is_none());
    }

    #[test]
    fn open_relay_and_floods() {
        let mut facts = Facts::default();
        let l: std::net::SocketAddr = "127.0.0.1:25".parse().unwrap();
        facts.self_tests.insert(l, vec![]);
        let seen = Observed {
            now: 1,
            queue: queue(4, 2),
            ..Observed::default()
        };
        assert!(evaluate(&rule("on = \"open_relay\""), &facts, &seen).is_none());
        facts.self_tests.insert(l, vec!["percent hack".into()]);
        assert!(evaluate(&rule("on = \"open_relay\""), &facts, &seen).is_some());
        assert!(evaluate(&rule("on = \"flood_held\""), &facts, &seen).is_none());
        facts.floods.push_back((1, "10.0.0.9".into()));
        let d = evaluate(&rule("on = \"flood_held\""), &facts, &seen).unwrap();
        assert!(d.detail.contains("10.0.0.9") && d.detail.starts_with("2 message(s)"));
    }
}
