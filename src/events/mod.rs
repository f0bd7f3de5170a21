//! Typed events: every fact others may want to know — a connection, a
//! refusal and its reason, an accepted message, a delivery result, a bounce, a
//! queue command — is emitted once, where it happens, as an `Event`. The
//! fan-out hands each event to the subscribers in order (the log writer is the
//! first; metrics, the admin page and the guard add theirs) and to anyone
//! listening on the broadcast channel (`subscribe`), which never slows the
//! emitter: a listener that falls behind loses the oldest events.

mod history;
pub(crate) mod log;

pub use history::{Activity, EventFilter, History, Recorded};

use crate::attempt::AttemptResult;
use crate::config::ListenerKind;
use crate::policy::RefuseReason;
use crate::spool::QueueId;
use serde::Serialize;
use std::net::IpAddr;
use std::sync::Arc;
use tokio::sync::broadcast;

/// Events the broadcast channel keeps for a slow listener.
const BROADCAST_CAPACITY: usize = 4096;

/// Why a session ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CloseReason {
    /// The client said QUIT.
    Quit,
    /// The client hung up without QUIT.
    ClientLeft,
    /// The client stayed silent past a timeout.
    TimedOut,
    /// The client talked before the banner (the pregreet check).
    TalkedFirst,
    /// `server.max_errors` refused commands.
    TooManyErrors,
    /// Too many commands that move no mail (`server.max_junk_commands`).
    TooManyJunkCommands,
    /// An HTTP request on the SMTP port.
    HttpRequest,
    /// Failed logins earned the address a ban.
    Banned,
    /// The message was refused in a way that ends the session: pipelining
    /// before authentication, a chunk past the size limit, forbidden bytes.
    MessageRefused,
    /// The server is shutting down.
    ShuttingDown,
    /// A read or write failed.
    Io(String),
}

impl std::fmt::Display for CloseReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CloseReason::Quit => "QUIT",
            CloseReason::ClientLeft => "connection closed by client",
            CloseReason::TimedOut => "timed out",
            CloseReason::TalkedFirst => "talked before the banner",
            CloseReason::TooManyErrors => "too many errors",
            CloseReason::TooManyJunkCommands => "too many commands that do nothing",
            CloseReason::HttpRequest => "HTTP request on the SMTP port",
            CloseReason::Banned => "banned after failed logins",
            CloseReason::MessageRefused => "message refused; closing",
            CloseReason::ShuttingDown => "server shutting down",
            CloseReason::Io(e) => return write!(f, "I/O error: {e}"),
        })
    }
}

impl CloseReason {
    /// The metric label.
    pub fn name(&self) -> &'static str {
        match self {
            CloseReason::Quit => "quit",
            CloseReason::ClientLeft => "client_left",
            CloseReason::TimedOut => "timed_out",
            CloseReason::TalkedFirst => "talked_first",
            CloseReason::TooManyErrors => "too_many_errors",
            CloseReason::TooManyJunkCommands => "too_many_junk_commands",
            CloseReason::HttpRequest => "http_request",
            CloseReason::Banned => "banned",
            CloseReason::MessageRefused => "message_refused",
            CloseReason::ShuttingDown => "shutting_down",
            CloseReason::Io(_) => "io_error",
        }
    }
}

/// Why a connection was turned away before its banner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ConnectionRefusal {
    /// The policy refused it (the connection filter).
    Policy { reason: RefuseReason },
    /// `server.max_connections` reached.
    TooManyConnections,
    /// `server.max_connections_per_ip` reached.
    TooManyFromAddress,
    /// `server.max_connection_rate_per_ip` reached.
    TooFast,
    /// Banned after too many failed logins.
    Banned,
    /// Talked before the banner (checks.pregreet = "reject").
    Pregreet,
    /// On a PROXY-protocol listener: from an address not in `proxy_from`.
    NotAProxy,
    /// On a PROXY-protocol listener: the header was missing or malformed.
    BadProxyHeader,
    /// On an implicit-TLS listener: the TLS handshake failed or timed out.
    TlsHandshake,
}

