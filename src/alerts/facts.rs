//! What the alert rules learn from events as they happen: the last
//! delivery, recent bounces, profiles in trouble, floods held, self-test
//! results. States that are not events (the queue's size, the guard's list,
//! free disk) are observed at each evaluation instead.

use crate::events::{DeliveryState, Event, Subscriber};
use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Mutex;

/// Bounces remembered for the `bounce` rule's window.
const MAX_BOUNCES: usize = 100_000;
/// Flood sources remembered for the `flood_held` rule's words.
const MAX_FLOODS: usize = 100;

/// A profile's provider problem, as told by `ProfileProblem`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProfileTrouble {
    /// "auth" or "quota".
    pub problem: String,
    pub advice: String,
    pub until: i64,
}

#[derive(Debug, Clone, Default)]
pub struct Facts {
    /// When a recipient was last delivered (or when watching began).
    pub last_delivered: i64,
    /// When each recent bounce happened, oldest first.
    pub bounces: VecDeque<i64>,
    pub profiles: BTreeMap<String, ProfileTrouble>,
    /// Floods held since start: when, and whose.
    pub floods: VecDeque<(i64, String)>,
    /// The last self-test of each listener: the tests that relayed.
    pub self_tests: BTreeMap<SocketAddr, Vec<String>>,
}

pub struct FactsCollector(Mutex<Facts>);

impl FactsCollector {
    pub fn new(now: i64) -> FactsCollector {
        FactsCollector(Mutex::new(Facts {
            last_delivered: now,
            ..Facts::default()
        }))
    }

    pub fn snapshot(&self) -> Facts {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Forgets bounces older than `before` (the longest window in force).
    pub fn prune_bounces(&self, before: i64) {
        let mut f = self.0.lock().unwrap_or_else(|p| p.into_inner());
        while f.bounces.front().is_some_and(|&t| t < before) {
            f.bounces.pop_front();
        }
    }
}

impl Subscriber for FactsCollector {
    fn on_event(&self, event: &Event) {
        let now = crate::clock::unix_now();
        let mut f = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match event {
            Event::Delivery { state, .. } => match state {
                DeliveryState::Delivered => f.last_delivered = now,
                DeliveryState::Failed | DeliveryState::Expired => {
                    if f.bounces.len() >= MAX_BOUNCES {
                        f.bounces.pop_front();
                    }
                    f.bounces.push_back(now);
                }
                DeliveryState::Deferred => {}
            },
            Event::ProfileProblem {
                profile,
                problem,
                advice,
                until,
                ..
            } => {
                f.profiles.insert(
                    profile.clone(),
                    ProfileTrouble {
                        problem: problem.clone(),
                        advice: advice.clone(),
                        until: *until,
                    },
                );
            }
            Event::ProfileRecovered { profile } => {
                f.profiles.remove(profile);
            }
            Event::MessageHeld { source, .. }
                if f.floods.back().is_none_or(|(_, s)| s != source) =>
            {
                if f.floods.len() >= MAX_FLOODS {
                    f.floods.pop_front();
                }
                f.floods.push_back((now, source.clone()));
            }
            Event::SelfTestFinished {
                listener, relayed, ..
            } => {
                f.self_tests.insert(*listener, relayed.clone());
            }
            _ => {}
        }
    }
}
