//! The one DNS resolver, wrapped so that the rest of the code sees typed
//! answers (found / no such domain / no records / temporary failure) and never
//! the hickory API, which moves between versions. With `[dns] nameservers`
//! set, no lookup goes anywhere else.

use crate::config::DnsConfig;
use crate::smtp::address::Domain;
use hickory_resolver::TokioResolver;
use hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::net::NetError;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{RData, RecordType};
use std::net::IpAddr;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MxRecord {
    pub preference: u16,
    /// Host name without the trailing dot, lower case.
    pub host: String,
}

/// The answer to "where does mail for this domain go?"
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MxAnswer {
    /// MX records, unsorted.
    Records(Vec<MxRecord>),
    /// The domain exists but has no MX: use its A/AAAA (RFC 5321 5.1).
    NoMx,
    /// RFC 7505 null MX: the domain accepts no mail.
    NullMx,
    /// NXDOMAIN: the domain does not exist.
    NoSuchDomain,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum DnsError {
    /// A timeout, SERVFAIL, or no resolver reachable: try again later.
    #[error("temporary DNS failure: {0}")]
    Temporary(String),
    #[error("invalid DNS name {0:?}")]
    BadName(String),
}

#[derive(Clone)]
pub struct Resolver {
    inner: TokioResolver,
}

impl Resolver {
    pub fn from_config(config: &DnsConfig) -> Result<Resolver, DnsError> {
        let provider = TokioRuntimeProvider::default();
        let mut opts = ResolverOpts::default();
        if let Some(t) = config.timeout {
            opts.timeout = t.get();
        } else {
            opts.timeout = Duration::from_secs(5);
        }
        opts.attempts = 2;
        opts.ndots = 0;
        let builder = if config.nameservers.is_empty() {
            match TokioResolver::builder(provider.clone()) {
                Ok(b) => b,
                Err(e) => {
                    // No usable resolv.conf: start anyway; lookups fail (temporarily) until
                    // [dns] nameservers is set, and mail waits safely in the queue.
                    tracing::warn!(error = %e, "cannot read the system resolver configuration; set [dns] nameservers");
                    TokioResolver::builder_with_config(
                        ResolverConfig::from_name_servers(Vec::new()),
                        provider,
                    )
                }
            }
        } else {
            let servers = config
                .nameservers
                .iter()
                .map(|a| {
                    let mut udp = ConnectionConfig::udp();
                    udp.port = a.port();
                    let mut tcp = ConnectionConfig::tcp();
                    tcp.port = a.port();
                    let mut ns = NameServerConfig::udp_and_tcp(a.ip());
                    ns.connections = vec![udp, tcp];
                    ns
                })
                .collect();
            // Only the configured servers, and no hosts file either.
            opts.use_hosts_file = ResolveHosts::Never;
            TokioResolver::builder_with_config(ResolverConfig::from_name_servers(servers), provider)
        };
        let inner = builder
            .with_options(opts)
            .build()
            .map_err(|e| DnsError::Temporary(format!("cannot build the resolver: {e}")))?;
        Ok(Resolver { inner })
    }

    fn fqdn(name: &str) -> String {
        format!("{}.", name.trim_end_matches('.'))
    }

    pub async fn mx(&self, domain: &str) -> Result<MxAnswer, DnsError> {
        match self
            .inner
            .lookup(Self::fqdn(domain).as_str(), RecordType::MX)
            .await
        {
            Ok(lookup) => {
                let records: Vec<MxRecord> = lookup
                    .answers()
                    .iter()
                    .filter_map(|r| match &r.data {
                        RData::MX(mx) => Some(MxRecord {
                            preference: mx.preference,
                            host: Domain::normalize(&mx.exchange.to_utf8()),
                        }),
                        _ => None,
                    })
                    .collect();
                if records.len() == 1 && records[0].host.is_empty() {
                    return Ok(MxAnswer::NullMx);
                }
                if records.is_empty() {
                    return Ok(MxAnswer::NoMx);
                }
                Ok(MxAnswer::Records(records))
            }
            Err(e) => match negative(&e) {
                Some(ResponseCode::NXDomain) => Ok(MxAnswer::NoSuchDomain),
                Some(_) => Ok(MxAnswer::NoMx),
                None => Err(DnsError::Temporary(e.to_string())),
            },
        }
    }

    /// A and AAAA addresses of a host; an empty list when it has none.
    pub async fn addresses(&self, host: &str) -> Result<Vec<IpAddr>, DnsError> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(vec![ip]);
        }
        let mut out = Vec::new();
        for rtype in [RecordType::A, RecordType::AAAA] {
            match self.inner.lookup(Self::fqdn(host).as_str(), rtype).await {
                Ok(lookup) => out.extend(lookup.answers().iter().filter_map(|r| match &r.data {
                    RData::A(a) => Some(IpAddr::V4(a.0)),
                    RData::AAAA(a) => Some(IpAddr::V6(a.0)),
                    _ => None,
                })),
                Err(e) => match negative(&e) {
                    Some(_) => {}
                    None if out.is_empty() => return Err(DnsError::Temporary(e.to_string())),
                    None => {}
                },
            }
        }
        Ok(out)
    }
}

