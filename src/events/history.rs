//! Recent history for the admin page: the last events (for the log page and
//! "last refusals") and per-minute activity counts over a day (for the
//! dashboard's figures and chart). Bounded: a fixed number of events and
//! 1,440 minute buckets, whatever the load.

use super::{DeliveryState, Event, ReportKind, Subscriber};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

/// Events kept for the log page.
const KEPT_EVENTS: usize = 5_000;
/// One bucket per minute for a day.
const MINUTES: usize = 24 * 60;

/// What the dashboard counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Activity {
    pub received: u64,
    pub delivered: u64,
    pub deferred: u64,
    pub bounced: u64,
    /// Connections, senders, recipients and messages refused.
    pub refused: u64,
}

impl Activity {
    fn add(&mut self, other: &Activity) {
        self.received += other.received;
        self.delivered += other.delivered;
        self.deferred += other.deferred;
        self.bounced += other.bounced;
        self.refused += other.refused;
    }
}

/// One kept event with when it happened (unix seconds) and its number.
#[derive(Debug, Clone, Serialize)]
pub struct Recorded {
    pub seq: u64,
    pub at: i64,
    pub event: Arc<Event>,
}

impl Recorded {
    /// Whether the event is a refusal of some kind.
    pub fn is_refusal(&self) -> bool {
        matches!(
            *self.event,
            Event::ConnectionRefused { .. }
                | Event::MailRefused { .. }
                | Event::RcptRefused { .. }
                | Event::DataRefused { .. }
                | Event::MessageRefused { .. }
                | Event::AuthFailed { .. }
                | Event::AdminLogin {
                    succeeded: false,
                    ..
                }
        )
    }

    pub fn is_guard_alert(&self) -> bool {
        matches!(
            *self.event,
            Event::GuardUntrusted { .. }
                | Event::FloodDetected { .. }
                | Event::AccountLocked { .. }
        )
    }

    /// The queue ids the event names: a message's, and for a report the
    /// report's own too.
    pub fn queue_ids(&self) -> Vec<String> {
        match &*self.event {
            Event::MessageAccepted { queue_id, .. }
            | Event::MessageRefused { queue_id, .. }
            | Event::Delivery { queue_id, .. }
            | Event::MessageFinished { queue_id, .. } => vec![queue_id.to_string()],
            Event::ReportQueued {
                queue_id,
                report_id,
                ..
            } => vec![queue_id.to_string(), report_id.to_string()],
            _ => Vec::new(),
        }
    }

    /// The queue ids as the log page shows them ("ID REPORT-ID").
    pub fn queue_id(&self) -> Option<String> {
        let ids = self.queue_ids();
        (!ids.is_empty()).then(|| ids.join(" "))
    }
}

/// Which kept events to return, newest first.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    pub queue_id: Option<String>,
    pub client: Option<String>,
    pub refusals_only: bool,
    pub guard_only: bool,
    pub limit: usize,
}

#[derive(Default)]
struct Inner {
    seq: u64,
    events: VecDeque<Recorded>,
    /// Alerts firing now, by rule: the latest notice of each.
    firing: std::collections::BTreeMap<usize, Recorded>,
    /// (minute since the epoch, counts), oldest first.
    minutes: VecDeque<(i64, Activity)>,
}

impl Inner {
    fn add_to_minute(&mut self, now: i64, count: &Activity) {
        let minute = now.div_euclid(60);
        match self.minutes.back_mut() {
            Some((m, a)) if *m == minute => a.add(count),
            _ => self.minutes.push_back((minute, *count)),
        }
        while self
            .minutes
            .front()
            .is_some_and(|(m, _)| *m <= minute - MINUTES as i64)
        {
            self.minutes.pop_front();
        }
    }
}

#[derive(Default)]
pub struct History {
    inner: Mutex<Inner>,
}

impl History {
    pub fn new() -> History {
        History::default()
    }

    fn record_at(&self, event: Arc<Event>, now: i64) {
        let count = activity_of(&event);
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.seq += 1;
        let seq = inner.seq;
        // The oldest event is freed after the lock is let go.
        let oldest = if inner.events.len() == KEPT_EVENTS {
            inner.events.pop_front()
        } else {
            None
        };
        if let Event::Alert { rule, state, .. } = &*event {
            match state {
                super::AlertState::Firing => {
                    let kept = Recorded {
                        seq,
                        at: now,
                        event: Arc::clone(&event),
                    };
                    inner.firing.insert(*rule, kept);
                }
                super::AlertState::Resolved => {
                    inner.firing.remove(rule);
                }
            }
        }
        inner.events.push_back(Recorded {
            seq,
            at: now,
            event,
        });
        if let Some(count) = count {
            inner.add_to_minute(now, &count);
        }
        drop(inner);
        drop(oldest);
    }