impl ConnectionRefusal {
    /// The refusal in a few words (the metrics label; the log page).
    pub fn name(&self) -> &'static str {
        match self {
            ConnectionRefusal::Policy { reason } => reason.name(),
            ConnectionRefusal::TooManyConnections => "max_connections",
            ConnectionRefusal::TooManyFromAddress => "max_connections_per_ip",
            ConnectionRefusal::TooFast => "connection_rate",
            ConnectionRefusal::Banned => "banned",
            ConnectionRefusal::Pregreet => "pregreet",
            ConnectionRefusal::NotAProxy => "not_a_proxy",
            ConnectionRefusal::BadProxyHeader => "bad_proxy_header",
            ConnectionRefusal::TlsHandshake => "tls_handshake",
        }
    }
}

/// Why a message was not accepted after its data was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageRefusal {
    TooBig,
    LineTooLong,
    MailLoop,
    BareNewline,
    NulByte,
    Timeout,
    SpoolFailed,
}

impl std::fmt::Display for MessageRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            MessageRefusal::TooBig => "message too large",
            MessageRefusal::LineTooLong => "a line of the message is too long",
            MessageRefusal::MailLoop => "too many Received: headers (mail loop?)",
            MessageRefusal::BareNewline => "bare CR or LF in the data (smuggling defence)",
            MessageRefusal::NulByte => "NUL byte in the data (smuggling defence)",
            MessageRefusal::Timeout => "timeout during the data; message discarded",
            MessageRefusal::SpoolFailed => "could not write the message to disk",
        })
    }
}

/// What a delivery attempt did for a recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryState {
    Delivered,
    Deferred,
    Failed,
    /// Gave up: the message outlived `max_queue_lifetime`.
    Expired,
}

