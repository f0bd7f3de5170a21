//! Prometheus metrics, fed by the typed events (a subscriber: counters and
//! histograms move as things happen) and, for what is a state rather than an
//! event (the queue, the guard's list), set just before each scrape.

use crate::events::{ConnectionRefusal, DeliveryState, Event, ReportKind, Subscriber};
use crate::queue::QueueStats;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

type Labels = Vec<(&'static str, String)>;
type Counters = Family<Labels, Counter>;
type Histograms = Family<Labels, Histogram, fn() -> Histogram>;

fn labels(name: &'static str, value: impl Into<String>) -> Labels {
    vec![(name, value.into())]
}

/// From 1 ms to about 65 s: DNS answers and SMTP conversations.
fn seconds_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

/// From 1 s to about 4.5 days: how long mail waits in the queue.
fn queue_buckets() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 3.0, 12))
}

pub struct Metrics {
    registry: Registry,
    connections: Counters,
    connections_refused: Counters,
    connections_closed: Counters,
    connections_open: Gauge,
    tls: Counters,
    auth: Counters,
    accepted: Counter,
    accepted_bytes: Counter,
    accepted_tls: Counter,
    mail_refused: Counters,
    rcpt_accepted: Counter,
    rcpt_refused: Counters,
    messages_refused: Counters,
    deliveries: Counters,
    deferrals: Counter,
    reports: Counters,
    delivery_duration: Histograms,
    delivery_latency: Histogram,
    dns_check: Histograms,
    queue_commands: Counters,
    reloads: Counters,
    guard_untrusted_total: Counter,
    guard_floods: Counters,
    zone_healthy: Family<Labels, Gauge>,
    profile_problems: Family<Labels, Counter>,
    profile_resting: Family<Labels, Gauge>,
    messages_held: Counter,
    spool_problems: Counters,
    alerts: Counters,
    alerts_firing: Family<Labels, Gauge>,
    webhook_dropped: Counters,
    webhook_sent: Counters,
    webhook_pending: Family<Labels, Gauge>,
    queue_messages: Gauge,
    queue_held: Gauge,
    queue_recipients: Gauge,
    queue_oldest_age: Gauge<f64, AtomicU64>,
    guard_untrusted: Gauge,
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut r = Registry::default();
        let m = Metrics {
            connections: Counters::default(),
            connections_refused: Counters::default(),
            connections_closed: Counters::default(),
            connections_open: Gauge::default(),
            tls: Counters::default(),
            auth: Counters::default(),
            accepted: Counter::default(),
            accepted_bytes: Counter::default(),
            accepted_tls: Counter::default(),
            mail_refused: Counters::default(),
            rcpt_accepted: Counter::default(),
            rcpt_refused: Counters::default(),
            messages_refused: Counters::default(),
            deliveries: Counters::default(),
            deferrals: Counter::default(),
            reports: Counters::default(),
            delivery_duration: Histograms::new_with_constructor(seconds_buckets),
            delivery_latency: queue_buckets(),
            dns_check: Histograms::new_with_constructor(seconds_buckets),
            queue_commands: Counters::default(),
            reloads: Counters::default(),
            guard_untrusted_total: Counter::default(),
            guard_floods: Counters::default(),
            zone_healthy: Family::default(),
            profile_problems: Family::default(),
            profile_resting: Family::default(),
            messages_held: Counter::default(),
            spool_problems: Counters::default(),
            alerts: Counters::default(),
            alerts_firing: Family::default(),
            webhook_dropped: Counters::default(),
            webhook_sent: Counters::default(),
            webhook_pending: Family::default(),
            queue_messages: Gauge::default(),
            queue_held: Gauge::default(),
            queue_recipients: Gauge::default(),
            queue_oldest_age: Gauge::default(),
            guard_untrusted: Gauge::default(),
            registry: Registry::default(),
        };
        // Counters get their `_total` suffix from the encoder.
        r.register(
            "portcullis_connections",
            "SMTP connections taken, by listener",
            m.connections.clone(),
        );
        r.register(
            "portcullis_connections_refused",
            "SMTP connections turned away before the banner, by reason",
            m.connections_refused.clone(),
        );
        r.register(
            "portcullis_connections_closed",
            "SMTP sessions ended, by why (quit, client_left, timed_out, too_many_errors, http_request…)",
            m.connections_closed.clone(),
        );
        r.register(
            "portcullis_connections_open",
            "SMTP sessions open now",
            m.connections_open.clone(),
        );
        r.register(
            "portcullis_tls_sessions",
            "STARTTLS handshakes completed, by protocol version",
            m.tls.clone(),
        );
        r.register(
            "portcullis_auth",
            "AUTH attempts, by result (also admin-page logins)",
            m.auth.clone(),
        );
        r.register(
            "portcullis_messages_accepted",
            "Messages accepted and safely on disk",
            m.accepted.clone(),
        );
        r.register(
            "portcullis_messages_accepted_bytes",
            "Bytes of the messages accepted",
            m.accepted_bytes.clone(),
        );
        r.register(
            "portcullis_messages_accepted_tls",
            "Messages accepted over TLS",
            m.accepted_tls.clone(),
        );
        r.register(
            "portcullis_mail_refused",
            "MAIL commands refused, by reason",
            m.mail_refused.clone(),
        );
        r.register(
            "portcullis_rcpt_accepted",
            "Recipients accepted",
            m.rcpt_accepted.clone(),
        );
        r.register(
            "portcullis_rcpt_refused",
            "Recipients refused, by reason",
            m.rcpt_refused.clone(),
        );
        r.register(
            "portcullis_messages_refused",
            "Messages refused at or after DATA, by reason",
            m.messages_refused.clone(),
        );
        r.register(
            "portcullis_deliveries",
            "Delivery outcomes per recipient, by result",
            m.deliveries.clone(),
        );
        r.register(
            "portcullis_deferrals",
            "Recipients deferred for a later attempt",
            m.deferrals.clone(),
        );
        r.register(
            "portcullis_reports",
            "Delivery reports queued for senders (bounces, delay notices)",
            m.reports.clone(),
        );
        r.register(
            "portcullis_delivery_attempt_duration_seconds",
            "Time taken by one delivery attempt, by result",
            m.delivery_duration.clone(),
        );
        r.register(
            "portcullis_delivery_latency_seconds",
            "From receipt to delivery, for delivered recipients",
            m.delivery_latency.clone(),
        );
        r.register(
            "portcullis_dns_check_duration_seconds",
            "Anti-spam DNS checks' latency, by check",
            m.dns_check.clone(),
        );
        r.register(
            "portcullis_queue_commands",
            "Queue commands (hold, release, retry, delete)",
            m.queue_commands.clone(),
        );
        r.register(
            "portcullis_reloads",
            "Configuration reloads, applied or refused",
            m.reloads.clone(),
        );
        r.register(
            "portcullis_guard_untrusted",
            "Trusted addresses the NAT sentinel withdrew trust from",
            m.guard_untrusted_total.clone(),
        );
        r.register(
            "portcullis_guard_floods",
            "Outbound floods found, by action",
            m.guard_floods.clone(),
        );
        r.register(
            "portcullis_guard_untrusted_addresses",
            "Addresses currently untrusted by the guard",
            m.guard_untrusted.clone(),
        );
        r.register(
            "portcullis_dns_list_zone_healthy",
            "1 when a DNS list zone passes its health check",
            m.zone_healthy.clone(),
        );
        r.register(
            "portcullis_profile_problems",
            "Times a smart-host profile's provider refused its login (auth) or said its quota is spent (quota)",
            m.profile_problems.clone(),
        );
        r.register(
            "portcullis_profile_resting",
            "1 while a smart-host profile's mail waits after such a refusal",
            m.profile_resting.clone(),
        );
        r.register(
            "portcullis_spool_problems",
            "Queue files that could not be read or written, by what was being done",
            m.spool_problems.clone(),
        );
        r.register(
            "portcullis_messages_held",
            "Messages queued held by the guard (a flood from their source)",
            m.messages_held.clone(),
        );
        r.register(
            "portcullis_alerts",
            "Alert notices, by rule (its `on`) and state (firing, resolved)",
            m.alerts.clone(),
        );
        r.register(
            "portcullis_alerts_firing",
            "Alert rules whose condition holds now, by `on`",
            m.alerts_firing.clone(),
        );
        r.register(
            "portcullis_webhook_notifications_dropped",
            "Notifications a webhook's outbox gave up, by webhook and reason",
            m.webhook_dropped.clone(),
        );
        r.register(
            "portcullis_webhook_notifications_sent",
            "Notifications a webhook's receiver took (2xx), by webhook",
            m.webhook_sent.clone(),
        );
        r.register(
            "portcullis_webhook_outbox_pending",
            "Notifications waiting in a webhook's outbox",
            m.webhook_pending.clone(),
        );
        r.register(
            "portcullis_queue_messages",
            "Messages in the queue",
            m.queue_messages.clone(),
        );
        r.register(
            "portcullis_queue_held_messages",
            "Messages held in the queue",
            m.queue_held.clone(),
        );
        r.register(
            "portcullis_queue_recipients",
            "Recipients waiting for delivery",
            m.queue_recipients.clone(),
        );
        r.register(
            "portcullis_queue_oldest_message_age_seconds",
            "Age of the oldest queued message",
            m.queue_oldest_age.clone(),
        );
        Metrics { registry: r, ..m }
    }

    /// The text exposition, with the queue and guard state `now`.
    pub fn render(&self, queue: Option<&QueueStats>, untrusted: usize, now: i64) -> String {
        if let Some(q) = queue {
            self.queue_messages.set(q.messages as i64);
            self.queue_held.set(q.held as i64);
            self.queue_recipients.set(q.recipients_queued as i64);
            self.queue_oldest_age.set(
                q.oldest_received_at
                    .map_or(0.0, |t| (now - t).max(0) as f64),
            );
        }
        self.guard_untrusted.set(untrusted as i64);
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// The same exposition in Prometheus's classic text format (0.0.4), for a
/// scraper that does not ask for OpenMetrics: there a counter's TYPE and
/// HELP name its sample (`…_total`), there is no `# UNIT` nor `# EOF`, and
/// OpenMetrics' `unknown` is `untyped`. Samples are the same lines.
pub fn classic_text(openmetrics: &str) -> String {
    let mut counters = std::collections::HashSet::new();
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ")
            && let Some((name, "counter")) = rest.split_once(' ')
        {
            counters.insert(name.to_string());
        }
    }
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = ["# TYPE ", "# HELP "]
            .into_iter()
            .find_map(|p| line.strip_prefix(p).map(|rest| (p, rest)));
        match meta {
            Some((prefix, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                let name = if counters.contains(name) && !name.ends_with("_total") {
                    format!("{name}_total")
                } else {
                    name.to_string()
                };
                let tail = if prefix == "# TYPE " && tail == "unknown" {
                    "untyped"
                } else {
                    tail
                };
                out.push_str(&format!("{prefix}{name} {tail}\n"));
            }
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

fn refusal_name(r: &ConnectionRefusal) -> &'static str {
    r.name()
}

fn delivery_name(s: DeliveryState) -> &'static str {
    match s {
        DeliveryState::Delivered => "delivered",
        DeliveryState::Deferred => "deferred",
        DeliveryState::Failed => "failed",
        DeliveryState::Expired => "expired",
    }
}

impl Subscriber for Metrics {
    fn on_event(&self, event: &Event) {
        match event {
            Event::ConnectionOpened { listener, .. } => {
                self.connections
                    .get_or_create(&labels("listener", listener.name()))
                    .inc();
                self.connections_open.inc();
            }
            Event::ConnectionClosed { reason, .. } => {
                self.connections_open.dec();
                self.connections_closed
                    .get_or_create(&labels("reason", reason.name()))
                    .inc();
            }
            Event::ConnectionRefused { refusal, .. } => {
                self.connections_refused
                    .get_or_create(&labels("reason", refusal_name(refusal)))
                    .inc();
            }
            Event::TlsEstablished { version, .. } => {
                self.tls
                    .get_or_create(&labels("version", version.clone()))
                    .inc();
            }
            Event::AuthSucceeded { .. } => {
                self.auth.get_or_create(&labels("result", "success")).inc();
            }
            Event::AuthFailed { .. } => {
                self.auth.get_or_create(&labels("result", "failure")).inc();
            }
            // Counted with SMTP AUTH, as the metric's help says.
            Event::AdminLogin { succeeded, .. } => {
                let result = if *succeeded { "success" } else { "failure" };
                self.auth.get_or_create(&labels("result", result)).inc();
            }
            Event::AddressBanned { .. } => {
                self.auth.get_or_create(&labels("result", "banned")).inc();
            }
            Event::AccountLocked { .. } => {
                self.auth
                    .get_or_create(&labels("result", "account_locked"))
                    .inc();
            }
            Event::MailRefused { reason, .. } => {
                self.mail_refused
                    .get_or_create(&labels("reason", reason.name()))
                    .inc();
            }
            Event::RcptAccepted { .. } => {
                self.rcpt_accepted.inc();
            }
            Event::RcptRefused { reason, .. } => {
                self.rcpt_refused
                    .get_or_create(&labels("reason", reason.name()))
                    .inc();
            }
            Event::DataRefused { reason, .. } => {
                self.messages_refused
                    .get_or_create(&labels("reason", reason.name()))
                    .inc();
            }
            Event::MessageRefused { refusal, .. } => {
                let name = crate::events::wire_name(refusal);
                self.messages_refused
                    .get_or_create(&labels("reason", name))
                    .inc();
            }
            Event::MessageAccepted { size, tls, .. } => {
                self.accepted.inc();
                self.accepted_bytes.inc_by(*size);
                if *tls {
                    self.accepted_tls.inc();
                }
            }
            Event::Delivery {
                state,
                attempt_seconds,
                queued_seconds,
                ..
            } => {
                let result = delivery_name(*state);
                self.deliveries
                    .get_or_create(&labels("result", result))
                    .inc();
                if *state == DeliveryState::Deferred {
                    self.deferrals.inc();
                }
                if *state != DeliveryState::Expired {
                    self.delivery_duration
                        .get_or_create(&labels("result", result))
                        .observe(*attempt_seconds);
                }
                if *state == DeliveryState::Delivered {
                    self.delivery_latency.observe(*queued_seconds);
                }
            }
            Event::ReportQueued { kind, .. } => {
                let kind = match kind {
                    ReportKind::Bounce => "bounce",
                    ReportKind::DelayNotice => "delay_notice",
                };
                self.reports.get_or_create(&labels("kind", kind)).inc();
            }
            Event::DnsCheck { check, seconds } => {
                self.dns_check
                    .get_or_create(&labels("check", *check))
                    .observe(*seconds);
            }
            Event::QueueCommand { command, .. } => {
                self.queue_commands
                    .get_or_create(&labels("command", *command))
                    .inc();
            }
            Event::GuardUntrusted { .. } => {
                self.guard_untrusted_total.inc();
            }
            Event::Reload { applied, .. } => {
                let result = if *applied { "applied" } else { "refused" };
                self.reloads.get_or_create(&labels("result", result)).inc();
            }
            Event::FloodDetected { action, .. } => {
                self.guard_floods
                    .get_or_create(&labels("action", *action))
                    .inc();
            }
            Event::ZoneHealth { zone, healthy, .. } => {
                self.zone_healthy
                    .get_or_create(&labels("zone", zone.clone()))
                    .set(i64::from(*healthy));
            }
            Event::ProfileProblem {
                profile, problem, ..
            } => {
                self.profile_problems
                    .get_or_create(&vec![
                        ("profile", profile.clone()),
                        ("problem", problem.clone()),
                    ])
                    .inc();
                self.profile_resting
                    .get_or_create(&labels("profile", profile.clone()))
                    .set(1);
            }
            Event::ProfileRecovered { profile } => {
                self.profile_resting
                    .get_or_create(&labels("profile", profile.clone()))
                    .set(0);
            }
            Event::MessageFinished { .. }
            | Event::SelfTestFinished { .. }
            | Event::SettingsChanged { .. }
            | Event::UsersChanged { .. }
            | Event::ServerStarted { .. }
            | Event::ServerStopping { .. } => {}
            Event::SpoolProblem { doing, .. } => {
                self.spool_problems
                    .get_or_create(&labels("doing", *doing))
                    .inc();
            }
            Event::MessageHeld { .. } => {
                self.messages_held.inc();
            }
            Event::Alert { alert, state, .. } => {
                let state_name = crate::events::wire_name(state);
                self.alerts
                    .get_or_create(&vec![("alert", alert.to_string()), ("state", state_name)])
                    .inc();
                let firing = self.alerts_firing.get_or_create(&labels("alert", *alert));
                match state {
                    crate::events::AlertState::Firing => firing.set(1),
                    crate::events::AlertState::Resolved => firing.set(0),
                };
            }
            Event::NotificationsDropped {
                webhook,
                count,
                reason,
            } => {
                self.webhook_dropped
                    .get_or_create(&vec![
                        ("webhook", webhook.clone()),
                        ("reason", reason.to_string()),
                    ])
                    .inc_by(*count);
            }
        }
    }
}

impl Metrics {
    /// A webhook's receiver took a notification.
    pub fn webhook_sent(&self, webhook: &str) {
        self.webhook_sent
            .get_or_create(&labels("webhook", webhook))
            .inc();
    }

    /// How many notifications wait in a webhook's outbox.
    pub fn webhook_pending(&self, webhook: &str, pending: usize) {
        self.webhook_pending
            .get_or_create(&labels("webhook", webhook))
            .set(pending as i64);
    }
}

#[cfg(test)]
mod classic_tests {
    use super::classic_text;

    #[test]
    fn counters_are_typed_by_their_sample_name_and_openmetrics_lines_go() {
        let om = "# HELP portcullis_messages_accepted Messages accepted.\n# TYPE portcullis_messages_accepted counter\nportcullis_messages_accepted_total 3\n# TYPE portcullis_queue_messages gauge\nportcullis_queue_messages 1\n# TYPE x_seconds histogram\n# UNIT x_seconds seconds\nx_seconds_sum 0.0\n# EOF\n";
        let classic = classic_text(om);
        assert_eq!(
            classic,
            "# HELP portcullis_messages_accepted_total Messages accepted.\n# TYPE portcullis_messages_accepted_total counter\nportcullis_messages_accepted_total 3\n# TYPE portcullis_queue_messages gauge\nportcullis_queue_messages 1\n# TYPE x_seconds histogram\nx_seconds_sum 0.0\n"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::RefuseReason;

    #[test]
    fn counters_move_with_events_and_render_as_text() {
        let m = Metrics::new();
        let client = "192.0.2.1".parse().unwrap();
        m.on_event(&Event::RcptRefused {
            session: 1,
            client,
            from: "a@b".into(),
            to: "c@d".into(),
            user: None,
            reason: RefuseReason::NeedsAuth,
        });
        let stats = QueueStats {
            messages: 3,
            held: 1,
            recipients_queued: 4,
            oldest_received_at: Some(100),
            ..Default::default()
        };
        let text = m.render(Some(&stats), 2, 160);
        assert!(
            text.contains("portcullis_rcpt_refused_total{reason=\"needs_auth\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("portcullis_messages_accepted_total 0"),
            "{text}"
        );
        assert!(text.contains("portcullis_queue_messages 3"), "{text}");
        assert!(
            text.contains("portcullis_queue_oldest_message_age_seconds 60.0"),
            "{text}"
        );
        assert!(
            text.contains("portcullis_guard_untrusted_addresses 2"),
            "{text}"
        );
        assert!(text.trim_end().ends_with("# EOF"), "{text}");
    }
}
