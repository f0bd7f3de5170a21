//! `[delivery]` and `[[route]]`: how accepted mail leaves.

use super::{AddressPattern, ConfigDuration};
use serde::{Deserialize, Deserializer, Serialize};
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::str::FromStr;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliveryConfig {
    pub mode: DeliveryMode,
    /// One "HOST:PORT" or a list, tried in order (failover, never a copy to each).
    #[serde(deserialize_with = "one_or_many_smarthosts")]
    pub smarthost: Vec<NextHop>,
    pub smarthost_tls: SmarthostTls,
    pub smarthost_user: Option<String>,
    pub smarthost_password_file: Option<PathBuf>,
    /// Extra CA certificates (PEM) to trust for a private smart host.
    pub smarthost_ca_file: Option<PathBuf>,
    /// Check the smart host's certificate (name and chain).
    pub smarthost_verify: bool,
    pub mx_port: u16,
    pub outbound_tls: OutboundTls,
    pub retry_schedule: Vec<ConfigDuration>,
    pub max_queue_lifetime: ConfigDuration,
    pub concurrency: usize,
    pub per_domain_concurrency: usize,
    pub helo_name: Option<String>,
    /// Deliver to recipients written as address literals (user@[192.0.2.1]).
    pub ip_literals: bool,
    /// What the bounce carries of the original: the whole message or its headers.
    pub bounce_attach: BounceAttach,
    /// Send one "delayed" notice when a message is still queued after this long.
    pub delay_warning: Option<ConfigDuration>,
    pub connect_timeout: ConfigDuration,
    /// Time allowed for each reply of the next hop (RFC 5321 4.5.3.2: 5 minutes).
    pub reply_timeout: ConfigDuration,
    /// Time allowed for the reply to the final dot (RFC 5321 4.5.3.2.6: 10 minutes).
    pub data_timeout: ConfigDuration,
    /// Honour the MTA-STS policies (RFC 8461) of the domains we deliver to by MX.
    pub mta_sts: Switch,
    /// Honour DANE TLSA records (RFC 7672) of MX hosts, as told by a
    /// validating resolver (`[dns] validating`).
    pub dane: Switch,
    /// Send daily TLS reports (RFC 8460) to the domains that ask for them.
    pub tls_rpt: bool,
    /// How long one TLS report covers (RFC 8460 advises a UTC day).
    pub tls_rpt_period: ConfigDuration,
    /// Extra trust anchors (PEM) for verified outbound TLS: MTA-STS policy
    /// servers and MX hosts under an enforced policy.
    pub tls_ca_file: Option<PathBuf>,
}

/// A feature that is on or off (`"on"` / `"off"`; true and false work too).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Switch {
    On,
    #[default]
    Off,
}

impl Switch {
    pub fn is_on(self) -> bool {
        self == Switch::On
    }
}

