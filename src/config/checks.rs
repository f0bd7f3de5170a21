//! `[checks]`, `[lists]` and `[limits]`: the anti-spam checks, address
//! lists, rate limits and bans. Every check is off unless switched on, except
//! the AUTH-failure ban and the refusal of unauthenticated pipelining.

use super::ConfigDuration;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::net::Ipv4Addr;
use std::str::FromStr;

/// A DNS list zone, with the return codes that count as a listing (all when empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsListZone {
    pub zone: String,
    pub codes: Vec<Ipv4Addr>,
}

impl FromStr for DnsListZone {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (zone, codes) = match s.split_once('=') {
            Some((z, c)) => (z, Some(c)),
            None => (s, None),
        };
        let zone = crate::smtp::address::Domain::normalize(zone);
        let labels_ok = !zone.is_empty()
            && zone.contains('.')
            && zone.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            });
        if !labels_ok {
            return Err(format!(
                "{s:?} is not a DNS zone name such as \"zen.example.org\""
            ));
        }
        let codes = match codes {
            None => Vec::new(),
            Some(c) => c
                .split(',')
                .map(|code| {
                    code.trim()
                        .parse::<Ipv4Addr>()
                        .ok()
                        .filter(|ip| ip.octets()[0] == 127)
                        .ok_or_else(|| {
                            format!("{code:?} in {s:?} is not a return code such as 127.0.0.2")
                        })
                })
                .collect::<Result<_, _>>()?,
        };
        Ok(DnsListZone { zone, codes })
    }
}

impl std::fmt::Display for DnsListZone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.zone)?;
        if !self.codes.is_empty() {
            let codes: Vec<String> = self.codes.iter().map(|c| c.to_string()).collect();
            write!(f, "={}", codes.join(","))?;
        }
        Ok(())
    }
}

