//! Alert rules (`[[alert]]`): once a second each rule's condition is
//! evaluated on what events told and what is observed now; a condition that
//! has held for the rule's `for` fires an `Alert` event (which the notifier
//! sends to the rule's webhook) and, with `email`, a queued notice; it is
//! told again every `repeat` while it lasts, and a "resolved" notice goes
//! out when it clears. Rule states are kept in `data_dir/alerts.json`
//! (`state.rs`): after a restart, an alert still holding is not told again
//! before its `repeat`, one that cleared meanwhile is told resolved, and
//! the dashboard shows what was firing.

mod conditions;
mod facts;
mod mail;
mod state;

pub use conditions::{Holding, Observed, evaluate};
pub use facts::{Facts, FactsCollector};

use crate::app::Context;
use crate::config::{AlertConfig, AlertOn};
use crate::events::{AlertState, Event};
use crate::queue::{QueueAnswer, QueueCommand};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::warn;

const TICK: Duration = Duration::from_secs(1);
/// How long after a restart an alert that was firing waits before it can
/// be resolved (see `AlertWatch::restored`).
const RESTORE_GRACE: i64 = 15;
/// How often our public address is looked up in the DNS lists.
const LISTING_CHECK: i64 = 3600;

/// One rule's progress.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RuleState {
    /// When the condition was first seen holding (this time round).
    first_seen: Option<i64>,
    firing: bool,
    last_notice: i64,
    /// While firing: the last firing notice's detail and start, for the
    /// dashboard after a restart.
    #[serde(default)]
    told: Option<(String, i64)>,
}

/// What a rule has to say at this evaluation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    pub state: AlertState,
    pub detail: String,
    pub since: i64,
    /// A reminder of an alert already told.
    pub repeated: bool,
}

/// Advances one rule: fire after the condition held `delay` seconds, remind
/// every `repeat`, resolve when it clears.
pub fn step(
    st: &mut RuleState,
    holding: Option<&Holding>,
    delay: i64,
    repeat: Option<i64>,
    now: i64,
) -> Option<Notice> {
    let Some(h) = holding else {
        st.first_seen = None;
        if st.firing {
            st.firing = false;
            st.last_notice = now;
            return Some(Notice {
                state: AlertState::Resolved,
                detail: "the condition has cleared".into(),
                since: now,
                repeated: false,
            });
        }
        return None;
    };
    let since = h.since.unwrap_or(*st.first_seen.get_or_insert(now));
    st.first_seen.get_or_insert(now);
    let fire = |repeated| Notice {
        state: AlertState::Firing,
        detail: h.detail.clone(),
        since,
        repeated,
    };
    if !st.firing {
        if now - since >= delay {
            st.firing = true;
            st.last_notice = now;
            return Some(fire(false));
        }
        return None;
    }
    match repeat {
        Some(every) if now - st.last_notice >= every => {
            st.last_notice = now;
            Some(fire(true))
        }
        _ => None,
    }
}

/// How long a rule's condition must hold before it fires (a bounce counts at once).
fn delay_of(rule: &AlertConfig) -> i64 {
    match rule.on {
        AlertOn::Bounce => 0,
        _ => rule.hold_time().as_secs() as i64,
    }
}

/// The rules' memory between evaluations, and the slow observations.
pub struct AlertWatch {
    facts: Arc<FactsCollector>,
    states: HashMap<String, RuleState>,
    /// Where the states are kept across restarts (None: in memory only).
    kept: Option<state::Kept>,
    /// Alerts that were firing before a restart, to show on the dashboard
    /// at the first evaluation (when the rules are at hand).
    restore: Option<Arc<crate::events::History>>,
    /// The rules that were firing before a restart, and when the watch
    /// started: they are not resolved within `RESTORE_GRACE` of it.
    restored: std::collections::HashSet<String>,
    started: i64,
    waiting_since: Option<i64>,
    /// The DNS lists our address was found on, and when that was checked.
    listing: Option<(i64, Vec<String>)>,
}

impl AlertWatch {
    /// In memory only (tests, tools).
    pub fn new(facts: Arc<FactsCollector>) -> AlertWatch {
        AlertWatch {
            facts,
            states: HashMap::new(),
            kept: None,
            restore: None,
            restored: Default::default(),
            started: crate::clock::unix_now(),
            waiting_since: None,
            listing: None,
        }
    }

