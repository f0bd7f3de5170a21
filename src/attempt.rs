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

/// An RFC 3463 enhanced status code, class.subject.detail ("5.1.1"):
/// the next hop's or our own. Written as that text in state files, events,
/// webhooks and delivery reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EnhancedStatus {
    class: u8,
    subject: u16,
    detail: u16,
}

impl EnhancedStatus {
    /// `class` is 2, 4 or 5; `subject` and `detail` at most 999 (RFC 3463's
    /// three digits).
    pub const fn new(class: u8, subject: u16, detail: u16) -> EnhancedStatus {
        assert!(matches!(class, 2 | 4 | 5) && subject < 1000 && detail < 1000);
        EnhancedStatus {
            class,
            subject,
            detail,
        }
    }

    /// "5.1.1" and the like; None for anything else.
    pub fn parse(text: &str) -> Option<EnhancedStatus> {
        let mut parts = text.split('.');
        let (class, subject, detail) = (parts.next()?, parts.next()?, parts.next()?);
        let number = |p: &str| {
            (!p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()))
                .then(|| p.parse::<u16>().ok())
                .flatten()
        };
        let class = match class {
            "2" => 2,
            "4" => 4,
            "5" => 5,
            _ => return None,
        };
        if parts.next().is_some() {
            return None;
        }
        Some(EnhancedStatus {
            class,
            subject: number(subject)?,
            detail: number(detail)?,
        })
    }

    pub fn class(self) -> u8 {
        self.class
    }

    pub fn is_permanent(self) -> bool {
        self.class == 5
    }

    /// The same subject and detail in another class (a delay report says
    /// 4.x.y whatever the last reply's class).
    pub fn in_class(self, class: u8) -> EnhancedStatus {
        EnhancedStatus::new(class, self.subject, self.detail)
    }

    /// Whether this is `class.subject.detail`.
    pub fn is(self, class: u8, subject: u16, detail: u16) -> bool {
        (self.class, self.subject, self.detail) == (class, subject, detail)
    }
}

impl fmt::Display for EnhancedStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.class, self.subject, self.detail)
    }
}

impl Serialize for EnhancedStatus {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for EnhancedStatus {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<EnhancedStatus, D::Error> {
        let text = String::deserialize(d)?;
        EnhancedStatus::parse(&text).ok_or_else(|| {
            serde::de::Error::custom(format!("{text:?} is not an enhanced status code"))
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptResult {
    pub stage: Stage,
    /// The next hop's reply code, when one replied.
    pub code: Option<u16>,
    /// The enhanced status code ("5.1.1"), the next hop's or our own.
    pub enhanced: Option<EnhancedStatus>,
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
    pub fn local(stage: Stage, enhanced: EnhancedStatus, text: impl Into<String>) -> AttemptResult {
        AttemptResult {
            stage,
            code: None,
            enhanced: Some(enhanced),
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
    pub fn status(&self) -> EnhancedStatus {
        if let Some(e) = self.enhanced {
            return e;
        }
        match self.code {
            Some(c) if (200..300).contains(&c) => EnhancedStatus::new(2, 0, 0),
            Some(c) if (400..500).contains(&c) => EnhancedStatus::new(4, 0, 0),
            _ => EnhancedStatus::new(5, 0, 0),
        }
    }

    pub fn is_permanent(&self) -> bool {
        match self.code {
            Some(c) => c >= 500,
            None => self.enhanced.is_some_and(EnhancedStatus::is_permanent),
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
pub(crate) fn split_enhanced(text: &str) -> (Option<EnhancedStatus>, String) {
    let (first, rest) = text.split_once(' ').unwrap_or((text, ""));
    match EnhancedStatus::parse(first) {
        Some(code) => (Some(code), rest.to_string()),
        None => (None, text.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enhanced_status_codes_are_read_as_rfc_3463_writes_them() {
        for good in ["2.0.0", "4.4.7", "5.1.10", "5.7.999"] {
            let code = EnhancedStatus::parse(good).unwrap();
            assert_eq!(code.to_string(), good);
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{good}\""));
            assert_eq!(serde_json::from_str::<EnhancedStatus>(&json).unwrap(), code);
        }
        for bad in [
            "", "3.1.1", "5.1", "5.1.1.1", "5.1000.1", "5..1", "5.a.1", "x5.1.1",
        ] {
            assert_eq!(EnhancedStatus::parse(bad), None, "{bad:?}");
        }
        assert!(serde_json::from_str::<EnhancedStatus>("\"5.1\"").is_err());
        let code = EnhancedStatus::parse("5.2.2").unwrap();
        assert!(code.is_permanent() && code.is(5, 2, 2));
        assert_eq!(code.in_class(4).to_string(), "4.2.2");
    }

    #[test]
    fn a_reply_text_gives_its_enhanced_code_and_the_rest() {
        let (code, rest) = split_enhanced("5.1.1 No such user");
        assert_eq!(code, EnhancedStatus::parse("5.1.1"));
        assert_eq!(rest, "No such user");
        let (code, rest) = split_enhanced("No such user");
        assert_eq!((code, rest.as_str()), (None, "No such user"));
    }
}
