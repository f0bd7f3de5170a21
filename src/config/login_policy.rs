//! `[[policy]]`: rules per login and per network — which senders a login
//! may use, which recipient domains it may reach, whether all its mail goes
//! to one test mailbox, which profile it leaves through, how much it may
//! send. The first rule whose matchers all match applies.

use super::AddressPattern;
use super::delivery::{domain_pattern_matches, one_or_many};
use serde::{Deserialize, Deserializer, Serialize};
use std::net::IpAddr;
use std::str::FromStr;

/// The header that keeps the original recipients when `redirect_to` applies.
pub const DEFAULT_REDIRECT_HEADER: &str = "X-Original-To";

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// AUTH names this rule is for.
    #[serde(deserialize_with = "one_or_many")]
    pub user: Vec<String>,
    /// Client address ranges this rule is for.
    #[serde(deserialize_with = "one_or_many")]
    pub network: Vec<ipnet::IpNet>,
    /// The envelope senders allowed: addresses, "*@domain", or "$user"
    /// (the login name itself, when it is an address). Any when empty.
    #[serde(deserialize_with = "one_or_many")]
    pub allowed_senders: Vec<SenderRule>,
    /// The recipient domains allowed ("example.org", "*.example.org"). Any when empty.
    #[serde(deserialize_with = "one_or_many")]
    pub allowed_recipient_domains: Vec<String>,
    /// Every recipient is replaced by this address (staging, tests).
    pub redirect_to: Option<String>,
    /// The header added with the original recipients when redirecting.
    pub redirect_header: Option<String>,
    /// The smart-host profile this mail leaves through.
    pub via: Option<String>,
    /// Messages an hour per login (or per client address, for a network rule).
    pub messages_per_hour: Option<u64>,
}

/// One entry of `allowed_senders`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SenderRule {
    /// "$user": the login name, when it is an address.
    LoginName,
    Pattern(AddressPattern),
}

impl FromStr for SenderRule {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.trim() == "$user" {
            return Ok(SenderRule::LoginName);
        }
        s.parse().map(SenderRule::Pattern)
    }
}

impl std::fmt::Display for SenderRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SenderRule::LoginName => f.write_str("$user"),
            SenderRule::Pattern(p) => p.fmt(f),
        }
    }
}

impl<'de> Deserialize<'de> for SenderRule {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

impl Serialize for SenderRule {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl PolicyConfig {
    /// Whether this rule is for a client logged in as `user` from `ip`:
    /// every matcher it has must match.
    pub fn matches(&self, user: Option<&str>, ip: Option<IpAddr>) -> bool {
        let user_ok =
            self.user.is_empty() || user.is_some_and(|u| self.user.iter().any(|x| x == u));
        let network_ok = self.network.is_empty()
            || ip.is_some_and(|ip| {
                let ip = ip.to_canonical();
                self.network.iter().any(|n| n.contains(&ip))
            });
        user_ok && network_ok && !(self.user.is_empty() && self.network.is_empty())
    }

    /// Whether `sender` may be used by a client logged in as `user`.
    pub fn sender_allowed(&self, sender: &str, user: Option<&str>) -> bool {
        self.allowed_senders.is_empty()
            || self.allowed_senders.iter().any(|rule| match rule {
                SenderRule::LoginName => user.is_some_and(|u| u.eq_ignore_ascii_case(sender)),
                SenderRule::Pattern(p) => p.matches(sender),
            })
    }

    /// Whether mail may go to recipients of `domain` (normalised).
    pub fn recipient_domain_allowed(&self, domain: &str) -> bool {
        self.allowed_recipient_domains.is_empty()
            || self
                .allowed_recipient_domains
                .iter()
                .any(|p| domain_pattern_matches(p, domain))
    }

    pub fn redirect_header(&self) -> &str {
        self.redirect_header
            .as_deref()
            .unwrap_or(DEFAULT_REDIRECT_HEADER)
    }

    /// What this rule is for, in words ("user app1", "network 10.0.0.0/8").
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if !self.user.is_empty() {
            parts.push(format!("user {}", self.user.join(", ")));
        }
        if !self.network.is_empty() {
            parts.push(format!(
                "network {}",
                self.network
                    .iter()
                    .map(|n| n.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        parts.join(" and ")
    }
}

/// The first rule for this client, with its index.
pub fn matching<'a>(
    rules: &'a [PolicyConfig],
    user: Option<&str>,
    ip: Option<IpAddr>,
) -> Option<(usize, &'a PolicyConfig)> {
    rules.iter().enumerate().find(|(_, r)| r.matches(user, ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_match_and_judge_senders_and_domains() {
        let r: PolicyConfig = toml::from_str(
            "user = \"app1\"\nallowed_senders = [\"noreply@app.example\", \"$user\"]\nallowed_recipient_domains = \"*.partner.example\"\n",
        )
        .unwrap();
        assert!(r.matches(Some("app1"), None));
        assert!(!r.matches(Some("app2"), None));
        assert!(!r.matches(None, Some("10.0.0.1".parse().unwrap())));
        assert!(r.sender_allowed("NoReply@App.Example", Some("app1")));
        assert!(!r.sender_allowed("boss@app.example", Some("app1")));
        let r2: PolicyConfig =
            toml::from_str("user = \"ci@app.example\"\nallowed_senders = \"$user\"\n").unwrap();
        assert!(r2.sender_allowed("ci@app.example", Some("ci@app.example")));
        assert!(r.recipient_domain_allowed("eu.partner.example"));
        assert!(!r.recipient_domain_allowed("partner.example"));
        let net: PolicyConfig = toml::from_str("network = [\"10.1.0.0/16\"]\n").unwrap();
        assert!(net.matches(None, Some("10.1.2.3".parse().unwrap())));
        assert!(
            !PolicyConfig::default().matches(Some("x"), None),
            "no matcher, no match"
        );
    }
}
