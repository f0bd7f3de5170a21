//! `[[webhook]]` and `[[alert]]`: where notifications go, and which
//! conditions of the relay are worth telling someone about.

use super::ConfigDuration;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// The notification kinds a webhook may ask for (`events = ["delivered", "alert"]`).
pub const WEBHOOK_KINDS: &[&str] = &[
    "accepted",
    "delivered",
    "deferred",
    "bounced",
    "held",
    "alert",
    "refused",
    "banned",
    "profile_problem",
    "profile_recovered",
    "reload",
    "spool_problem",
    "server_started",
    "server_stopping",
];

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// What alerts name it by (`webhook = "ops"`), and its outbox directory.
    pub name: String,
    /// `https://…`; `http://` only to a loopback address.
    pub url: String,
    /// The kinds it receives (see `WEBHOOK_KINDS`; "*" for every kind).
    #[serde(default)]
    pub events: Vec<String>,
    /// The HMAC-SHA256 key of the `X-Portcullis-Signature` header (first line of the file).
    pub secret_file: Option<PathBuf>,
    /// Extra trust anchors for an `https` receiver (a private CA).
    pub ca_file: Option<PathBuf>,
    /// How long one notification is retried before it is given up.
    #[serde(default = "default_retry_for")]
    pub retry_for: ConfigDuration,
    /// The most the outbox keeps on disk while the receiver is away; past
    /// it, the oldest notifications are dropped (and counted).
    #[serde(default = "default_outbox_max_bytes")]
    pub outbox_max_bytes: u64,
    /// How long one POST may take.
    #[serde(default = "default_webhook_timeout")]
    pub timeout: ConfigDuration,
}

fn default_retry_for() -> ConfigDuration {
    ConfigDuration::secs(24 * 3600)
}
fn default_outbox_max_bytes() -> u64 {
    32 << 20
}
fn default_webhook_timeout() -> ConfigDuration {
    ConfigDuration::secs(10)
}

impl WebhookConfig {
    /// Whether the webhook receives notifications of `kind`.
    pub fn wants(&self, kind: &str) -> bool {
        self.events.iter().any(|e| e == kind || e == "*")
    }
}

/// What an alert watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertOn {
    /// Mail waiting and nothing delivered for `for`.
    DeliveryStalled,
    /// More than `threshold` messages in the queue (for `for`, when set).
    QueueSize,
    /// At least `threshold` (default 1) bounces within `for` (default 1h).
    Bounce,
    /// A smart-host profile's provider refuses its login.
    ProfileAuthFailed,
    /// A profile's quota is spent (the provider said so, or our own pacing).
    ProfileQuotaExhausted,
    /// The guard holds mail of a source that sends to too many domains.
    FloodHeld,
    /// The NAT sentinel withdrew an address's trust.
    NatSuspected,
    /// The open-relay self-test got a message relayed.
    OpenRelay,
    /// Our public address is on one of the DNS lists of `[checks] dnsbl`.
    DnsblListed,
    /// The data directory's file system has less than `threshold` bytes free.
    DiskLow,
}

impl AlertOn {
    pub fn name(self) -> &'static str {
        match self {
            AlertOn::DeliveryStalled => "delivery_stalled",
            AlertOn::QueueSize => "queue_size",
            AlertOn::Bounce => "bounce",
            AlertOn::ProfileAuthFailed => "profile_auth_failed",
            AlertOn::ProfileQuotaExhausted => "profile_quota_exhausted",
            AlertOn::FloodHeld => "flood_held",
            AlertOn::NatSuspected => "nat_suspected",
            AlertOn::OpenRelay => "open_relay",
            AlertOn::DnsblListed => "dnsbl_listed",
            AlertOn::DiskLow => "disk_low",
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AlertConfig {
    pub on: AlertOn,
    /// How long the condition must hold (`delivery_stalled`: default 30m;
    /// `bounce`: the window counted, default 1h).
    #[serde(rename = "for")]
    pub for_: Option<ConfigDuration>,
    /// `queue_size`: messages; `bounce`: bounces in the window; `disk_low`: bytes free.
    pub threshold: Option<u64>,
    /// The `[[webhook]]` that receives it.
    pub webhook: Option<String>,
    /// An address that receives it by mail.
    pub email: Option<String>,
    /// While the condition lasts, tell again this often (default 4h; "0s": never again).
    pub repeat: Option<ConfigDuration>,
}

impl AlertConfig {
    /// How long the condition must hold before the alert fires.
    pub fn hold_time(&self) -> std::time::Duration {
        match (self.for_, self.on) {
            (Some(d), _) => d.get(),
            (None, AlertOn::DeliveryStalled) => std::time::Duration::from_secs(30 * 60),
            (None, AlertOn::Bounce) => std::time::Duration::from_secs(3600),
            _ => std::time::Duration::ZERO,
        }
    }

    pub fn repeat_every(&self) -> Option<std::time::Duration> {
        let d = self
            .repeat
            .map_or(std::time::Duration::from_secs(4 * 3600), |r| r.get());
        (!d.is_zero()).then_some(d)
    }

    /// The threshold in force (each condition's default when unset).
    pub fn threshold_or_default(&self) -> u64 {
        self.threshold.unwrap_or(match self.on {
            AlertOn::QueueSize => 1000,
            AlertOn::DiskLow => 1 << 30,
            _ => 1,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_alert_reads_its_keys_and_defaults() {
        let a: AlertConfig =
            toml::from_str("on = \"delivery_stalled\"\nwebhook = \"ops\"\n").unwrap();
        assert_eq!(a.on, AlertOn::DeliveryStalled);
        assert_eq!(a.hold_time().as_secs(), 1800);
        assert_eq!(a.repeat_every().unwrap().as_secs(), 4 * 3600);
        let b: AlertConfig =
            toml::from_str("on = \"bounce\"\nfor = \"10m\"\nthreshold = 5\nrepeat = \"0s\"\nemail = \"ops@example.org\"\n").unwrap();
        assert_eq!(b.hold_time().as_secs(), 600);
        assert_eq!(b.threshold_or_default(), 5);
        assert!(b.repeat_every().is_none());
        assert!(toml::from_str::<AlertConfig>("on = \"nonsense\"\n").is_err());
    }

    #[test]
    fn a_webhook_wants_its_kinds() {
        let w: WebhookConfig = toml::from_str(
            "name = \"ops\"\nurl = \"http://127.0.0.1:9/\"\nevents = [\"delivered\", \"alert\"]\n",
        )
        .unwrap();
        assert!(w.wants("delivered") && w.wants("alert") && !w.wants("bounced"));
        assert_eq!(w.retry_for.get().as_secs(), 86400);
    }
}
