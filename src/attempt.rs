//! What one delivery attempt found for one recipient, as fields rather than
//! prose: the step it got to, the next hop's reply code and enhanced status,
//! which host said it, and the text. The queue records it in the state file,
//! bounces report it (Status, Remote-MTA, Diagnostic-Code) and events carry
//! it, without anyone parsing a sentence back.
//!
//! A leaf: the spool, the queue, events and bounces use it without
//! depending on the delivery code, whose SMTP client makes most of them
//! (`delivery::result` adds the constructors from its replies and errors).

use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::IpAddr;

/// How far an attempt got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Deciding where the mail goes (routes, MX lookup, address literals).
    Routing,
    /// Looking up a next hop's address.
    Dns,
    Connect,
    Greeting,
    Helo,
    StartTls,
    Auth,
    MailFrom,
    RcptTo,
    Data,
    /// Elsewhere in the SMTP session (RSET, a broken connection).
    Session,
    /// Decided here without a next hop (expiry, configuration, local errors).
    Queue,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptResult {
    pub stage: Stage,
    /// The next hop's reply code, when one replied.
    pub code: Option<u16>,
    /// The enhanced status code ("5.1.1"), the next hop's or our own.
    pub enhanced: Option<String>,
    /// The next hop that answered (host name, or an address).
    pub remote: Option<String>,
    /// The address it was reached at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_ip: Option<IpAddr>,
    pub text: String,
    /// The outbound TLS policy (MTA-STS, DANE) the attempt was made under,
    /// and how it went.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_policy: Option<Box<TlsPolicyOutcome>>,
}

/// Which outbound TLS policy governed an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TlsPolicyKind {
    /// MTA-STS in enforce mode: a matching MX and a valid certificate, or no delivery.
    StsEnforce,
    /// MTA-STS in testing mode: delivered whatever happened, failures reported.
    StsTesting,
    /// DANE TLSA records of the MX host.
    Dane,
}

impl TlsPolicyKind {
    pub fn name(self) -> &'static str {
        match self {
            TlsPolicyKind::StsEnforce => "MTA-STS enforce",
            TlsPolicyKind::StsTesting => "MTA-STS testing",
            TlsPolicyKind::Dane => "DANE",
        }
    }
}

/// How an attempt fared under its TLS policy: `failure` is an RFC 8460
/// result type ("certificate-host-mismatch", "starttls-not-supported", …).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsPolicyOutcome {
    pub policy: TlsPolicyKind,
    /// The domain whose policy it is.
    pub domain: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
    /// What was checked or went wrong, in words.
    pub detail: String,
}

impl fmt::Display for TlsPolicyOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.failure {
            None => write!(
                f,
                "{} for {}: passed ({})",
                self.policy.name(),
                self.domain,
                self.detail
            ),
            Some(kind) => write!(
                f,
                "{} for {}: {kind} ({})",
                self.policy.name(),
                self.domain,
                self.detail
            ),
        }
    }
}

impl AttemptResult {
    /// Our own finding, with our own enhanced status.
    pub fn local(stage: Stage, enhanced: &str, text: impl Into<String>) -> AttemptResult {
        AttemptResult {
            stage,
            code: None,
            enhanced: Some(enhanced.to_string()),
            remote: None,
            remote_ip: None,
            tls_policy: None,
            text: text.into(),
        }
    }

    /// The same, naming the address the next hop was reached at.
    pub fn with_ip(mut self, ip: IpAddr) -> AttemptResult {
        self.remote_ip = Some(ip);
        self
    }

    /// The status for a delivery report: the enhanced code, or one derived
    /// from the reply code's class.
    pub fn status(&self) -> String {
        if let Some(e) = &self.enhanced {
            return e.clone();
        }
        match self.code {
            Some(c) if (200..300).contains(&c) => "2.0.0".into(),
            Some(c) if (400..500).contains(&c) => "4.0.0".into(),
            _ => "5.0.0".into(),
        }
    }

    pub fn is_permanent(&self) -> bool {
        match self.code {
            Some(c) => c >= 500,
            None => self.enhanced.as_deref().is_some_and(|e| e.starts_with('5')),
        }
    }
}

impl fmt::Display for AttemptResult {
    /// "550 5.1.1 No such user (from mx.example.net)", as `queue show` and the log say it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(code) = self.code {
            write!(f, "{code} ")?;
        }
        if let Some(e) = &self.enhanced {
            write!(f, "{e} ")?;
        }
        f.write_str(&self.text)?;
        if let (Some(remote), Some(_)) = (&self.remote, self.code) {
            write!(f, " (from {remote}")?;
            if let Some(ip) = self.remote_ip {
                write!(f, "[{ip}]")?;
            }
            f.write_str(")")?;
        }
        Ok(())
    }
}

/// Splits a leading enhanced status code ("5.1.1 text") from a reply text.
pub(crate) fn split_enhanced(text: &str) -> (Option<String>, String) {
    let (first, rest) = text.split_once(' ').unwrap_or((text, ""));
    let parts: Vec<&str> = first.split('.').collect();
    let is_code = parts.len() == 3
        && matches!(parts[0], "2" | "4" | "5")
        && parts[1..]
            .iter()
            .all(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()));
    if is_code {
        (Some(first.to_string()), rest.to_string())
    } else {
        (None, text.to_string())
    }
}
