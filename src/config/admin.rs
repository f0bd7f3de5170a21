//! `[admin]`: the web admin page, its JSON API and `/metrics`; and the
//! transcript keys of `[log]`.

use super::ConfigDuration;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Where the admin page listens; off when absent. `/metrics` is served
    /// there without a login, so bind it where only operators reach.
    pub address: Option<SocketAddr>,
    /// Who may log in: names from the users file (same passwords as SMTP AUTH).
    pub users: Vec<String>,
    /// Serve HTTPS. Required for an address other than loopback (passwords and
    /// session cookies must not cross a network in clear). Default: on when the
    /// address is not loopback and a certificate is configured.
    pub tls: Option<bool>,
    /// Certificate and key for HTTPS; default: `[tls] cert` and `key`, else
    /// the self-signed certificate kept in data_dir.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// How long a login lasts without use.
    pub session_idle: ConfigDuration,
    /// How long a login lasts at most.
    pub session_lifetime: ConfigDuration,
    /// Host names the page answers to besides IP literals, `localhost` and
    /// `server.hostname`: any other Host header is refused, so that a web
    /// page elsewhere cannot reach a loopback admin page through DNS rebinding.
    pub hostnames: Vec<String>,
    /// Whether the Settings page may change the configuration file
    /// (`"read-only"` for a file managed by configuration management).
    pub settings: SettingsMode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SettingsMode {
    #[default]
    Edit,
    ReadOnly,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            address: None,
            users: Vec::new(),
            tls: None,
            cert: None,
            key: None,
            session_idle: ConfigDuration::secs(30 * 60),
            session_lifetime: ConfigDuration::secs(12 * 3600),
            hostnames: Vec::new(),
            settings: SettingsMode::Edit,
        }
    }
}

impl AdminConfig {
    /// Whether the admin page is served over HTTPS, given whether `[tls]` names a certificate.
    pub fn https(&self, server_cert: bool) -> bool {
        match (self.tls, self.address) {
            (Some(on), _) => on,
            (None, Some(a)) => !a.ip().is_loopback() && (server_cert || self.cert.is_some()),
            (None, None) => false,
        }
    }
}