impl<'de> Deserialize<'de> for Switch {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            Bool(bool),
            Text(String),
        }
        match Either::deserialize(d)? {
            Either::Bool(b) => Ok(if b { Switch::On } else { Switch::Off }),
            Either::Text(t) => match t.as_str() {
                "on" => Ok(Switch::On),
                "off" => Ok(Switch::Off),
                other => Err(serde::de::Error::custom(format!(
                    "expected \"on\" or \"off\", found {other:?}"
                ))),
            },
        }
    }
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        Self {
            mode: DeliveryMode::Mx,
            smarthost: Vec::new(),
            smarthost_tls: SmarthostTls::Starttls,
            smarthost_user: None,
            smarthost_password_file: None,
            smarthost_ca_file: None,
            smarthost_verify: true,
            mx_port: 25,
            outbound_tls: OutboundTls::Opportunistic,
            retry_schedule: ["1m", "5m", "15m", "30m", "1h", "2h", "4h"]
                .iter()
                .map(|s| s.parse().expect("valid default duration"))
                .collect(),
            max_queue_lifetime: ConfigDuration::secs(4 * 86400),
            concurrency: 50,
            per_domain_concurrency: 5,
            helo_name: None,
            ip_literals: true,
            bounce_attach: BounceAttach::Full,
            delay_warning: None,
            connect_timeout: ConfigDuration::secs(30),
            reply_timeout: ConfigDuration::secs(300),
            data_timeout: ConfigDuration::secs(600),
            mta_sts: Switch::Off,
            dane: Switch::Off,
            tls_rpt: false,
            tls_rpt_period: ConfigDuration::secs(86400),
            tls_ca_file: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryMode {
    Mx,
    Smarthost,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SmarthostTls {
    /// STARTTLS required; no STARTTLS offered is a temporary failure.
    Starttls,
    /// TLS from the first byte (port 465).
    Implicit,
    /// STARTTLS when offered, clear otherwise.
    Opportunistic,
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OutboundTls {
    Opportunistic,
    /// Never send in clear: a server without STARTTLS is a temporary failure.
    Required,
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BounceAttach {
    Full,
    Headers,
}

/// A next hop written "HOST:PORT" (or "[v6]:PORT"). A smart host may
/// carry its own TLS mode as a scheme: "smtps://HOST:465" (TLS from the
/// first byte) or "starttls://HOST:587"; without one it follows
/// `smarthost_tls`. Without a port, a smart host is on 587 (465 for
/// smtps://), the submission port ISPs leave open; a route's host on 25.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NextHop {
    pub host: String,
    pub port: u16,
    /// The TLS mode this hop's scheme names, if it has one (smart hosts only).
    pub tls: Option<SmarthostTls>,
}

impl NextHop {
    /// A next hop on `port`, with no TLS mode of its own.
    pub fn new(host: impl Into<String>, port: u16) -> NextHop {
        NextHop {
            host: host.into(),
            port,
            tls: None,
        }
    }

    /// A smart host: a scheme may name its TLS mode; the port defaults to
    /// 587, or 465 for smtps://.
    pub fn smarthost(s: &str) -> Result<NextHop, String> {
        let s = s.trim();
        let (tls, rest) = if let Some(rest) = s.strip_prefix("smtps://") {
            (Some(SmarthostTls::Implicit), rest)
        } else if let Some(rest) = s.strip_prefix("starttls://") {
            (Some(SmarthostTls::Starttls), rest)
        } else if let Some((scheme, _)) = s.split_once("://") {
            return Err(format!(
                "{s:?}: unknown scheme {scheme:?}: write \"smtps://HOST:465\" (TLS from the first byte), \"starttls://HOST:587\", or HOST:PORT"
            ));
        } else {
            (None, s)
        };
        let default_port = if tls == Some(SmarthostTls::Implicit) {
            465
        } else {
            587
        };
        let (host, port) = host_and_port(rest, default_port)?;
        Ok(NextHop { host, port, tls })
    }

    /// The TLS mode to use: the hop's own, else `default`.
    pub fn tls_or(&self, default: SmarthostTls) -> SmarthostTls {
        self.tls.unwrap_or(default)
    }
}

/// "host:port", "[v6]:port", or a host alone (then `default_port`).
fn host_and_port(s: &str, default_port: u16) -> Result<(String, u16), String> {
    let bad = || format!("{s:?} is not HOST:PORT (e.g. \"smtp.provider.example:587\")");
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (h, p) = rest.split_once(']').ok_or_else(bad)?;
        h.parse::<IpAddr>().map_err(|_| bad())?;
        (h.to_string(), p.strip_prefix(':'))
    } else {
        match s.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') => (h.to_string(), Some(p)),
            _ => (s.to_string(), None),
        }
    };
    if host.is_empty() || host.contains(char::is_whitespace) || host.contains('/') {
        return Err(bad());
    }
    let port = match port {
        Some(p) => p.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(|| {
            format!("{s:?}: the port must be a number from 1 to 65535 (e.g. \"{host}:587\")")
        })?,
        None => default_port,
    };
    Ok((crate::smtp::address::Domain::normalize(&host), port))
}

/// A route's next hop: "HOST:PORT", port 25 when absent, no scheme.
impl FromStr for NextHop {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.contains("://") {
            return Err(format!(
                "{s:?}: a scheme (smtps://, starttls://) is for smart hosts; a route's host is HOST:PORT"
            ));
        }
        let (host, port) = host_and_port(s, 25)?;
        Ok(NextHop::new(host, port))
    }
}

impl fmt::Display for NextHop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.tls {
            Some(SmarthostTls::Implicit) => f.write_str("smtps://")?,
            Some(SmarthostTls::Starttls) => f.write_str("starttls://")?,
            _ => {}
        }
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl<'de> Deserialize<'de> for NextHop {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

impl Serialize for NextHop {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

/// `smarthost`: one smart host or a list of them.
pub(super) fn one_or_many_smarthosts<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Vec<NextHop>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    let list = match OneOrMany::deserialize(d).map_err(|_| {
        serde::de::Error::custom(
            "expected a smart host \"HOST:PORT\" or a list of them [\"HOST:PORT\", \"smtps://HOST:465\"]",
        )
    })? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    };
    list.iter()
        .map(|s| NextHop::smarthost(s).map_err(serde::de::Error::custom))
        .collect()
}

