//! Where mail for a domain goes, decided afresh at every attempt so that a
//! config change applies to mail already queued: a [[route]], the smart hosts,
//! an address literal, or the domain's MX hosts (RFC 5321 section 5).

use super::result::{AttemptResult, Stage};
use crate::attempt::EnhancedStatus;
use crate::config::{Config, DeliveryMode, NextHop, RouteConfig};
use crate::dns::{MxAnswer, Resolver};
use crate::smtp::address::Domain;
use rand::seq::SliceRandom;
use std::net::IpAddr;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// A [[route]]'s host.
    Route(NextHop),
    /// A smart-host profile, by name ([[route]] via, or mode = "smarthost").
    Profile(String),
    /// A recipient written as an address literal.
    Literal(IpAddr),
    /// The domain's MX hosts.
    Mx(String),
}

impl Destination {
    pub fn is_smarthost(&self) -> bool {
        matches!(self, Destination::Profile(_))
    }

    /// Recipients with the same key travel in one transaction.
    pub fn key(&self) -> String {
        match self {
            Destination::Route(hop) => format!("route {hop}"),
            Destination::Profile(name) => format!("profile {name}"),
            Destination::Literal(ip) => format!("literal {ip}"),
            Destination::Mx(domain) => format!("mx {domain}"),
        }
    }
}

impl std::fmt::Display for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Destination::Route(hop) => write!(f, "host {hop}"),
            Destination::Profile(name) => write!(f, "profile {name:?}"),
            Destination::Literal(ip) => write!(f, "address literal [{ip}]"),
            Destination::Mx(domain) => write!(f, "MX of {domain}"),
        }
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

/// What routing may look at besides the recipient: whose mail it is.
#[derive(Debug, Clone, Copy, Default)]
pub struct RouteFacts<'a> {
    /// The envelope sender ("" for the null sender).
    pub sender: &'a str,
    /// The AUTH name of the client that sent it.
    pub user: Option<&'a str>,
    /// The client's address (None for our own reports).
    pub client: Option<IpAddr>,
}

/// Where one recipient's mail goes, and why (for `explain` and `queue show`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routed {
    pub destination: Destination,
    pub why: String,
}

/// The route of `recipient`: the first [[route]] whose matchers all match,
/// else the default profile in mode = "smarthost", else an address
/// literal's address or the domain's MX. Decided afresh at every attempt.
pub fn decide(recipient: &str, facts: &RouteFacts, config: &Config) -> Result<Routed, RouteError> {
    let domain = recipient
        .rsplit_once('@')
        .map(|(_, d)| Domain::normalize(d))
        .unwrap_or_default();
    // A login's own profile ([[policy]] via) comes before the routes.
    if let Some((i, rule)) = config.login_policy(facts.user, facts.client)
        && let Some(via) = &rule.via
        && (facts.user.is_some() || facts.client.is_some())
    {
        return Ok(Routed {
            destination: Destination::Profile(via.clone()),
            why: format!("policy[{i}] via ({})", rule.describe()),
        });
    }
    for (i, r) in config.route.iter().enumerate() {
        if let Some(why) = route_matches(r, &domain, recipient, facts) {
            let destination = match (&r.via, &r.host) {
                (Some(via), _) => Destination::Profile(via.clone()),
                (None, Some(hop)) => Destination::Route(hop.clone()),
                // Refused by validation; never reached with a valid config.
                (None, None) => continue,
            };
            return Ok(Routed {
                destination,
                why: format!("route[{i}] ({why})"),
            });
        }
    }
    if config.delivery.mode == DeliveryMode::Smarthost
        && let Some(p) = config.default_profile()
    {
        return Ok(Routed {
            why: format!(
                "delivery.mode = \"smarthost\": the default profile {:?}",
                p.name
            ),
            destination: Destination::Profile(p.name),
        });
    }
    if let Some(lit) = domain.strip_prefix('[').and_then(|d| d.strip_suffix(']')) {
        if !config.delivery.ip_literals {
            return Err(RouteError::Permanent(AttemptResult::local(
                Stage::Routing,
                EnhancedStatus::new(5, 1, 2),
                "delivery to address literals is disabled (delivery.ip_literals = false)",
            )));
        }
        let ip = lit
            .strip_prefix("IPv6:")
            .or_else(|| lit.strip_prefix("ipv6:"))
            .unwrap_or(lit);
        return ip
            .parse()
            .map(|ip| Routed {
                destination: Destination::Literal(ip),
                why: "an address literal".into(),
            })
            .map_err(|_| {
                RouteError::Permanent(AttemptResult::local(
                    Stage::Routing,
                    EnhancedStatus::new(5, 1, 2),
                    format!("bad address literal {domain}"),
                ))
            });
    }
    Ok(Routed {
        why: format!("no route matches: MX of {domain}"),
        destination: Destination::Mx(domain),
    })
}

/// Where a recipient goes now, in words ("profile \"m365\"", "MX of
/// example.org"), and the profile's name when it is one: for `queue show`
/// and the admin page.
pub fn next_hop_words(
    recipient: &str,
    facts: &RouteFacts,
    config: &Config,
) -> (String, Option<String>) {
    match decide(recipient, facts, config) {
        Ok(Routed {
            destination: Destination::Profile(name),
            ..
        }) => (format!("profile {name:?}"), Some(name)),
        Ok(routed) => (routed.destination.to_string(), None),
        Err(RouteError::Permanent(r) | RouteError::Temporary(r)) => {
            (format!("nowhere: {}", r.text), None)
        }
    }
}