impl Resolver {
    /// The PTR names of an address (reverse DNS); empty when it has none.
    pub async fn ptr(&self, ip: IpAddr) -> Result<Vec<String>, DnsError> {
        match self
            .inner
            .lookup(reverse_name(ip).as_str(), RecordType::PTR)
            .await
        {
            Ok(lookup) => Ok(lookup
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    RData::PTR(name) => Some(Domain::normalize(&name.0.to_utf8())),
                    _ => None,
                })
                .collect()),
            Err(e) => match negative(&e) {
                Some(_) => Ok(Vec::new()),
                None => Err(DnsError::Temporary(e.to_string())),
            },
        }
    }
}

impl Resolver {
    /// The TXT strings of a name (empty when it has none).
    pub async fn txt(&self, name: &str) -> Result<Vec<String>, DnsError> {
        match self
            .inner
            .lookup(Self::fqdn(name).as_str(), RecordType::TXT)
            .await
        {
            Ok(lookup) => Ok(lookup
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    RData::TXT(txt) => Some(
                        txt.txt_data
                            .iter()
                            .map(|part| String::from_utf8_lossy(part).into_owned())
                            .collect::<String>(),
                    ),
                    _ => None,
                })
                .collect()),
            Err(e) => match negative(&e) {
                Some(_) => Ok(Vec::new()),
                None => Err(DnsError::Temporary(e.to_string())),
            },
        }
    }
}

/// The reverse-DNS name of an address: d.c.b.a.in-addr.arpa., or the nibbles under ip6.arpa.
pub fn reverse_name(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{}.{}.{}.{}.in-addr.arpa.", o[3], o[2], o[1], o[0])
        }
        IpAddr::V6(v6) => {
            let mut name = String::with_capacity(73);
            for byte in v6.octets().iter().rev() {
                name.push_str(&format!("{:x}.{:x}.", byte & 0xf, byte >> 4));
            }
            name.push_str("ip6.arpa.");
            name
        }
    }
}

/// The response code of an authoritative "no records" answer, or None for a failure.
fn negative(e: &NetError) -> Option<ResponseCode> {
    if e.is_nx_domain() {
        return Some(ResponseCode::NXDomain);
    }
    if e.is_no_records_found() {
        return Some(ResponseCode::NoError);
    }
    None
}

/// Host names in HTTPS URLs (token endpoints, webhooks, policy servers) are
/// looked up like everything else: through `[dns]`, never the system
/// resolver behind the config's back.
pub fn for_http(resolver: &Resolver) -> std::sync::Arc<HttpNames> {
    std::sync::Arc::new(HttpNames(resolver.clone()))
}

pub struct HttpNames(Resolver);

impl reqwest::dns::Resolve for HttpNames {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let resolver = self.0.clone();
        let host = name.as_str().to_string();
        Box::pin(async move {
            let addrs = resolver
                .addresses(&host)
                .await
                .map_err(|e| -> Box<dyn std::error::Error + Send + Sync> { Box::new(e) })?;
            let addrs: reqwest::dns::Addrs = Box::new(
                addrs
                    .into_iter()
                    .map(|ip| std::net::SocketAddr::new(ip, 0))
                    .collect::<Vec<_>>()
                    .into_iter(),
            );
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reverse_names() {
        assert_eq!(
            reverse_name("192.0.2.5".parse().unwrap()),
            "5.2.0.192.in-addr.arpa."
        );
        assert_eq!(
            reverse_name("2001:db8::1".parse().unwrap()),
            "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa."
        );
    }
}
