//! What the pages show, built once for both the HTML pages and their JSON
//! twins: queue rows and filters, the dashboard's figures, log lines,
//! audit findings and the settings with their findings beside each key.

use super::AdminState;
use crate::events::{Activity, Event, EventFilter, Recorded};
use crate::queue::{MessageSummary, QueueAnswer, QueueCommand, QueueStats};
use serde::{Deserialize, Serialize};

/// `?sender=&domain=&state=` on the queue page and `/api/queue`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct QueueFilter {
    pub sender: Option<String>,
    /// A recipient domain.
    pub domain: Option<String>,
    /// held, delivering, deferred, queued, failed.
    pub state: Option<String>,
}

impl QueueFilter {
    fn matches(&self, m: &MessageSummary) -> bool {
        fn wanted(f: &Option<String>) -> Option<&str> {
            f.as_deref().map(str::trim).filter(|s| !s.is_empty())
        }
        if let Some(s) = wanted(&self.sender)
            && !m.sender.to_lowercase().contains(&s.to_lowercase())
        {
            return false;
        }
        if let Some(d) = wanted(&self.domain) {
            let d = d.trim_start_matches('@').to_lowercase();
            if !m.recipients.iter().any(|r| {
                r.rsplit_once('@')
                    .is_some_and(|(_, rd)| rd.to_lowercase() == d)
            }) {
                return false;
            }
        }
        if let Some(s) = wanted(&self.state)
            && message_state(m) != s
        {
            return false;
        }
        true
    }
}

/// One word for where a message stands (the queue's own vocabulary).
pub fn message_state(m: &MessageSummary) -> &'static str {
    m.state_word()
}

/// A queue list entry as the API returns it: the summary plus its state word.
#[derive(Debug, Clone, Serialize)]
pub struct QueueRow {
    #[serde(flatten)]
    pub summary: MessageSummary,
    pub state: &'static str,
}

pub async fn queue_rows(state: &AdminState, filter: &QueueFilter) -> Result<Vec<QueueRow>, String> {
    match state.queue.command(QueueCommand::List).await {
        QueueAnswer::List { mut messages } => {
            messages.sort_by_key(|m| std::cmp::Reverse(m.received_at));
            Ok(messages
                .into_iter()
                .filter(|m| filter.matches(m))
                .map(|m| QueueRow {
                    state: message_state(&m),
                    summary: m,
                })
                .collect())
        }
        QueueAnswer::Error { message } => Err(message),
        _ => Err("unexpected answer from the queue manager".into()),
    }
}

pub async fn queue_stats(state: &AdminState) -> Option<QueueStats> {
    match state.queue.command(QueueCommand::Stats).await {
        QueueAnswer::Stats { stats } => Some(stats),
        _ => None,
    }
}

/// A log line.
#[derive(Debug, Clone, Serialize)]
pub struct EventRow {
    pub seq: u64,
    pub at: i64,
    pub time: String,
    pub kind: String,
    pub client: Option<String>,
    pub queue_id: Option<String>,
    pub refusal: bool,
    pub text: String,
    /// The event's own fields.
    pub event: std::sync::Arc<Event>,
}

impl From<Recorded> for EventRow {
    fn from(r: Recorded) -> Self {
        let kind = r.event.kind().to_string();
        EventRow {
            seq: r.seq,
            at: r.at,
            time: clock(r.at),
            kind,
            client: r.event.client().map(|c| c.to_string()),
            queue_id: r.queue_id(),
            refusal: r.is_refusal(),
            text: describe(&r.event),
            event: r.event,
        }
    }
}

pub fn events(state: &AdminState, filter: &EventFilter) -> Vec<EventRow> {
    state
        .history
        .events(filter)
        .into_iter()
        .map(EventRow::from)
        .collect()
}

