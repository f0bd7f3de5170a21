//! Pure relay decisions: no I/O. The server, `explain` and the audit all call
//! these same functions, so there is only one copy of the rules. Each decision
//! carries a trace of the steps that led to it.

mod access;
mod facts;
mod reason;
mod relay;

pub use access::{AccessDecision, AccessFilter};
pub use facts::{CheckFacts, ListFindings, Lookup, RateFacts};
pub use reason::RefuseReason;
pub use relay::{Accepted, ClientFacts, Decision, FloodVerdict, RelayBasis, Route, Stage, Step};

use crate::config::{Config, NetworkTable};
use std::collections::HashSet;

/// Everything the relay rules need, built once from the config.
#[derive(Debug, Clone)]
pub struct Policy {
    pub access: AccessFilter,
    pub networks: NetworkTable,
    /// Domains we accept mail for from anyone who may connect, folded to lower case.
    pub inbound_domains: HashSet<String>,
    /// The first inbound domain, where mail for plain `<postmaster>` goes.
    pub postmaster_domain: Option<String>,
    /// `auth.allow_plaintext`: AUTH offered on connections that are neither TLS nor loopback.
    pub allow_plaintext_auth: bool,
    pub checks: crate::config::ChecksConfig,
    pub lists: crate::config::ListsConfig,
    pub limits: crate::config::LimitsConfig,
    /// `[[policy]]`: rules per login and per network, first match.
    pub logins: Vec<crate::config::PolicyConfig>,
    /// `guard.mode`: what the flood hold does.
    pub guard_mode: crate::config::GuardMode,
}

impl Policy {
    /// The `[[policy]]` rule for this client, with its index.
    pub fn login_rule(
        &self,
        client: &ClientFacts,
    ) -> Option<(usize, &crate::config::PolicyConfig)> {
        self.logins
            .iter()
            .enumerate()
            .find(|(_, r)| r.matches(client.user.as_deref(), Some(client.ip)))
    }

    /// Whether `ip` may relay without AUTH (a trusted network, not excluded).
    pub fn is_trusted(&self, ip: std::net::IpAddr) -> bool {
        self.networks.auth_for(ip) == crate::config::NetworkAuth::None
    }

    /// Whether a client at `ip` is trusted: its network relays without AUTH
    /// and the guard has not withdrawn that (`distrusted`, the guard's
    /// state handed in as a fact). One answer for sessions, connection
    /// admission (reserved slots, the rate cap) and admin logins.
    pub fn trusts(&self, ip: std::net::IpAddr, distrusted: bool) -> bool {
        self.is_trusted(ip) && !distrusted
    }

    /// Whether mail from this client counts as from a trusted origin
    /// (authenticated, or trusted): its bounces may quote the whole message,
    /// it may be signed, and its bare newlines are its network's business.
    pub fn trusted_origin(&self, client: &ClientFacts) -> bool {
        client.user.is_some() || self.trusts(client.ip, client.distrusted)
    }

    /// What to do with a bare CR or LF in the data of a client from `ip`.
    /// Strangers get `stranger` (`server.bare_newline`, "reject" by default:
    /// the smuggling defence). A client trusted by its network or
    /// authenticated gets its network's `bare_newline`, "normalize" unless
    /// set: LF-only files from curl and scripts on the LAN are the common
    /// case, and such a client is no smuggler (Postfix 3.9 exempts
    /// mynetworks the same way).
    pub fn bare_newline(
        &self,
        ip: std::net::IpAddr,
        trusted_or_authenticated: bool,
        stranger: crate::config::BareNewline,
    ) -> crate::config::BareNewline {
        if !trusted_or_authenticated {
            return stranger;
        }
        self.networks
            .deciding(ip)
            .and_then(|n| n.bare_newline)
            .unwrap_or(crate::config::BareNewline::Normalize)
    }

    /// Whether STARTTLS is offered to `ip` on a listener that offers it
    /// (`listener_offers`): its range may hide it for old devices.
    pub fn offers_starttls(&self, ip: std::net::IpAddr, listener_offers: bool) -> bool {
        listener_offers
            && self
                .networks
                .deciding(ip)
                .and_then(|n| n.offer_starttls)
                .unwrap_or(true)
    }

    pub fn from_config(config: &Config) -> Policy {
        let inbound: Vec<String> = config
            .relay
            .inbound_domains
            .iter()
            .map(|d| crate::smtp::address::Domain::normalize(d))
            .collect();
        Policy {
            access: AccessFilter::from_config(&config.access),
            networks: NetworkTable::from_config(&config.network),
            postmaster_domain: inbound.first().cloned(),
            allow_plaintext_auth: config.auth.allow_plaintext,
            checks: config.checks.clone(),
            lists: config.lists.clone(),
            limits: config.limits.clone(),
            logins: config.policy.clone(),
            guard_mode: config.guard.mode,
            inbound_domains: inbound.into_iter().collect(),
        }
    }
}
