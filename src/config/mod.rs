//! Typed configuration: TOML with unknown keys refused, the embedded safe
//! default, semantic validation whose errors name the key; the open-relay guard lives in policy (it asks the server's own lookup).

mod admin;
mod archive;
mod checks;
mod cluster;
mod delivery;
mod dkim;
mod duration;
mod guard;
mod login_policy;
mod net;
mod networks;
mod notify;
mod open_relay;
mod smarthost;
mod validate;
mod validate_archive;
mod validate_cluster;
mod validate_dkim;
mod validate_notify;
mod validate_outbound_tls;
mod validate_routes;
mod words;

pub use crate::smtp::data::{BareNewline, NulInData};
pub use admin::{AdminConfig, SettingsMode};
pub use archive::ArchiveConfig;
pub use checks::{
    AddressPattern, ChecksConfig, DnsListZone, HeloCheck, LimitsConfig, ListsConfig, OnDnsError,
    PregreetCheck, ReverseDnsCheck, SenderDomainCheck,
};
pub use cluster::ClusterConfig;
pub use delivery::{
    BounceAttach, DeliveryConfig, DeliveryMode, NextHop, OutboundTls, RouteConfig, SmarthostTls,
    Switch,
};
pub use dkim::{DEFAULT_SIGNED_HEADERS, DkimConfig};
pub use duration::ConfigDuration;
pub use guard::{GuardConfig, GuardMode};
pub use login_policy::{PolicyConfig, SenderRule};
pub use net::IpRange;
pub use networks::{NetworkMatch, NetworkTable};
pub use notify::{AlertConfig, AlertOn, WEBHOOK_KINDS, WebhookConfig};
pub use open_relay::{OpenRelayEntry, is_non_global, open_relay_entries};
pub use smarthost::{
    LEGACY_PROFILE, OAuthGrant, OAuthSettings, Preset, Profile, ProfileAuth, Quota,
    SmarthostConfig, Transport,
};
pub use validate::{Finding, Severity};

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// The configuration that `serve` uses when no --config is given.
pub const EMBEDDED_DEFAULT: &str = include_str!("default.toml");

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default = "default_listeners")]
    pub listener: Vec<ListenerConfig>,
    #[serde(default)]
    pub tls: TlsConfig,
    #[serde(default)]
    pub auth: AuthConfig,
    #[serde(default)]
    pub access: AccessConfig,
    #[serde(default)]
    pub network: Vec<NetworkConfig>,
    #[serde(default)]
    pub relay: RelayConfig,
    #[serde(default)]
    pub delivery: DeliveryConfig,
    #[serde(default)]
    pub route: Vec<RouteConfig>,
    #[serde(default)]
    pub smarthost: Vec<SmarthostConfig>,
    /// Rules per login and per network (`[[policy]]`), first match.
    #[serde(default)]
    pub policy: Vec<PolicyConfig>,
    #[serde(default)]
    pub archive: ArchiveConfig,
    /// Receivers of signed JSON notifications.
    #[serde(default)]
    pub webhook: Vec<WebhookConfig>,
    /// Conditions worth telling someone about.
    #[serde(default)]
    pub alert: Vec<AlertConfig>,
    /// Keys that sign our own domains' outgoing mail.
    #[serde(default)]
    pub dkim: Vec<DkimConfig>,
    #[serde(default)]
    pub dns: DnsConfig,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub diagnostics: DiagnosticsConfig,
    #[serde(default)]
    pub checks: ChecksConfig,
    #[serde(default)]
    pub lists: ListsConfig,
    #[serde(default)]
    pub limits: LimitsConfig,
    #[serde(default)]
    pub guard: GuardConfig,
    #[serde(default)]
    pub admin: AdminConfig,
    /// Several nodes sharing one queue in PostgreSQL (absent: a local queue).
    #[serde(default)]
    pub cluster: Option<ClusterConfig>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DiagnosticsConfig {
    /// Run the open-relay test battery against our own smtp listeners at
    /// start, from a local address outside the trusted networks; refuse to
    /// go on serving when it relays (unless relay.allow_open_relay).
    #[serde(default)]
    pub self_test_on_start: bool,
    /// The address the world sees our mail come from (for `doctor`); the
    /// source address of the default route when absent.
    #[serde(default)]
    pub public_ip: Option<std::net::IpAddr>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DnsConfig {
    /// Resolvers to ask ("IP:PORT", or a bare IP for port 53); the system's
    /// resolv.conf when empty. When set, no lookup goes anywhere else.
    #[serde(default, deserialize_with = "nameservers")]
    pub nameservers: Vec<SocketAddr>,
    /// Time allowed for one lookup.
    pub timeout: Option<ConfigDuration>,
    /// These resolvers validate DNSSEC: their AD bit is trusted (DANE).
    #[serde(default)]
    pub validating: bool,
}

/// `"IP:PORT"`, `"[IPv6]:PORT"` or a bare address (port 53).
fn nameservers<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<SocketAddr>, D::Error> {
    Vec::<String>::deserialize(d)?
        .iter()
        .map(|s| {
            let s = s.trim();
            s.parse::<SocketAddr>()
                .or_else(|_| s.parse::<std::net::IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
                .map_err(|_| {
                    serde::de::Error::custom(format!(
                        "{s:?} is not a name server address: write \"192.0.2.53\", \"192.0.2.53:53\" or \"[2001:db8::53]:53\""
                    ))
                })
        })
        .collect()
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Name in the banner, EHLO reply and Received: header; the system host name when absent.
    pub hostname: Option<String>,
    pub data_dir: PathBuf,
    pub max_message_size: u64,
    pub max_recipients: usize,
    /// Longest command line, CRLF included (RFC 5321 4.5.3.1.4 says 512).
    pub max_command_line: usize,
    /// Longest line of message text, CRLF included (RFC 5321 4.5.3.1.6 says 1000).
    pub max_text_line: usize,
    /// Failed commands allowed in one session before it is closed.
    pub max_errors: u32,
    /// Commands that do nothing (NOOP, RSET, VRFY, EXPN, HELP) allowed
    /// between two accepted messages before the session is closed; a tenth
    /// of it while the server is under stress. Such commands never keep a
    /// session alive past `stress_timeout` under stress.
    pub max_junk_commands: u32,
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    /// Slots kept for trusted networks; max_connections / 10 when absent.
    pub reserved_connections: Option<usize>,
    /// New connections per minute from one address outside the trusted networks (0 = no cap).
    pub max_connection_rate_per_ip: u32,
    /// Under stress (three quarters of the slots taken), the longest wait for
    /// a command or a piece of data.
    pub stress_timeout: ConfigDuration,
    /// What to do with a bare CR or LF inside message data.
    pub bare_newline: BareNewline,
    /// What to do with a NUL byte inside message data.
    pub nul_in_data: NulInData,
    /// Written into every queue ID this server mints, so nodes sharing a queue never collide.
    pub node_id: u8,
    /// Most Received: headers a message may carry before it is refused as a mail loop.
    pub max_hops: usize,
    /// Time allowed for one command line to arrive (RFC 5321 4.5.3.2.7: 5 minutes).
    pub command_timeout: ConfigDuration,
    /// Time allowed between two pieces of message data (RFC 5321 4.5.3.2.5: 3 minutes).
    pub data_block_timeout: ConfigDuration,
    /// Time allowed for a whole DATA or BDAT chunk, so a trickling client cannot hold a slot forever.
    pub data_timeout: ConfigDuration,
    /// Time a connection may last in all.
    pub session_timeout: ConfigDuration,
    /// Time given to open sessions to finish after a shutdown request.
    pub shutdown_grace: ConfigDuration,
}

impl ServerConfig {
    /// The connection slots kept for trusted clients.
    pub fn reserved_connections(&self) -> usize {
        self.reserved_connections
            .unwrap_or(self.max_connections / 10)
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            hostname: None,
            data_dir: PathBuf::from("portcullis-data"),
            max_message_size: 26_214_400,
            max_recipients: 100,
            max_command_line: 512,
            max_text_line: 1000,
            max_errors: 20,
            max_junk_commands: 100,
            max_connections: 200,
            max_connections_per_ip: 20,
            reserved_connections: None,
            max_connection_rate_per_ip: 60,
            stress_timeout: ConfigDuration::secs(10),
            bare_newline: BareNewline::Reject,
            nul_in_data: NulInData::Reject,
            node_id: 0,
            max_hops: 50,
            command_timeout: ConfigDuration::secs(300),
            data_block_timeout: ConfigDuration::secs(180),
            data_timeout: ConfigDuration::secs(600),
            session_timeout: ConfigDuration::secs(3600),
            shutdown_grace: ConfigDuration::secs(10),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    pub address: SocketAddr,
    #[serde(default)]
    pub kind: ListenerKind,
    /// Connections from `proxy_from` must start with a PROXY v1/v2 header,
    /// whose source address is then the client for every rule.
    #[serde(default)]
    pub proxy_protocol: bool,
    /// The load balancers allowed to send PROXY headers (addresses or ranges);
    /// on a proxy_protocol listener, connections from anywhere else are refused.
    #[serde(default)]
    pub proxy_from: Vec<IpRange>,
    /// Offer STARTTLS here. Off only for old printers and scanners that try
    /// STARTTLS when offered and then fail on TLS 1.0 or CBC suites: their
    /// mail then crosses the network in clear. AUTH still needs TLS.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub offer_starttls: bool,
}

fn yes() -> bool {
    true
}

fn is_true(b: &bool) -> bool {
    *b
}

#[derive(Debug, Clone, Copy, PartialEq, Hash, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenerKind {
    /// Port 25 style: STARTTLS offered; relay decided by the network table.
    #[default]
    Smtp,
    /// Port 587 style: STARTTLS offered; AUTH required before MAIL.
    Submission,
    /// Port 465 style: TLS from the first byte; AUTH required before MAIL.
    Smtps,
}

impl ListenerKind {
    pub fn requires_auth(self) -> bool {
        matches!(self, ListenerKind::Submission | ListenerKind::Smtps)
    }
    pub fn name(self) -> &'static str {
        match self {
            ListenerKind::Smtp => "smtp",
            ListenerKind::Submission => "submission",
            ListenerKind::Smtps => "smtps",
        }
    }
}

fn default_listeners() -> Vec<ListenerConfig> {
    vec![ListenerConfig {
        address: SocketAddr::from(([127, 0, 0, 1], 2525)),
        kind: ListenerKind::Smtp,
        proxy_protocol: false,
        proxy_from: Vec::new(),
        offer_starttls: true,
    }]
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// htpasswd-style `name:hash` lines; `data_dir/users` when absent.
    pub users_file: Option<PathBuf>,
    /// Allow AUTH over a connection that is neither TLS nor loopback.
    #[serde(default)]
    pub allow_plaintext: bool,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AccessConfig {
    #[serde(default)]
    pub filter: FilterMode,
    #[serde(default)]
    pub allow: Vec<IpRange>,
    #[serde(default)]
    pub deny: Vec<IpRange>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FilterMode {
    #[default]
    Off,
    Allow,
    Deny,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkConfig {
    pub range: IpRange,
    pub auth: NetworkAuth,
    #[serde(default)]
    pub exclude: Vec<IpRange>,
    /// Bare CR or LF in message data from this network's trusted or
    /// authenticated clients; unset means "normalize" (LF-only files from
    /// curl and scripts), while strangers follow `server.bare_newline`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bare_newline: Option<BareNewline>,
    /// Offer STARTTLS to this range's clients (unset: yes). See
    /// `ListenerConfig::offer_starttls` for who needs it off, and the cost.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offer_starttls: Option<bool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkAuth {
    /// May relay without AUTH.
    None,
    /// May relay only after AUTH.
    Required,
    /// Never relays, even after AUTH.
    Deny,
}

impl NetworkAuth {
    pub fn name(self) -> &'static str {
        match self {
            NetworkAuth::None => "none",
            NetworkAuth::Required => "required",
            NetworkAuth::Deny => "deny",
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RelayConfig {
    #[serde(default)]
    pub inbound_domains: Vec<String>,
    #[serde(default)]
    pub allow_open_relay: bool,
    /// Whether recipients in inbound domains are checked before we take the message.
    #[serde(default)]
    pub verify_recipients: VerifyRecipients,
    /// For verify_recipients = "list": one valid address or `@domain` a line; re-read when it changes.
    pub valid_recipients_file: Option<PathBuf>,
    /// For "callout": how long a next hop's "yes" is remembered.
    #[serde(default = "callout_positive")]
    pub callout_cache_positive: ConfigDuration,
    /// For "callout": how long a next hop's "no such user" is remembered.
    #[serde(default = "callout_negative")]
    pub callout_cache_negative: ConfigDuration,
}

fn callout_positive() -> ConfigDuration {
    ConfigDuration::secs(3600)
}
fn callout_negative() -> ConfigDuration {
    ConfigDuration::secs(600)
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            inbound_domains: Vec::new(),
            allow_open_relay: false,
            verify_recipients: VerifyRecipients::Off,
            valid_recipients_file: None,
            callout_cache_positive: callout_positive(),
            callout_cache_negative: callout_negative(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum VerifyRecipients {
    /// Anyone may send to any address of an inbound domain.
    #[default]
    Off,
    /// Only addresses in relay.valid_recipients_file.
    List,
    /// Ask the inbound domain's next hop (its [[route]]) with an RCPT probe.
    Callout,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    #[serde(default)]
    pub format: LogFormat,
    /// A tracing filter such as "info" or "portcullis=debug"; RUST_LOG wins when set.
    pub level: Option<String>,
    /// A directory for SMTP transcripts: every session's conversation, and
    /// every outbound delivery's, one file per day (AUTH secrets masked).
    pub transcript: Option<PathBuf>,
    /// Days of transcript files kept.
    #[serde(default = "default_transcript_days")]
    pub transcript_days: u32,
    /// Bytes of transcript written per day at most (then lines are dropped,
    /// counted and noted in the file).
    #[serde(default = "default_transcript_day_bytes")]
    pub transcript_max_bytes_per_day: u64,
    /// Bytes of transcript one client address may cause per day.
    #[serde(default = "default_transcript_client_bytes")]
    pub transcript_max_bytes_per_client: u64,
    /// Free space the transcripts leave on their file system (for the spool,
    /// when they share it): below it, transcripts pause.
    #[serde(default = "default_transcript_min_free")]
    pub transcript_min_free_disk: u64,
}

fn default_transcript_days() -> u32 {
    7
}
fn default_transcript_day_bytes() -> u64 {
    1 << 30
}
fn default_transcript_client_bytes() -> u64 {
    16 << 20
}
fn default_transcript_min_free() -> u64 {
    1 << 30
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            level: None,
            transcript: None,
            transcript_days: default_transcript_days(),
            transcript_max_bytes_per_day: default_transcript_day_bytes(),
            transcript_max_bytes_per_client: default_transcript_client_bytes(),
            transcript_min_free_disk: default_transcript_min_free(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// A configuration problem: the key, the value and the reason.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{origin}: {message}")]
    Parse { origin: String, message: String },
    #[error("{origin}: `{key}` = {value}: {reason}")]
    Invalid {
        origin: String,
        key: String,
        value: String,
        reason: String,
    },
}

/// A TOML error as serde says it, then in words when that helps.
pub fn parse_error_text(e: &toml::de::Error, text: &str) -> String {
    let said = e.to_string().trim_end().to_string();
    match words::in_words(e, text) {
        Some(words) => format!("{said}\nin words: {words}"),
        None => said,
    }
}

impl Config {
    /// The embedded safe default.
    pub fn embedded_default() -> Config {
        Config::parse(EMBEDDED_DEFAULT, "embedded default")
            .expect("the embedded default configuration is valid")
    }

    /// Reads, parses and validates a config file (errors only; warnings via `findings`).
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(&text, &path.display().to_string())
    }

    /// Parses and validates TOML text; `origin` names it in error messages.
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            origin: origin.to_string(),
            message: parse_error_text(&e, text),
        })?;
        if let Some(f) = validate::findings(&config)
            .into_iter()
            .find(|f| f.severity == Severity::Error)
        {
            return Err(ConfigError::Invalid {
                origin: origin.to_string(),
                key: f.key,
                value: f.value,
                reason: f.reason,
            });
        }
        Ok(config)
    }

    /// Every warning and error about this configuration, for check-config and the log at start.
    pub fn findings(&self) -> Vec<Finding> {
        validate::findings(self)
    }

    /// The node part of the queue ids this node mints: `cluster.node_id`
    /// in a cluster, else `server.node_id`.
    pub fn node_id(&self) -> u8 {
        self.cluster
            .as_ref()
            .map_or(self.server.node_id, |c| c.node_id)
    }

    pub fn hostname(&self) -> String {
        self.server.hostname.clone().unwrap_or_else(system_hostname)
    }

    /// The `[[policy]]` rule for a client logged in as `user` from `ip`, with its index.
    pub fn login_policy(
        &self,
        user: Option<&str>,
        ip: Option<std::net::IpAddr>,
    ) -> Option<(usize, &PolicyConfig)> {
        login_policy::matching(&self.policy, user, ip)
    }

    /// What the old `[delivery] smarthost` keys became, when they are used.
    pub fn legacy_profile_note(&self) -> Option<String> {
        validate_routes::legacy_profile_note(self)
    }

    /// Every smart-host profile, complete: the old `[delivery] smarthost`
    /// keys as "default", then each [[smarthost]].
    pub fn profiles(&self) -> Vec<Profile> {
        smarthost::profiles(&self.delivery, &self.smarthost)
    }

    /// The profile named `name`.
    pub fn profile(&self, name: &str) -> Option<Profile> {
        self.profiles().into_iter().find(|p| p.name == name)
    }

    /// Where mail goes in `mode = "smarthost"` when no [[route]] says
    /// otherwise: the profile "default" (the old keys, or a [[smarthost]] of
    /// that name), else the first [[smarthost]].
    pub fn default_profile(&self) -> Option<Profile> {
        let all = self.profiles();
        all.iter()
            .position(|p| p.name == LEGACY_PROFILE)
            .or(if all.is_empty() { None } else { Some(0) })
            .map(|i| all[i].clone())
    }

    /// Where OAuth2 tokens are kept, one file per profile.
    pub fn oauth_dir(&self) -> PathBuf {
        self.server.data_dir.join("oauth")
    }

    /// The token file of profile `name` (0600, in the data directory).
    pub fn oauth_token_file(&self, name: &str) -> PathBuf {
        // Names are checked to have no spaces; '/' would leave the directory.
        self.oauth_dir()
            .join(format!("{}.json", name.replace(['/', '\\'], "_")))
    }

    pub fn users_file(&self) -> PathBuf {
        self.auth
            .users_file
            .clone()
            .unwrap_or_else(|| self.server.data_dir.join("users"))
    }
}

/// The machine's host name, or "localhost" when it has none we can use.
pub fn system_hostname() -> String {
    let uname = rustix::system::uname();
    match uname.nodename().to_str() {
        Ok(name) if !name.is_empty() => name.to_string(),
        _ => "localhost".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_is_valid_and_loopback_only() {
        let c = Config::embedded_default();
        assert_eq!(c.listener.len(), 1);
        assert!(c.listener[0].address.ip().is_loopback());
        assert!(open_relay_entries(&c).is_empty());
    }

    #[test]
    fn unknown_keys_are_refused_with_their_name() {
        let err = Config::parse("[server]\nhostnmae = \"x\"\n", "t").unwrap_err();
        assert!(err.to_string().contains("hostnmae"), "{err}");
    }

    #[test]
    fn bad_range_names_the_value() {
        let err = Config::parse(
            "[[network]]\nrange = \"10.0.0.1/8\"\nauth = \"none\"\n",
            "t",
        )
        .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("range") && msg.contains("host bits"), "{msg}");
    }
}