/// A delivery status report we queued for a sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReportKind {
    Bounce,
    DelayNotice,
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    ConnectionOpened {
        session: u64,
        client: IpAddr,
        listener: ListenerKind,
        tls: bool,
        /// The load balancer whose PROXY header named the client.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        via_proxy: Option<IpAddr>,
    },
    /// A login on the admin page (not an SMTP session's AUTH).
    AdminLogin {
        client: IpAddr,
        user: String,
        succeeded: bool,
        /// Failed logins from the client's address (and prefix) lately.
        failures: u64,
    },
    /// A reload was asked for (SIGHUP, `portcullis reload`, a changed
    /// certificate): applied, or refused with the old configuration kept.
    Reload {
        applied: bool,
        /// What changed, or why nothing did.
        detail: String,
    },
    /// Too many failed logins: the address (or its whole network prefix)
    /// is banned from every listener and the admin page.
    AddressBanned {
        client: IpAddr,
        /// Failures from the address, and from its prefix, in the ban window.
        failures: u64,
        prefix_failures: u64,
        /// The prefix banned with it, if it was.
        prefix: Option<String>,
    },
    /// Many failed logins for one account from outside the trusted
    /// networks: its logins from outside are refused for a while.
    AccountLocked {
        user: String,
        /// The client whose failure locked it.
        client: IpAddr,
    },
    ConnectionRefused {
        client: IpAddr,
        listener: ListenerKind,
        refusal: ConnectionRefusal,
    },
    ConnectionClosed {
        session: u64,
        client: IpAddr,
        messages: u32,
        errors: u32,
        reason: CloseReason,
    },
    TlsEstablished {
        session: u64,
        client: IpAddr,
        version: String,
        cipher: String,
    },
    AuthSucceeded {
        session: u64,
        client: IpAddr,
        user: String,
    },
    AuthFailed {
        session: u64,
        client: IpAddr,
        user: String,
        /// Failures in this session so far.
        failures: u32,
    },
    MailRefused {
        session: u64,
        client: IpAddr,
        reason: RefuseReason,
    },
    RcptAccepted {
        session: u64,
        client: IpAddr,
        from: String,
        to: String,
        why: String,
    },
    RcptRefused {
        session: u64,
        client: IpAddr,
        from: String,
        to: String,
        user: Option<String>,
        reason: RefuseReason,
    },
    /// DATA refused before any content was taken.
    DataRefused {
        session: u64,
        client: IpAddr,
        reason: RefuseReason,
    },
    MessageAccepted {
        session: u64,
        client: IpAddr,
        queue_id: QueueId,
        from: String,
        rcpts: usize,
        size: u64,
        tls: bool,
        user: Option<String>,
    },
    MessageRefused {
        session: u64,
        client: IpAddr,
        queue_id: QueueId,
        refusal: MessageRefusal,
        /// Particulars (a size, a count, an I/O error).
        detail: String,
    },
    Delivery {
        queue_id: QueueId,
        /// Whose mail it is: the AUTH user, else the client address (None
        /// for our own reports).
        source: Option<String>,
        /// The envelope sender (empty for the null sender).
        from: String,
        to: String,
        /// Attempts counted for this recipient so far (this one included).
        attempts: u32,
        state: DeliveryState,
        result: AttemptResult,
        /// Whether the attempt counted against the retry schedule.
        counted: bool,
        next_attempt: Option<i64>,
        /// How long the attempt took (0 when none was made, as at expiry).
        attempt_seconds: f64,
        /// Since the message was received.
        queued_seconds: f64,
    },
    /// An anti-spam DNS check finished (for its latency).
    DnsCheck { check: &'static str, seconds: f64 },
    ReportQueued {
        queue_id: QueueId,
        report_id: QueueId,
        to: String,
        kind: ReportKind,
        recipients: usize,
    },
    MessageFinished {
        queue_id: QueueId,
        failed: usize,
        /// Failed recipients no bounce tells of: the sender was the null
        /// address (a report itself), which must never be answered.
        unreported: usize,
    },
    QueueCommand {
        command: &'static str,
        messages: usize,
        error: Option<String>,
    },
    /// The NAT sentinel withdrew a trusted address's trust.
    GuardUntrusted { client: IpAddr, evidence: String },
    /// A source sends to too many recipient domains: its mail is held (or refused, or logged).
    FloodDetected {
        source: String,
        recipient_domains: usize,
        action: &'static str,
        /// What gave it away.
        reason: String,
    },
    /// A DNS list zone was set aside (or came back) after its health check.
    ZoneHealth {
        zone: String,
        healthy: bool,
        problem: Option<String>,
    },
    /// A smart-host profile's provider refused its login or said its quota
    /// is spent: its mail waits until `until` (Unix seconds).
    ProfileProblem {
        profile: String,
        /// "auth" or "quota".
        problem: String,
        /// What happened and what to do, in plain words.
        advice: String,
        result: AttemptResult,
        until: i64,
    },
    /// A profile that had a problem delivered again.
    ProfileRecovered { profile: String },
    /// An accepted message was queued held (the guard saw a flood from its
    /// source): it waits for `queue release`.
    MessageHeld {
        queue_id: QueueId,
        from: String,
        recipients: Vec<String>,
        /// The AUTH user, else the client address.
        source: String,
    },
    /// The open-relay self-test ran against one of our listeners.
    SelfTestFinished {
        listener: std::net::SocketAddr,
        /// The tests that got a message relayed (none: passed).
        relayed: Vec<String>,
        tests: usize,
    },
    /// An alert rule's condition began (after its `for`), lasts (a repeat),
    /// or ended.
    Alert {
        /// The rule's `on`.
        alert: &'static str,
        /// Its place among the `[[alert]]` rules.
        rule: usize,
        state: AlertState,
        /// What is wrong, in plain words (or what cleared).
        detail: String,
        /// The `[[webhook]]` the rule names.
        webhook: Option<String>,
        /// Since when the condition holds (Unix seconds).
        since: i64,
    },
    /// An admin changed the configuration file from the admin page (and the
    /// server reloaded it).
    SettingsChanged {
        user: String,
        client: IpAddr,
        /// Versions of the file before and after.
        before: String,
        after: String,
        /// The number of the change in the change log.
        change: u64,
        /// When it put back an earlier version: which.
        restored: Option<String>,
    },
    /// An admin added, removed or set the password of a user from the page.
    UsersChanged {
        by: String,
        client: IpAddr,
        user: String,
        /// "added", "password_set" or "removed".
        action: &'static str,
    },
    /// The server is up: listeners bound, spool recovered.
    ServerStarted {
        version: &'static str,
        listeners: Vec<String>,
    },
    /// The server is stopping; `active` sessions get the grace period.
    ServerStopping { active: usize },
    /// Reading or writing the queue's files failed (a full or failing
    /// disk): what was being done, and the error. The message stays
    /// where it was; the work is tried again where that makes sense.
    SpoolProblem {
        queue_id: Option<QueueId>,
        doing: &'static str,
        error: String,
    },
    /// Notifications a webhook's outbox gave up: the receiver was away
    /// longer than `retry_for`, or the outbox reached `outbox_max_bytes`.
    NotificationsDropped {
        webhook: String,
        count: u64,
        reason: &'static str,
    },
}