/// An event in words, for the log page.
pub fn describe(e: &Event) -> String {
    match e {
        Event::AdminLogin {
            user, succeeded, ..
        } => {
            if *succeeded {
                format!("admin {user} logged in")
            } else {
                format!("admin page login failed for {user}")
            }
        }
        Event::Reload {
            applied: true,
            detail,
        } => format!("configuration reloaded: {detail}"),
        Event::Reload { detail, .. } => {
            format!("reload refused, the previous configuration goes on: {detail}")
        }
        Event::AddressBanned { prefix, .. } => match prefix {
            Some(p) => format!("banned with its whole network {p} after too many failed logins"),
            None => "banned after too many failed logins".to_string(),
        },
        Event::AccountLocked { user, .. } => format!(
            "account {user} locked to logins from outside the trusted networks for a while: many failed logins from several places"
        ),
        Event::ConnectionOpened { listener, tls, .. } => format!(
            "connected to the {} listener{}",
            listener.name(),
            if *tls { " (TLS)" } else { "" }
        ),
        Event::ConnectionRefused { refusal, .. } => {
            let why = match refusal {
                crate::events::ConnectionRefusal::Policy { reason } => reason.to_string(),
                other => other.name().replace('_', " "),
            };
            format!("connection refused: {why}")
        }
        Event::ConnectionClosed {
            messages, reason, ..
        } => format!("disconnected after {messages} message(s): {reason}"),
        Event::TlsEstablished {
            version, cipher, ..
        } => format!("STARTTLS: {version} {cipher}"),
        Event::AuthSucceeded { user, .. } => format!("AUTH succeeded as {user}"),
        Event::AuthFailed { user, failures, .. } => {
            format!("AUTH failed for {user:?} ({failures} in this session)")
        }
        Event::MailRefused { reason, .. } => format!("MAIL refused: {reason}"),
        Event::RcptAccepted { from, to, why, .. } => {
            format!("recipient {to} accepted from <{from}>: {why}")
        }
        Event::RcptRefused {
            from, to, reason, ..
        } => format!(
            "recipient {to} refused from <{from}>: {reason} ({})",
            reason.reply()
        ),
        Event::DataRefused { reason, .. } => format!("DATA refused: {reason}"),
        Event::MessageAccepted {
            from, rcpts, size, ..
        } => format!("message accepted from <{from}> for {rcpts} recipient(s), {size} bytes"),
        Event::MessageRefused {
            refusal, detail, ..
        } => format!("message refused: {refusal} ({detail})"),
        Event::Delivery {
            to, state, result, ..
        } => format!("{to}: {}: {result}", crate::events::wire_name(state)),
        Event::ReportQueued { to, kind, .. } => format!("{kind:?} queued for {to}"),
        Event::MessageFinished { failed, .. } => {
            format!("message done and removed ({failed} recipient(s) failed)")
        }
        Event::QueueCommand {
            command,
            messages,
            error,
        } => match error {
            Some(e) => format!("queue {command}: {e}"),
            None => format!("queue {command}: {messages} message(s)"),
        },
        Event::GuardUntrusted { client, evidence } => {
            format!("GUARD: {client} lost its trust: {evidence}")
        }
        Event::FloodDetected {
            source,
            action,
            reason,
            ..
        } => format!("GUARD: {source} looks like a flood ({reason}): its mail is {action}"),
        Event::ZoneHealth { zone, problem, .. } => match problem {
            Some(p) => format!("DNS list {zone} set aside: {p}"),
            None => format!("DNS list {zone} healthy"),
        },
        Event::DnsCheck { check, seconds } => format!("DNS check {check}: {seconds:.3} s"),
        Event::ProfileProblem {
            profile, advice, ..
        } => format!("PROFILE {profile}: {advice}; its mail waits"),
        Event::ProfileRecovered { profile } => format!("profile {profile} delivers again"),
        Event::MessageHeld {
            source, recipients, ..
        } => format!(
            "GUARD: message from {source} held ({} recipient(s))",
            recipients.len()
        ),
        Event::SelfTestFinished {
            listener,
            relayed,
            tests,
        } => {
            if relayed.is_empty() {
                format!("open-relay self-test of {listener} passed ({tests} attempts refused)")
            } else {
                format!(
                    "OPEN-RELAY SELF-TEST of {listener}: relayed {}",
                    relayed.join(", ")
                )
            }
        }
        Event::Alert {
            alert,
            state,
            detail,
            ..
        } => match state {
            crate::events::AlertState::Firing => format!("ALERT {alert}: {detail}"),
            crate::events::AlertState::Resolved => format!("alert {alert} resolved: {detail}"),
        },
        Event::NotificationsDropped {
            webhook,
            count,
            reason,
        } => format!("webhook {webhook}: {count} notification(s) dropped: {reason}"),
        Event::SettingsChanged {
            user,
            before,
            after,
            change,
            restored,
            ..
        } => match restored {
            Some(v) => format!(
                "settings change {change} by {user}: version {v} restored ({before} → {after})"
            ),
            None => format!("settings change {change} by {user}: {before} → {after}"),
        },
        Event::UsersChanged {
            by, user, action, ..
        } => format!("user {user} {} by {by}", action.replace('_', " ")),
        Event::ServerStarted { version, listeners } => {
            format!("server {version} started on {}", listeners.join(", "))
        }
        Event::ServerStopping { active } => {
            format!("server stopping ({active} session(s) open)")
        }
        Event::SpoolProblem { doing, error, .. } => format!("SPOOL: {doing}: {error}"),
    }
}