    /// With the states kept in `data_dir`, read back now; what was firing
    /// goes back on `history`'s list of firing alerts.
    pub fn kept_in(
        facts: Arc<FactsCollector>,
        data_dir: &std::path::Path,
        history: Arc<crate::events::History>,
    ) -> AlertWatch {
        let mut kept = state::Kept::new(data_dir);
        let states = kept.load();
        AlertWatch {
            restored: states
                .iter()
                .filter(|(_, st)| st.firing)
                .map(|(key, _)| key.clone())
                .collect(),
            states,
            kept: Some(kept),
            restore: Some(history),
            ..AlertWatch::new(facts)
        }
    }

    /// Evaluates the rules of the context current at each tick until `stop`.
    pub async fn run(
        mut self,
        current: impl Fn() -> Arc<Context> + Send + 'static,
        stop: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            let ctx = current();
            if ctx.config.alert.is_empty() {
                self.states.clear();
                continue;
            }
            self.evaluate_all(&ctx).await;
        }
    }

    async fn evaluate_all(&mut self, ctx: &Context) {
        let rules = &ctx.config.alert;
        let now = crate::clock::unix_now();
        let seen = self.observe(ctx, now).await;
        let longest_window = rules
            .iter()
            .filter(|r| r.on == AlertOn::Bounce)
            .map(|r| r.hold_time().as_secs() as i64)
            .max()
            .unwrap_or(0);
        self.facts.prune_bounces(now - longest_window);
        let facts = self.facts.snapshot();
        let restore = self.restore.take();
        if now - self.started >= RESTORE_GRACE {
            self.restored.clear();
        }
        let mut kept = HashMap::new();
        for (i, rule) in rules.iter().enumerate() {
            // A rule changed by a reload (or in the file) starts afresh.
            let key = format!("{i}:{}", serde_json::to_string(rule).unwrap_or_default());
            let mut st = self.states.remove(&key).unwrap_or_default();
            if let (Some(history), Some((detail, since))) = (&restore, &st.told) {
                history.restore_firing(alert_event(i, rule, AlertState::Firing, detail, *since));
            }
            let holding = evaluate(rule, &facts, &seen);
            if holding.is_none() && self.restored.contains(&key) {
                // Just after a restart, what the condition reads (the
                // queue being loaded, events) may not be back yet: an
                // alert that was firing is not resolved on that.
                kept.insert(key, st);
                continue;
            }
            let repeat = rule.repeat_every().map(|d| d.as_secs() as i64);
            if let Some(notice) = step(&mut st, holding.as_ref(), delay_of(rule), repeat, now) {
                st.told = match notice.state {
                    AlertState::Firing => Some((notice.detail.clone(), notice.since)),
                    AlertState::Resolved => None,
                };
                tell(ctx, i, rule, &notice).await;
            }
            kept.insert(key, st);
        }
        self.states = kept;
        if let Some(file) = &mut self.kept {
            file.save_if_changed(&self.states);
        }
    }

    async fn observe(&mut self, ctx: &Context, now: i64) -> Observed {
        let needs = |on: &[AlertOn]| ctx.config.alert.iter().any(|r| on.contains(&r.on));
        let mut seen = Observed {
            now,
            public_ip: ctx.config.diagnostics.public_ip,
            ..Observed::default()
        };
        if needs(&[
            AlertOn::DeliveryStalled,
            AlertOn::QueueSize,
            AlertOn::FloodHeld,
        ]) && let Some(q) = &ctx.queue
            && let QueueAnswer::Stats { stats } = q.command(QueueCommand::Stats).await
        {
            let waiting = stats.messages > stats.held;
            self.waiting_since = match (waiting, self.waiting_since) {
                (true, Some(t)) => Some(t),
                (true, None) => Some(now),
                (false, _) => None,
            };
            seen.queue = Some(stats);
        }
        seen.waiting_since = self.waiting_since;
        if needs(&[AlertOn::DiskLow]) {
            seen.disk_free = rustix::fs::statvfs(&ctx.config.server.data_dir)
                .ok()
                .map(|s| s.f_bavail.saturating_mul(s.f_frsize));
        }
        if needs(&[AlertOn::NatSuspected]) {
            seen.untrusted = ctx
                .guard
                .state()
                .untrusted
                .into_iter()
                .map(|(ip, u)| (ip, u.evidence))
                .collect();
        }
        if needs(&[AlertOn::DnsblListed])
            && let Some(ip) = seen.public_ip
        {
            let due = self
                .listing
                .as_ref()
                .is_none_or(|(at, _)| now - at >= LISTING_CHECK);
            if due && let Some(lists) = &ctx.checks.dns_lists {
                let found = lists.check(ip, Duration::from_secs(10)).await;
                let zones = found.listed.into_iter().map(|(zone, _)| zone).collect();
                self.listing = Some((now, zones));
            }
            seen.listed_on = self
                .listing
                .as_ref()
                .map(|(_, z)| z.clone())
                .unwrap_or_default();
        }
        seen
    }
}