/// Where mail for `domain` goes when only the domain is known (callouts).
pub fn destination(domain: &str, config: &Config) -> Result<Destination, RouteError> {
    decide(
        &format!("postmaster@{domain}"),
        &RouteFacts::default(),
        config,
    )
    .map(|r| r.destination)
}

/// Whether `r` takes this recipient: every matcher it has must match.
/// Returns the matchers that did, in words.
fn route_matches(
    r: &RouteConfig,
    domain: &str,
    recipient: &str,
    facts: &RouteFacts,
) -> Option<String> {
    let _ = recipient;
    let mut why = Vec::new();
    if !r.domain.is_empty() {
        if !r.domain_matches(domain) {
            return None;
        }
        why.push(format!("domain {domain}"));
    }
    if !r.sender.is_empty() {
        let p = r.sender.iter().find(|p| p.matches(facts.sender))?;
        why.push(format!("sender {p}"));
    }
    if !r.user.is_empty() {
        let user = facts.user?;
        r.user.iter().find(|u| u.as_str() == user)?;
        why.push(format!("user {user}"));
    }
    if !r.network.is_empty() {
        let ip = facts.client?;
        let net = r.network.iter().find(|n| n.contains(&ip))?;
        why.push(format!("network {net}"));
    }
    if why.is_empty() {
        why.push("matches every recipient".into());
    }
    Some(why.join(", "))
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
        Destination::Profile(name) => config
            .profile(name)
            .map(|p| p.hosts)
            .ok_or_else(|| RouteError::Temporary(missing_profile(name))),
        Destination::Literal(ip) => Ok(vec![NextHop::new(ip.to_string(), mx_port)]),
        Destination::Mx(domain) => match resolver.mx(domain).await {
            Ok(MxAnswer::Records(records)) => Ok(order_mx(records)
                .into_iter()
                .map(|host| NextHop::new(host, mx_port))
                .collect()),
            Ok(MxAnswer::NoMx) => Ok(vec![NextHop::new(domain.clone(), mx_port)]),
            Ok(MxAnswer::NullMx) => Err(RouteError::Permanent(AttemptResult::local(
                Stage::Routing,
                EnhancedStatus::new(5, 1, 10),
                format!("{domain} accepts no mail (null MX, RFC 7505)"),
            ))),
            Ok(MxAnswer::NoSuchDomain) => Err(RouteError::Permanent(AttemptResult::local(
                Stage::Routing,
                EnhancedStatus::new(5, 1, 2),
                format!("domain {domain} does not exist"),
            ))),
            Err(e) => Err(RouteError::Temporary(AttemptResult::local(
                Stage::Routing,
                EnhancedStatus::new(4, 4, 3),
                format!("MX lookup for {domain}: {e}"),
            ))),
        },
    }
}

/// A route names a profile the config (reloaded meanwhile) no longer has:
/// our own configuration's trouble, never a reason to bounce.
pub fn missing_profile(name: &str) -> AttemptResult {
    AttemptResult::local(
        Stage::Routing,
        EnhancedStatus::new(4, 3, 5),
        format!(
            "the smart-host profile {name:?} does not exist (any more); check [[smarthost]] and [[route]]"
        ),
    )
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
    fn routes_match_by_sender_user_and_network_first_match_wins() {
        let c = Config::parse(
            "[[smarthost]]\nname = \"a\"\nhosts = \"a.test\"\n[[smarthost]]\nname = \"b\"\nhosts = \"b.test\"\n[[route]]\nuser = [\"printer\", \"scanner\"]\nvia = \"a\"\n[[route]]\nsender = \"*@app.example\"\nnetwork = \"10.1.0.0/16\"\nvia = \"b\"\n[[route]]\ndomain = \"*.lan.example\"\nhost = \"10.0.0.9:25\"\n",
            "t",
        )
        .unwrap();
        let facts = |sender, user, ip: &str| RouteFacts {
            sender,
            user,
            client: ip.parse().ok(),
        };
        let d = |to: &str, f: &RouteFacts| decide(to, f, &c).unwrap();
        let r = d(
            "x@far.example",
            &facts("x@app.example", Some("printer"), "10.1.2.3"),
        );
        assert_eq!(r.destination, Destination::Profile("a".into()));
        assert_eq!(r.why, "route[0] (user printer)");
        let r = d("x@far.example", &facts("x@app.example", None, "10.1.2.3"));
        assert_eq!(r.destination, Destination::Profile("b".into()));
        assert!(
            r.why.contains("sender @app.example") && r.why.contains("network 10.1.0.0/16"),
            "{}",
            r.why
        );
        // Every matcher must match: the right sender from another network is not enough.
        let r = d("x@far.example", &facts("x@app.example", None, "192.0.2.1"));
        assert_eq!(r.destination, Destination::Mx("far.example".into()));
        let r = d("x@Host.LAN.example", &facts("", None, "192.0.2.1"));
        assert_eq!(
            r.destination,
            Destination::Route("10.0.0.9:25".parse().unwrap())
        );
        let r = d("x@lan.example", &facts("", None, "192.0.2.1"));
        assert_eq!(
            r.destination,
            Destination::Mx("lan.example".into()),
            "*. is for subdomains"
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
        assert_eq!(
            destination("other.example", &c).unwrap(),
            Destination::Profile("default".into())
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