/// When the next attempt is due, in words relative to `now`.
pub fn next_try(next_attempt: Option<i64>, now: i64) -> String {
    match next_attempt {
        Some(t) if t > now => format!("in {}", age(t - now)),
        Some(_) => "now".into(),
        None => "-".into(),
    }
}

/// UTC time of day with the date, for tables.
pub fn clock(at: i64) -> String {
    chrono::DateTime::from_timestamp(at, 0)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_default()
}

/// "3h 12m" for a number of seconds.
pub fn age(seconds: i64) -> String {
    let s = seconds.max(0);
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {}s", s / 60, s % 60),
        3600..86400 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d {}h", s / 86400, s % 86400 / 3600),
    }
}

/// An address under the guard's watch.
#[derive(Debug, Clone, Serialize)]
pub struct GuardAlert {
    pub client: String,
    pub since: String,
    pub evidence: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Dashboard {
    pub listeners: Vec<String>,
    /// Who may relay, in words.
    pub relay_rules: Vec<String>,
    pub last_hour: Activity,
    pub last_day: Activity,
    /// The last 24 hours, hour by hour, oldest first.
    pub hourly: Vec<Activity>,
    pub queue: Option<QueueStats>,
    pub oldest_age: Option<String>,
    /// A cluster node's: the whole shared queue (`queue` is this node's).
    pub cluster_queue: Option<QueueStats>,
    pub cluster_oldest_age: Option<String>,
    pub cluster_queue_error: Option<String>,
    pub refusals: Vec<EventRow>,
    pub guard_untrusted: Vec<GuardAlert>,
    pub guard_alerts: Vec<EventRow>,
    pub open_relay: Vec<String>,
    /// Every smart-host profile, and whether its mail waits.
    pub profiles: Vec<ProfileRow>,
    /// Some profile's mail waits (the section is shown as an alarm).
    pub profiles_waiting: bool,
    /// `[[alert]]` rules whose condition holds now.
    pub alerts: Vec<AlertRow>,
    /// Each webhook and the notifications waiting in its outbox.
    pub webhooks: Vec<(String, usize)>,
}

/// An alert firing, as the dashboard shows it.
#[derive(Debug, Clone, Serialize)]
pub struct AlertRow {
    pub alert: String,
    pub since: String,
    pub detail: String,
}

/// A smart-host profile on the dashboard. Never a secret: no token, no password.
#[derive(Debug, Clone, Serialize)]
pub struct ProfileRow {
    pub name: String,
    /// "smtp.office365.com:587" or "Microsoft Graph (https://…)".
    pub next_hop: String,
    pub auth: String,
    /// For OAuth2 profiles: someone signed in (or the app has a token).
    pub signed_in: Option<bool>,
    /// The last token refresh's error, in words.
    pub token_error: Option<String>,
    /// Why its mail waits and what to do, while it rests.
    pub problem: Option<String>,
    pub waits_until: Option<String>,
    /// Its use of its quota now ("12 of 30 messages in the last minute").
    pub quota: Vec<String>,
}

fn profile_rows(state: &AdminState, config: &crate::config::Config) -> Vec<ProfileRow> {
    let now = crate::clock::unix_now();
    let resting = state.deliverer.resting_profiles();
    config
        .profiles()
        .into_iter()
        .map(|p| {
            let rest = resting
                .iter()
                .find(|(name, r)| *name == p.name && r.until > now)
                .map(|(_, r)| r.clone());
            let sign_in = p
                .oauth
                .as_ref()
                .and_then(|_| crate::oauth::sign_in_state(config, &p).ok());
            ProfileRow {
                next_hop: match p.transport {
                    crate::config::Transport::Graph => format!("Microsoft Graph ({})", p.graph_url),
                    crate::config::Transport::Smtp => p
                        .hosts
                        .iter()
                        .map(|h| h.to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                },
                auth: format!("{:?}", p.auth).to_lowercase(),
                signed_in: sign_in.as_ref().map(|s| s.logged_in),
                token_error: sign_in.and_then(|s| s.error),
                quota: state.deliverer.quota_usage(&p),
                problem: rest.as_ref().map(|r| r.advice.clone()),
                waits_until: rest.map(|r| clock(r.until)),
                name: p.name,
            }
        })
        .collect()
}

pub async fn dashboard(state: &AdminState) -> Dashboard {
    let ctx = state.current.get();
    let now = crate::clock::unix_now();
    let listeners = state.listeners.describe();
    let queue = queue_stats(state).await;
    let oldest_age = queue
        .as_ref()
        .and_then(|q| q.oldest_received_at)
        .map(|t| age(now - t));
    let cluster_queue = queue.as_ref().and_then(|q| q.cluster.as_deref()).cloned();
    let cluster_oldest_age = cluster_queue
        .as_ref()
        .and_then(|q| q.oldest_received_at)
        .map(|t| age(now - t));
    let cluster_queue_error = queue.as_ref().and_then(|q| q.cluster_error.clone());
    let guard_untrusted = ctx
        .guard
        .state()
        .untrusted
        .iter()
        .map(|(ip, u)| GuardAlert {
            client: ip.to_string(),
            since: clock(u.since),
            evidence: u.evidence.clone(),
        })
        .collect();
    let open_relay = if ctx.config.relay.allow_open_relay {
        crate::config::open_relay_entries(&ctx.config)
            .into_iter()
            .map(|e| format!("{}: {}", e.key, e.reason))
            .collect()
    } else {
        Vec::new()
    };
    let profiles = profile_rows(state, &ctx.config);
    let alerts = state
        .history
        .alerts_firing()
        .into_iter()
        .filter_map(|r| match &*r.event {
            Event::Alert {
                alert,
                detail,
                since,
                ..
            } => Some(AlertRow {
                alert: alert.to_string(),
                since: clock(*since),
                detail: detail.clone(),
            }),
            _ => None,
        })
        .collect();
    let webhooks = ctx
        .notifier
        .as_ref()
        .map(|n| n.pending())
        .unwrap_or_default();
    Dashboard {
        listeners,
        relay_rules: ctx.policy.networks.describe(),
        last_hour: state.history.totals(60, now),
        last_day: state.history.totals(24 * 60, now),
        hourly: state.history.series(24, 60, now),
        queue,
        oldest_age,
        cluster_queue,
        cluster_oldest_age,
        cluster_queue_error,
        refusals: events(
            state,
            &EventFilter {
                refusals_only: true,
                limit: 15,
                ..Default::default()
            },
        ),
        guard_untrusted,
        guard_alerts: events(
            state,
            &EventFilter {
                guard_only: true,
                limit: 10,
                ..Default::default()
            },
        ),
        open_relay,
        profiles_waiting: profiles.iter().any(|p| p.problem.is_some()),
        profiles,
        alerts,
        webhooks,
    }
}

/// A finding of the audit or the config check, in one shape.
#[derive(Debug, Clone, Serialize)]
pub struct FindingRow {
    pub severity: String,
    pub key: String,
    pub message: String,
    pub fix: String,
}

/// The audit's findings and the config check's warnings, gravest first.
pub fn findings(config: &crate::config::Config) -> Vec<FindingRow> {
    use crate::diagnostics::audit;
    let mut rows: Vec<FindingRow> = audit::audit(config, &audit::Machine::read())
        .into_iter()
        .map(|f| FindingRow {
            severity: crate::events::wire_name(&f.severity),
            key: f.key,
            message: f.message,
            fix: f.fix,
        })
        .collect();
    for f in config.findings() {
        if rows.iter().any(|r| r.key == f.key && r.message == f.reason) {
            continue;
        }
        rows.push(FindingRow {
            severity: crate::events::wire_name(&f.severity),
            key: f.key,
            message: f.reason,
            fix: String::new(),
        });
    }
    let rank = |s: &str| match s {
        "risk" | "error" => 0,
        "warning" => 1,
        _ => 2,
    };
    rows.sort_by_key(|r| rank(&r.severity));
    rows
}

/// One configuration key as the settings page shows it.
#[derive(Debug, Clone, Serialize)]
pub struct SettingRow {
    pub key: String,
    pub value: String,
    pub findings: Vec<FindingRow>,
}

/// Keys whose values are never shown.
fn is_secret(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    (k.contains("password") && !k.ends_with("_file")) || k.contains("secret") || k.contains("token")
}

/// The loaded configuration, key by key (secrets masked), each with the
/// findings about it. Findings about no shown key come last, under their own key.
pub fn settings(config: &crate::config::Config) -> Vec<SettingRow> {
    let value = serde_json::to_value(config).unwrap_or_default();
    let mut rows = Vec::new();
    flatten("", &value, &mut rows);
    let mut unplaced = Vec::new();
    for f in findings(config) {
        let base = f.key.split([' ', '=']).next().unwrap_or("").to_string();
        match rows.iter_mut().find(|r: &&mut SettingRow| {
            r.key == base
                || r.key.starts_with(&format!("{base}."))
                || r.key.starts_with(&format!("{base}["))
        }) {
            Some(r) => r.findings.push(f),
            None => unplaced.push(f),
        }
    }
    for f in unplaced {
        rows.push(SettingRow {
            key: f.key.clone(),
            value: "(not set)".into(),
            findings: vec![f],
        });
    }
    rows
}

fn flatten(prefix: &str, v: &serde_json::Value, out: &mut Vec<SettingRow>) {
    use serde_json::Value;
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out);
            }
        }
        Value::Array(items) if items.iter().any(Value::is_object) => {
            for (i, v) in items.iter().enumerate() {
                flatten(&format!("{prefix}[{i}]"), v, out);
            }
        }
        Value::Null => {}
        other => out.push(SettingRow {
            key: prefix.to_string(),
            value: if is_secret(prefix) {
                "••••••".into()
            } else {
                other.to_string()
            },
            findings: Vec::new(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_list_keys_and_mask_secrets() {
        let config = crate::config::Config::embedded_default();
        let rows = settings(&config);
        assert!(
            rows.iter().any(|r| r.key == "server.max_connections"),
            "{rows:?}"
        );
        assert!(rows.iter().any(|r| r.key.starts_with("listener[0].")));
        assert!(is_secret("delivery.smarthost_password"));
        assert!(!is_secret("delivery.smarthost_password_file"));
    }

    #[test]
    fn ages_read_well() {
        assert_eq!(age(59), "59s");
        assert_eq!(age(3 * 3600 + 12 * 60), "3h 12m");
        assert_eq!(age(2 * 86400 + 3600), "2d 1h");
    }
}