impl<'de> Deserialize<'de> for DnsListZone {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

impl Serialize for DnsListZone {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ReverseDnsCheck {
    #[default]
    Off,
    /// A PTR record must exist.
    Ptr,
    /// A PTR name must resolve back to the client's address.
    Fcrdns,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HeloCheck {
    #[default]
    Off,
    /// The HELO name must resolve (A/AAAA).
    Resolves,
    /// The HELO name must resolve to the client's address.
    Matches,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SenderDomainCheck {
    #[default]
    Off,
    /// The MAIL FROM domain has MX or A/AAAA, and no null MX.
    Exists,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PregreetCheck {
    #[default]
    Off,
    Reject,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnDnsError {
    /// 451 4.4.3: the sender tries again later.
    #[default]
    Tempfail,
    /// Let the mail through as if the check had passed.
    Accept,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ChecksConfig {
    #[serde(default)]
    pub dnsbl: Vec<DnsListZone>,
    /// Listings (each zone counts one) that refuse.
    #[serde(default = "one")]
    pub dnsbl_threshold: u32,
    #[serde(default)]
    pub dnswl: Vec<DnsListZone>,
    #[serde(default)]
    pub reverse_dns: ReverseDnsCheck,
    #[serde(default)]
    pub helo_lookup: HeloCheck,
    #[serde(default)]
    pub sender_domain: SenderDomainCheck,
    #[serde(default)]
    pub pregreet: PregreetCheck,
    /// How long to wait before the banner for a client that talks first.
    #[serde(default = "pregreet_wait")]
    pub pregreet_wait: ConfigDuration,
    /// Refuse message content sent before the 354 by a client that is neither
    /// trusted nor authenticated (like Postfix's smtpd_forbid_unauth_pipelining).
    #[serde(default = "yes")]
    pub forbid_unauth_pipelining: bool,
    /// One deadline for all DNS lookups of a check.
    #[serde(default = "dns_timeout")]
    pub dns_timeout: ConfigDuration,
    #[serde(default)]
    pub on_dns_error: OnDnsError,
    /// Trusted networks (auth = "none") and authenticated clients skip the checks.
    #[serde(default = "yes")]
    pub skip_for_trusted: bool,
    /// How often the DNS list zones are tested for health.
    #[serde(default = "zone_health_interval")]
    pub zone_health_interval: ConfigDuration,
}

fn one() -> u32 {
    1
}
fn yes() -> bool {
    true
}
fn pregreet_wait() -> ConfigDuration {
    ConfigDuration::secs(1)
}
fn dns_timeout() -> ConfigDuration {
    ConfigDuration::secs(5)
}
fn zone_health_interval() -> ConfigDuration {
    ConfigDuration::secs(600)
}

impl Default for ChecksConfig {
    fn default() -> Self {
        ChecksConfig {
            dnsbl: Vec::new(),
            dnsbl_threshold: 1,
            dnswl: Vec::new(),
            reverse_dns: ReverseDnsCheck::Off,
            helo_lookup: HeloCheck::Off,
            sender_domain: SenderDomainCheck::Off,
            pregreet: PregreetCheck::Off,
            pregreet_wait: pregreet_wait(),
            forbid_unauth_pipelining: true,
            dns_timeout: dns_timeout(),
            on_dns_error: OnDnsError::Tempfail,
            skip_for_trusted: true,
            zone_health_interval: zone_health_interval(),
        }
    }
}

impl ChecksConfig {
    /// Whether any check needs DNS at all.
    pub fn uses_dns(&self) -> bool {
        !self.dnsbl.is_empty()
            || !self.dnswl.is_empty()
            || self.reverse_dns != ReverseDnsCheck::Off
            || self.helo_lookup != HeloCheck::Off
            || self.sender_domain != SenderDomainCheck::Off
    }
}

/// An address list entry: a whole address, or `@domain` for every address there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddressPattern {
    Address(String),
    Domain(String),
}

impl AddressPattern {
    /// Reads a list file of patterns, one per line (blank lines and `#`
    /// comments skipped); a line that is not one is an error naming it.
    pub fn read_list(path: &std::path::Path) -> Result<Vec<AddressPattern>, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        text.lines()
            .enumerate()
            .map(|(i, l)| (i, l.trim()))
            .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'))
            .map(|(i, l)| {
                l.parse()
                    .map_err(|e| format!("{}:{}: {e}", path.display(), i + 1))
            })
            .collect()
    }

    /// Whether `address` (local@domain) matches; case-insensitive.
    pub fn matches(&self, address: &str) -> bool {
        match self {
            AddressPattern::Address(a) => a.eq_ignore_ascii_case(address),
            AddressPattern::Domain(d) => address
                .rsplit_once('@')
                .is_some_and(|(_, dom)| crate::smtp::address::Domain::normalize(dom) == *d),
        }
    }
}

impl FromStr for AddressPattern {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let bad = || {
            format!(
                "{s:?} is neither an address such as \"user@example.org\" nor a domain such as \"@example.org\" or \"*@example.org\""
            )
        };
        if let Some(domain) = s.strip_prefix('@').or_else(|| s.strip_prefix("*@")) {
            if domain.is_empty() || domain.contains(['@', ' ']) || !domain.contains('.') {
                return Err(bad());
            }
            return Ok(AddressPattern::Domain(
                crate::smtp::address::Domain::normalize(domain),
            ));
        }
        match s.rsplit_once('@') {
            Some((local, domain))
                if !local.is_empty() && !domain.is_empty() && !s.contains(' ') =>
            {
                Ok(AddressPattern::Address(format!(
                    "{local}@{}",
                    crate::smtp::address::Domain::normalize(domain)
                )))
            }
            _ => Err(bad()),
        }
    }
}

impl std::fmt::Display for AddressPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AddressPattern::Address(a) => f.write_str(a),
            AddressPattern::Domain(d) => write!(f, "@{d}"),
        }
    }
}

impl<'de> Deserialize<'de> for AddressPattern {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

impl Serialize for AddressPattern {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ListsConfig {
    #[serde(default)]
    pub reject_senders: Vec<AddressPattern>,
    #[serde(default)]
    pub reject_recipients: Vec<AddressPattern>,
    /// When not empty, only these senders may relay (mail to inbound domains is not affected).
    #[serde(default)]
    pub allow_senders: Vec<AddressPattern>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    pub messages_per_hour_per_ip: Option<u64>,
    pub messages_per_hour_per_user: Option<u64>,
    pub recipients_per_hour_per_ip: Option<u64>,
    /// Count clients of trusted networks too.
    #[serde(default)]
    pub apply_to_trusted: bool,
    /// Failed AUTH attempts from one address within ban_window that ban it (0: never).
    #[serde(default = "five")]
    pub auth_failures_before_ban: u32,
    #[serde(default = "ban_window")]
    pub ban_window: ConfigDuration,
    #[serde(default = "ban_duration")]
    pub ban_duration: ConfigDuration,
    /// Ban addresses of trusted networks too (off: their failures are
    /// counted and logged, and they keep their access).
    #[serde(default)]
    pub ban_trusted: bool,
    /// Failed logins from one network prefix (see `auth_prefix_v4`/`_v6`)
    /// within ban_window that ban the whole prefix: an attacker rotating
    /// through the addresses of a /64 is one attacker (0: never).
    #[serde(default = "twenty")]
    pub auth_failures_per_prefix: u32,
    /// The prefix lengths failed logins are counted by.
    #[serde(default = "v4_prefix")]
    pub auth_prefix_v4: u8,
    #[serde(default = "v6_prefix")]
    pub auth_prefix_v6: u8,
    /// Failed logins for one account from outside the trusted networks
    /// within ban_window after which that account's logins from outside are
    /// refused (454, without checking the password) for ban_window: a
    /// password guessed from many places at once. Its owner can still log in
    /// from a trusted network (0: never).
    #[serde(default = "ten")]
    pub auth_failures_per_account: u32,
}

fn twenty() -> u32 {
    20
}
fn ten() -> u32 {
    10
}
fn v4_prefix() -> u8 {
    24
}
fn v6_prefix() -> u8 {
    64
}

fn five() -> u32 {
    5
}
fn ban_window() -> ConfigDuration {
    ConfigDuration::secs(900)
}
fn ban_duration() -> ConfigDuration {
    ConfigDuration::secs(3600)
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            messages_per_hour_per_ip: None,
            messages_per_hour_per_user: None,
            recipients_per_hour_per_ip: None,
            apply_to_trusted: false,
            auth_failures_before_ban: 5,
            ban_window: ban_window(),
            ban_duration: ban_duration(),
            ban_trusted: false,
            auth_failures_per_prefix: twenty(),
            auth_prefix_v4: v4_prefix(),
            auth_prefix_v6: v6_prefix(),
            auth_failures_per_account: ten(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zones_and_codes() {
        let z: DnsListZone = "bl.example2.org=127.0.0.2,127.0.0.4".parse().unwrap();
        assert_eq!(z.zone, "bl.example2.org");
        assert_eq!(z.codes.len(), 2);
        assert_eq!(z.to_string(), "bl.example2.org=127.0.0.2,127.0.0.4");
        assert!(
            "Zen.Example.ORG."
                .parse::<DnsListZone>()
                .unwrap()
                .codes
                .is_empty()
        );
        assert!("bad zone".parse::<DnsListZone>().is_err());
        assert!("bl.example=10.0.0.2".parse::<DnsListZone>().is_err());
    }

    #[test]
    fn address_patterns() {
        let d: AddressPattern = "@Bad.Example".parse().unwrap();
        assert!(d.matches("x@bad.example") && d.matches("y@BAD.example."));
        assert!(!d.matches("x@notbad.example"));
        let a: AddressPattern = "spammer@example.net".parse().unwrap();
        assert!(a.matches("Spammer@Example.net") && !a.matches("other@example.net"));
        assert!("nobody".parse::<AddressPattern>().is_err());
    }
}