/// Whether an alert's condition holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertState {
    Firing,
    Resolved,
}

impl Event {
    /// The client address the event is about, if any.
    /// The event's kind, as its JSON names it (`"event": "rcpt_refused"`).
    pub fn kind(&self) -> &'static str {
        match self {
            Event::ConnectionOpened { .. } => "connection_opened",
            Event::AccountLocked { .. } => "account_locked",
            Event::AddressBanned { .. } => "address_banned",
            Event::Reload { .. } => "reload",
            Event::AdminLogin { .. } => "admin_login",
            Event::ConnectionRefused { .. } => "connection_refused",
            Event::ConnectionClosed { .. } => "connection_closed",
            Event::TlsEstablished { .. } => "tls_established",
            Event::AuthSucceeded { .. } => "auth_succeeded",
            Event::AuthFailed { .. } => "auth_failed",
            Event::MailRefused { .. } => "mail_refused",
            Event::RcptAccepted { .. } => "rcpt_accepted",
            Event::RcptRefused { .. } => "rcpt_refused",
            Event::DataRefused { .. } => "data_refused",
            Event::MessageAccepted { .. } => "message_accepted",
            Event::MessageRefused { .. } => "message_refused",
            Event::Delivery { .. } => "delivery",
            Event::DnsCheck { .. } => "dns_check",
            Event::ReportQueued { .. } => "report_queued",
            Event::MessageFinished { .. } => "message_finished",
            Event::QueueCommand { .. } => "queue_command",
            Event::GuardUntrusted { .. } => "guard_untrusted",
            Event::FloodDetected { .. } => "flood_detected",
            Event::ZoneHealth { .. } => "zone_health",
            Event::ProfileProblem { .. } => "profile_problem",
            Event::ProfileRecovered { .. } => "profile_recovered",
            Event::MessageHeld { .. } => "message_held",
            Event::SelfTestFinished { .. } => "self_test_finished",
            Event::Alert { .. } => "alert",
            Event::NotificationsDropped { .. } => "notifications_dropped",
            Event::SettingsChanged { .. } => "settings_changed",
            Event::UsersChanged { .. } => "users_changed",
            Event::ServerStarted { .. } => "server_started",
            Event::ServerStopping { .. } => "server_stopping",
            Event::SpoolProblem { .. } => "spool_problem",
        }
    }

    pub fn client(&self) -> Option<IpAddr> {
        match self {
            Event::ConnectionOpened { client, .. }
            | Event::ConnectionRefused { client, .. }
            | Event::ConnectionClosed { client, .. }
            | Event::TlsEstablished { client, .. }
            | Event::AuthSucceeded { client, .. }
            | Event::AuthFailed { client, .. }
            | Event::AccountLocked { client, .. }
            | Event::AddressBanned { client, .. }
            | Event::AdminLogin { client, .. }
            | Event::MailRefused { client, .. }
            | Event::RcptAccepted { client, .. }
            | Event::RcptRefused { client, .. }
            | Event::DataRefused { client, .. }
            | Event::MessageAccepted { client, .. }
            | Event::MessageRefused { client, .. }
            | Event::SettingsChanged { client, .. }
            | Event::UsersChanged { client, .. } => Some(*client),
            _ => None,
        }
    }
}