    /// An alert that was firing before a restart (its last firing notice,
    /// kept with the alert states): on the list of firing alerts again,
    /// without being told anew.
    pub fn restore_firing(&self, event: Event) {
        if let Event::Alert { rule, since, .. } = &event {
            let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            inner.seq += 1;
            let kept = Recorded {
                seq: inner.seq,
                at: *since,
                event: Arc::new(event.clone()),
            };
            inner.firing.insert(*rule, kept);
        }
    }

    /// The alerts firing now (their latest notice), by rule.
    pub fn alerts_firing(&self) -> Vec<Recorded> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.firing.values().cloned().collect()
    }

    /// The totals over the last `minutes` minutes up to `now`.
    pub fn totals(&self, minutes: i64, now: i64) -> Activity {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let from = now.div_euclid(60) - minutes;
        let mut total = Activity::default();
        for (_, a) in inner.minutes.iter().filter(|(m, _)| *m > from) {
            total.add(a);
        }
        total
    }

    /// `buckets` consecutive periods of `width` minutes ending now, oldest first.
    pub fn series(&self, buckets: usize, width: i64, now: i64) -> Vec<Activity> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let last = now.div_euclid(60);
        let mut out = vec![Activity::default(); buckets];
        for (m, a) in inner.minutes.iter() {
            let back = (last - m) / width.max(1);
            if back >= 0 && (back as usize) < buckets {
                out[buckets - 1 - back as usize].add(a);
            }
        }
        out
    }

    /// The minute counts, oldest first, to be kept across a restart.
    pub fn activity(&self) -> Vec<(i64, Activity)> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.minutes.iter().copied().collect()
    }

    /// Takes back the minute counts a previous run kept (before any event of
    /// this run; older than a day, out of order or repeated minutes are dropped).
    pub fn restore_activity(&self, minutes: Vec<(i64, Activity)>, now: i64) {
        let oldest = now.div_euclid(60) - MINUTES as i64;
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut kept: VecDeque<(i64, Activity)> = VecDeque::new();
        for (m, a) in minutes {
            if m > oldest && kept.back().is_none_or(|(last, _)| *last < m) {
                kept.push_back((m, a));
            }
        }
        for (m, a) in std::mem::take(&mut inner.minutes) {
            match kept.back_mut() {
                Some((last, sum)) if *last == m => sum.add(&a),
                Some((last, _)) if *last > m => {}
                _ => kept.push_back((m, a)),
            }
        }
        inner.minutes = kept;
    }

    /// Writes the minute counts to `path` (durably: see `fsio`).
    pub fn save_activity(&self, path: &std::path::Path) -> std::io::Result<()> {
        let json = serde_json::to_vec(&self.activity()).map_err(std::io::Error::other)?;
        crate::fsio::replace(path, &json, crate::fsio::NewFile::PRIVATE)
    }

    /// Reads what `save_activity` wrote, if anything (a missing or unreadable
    /// file is an empty history, never a reason not to start).
    pub fn load_activity(&self, path: &std::path::Path, now: i64) {
        let Ok(bytes) = std::fs::read(path) else {
            return;
        };
        match serde_json::from_slice::<Vec<(i64, Activity)>>(&bytes) {
            Ok(minutes) => self.restore_activity(minutes, now),
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "the dashboard's saved history is unreadable; starting it afresh")
            }
        }
    }

    pub fn events(&self, filter: &EventFilter) -> Vec<Recorded> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let limit = if filter.limit == 0 { 200 } else { filter.limit };
        inner
            .events
            .iter()
            .rev()
            .filter(|r| !filter.refusals_only || r.is_refusal())
            .filter(|r| !filter.guard_only || r.is_guard_alert())
            .filter(|r| match &filter.client {
                Some(c) => r.event.client().is_some_and(|ip| ip.to_string() == *c),
                None => true,
            })
            .filter(|r| match &filter.queue_id {
                Some(q) => r
                    .queue_ids()
                    .iter()
                    .any(|id| id.eq_ignore_ascii_case(q.trim())),
                None => true,
            })
            .take(limit)
            .cloned()
            .collect()
    }
}

/// How an event counts on the dashboard.
fn activity_of(event: &Event) -> Option<Activity> {
    let mut a = Activity::default();
    match event {
        Event::MessageAccepted { .. } => a.received = 1,
        Event::Delivery { state, .. } => match state {
            DeliveryState::Delivered => a.delivered = 1,
            DeliveryState::Deferred => a.deferred = 1,
            DeliveryState::Failed | DeliveryState::Expired => return None,
        },
        Event::ReportQueued {
            kind: ReportKind::Bounce,
            ..
        } => a.bounced = 1,
        Event::ConnectionRefused { .. }
        | Event::MailRefused { .. }
        | Event::RcptRefused { .. }
        | Event::DataRefused { .. }
        | Event::MessageRefused { .. } => a.refused = 1,
        _ => return None,
    }
    Some(a)
}