/// The `Alert` event of rule `index`.
fn alert_event(
    index: usize,
    rule: &AlertConfig,
    state: AlertState,
    detail: &str,
    since: i64,
) -> Event {
    Event::Alert {
        alert: rule.on.name(),
        rule: index,
        state,
        detail: detail.to_string(),
        webhook: rule.webhook.clone(),
        since,
    }
}

/// Tells a notice: the `Alert` event (log, metrics, webhooks) and the mail.
async fn tell(ctx: &Context, index: usize, rule: &AlertConfig, notice: &Notice) {
    let name = rule.on.name();
    ctx.events.emit(alert_event(
        index,
        rule,
        notice.state,
        &notice.detail,
        notice.since,
    ));
    let Some(to) = &rule.email else { return };
    let host = &ctx.hostname;
    let (subject, intro) = match notice.state {
        AlertState::Firing if notice.repeated => (
            format!("[Portcullis {host}] still: {name}"),
            "This alert still holds",
        ),
        AlertState::Firing => (
            format!("[Portcullis {host}] ALERT: {name}"),
            "This alert fired",
        ),
        AlertState::Resolved => (
            format!("[Portcullis {host}] resolved: {name}"),
            "This alert has cleared",
        ),
    };
    let body = format!(
        "{intro} on the relay {host}.\n\nalert:  {name} (rule {index} of [[alert]])\nsince:  {}\ndetail: {}\n",
        crate::events::rfc3339(notice.since),
        notice.detail
    );
    if let Err(e) = mail::queue_notice(ctx, to, &subject, &body).await {
        warn!(alert = name, error = %e, "cannot queue the alert's e-mail");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holding(detail: &str) -> Holding {
        Holding {
            since: None,
            detail: detail.into(),
        }
    }

    #[test]
    fn fires_after_the_delay_repeats_and_resolves() {
        let mut st = RuleState::default();
        let h = holding("bad");
        assert_eq!(step(&mut st, Some(&h), 10, Some(100), 0), None);
        assert_eq!(step(&mut st, Some(&h), 10, Some(100), 9), None);
        let fired = step(&mut st, Some(&h), 10, Some(100), 10).unwrap();
        assert_eq!(fired.state, AlertState::Firing);
        assert_eq!(fired.since, 0);
        assert!(!fired.repeated);
        assert_eq!(step(&mut st, Some(&h), 10, Some(100), 50), None);
        assert!(
            step(&mut st, Some(&h), 10, Some(100), 110)
                .unwrap()
                .repeated
        );
        let resolved = step(&mut st, None, 10, Some(100), 120).unwrap();
        assert_eq!(resolved.state, AlertState::Resolved);
        assert_eq!(step(&mut st, None, 10, Some(100), 130), None);
    }

    #[test]
    fn a_condition_that_clears_before_its_delay_says_nothing() {
        let mut st = RuleState::default();
        let h = holding("bad");
        assert_eq!(step(&mut st, Some(&h), 10, None, 0), None);
        assert_eq!(step(&mut st, None, 10, None, 5), None);
        // It starts counting again from the next time it holds.
        assert_eq!(step(&mut st, Some(&h), 10, None, 6), None);
        assert_eq!(step(&mut st, Some(&h), 10, None, 15), None);
        assert!(step(&mut st, Some(&h), 10, None, 16).is_some());
    }

    #[test]
    fn a_condition_with_its_own_start_fires_on_that() {
        let mut st = RuleState::default();
        let h = Holding {
            since: Some(100),
            detail: "stalled".into(),
        };
        let n = step(&mut st, Some(&h), 60, None, 160).unwrap();
        assert_eq!(n.since, 100);
    }
}