/// A Unix time as RFC 3339 in UTC ("2026-12-04T21:30:00Z"), as logs,
/// webhooks and alert mail write times.
pub fn rfc3339(t: i64) -> String {
    chrono::DateTime::from_timestamp(t, 0)
        .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default()
}

/// The name a unit variant is serialized under ("needs_auth", "deferred"),
/// for labels and text; empty for anything that is not a plain string.
pub fn wire_name(value: &impl Serialize) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => s,
        _ => String::new(),
    }
}

/// Something that wants every event, in order, as it is emitted. Must be quick:
/// it runs on the emitter's thread.
pub trait Subscriber: Send + Sync {
    fn on_event(&self, event: &Event);

    /// The same, for a subscriber that keeps events: every subscriber is
    /// handed the one shared copy, so keeping it costs no clone.
    fn on_shared(&self, event: &Arc<Event>) {
        self.on_event(event)
    }
}

/// The fan-out. Cheap to clone; every clone feeds the same subscribers.
#[derive(Clone)]
pub struct Events {
    subscribers: Arc<Vec<Arc<dyn Subscriber>>>,
    broadcast: broadcast::Sender<Arc<Event>>,
}

impl Events {
    /// The fan-out with the log writer as its only subscriber.
    pub fn new() -> Events {
        Events::with_subscribers(vec![Arc::new(log::LogWriter)])
    }

    /// The log writer first, then `others`.
    pub fn with_log_and(others: Vec<Arc<dyn Subscriber>>) -> Events {
        let mut all: Vec<Arc<dyn Subscriber>> = vec![Arc::new(log::LogWriter)];
        all.extend(others);
        Events::with_subscribers(all)
    }

    pub fn with_subscribers(subscribers: Vec<Arc<dyn Subscriber>>) -> Events {
        let (broadcast, _) = broadcast::channel(BROADCAST_CAPACITY);
        Events {
            subscribers: Arc::new(subscribers),
            broadcast,
        }
    }

    pub fn emit(&self, event: Event) {
        let event = Arc::new(event);
        for s in self.subscribers.iter() {
            s.on_shared(&event);
        }
        if self.broadcast.receiver_count() > 0 {
            let _ = self.broadcast.send(event);
        }
    }

    /// Every event from now on (a listener that falls behind loses the oldest).
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.broadcast.subscribe()
    }
}

impl Default for Events {
    fn default() -> Self {
        Events::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    struct Recorder(Mutex<Vec<String>>);

    impl Subscriber for Recorder {
        fn on_event(&self, e: &Event) {
            self.0.lock().unwrap().push(format!("{:?}", e.client()));
        }
    }

    #[test]
    fn an_events_kind_is_its_json_tag() {
        let client: IpAddr = "192.0.2.7".parse().unwrap();
        for e in [
            Event::AccountLocked {
                user: "bob".into(),
                client,
            },
            Event::GuardUntrusted {
                client,
                evidence: "x".into(),
            },
            Event::ConnectionOpened {
                session: 1,
                client,
                listener: ListenerKind::Smtp,
                tls: false,
                via_proxy: None,
            },
        ] {
            let json = serde_json::to_value(&e).unwrap();
            assert_eq!(json["event"], e.kind());
        }
    }

    #[tokio::test]
    async fn every_subscriber_and_listener_sees_each_event() {
        let recorder = Arc::new(Recorder(Mutex::new(Vec::new())));
        let events = Events::with_subscribers(vec![recorder.clone()]);
        let mut rx = events.subscribe();
        let client: IpAddr = "192.0.2.7".parse().unwrap();
        events.emit(Event::RcptRefused {
            session: 1,
            client,
            from: "a@x".into(),
            to: "b@y".into(),
            user: None,
            reason: RefuseReason::NeedsAuth,
        });
        assert_eq!(recorder.0.lock().unwrap().as_slice(), ["Some(192.0.2.7)"]);
        let got = rx.recv().await.unwrap();
        let json = serde_json::to_value(&*got).unwrap();
        assert_eq!(json["event"], "rcpt_refused");
        assert_eq!(json["reason"]["kind"], "needs_auth");
    }
}