impl Subscriber for History {
    fn on_event(&self, event: &Event) {
        self.record_at(Arc::new(event.clone()), chrono::Utc::now().timestamp());
    }

    /// Keeps the shared event itself: no copy per event.
    fn on_shared(&self, event: &Arc<Event>) {
        self.record_at(event.clone(), chrono::Utc::now().timestamp());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::RefuseReason;

    fn refused(ip: &str) -> Event {
        Event::RcptRefused {
            session: 1,
            client: ip.parse().unwrap(),
            from: "a@b".into(),
            to: "c@d".into(),
            user: None,
            reason: RefuseReason::NeedsAuth,
        }
    }

    #[test]
    fn counts_by_minute_and_forgets_after_a_day() {
        let h = History::new();
        let t0 = 1_000_000 * 60;
        h.record_at(Arc::new(refused("192.0.2.1")), t0);
        h.record_at(Arc::new(refused("192.0.2.1")), t0 + 30);
        h.record_at(Arc::new(refused("192.0.2.2")), t0 + 3600);
        assert_eq!(h.totals(60, t0 + 3600).refused, 1);
        assert_eq!(h.totals(24 * 60, t0 + 3600).refused, 3);
        assert_eq!(h.totals(24 * 60, t0 + 25 * 3600).refused, 0);
        let series = h.series(24, 60, t0 + 3600);
        assert_eq!(series[23].refused, 1);
        assert_eq!(series[22].refused, 2);
    }

    #[test]
    fn activity_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("activity.json");
        let t0 = 1_000_000 * 60;
        let before = History::new();
        before.record_at(Arc::new(refused("192.0.2.1")), t0);
        before.record_at(Arc::new(refused("192.0.2.1")), t0 + 120);
        before.save_activity(&path).unwrap();
        let after = History::new();
        after.record_at(Arc::new(refused("192.0.2.3")), t0 + 125);
        after.load_activity(&path, t0 + 130);
        assert_eq!(after.totals(60, t0 + 130).refused, 3);
        // A day later the kept minutes are too old to count.
        let later = History::new();
        later.load_activity(&path, t0 + 2 * 86400);
        assert_eq!(later.totals(24 * 60, t0 + 2 * 86400).refused, 0);
    }

    #[test]
    fn a_queue_id_filter_matches_whole_ids() {
        let h = History::new();
        let (message, report) = (
            crate::spool::QueueId::parse("0123456789ABCDEF0123").unwrap(),
            crate::spool::QueueId::parse("0123456789ABCDEF0456").unwrap(),
        );
        h.record_at(
            Arc::new(Event::ReportQueued {
                queue_id: message.clone(),
                report_id: report.clone(),
                to: "a@b".into(),
                kind: ReportKind::Bounce,
                recipients: 1,
            }),
            60,
        );
        let find = |q: &str| {
            h.events(&EventFilter {
                queue_id: Some(q.into()),
                ..Default::default()
            })
            .len()
        };
        assert_eq!(find(&message.to_string()), 1);
        assert_eq!(find(&report.to_string()), 1, "the report's own id finds it");
        assert_eq!(find("0123456789ABCDEF"), 0, "a piece of an id is not an id");
        assert_eq!(find("0123 0456"), 0);
    }

    #[test]
    fn filters_newest_first_and_bounded() {
        let h = History::new();
        for i in 0..(KEPT_EVENTS + 10) {
            h.record_at(
                Arc::new(refused(if i % 2 == 0 { "192.0.2.1" } else { "192.0.2.2" })),
                60,
            );
        }
        let all = h.events(&EventFilter {
            limit: usize::MAX,
            ..Default::default()
        });
        assert_eq!(all.len(), KEPT_EVENTS);
        assert!(all[0].seq > all[1].seq);
        let one = h.events(&EventFilter {
            client: Some("192.0.2.2".into()),
            limit: 5,
            ..Default::default()
        });
        assert_eq!(one.len(), 5);
        assert!(
            one.iter()
                .all(|r| r.event.client().unwrap().to_string() == "192.0.2.2")
        );
    }

    #[test]
    fn an_alert_is_firing_until_its_resolved_notice() {
        let h = History::new();
        let alert = |rule, state| Event::Alert {
            alert: "delivery_stalled",
            rule,
            state,
            detail: "stalled".into(),
            webhook: None,
            since: 5,
        };
        h.record_at(Arc::new(alert(0, super::super::AlertState::Firing)), 10);
        h.record_at(Arc::new(alert(1, super::super::AlertState::Firing)), 11);
        assert_eq!(h.alerts_firing().len(), 2);
        h.record_at(Arc::new(alert(0, super::super::AlertState::Resolved)), 12);
        let left = h.alerts_firing();
        assert_eq!(left.len(), 1);
        assert!(matches!(&*left[0].event, Event::Alert { rule: 1, .. }));
    }
}
