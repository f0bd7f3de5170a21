//! Where mail for a domain goes, decided afresh at every attempt so that a
//! config change applies to mail already queued: a [[route]], the smart hosts,
//! an address literal, or the domain's MX hosts (RFC 5321 section 5).

use super::result::{AttemptResult, Stage};
use crate::config::{Config, DeliveryMode, NextHop};
use crate::dns::{MxAnswer, Resolver};
use crate::smtp::address::Domain;
use rand::seq::SliceRandom;
use std::net::IpAddr;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// A [[route]] entry for this domain.
    Route(NextHop),
    /// Everything to the smart hosts, in failover order.
    SmartHosts(Vec<NextHop>),
    /// A recipient written as an address literal.
    Literal(IpAddr),
    /// The domain's MX hosts.
    Mx(String),
}

impl Destination {
    pub fn is_smarthost(&self) -> bool {
        matches!(self, Destination::SmartHosts(_))
    }
}

/// Why there is nowhere to deliver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteError {
    /// Will never work (no such domain, null MX): bounce.
    Permanent(AttemptResult),
    /// DNS trouble: try later, without counting it as an attempt.
    Temporary(AttemptResult),
}

pub fn destination(domain: &str, config: &Config) -> Result<Destination, RouteError> {
    if let Some(r) = config
        .route
        .iter()
        .find(|r| Domain::normalize(&r.domain) == Domain::normalize(domain))
    {
        return Ok(Destination::Route(r.host.clone()));
    }
    if config.delivery.mode == DeliveryMode::Smarthost {
        return Ok(Destination::SmartHosts(config.delivery.smarthost.clone()));
    }
    if let Some(lit) = domain.strip_prefix('[').and_then(|d| d.strip_suffix(']')) {
        if !config.delivery.ip_literals {
            return Err(RouteError::Permanent(AttemptResult::local(
                Stage::Routing,
                "5.1.2",
                "delivery to address literals is disabled (delivery.ip_literals = false)",
            )));
        }
        let ip = lit.strip_prefix("IPv6:").unwrap_or(lit);
        return ip.parse().map(Destination::Literal).map_err(|_| {
            RouteError::Permanent(AttemptResult::local(
                Stage::Routing,
                "5.1.2",
                format!("bad address literal {domain}"),
            ))
        });
    }
    Ok(Destination::Mx(domain.to_string()))
}

/// The hosts to try, in order, each with the port to use.
pub async fn hosts(
    dest: &Destination,
    config: &Config,
    resolver: &Resolver,
) -> Result<Vec<NextHop>, RouteError> {
    let mx_port = config.delivery.mx_port;
    match dest {
        Destination::Route(hop) => Ok(vec![hop.clone()]),
        Destination::SmartHosts(list) => Ok(list.clone()),
        Destination::Literal(ip) => Ok(vec![NextHop::new(ip.to_string(), mx_port)]),
        Destination::Mx(domain) => match resolver.mx(domain).await {
            Ok(MxAnswer::Records(records)) => Ok(order_mx(records)
                .into_iter()
                .map(|host| NextHop::new(host, mx_port))
                .collect()),
            Ok(MxAnswer::NoMx) => Ok(vec![NextHop::new(domain.clone(), mx_port)]),
            Ok(MxAnswer::NullMx) => Err(RouteError::Permanent(AttemptResult::local(
                Stage::Routing,
                "5.1.10",
                format!("{domain} accepts no mail (null MX, RFC 7505)"),
            ))),
            Ok(MxAnswer::NoSuchDomain) => Err(RouteError::Permanent(AttemptResult::local(
                Stage::Routing,
                "5.1.2",
                format!("domain {domain} does not exist"),
            ))),
            Err(e) => Err(RouteError::Temporary(AttemptResult::local(
                Stage::Routing,
                "4.4.3",
                format!("MX lookup for {domain}: {e}"),
            ))),
        },
    }
}

/// Lowest preference first; equal preferences in random order (RFC 5321 5.1).
fn order_mx(mut records: Vec<crate::dns::MxRecord>) -> Vec<String> {
    records.shuffle(&mut rand::rng());
    records.sort_by_key(|r| r.preference);
    let mut seen = std::collections::HashSet::new();
    records
        .into_iter()
        .map(|r| r.host)
        .filter(|h| seen.insert(h.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::MxRecord;

    #[test]
    fn mx_order_by_preference_with_equal_ones_shuffled() {
        let recs = vec![
            MxRecord {
                preference: 20,
                host: "c".into(),
            },
            MxRecord {
                preference: 10,
                host: "a".into(),
            },
            MxRecord {
                preference: 10,
                host: "b".into(),
            },
        ];
        let mut firsts = std::collections::HashSet::new();
        for _ in 0..200 {
            let o = order_mx(recs.clone());
            assert_eq!(o[2], "c");
            firsts.insert(o[0].clone());
        }
        assert_eq!(
            firsts.len(),
            2,
            "both equal-preference hosts come first sometimes"
        );
    }

    #[test]
    fn routes_win_then_smarthost_then_literals() {
        let c = Config::parse(
            "[delivery]\nmode = \"smarthost\"\nsmarthost = \"relay.isp.example:587\"\n[[route]]\ndomain = \"Example.LAN\"\nhost = \"10.0.0.5:25\"\n",
            "t",
        )
        .unwrap();
        assert_eq!(
            destination("example.lan", &c).unwrap(),
            Destination::Route("10.0.0.5:25".parse().unwrap())
        );
        assert!(destination("other.example", &c).unwrap().is_smarthost());
        let c = Config::parse("[delivery]\nip_literals = false\n", "t").unwrap();
        assert!(matches!(
            destination("[192.0.2.1]", &c),
            Err(RouteError::Permanent(_))
        ));
        let c = Config::parse("", "t").unwrap();
        assert_eq!(
            destination("[IPv6:::1]", &c).unwrap(),
            Destination::Literal("::1".parse().unwrap())
        );
    }
}
