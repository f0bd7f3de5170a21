//! Pure relay decisions: no I/O. The server, `explain` and the audit all call
//! these same functions, so there is only one copy of the rules. Each decision
//! carries a trace of the steps that led to it.

mod access;
mod networks;
mod relay;

pub use access::{AccessDecision, AccessFilter};
pub use networks::{NetworkMatch, NetworkTable};
pub use relay::{ClientFacts, RelayVerdict, decide_recipient};

use crate::config::Config;
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
}

impl Policy {
    pub fn from_config(config: &Config) -> Policy {
        let inbound: Vec<String> = config
            .relay
            .inbound_domains
            .iter()
            .map(|d| d.trim().trim_end_matches('.').to_lowercase())
            .collect();
        Policy {
            access: AccessFilter::from_config(&config.access),
            networks: NetworkTable::from_config(&config.network),
            postmaster_domain: inbound.first().cloned(),
            inbound_domains: inbound.into_iter().collect(),
        }
    }
}