/// A `[[route]]`: which recipients it takes (every matcher given must
/// match; none given matches all) and where their mail goes.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RouteConfig {
    /// Recipient domains: "example.org" exactly, or "*.example.org" for its subdomains.
    #[serde(deserialize_with = "one_or_many")]
    pub domain: Vec<String>,
    /// Envelope senders: "user@example.org", or "*@example.org" / "@example.org" for a domain.
    #[serde(deserialize_with = "one_or_many")]
    pub sender: Vec<AddressPattern>,
    /// AUTH names of the clients whose mail this is.
    #[serde(deserialize_with = "one_or_many")]
    pub user: Vec<String>,
    /// Client address ranges.
    #[serde(deserialize_with = "one_or_many")]
    pub network: Vec<ipnet::IpNet>,
    /// Where its mail goes: "HOST:PORT" ...
    pub host: Option<NextHop>,
    /// ... or a [[smarthost]] profile by name.
    pub via: Option<String>,
}

impl RouteConfig {
    /// Whether `domain` (normalised) is one this route names; true when it names none.
    pub fn domain_matches(&self, domain: &str) -> bool {
        self.domain.is_empty()
            || self
                .domain
                .iter()
                .any(|d| domain_pattern_matches(d, domain))
    }

    /// Whether this route names `domain` itself (not by a wildcard or by matching all).
    pub fn names_domain(&self, domain: &str) -> bool {
        self.domain
            .iter()
            .any(|d| crate::smtp::address::Domain::normalize(d) == domain)
    }
}

/// Whether `domain` (normalised) matches `pattern`: "example.org" exactly,
/// "*.example.org" any of its subdomains.
pub(super) fn domain_pattern_matches(pattern: &str, domain: &str) -> bool {
    let p = crate::smtp::address::Domain::normalize(pattern);
    match p.strip_prefix("*.") {
        Some(parent) => domain
            .strip_suffix(parent)
            .is_some_and(|sub| sub.ends_with('.')),
        None => p == domain,
    }
}

/// One value or a list of values, for matchers; each parsed from its
/// string so that a bad one is named with the reason.
pub(super) fn one_or_many<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr,
    T::Err: fmt::Display,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    let list = match OneOrMany::deserialize(d)
        .map_err(|_| serde::de::Error::custom("expected a string or a list of strings"))?
    {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    };
    list.iter()
        .map(|s| {
            s.trim()
                .parse::<T>()
                .map_err(|e| serde::de::Error::custom(format!("{s:?}: {e}")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_hops() {
        assert_eq!(
            "smtp.example:587".parse::<NextHop>().unwrap(),
            NextHop::new("smtp.example", 587)
        );
        assert_eq!("Mail.Example".parse::<NextHop>().unwrap().port, 25);
        assert_eq!(
            "[::1]:2525".parse::<NextHop>().unwrap(),
            NextHop::new("::1", 2525)
        );
        assert!("host:0".parse::<NextHop>().is_err());
        assert!("host:x".parse::<NextHop>().is_err());
        assert!(
            "smtps://host:465".parse::<NextHop>().is_err(),
            "routes take no scheme"
        );
    }

    #[test]
    fn smart_hosts_carry_their_tls_mode_and_default_to_the_submission_port() {
        let h = NextHop::smarthost("smtps://smtp2.isp.example:465").unwrap();
        assert_eq!((h.port, h.tls), (465, Some(SmarthostTls::Implicit)));
        assert_eq!(h.to_string(), "smtps://smtp2.isp.example:465");
        assert_eq!(
            NextHop::smarthost("smtps://smtp2.isp.example")
                .unwrap()
                .port,
            465
        );
        let h = NextHop::smarthost("starttls://smtp.isp.example").unwrap();
        assert_eq!((h.port, h.tls), (587, Some(SmarthostTls::Starttls)));
        let h = NextHop::smarthost("smtp.isp.example").unwrap();
        assert_eq!(
            (h.port, h.tls),
            (587, None),
            "no port: 587, not the blocked 25"
        );
        assert!(NextHop::smarthost("http://smtp.isp.example").is_err());
        let c: DeliveryConfig =
            toml::from_str("smarthost = [\"a.example\", \"smtps://b.example\"]").unwrap();
        let back: DeliveryConfig = toml::from_str(&toml::to_string(&c).unwrap()).unwrap();
        assert_eq!(back.smarthost, c.smarthost, "written back as read");
    }

    #[test]
    fn smarthost_string_or_list() {
        let c: DeliveryConfig = toml::from_str("smarthost = \"a.example:587\"").unwrap();
        assert_eq!(c.smarthost.len(), 1);
        let c: DeliveryConfig =
            toml::from_str("smarthost = [\"a.example:587\", \"b.example:465\"]").unwrap();
        assert_eq!(c.smarthost[1].port, 465);
    }
}
