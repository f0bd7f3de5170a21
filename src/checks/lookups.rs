//! The DNS-based checks on one client: reverse DNS, the HELO name, the
//! sender's domain. Each answers Pass, Fail or DnsError, within a deadline.

use crate::config::{HeloCheck, ReverseDnsCheck};
use crate::dns::{MxAnswer, Resolver};
use crate::policy::Lookup;
use std::net::IpAddr;
use std::time::Duration;

/// The lookup, or a DnsError when it takes longer than `deadline`.
pub async fn within(
    deadline: Duration,
    lookup: impl std::future::Future<Output = Lookup>,
) -> Lookup {
    tokio::time::timeout(deadline, lookup)
        .await
        .unwrap_or_else(|_| Lookup::DnsError(format!("no answer within {deadline:?}")))
}

pub async fn reverse_dns(resolver: &Resolver, ip: IpAddr, mode: ReverseDnsCheck) -> Lookup {
    let names = match resolver.ptr(ip).await {
        Ok(n) => n,
        Err(e) => return Lookup::DnsError(e.to_string()),
    };
    if names.is_empty() {
        return Lookup::Fail(format!("{ip} has no PTR record"));
    }
    if mode == ReverseDnsCheck::Ptr {
        return Lookup::Pass(format!("{ip} is {}", names.join(", ")));
    }
    let mut failure = None;
    for name in names.iter().take(5) {
        match resolver.addresses(name).await {
            Ok(addrs) if addrs.contains(&ip) => {
                return Lookup::Pass(format!("{ip} is {name}, which resolves back"));
            }
            Ok(_) => {}
            Err(e) => failure = Some(e.to_string()),
        }
    }
    match failure {
        Some(e) => Lookup::DnsError(e),
        None => Lookup::Fail(format!(
            "{ip} is {}, which does not resolve back to {ip}",
            names.join(", ")
        )),
    }
}

pub async fn helo(resolver: &Resolver, name: &str, ip: IpAddr, mode: HeloCheck) -> Lookup {
    // An address literal names itself.
    let literal = name
        .strip_prefix('[')
        .and_then(|n| n.strip_suffix(']'))
        .map(|n| n.strip_prefix("IPv6:").unwrap_or(n))
        .and_then(|n| n.parse::<IpAddr>().ok());
    let addrs = match literal {
        Some(a) => vec![a],
        None => match resolver.addresses(name).await {
            Ok(a) => a,
            Err(e) => return Lookup::DnsError(e.to_string()),
        },
    };
    if addrs.is_empty() {
        return Lookup::Fail(format!("{name} does not resolve"));
    }
    if mode == HeloCheck::Matches && !addrs.iter().any(|a| a.to_canonical() == ip) {
        return Lookup::Fail(format!("{name} does not resolve to {ip}"));
    }
    Lookup::Pass(format!("{name} resolves"))
}

pub async fn sender_domain(resolver: &Resolver, domain: &str) -> Lookup {
    match resolver.mx(domain).await {
        Ok(MxAnswer::Records(_)) => Lookup::Pass(format!("{domain} has MX records")),
        Ok(MxAnswer::NullMx) => Lookup::Fail(format!(
            "{domain} accepts no mail (null MX), so replies could not reach the sender"
        )),
        Ok(MxAnswer::NoSuchDomain) => Lookup::Fail(format!("{domain} does not exist")),
        Ok(MxAnswer::NoMx) => match resolver.addresses(domain).await {
            Ok(a) if !a.is_empty() => Lookup::Pass(format!("{domain} has an address")),
            Ok(_) => Lookup::Fail(format!("{domain} has neither MX nor address records")),
            Err(e) => Lookup::DnsError(e.to_string()),
        },
        Err(e) => Lookup::DnsError(e.to_string()),
    }
}
