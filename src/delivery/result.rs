//! What one delivery attempt found for one recipient, as fields rather than
//! prose: the step it got to, the next hop's reply code and enhanced status,
//! which host said it, and the text. The queue records it in the state file,
//! bounces report it (Status, Remote-MTA, Diagnostic-Code) and events carry
//! it, without anyone parsing a sentence back.

use super::client::{ClientError, ServerReply};
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

    /// A reply of the next hop `remote` at `stage`.
    pub fn reply(stage: Stage, reply: &ServerReply, remote: &str) -> AttemptResult {
        let text = reply.text.replace('\n', " / ");
        let (enhanced, rest) = split_enhanced(&text);
        AttemptResult {
            stage,
            code: Some(reply.code),
            enhanced,
            remote: Some(remote.to_string()),
            remote_ip: None,
            tls_policy: None,
            text: rest,
        }
    }

    /// Our own decision about sending to `next_hop` (it lacks SMTPUTF8, its
    /// SIZE is too small): no reply code and no remote, so that a report
    /// never presents it as the next hop's answer; the hop is named in the text.
    pub fn local_about(stage: Stage, decided: &ServerReply, next_hop: &str) -> AttemptResult {
        let (enhanced, rest) = split_enhanced(&decided.text);
        let enhanced = enhanced.unwrap_or_else(|| {
            if decided.is_permanent() {
                "5.0.0"
            } else {
                "4.0.0"
            }
            .to_string()
        });
        AttemptResult::local(
            stage,
            &enhanced,
            format!("{rest} (decided here, next hop {next_hop})"),
        )
    }

    /// What the SMTP client ran into with `remote`.
    pub fn client_error(e: &ClientError, remote: &str) -> AttemptResult {
        if let ClientError::Rejected { stage, reply } = e {
            return AttemptResult::reply(stage.stage(), reply, remote);
        }
        let (stage, enhanced) = match e {
            ClientError::Connect { .. } => (Stage::Connect, "4.4.1"),
            ClientError::Timeout(step) => (step.stage(), "4.4.2"),
            ClientError::Io(_) => (Stage::Session, "4.4.2"),
            ClientError::Protocol(_) => (Stage::Session, "4.5.0"),
            ClientError::TlsUnavailable(_) | ClientError::TlsFailed(_) => {
                (Stage::StartTls, "4.7.5")
            }
            ClientError::AuthUnavailable(_) => (Stage::Auth, "4.7.0"),
            ClientError::Rejected { .. } => unreachable!("handled above"),
        };
        AttemptResult {
            stage,
            code: None,
            enhanced: Some(enhanced.to_string()),
            remote: Some(remote.to_string()),
            remote_ip: None,
            tls_policy: None,
            text: e.to_string(),
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
fn split_enhanced(text: &str) -> (Option<String>, String) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::client::Step;

    #[test]
    fn replies_become_fields() {
        let r = AttemptResult::reply(
            Stage::RcptTo,
            &ServerReply {
                code: 550,
                text: "5.1.1 <x@y>: no such user".into(),
                step: Step::RcptTo,
                local: false,
            },
            "mx.example.net",
        );
        assert_eq!(r.code, Some(550));
        assert_eq!(r.enhanced.as_deref(), Some("5.1.1"));
        assert_eq!(r.text, "<x@y>: no such user");
        assert!(r.is_permanent());
        assert_eq!(
            r.to_string(),
            "550 5.1.1 <x@y>: no such user (from mx.example.net)"
        );
        let bare = AttemptResult::reply(
            Stage::Data,
            &ServerReply {
                code: 451,
                text: "try later".into(),
                step: Step::EndOfData,
                local: false,
            },
            "h",
        );
        assert_eq!((bare.status().as_str(), bare.enhanced), ("4.0.0", None));
    }

    #[test]
    fn client_errors_name_their_stage() {
        let e = ClientError::Rejected {
            stage: Step::MailFrom,
            reply: ServerReply {
                code: 553,
                text: "5.7.1 sender refused".into(),
                step: Step::MailFrom,
                local: false,
            },
        };
        let r = AttemptResult::client_error(&e, "smart.example");
        assert_eq!((r.stage, r.code), (Stage::MailFrom, Some(553)));
        let r = AttemptResult::client_error(&ClientError::Timeout(Step::EndOfData), "h");
        assert_eq!(
            (r.stage, r.enhanced.as_deref()),
            (Stage::Data, Some("4.4.2"))
        );
    }
}
