//! `doctor`: will mail from this machine be delivered and trusted? Each check
//! gives a verdict and, when it fails, the fix: the host name resolves; the
//! public address has reverse DNS that resolves back and matches the HELO
//! name; outbound port 25 works (or the provider blocks it: use a smart
//! host); each smart host answers, does TLS and takes the credentials; and
//! our own listeners relay nothing for a stranger. Lookups use the configured
//! resolver; connections use the delivery client.

use super::relay_test::{self, DEFAULT_FROM, DEFAULT_TO, Options};
use crate::config::{Config, DeliveryMode, ListenerKind};
use crate::delivery::Deliverer;
use crate::dns::{MxAnswer, Resolver};
use crate::policy::Policy;
use serde::Serialize;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Warning,
    Fail,
    Skipped,
}

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: String,
    pub status: Status,
    pub detail: String,
    /// What to do about it (empty when all is well).
    pub fix: String,
}

#[derive(Debug, Clone)]
pub struct DoctorOptions {
    /// The address the world sees mail come from; found from the default route when absent.
    pub public_ip: Option<IpAddr>,
    /// A domain whose MX to try port 25 against.
    pub probe_domain: String,
    /// Wait for each connection.
    pub timeout: Duration,
}

fn check(name: &str, status: Status, detail: impl Into<String>, fix: impl Into<String>) -> Check {
    Check {
        name: name.to_string(),
        status,
        detail: detail.into(),
        fix: fix.into(),
    }
}

/// Runs every check.
pub async fn run(config: &Config, opts: &DoctorOptions) -> Vec<Check> {
    let resolver = match Resolver::from_config(&config.dns) {
        Ok(r) => r,
        Err(e) => {
            return vec![check(
                "DNS resolver",
                Status::Fail,
                e.to_string(),
                "set [dns] nameservers to resolvers this machine can reach",
            )];
        }
    };
    let mut out = Vec::new();
    let hostname = config.hostname();
    let helo = config
        .delivery
        .helo_name
        .clone()
        .unwrap_or_else(|| hostname.clone());
    out.push(hostname_resolves(&resolver, &hostname).await);
    let public = match opts.public_ip.or(config.diagnostics.public_ip) {
        Some(ip) => {
            out.push(check(
                "public address",
                Status::Ok,
                format!("{ip} (configured)"),
                "",
            ));
            Some(ip)
        }
        None => {
            let (found, c) = outward_address();
            out.push(c);
            found
        }
    };
    match public {
        Some(ip) => out.extend(reverse_dns(&resolver, ip, &helo).await),
        None => out.push(check(
            "reverse DNS",
            Status::Skipped,
            "no public address to look up",
            "set [diagnostics] public_ip",
        )),
    }
    out.push(dnsbl(config, &resolver, public, opts.timeout).await);
    out.push(port_25(config, &resolver, opts).await);
    out.extend(smarthosts(config, &resolver).await);
    for d in &config.dkim {
        out.push(dkim_record(d, &resolver).await);
    }
    out.push(open_relay(config, opts).await);
    out.extend(super::doctor_cluster::checks(config).await);
    out
}

/// Whether a `[[dkim]]` key's public half is what DNS publishes.
async fn dkim_record(d: &crate::config::DkimConfig, resolver: &Resolver) -> Check {
    let name = format!("DKIM {}", d.record_name());
    let name = name.as_str();
    let key = match crate::dkim_key::load(&d.key_file) {
        Ok(k) => k,
        Err(e) => {
            return check(
                name,
                Status::Fail,
                format!("key_file {}: {e}", d.key_file.display()),
                format!(
                    "portcullis dkim keygen {} {} --out FILE",
                    d.domain, d.selector
                ),
            );
        }
    };
    let publish = format!("publish TXT {} = \"{}\"", d.record_name(), key.record());
    let records = match resolver.txt(&d.record_name()).await {
        Ok(r) => r,
        Err(e) => {
            return check(
                name,
                Status::Warning,
                format!("lookup failed: {e}"),
                "check [dns] nameservers",
            );
        }
    };
    let dkim: Vec<&String> = records.iter().filter(|r| r.contains("p=")).collect();
    match dkim.as_slice() {
        [] => check(
            name,
            Status::Fail,
            "no DKIM record is published: receivers cannot verify the signatures, and mail signed with it may count as forged",
            publish,
        ),
        [one] => match crate::dkim_key::published_key(one) {
            Some(p) if p == key.public => check(
                name,
                Status::Ok,
                format!("published, and it matches the {} key", key.kind),
                "",
            ),
            Some(p) if p.is_empty() => check(
                name,
                Status::Fail,
                "the published record revokes the key (empty p=)",
                publish,
            ),
            _ => check(
                name,
                Status::Fail,
                "the published key is not the key in key_file: every signature will fail to verify",
                publish,
            ),
        },
        _ => check(
            name,
            Status::Fail,
            "more than one DKIM record is published under this name",
            publish,
        ),
    }
}

async fn hostname_resolves(resolver: &Resolver, hostname: &str) -> Check {
    let name = "host name resolves";
    match resolver.addresses(hostname).await {
        Ok(a) if !a.is_empty() => {
            check(name, Status::Ok, format!("{hostname} has {}", list(&a)), "")
        }
        Ok(_) => check(
            name,
            Status::Fail,
            format!("{hostname} has no A or AAAA record"),
            format!(
                "publish an A record for {hostname}, or set server.hostname to a name that has one"
            ),
        ),
        Err(e) => check(
            name,
            Status::Warning,
            format!("{hostname}: {e}"),
            "check [dns] nameservers",
        ),
    }
}

/// The source address of the default route, found by connecting a UDP socket
/// (which sends nothing) towards a documentation address.
fn outward_address() -> (Option<IpAddr>, Check) {
    let name = "public address";
    let found = std::net::UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| s.connect("198.51.100.1:25").map(|_| s))
        .and_then(|s| s.local_addr());
    match found {
        Ok(addr) if is_private(addr.ip()) => (
            Some(addr.ip()),
            check(
                name,
                Status::Warning,
                format!(
                    "this machine reaches the Internet from {}, a private address: behind NAT the world sees your router's address instead",
                    addr.ip()
                ),
                "set [diagnostics] public_ip to the address your provider gave you, so reverse DNS is checked for the right one",
            ),
        ),
        Ok(addr) => (
            Some(addr.ip()),
            check(
                name,
                Status::Ok,
                format!("{} (source of the default route)", addr.ip()),
                "",
            ),
        ),
        Err(e) => (
            None,
            check(
                name,
                Status::Warning,
                format!("no default route: {e}"),
                "set [diagnostics] public_ip",
            ),
        ),
    }
}

async fn reverse_dns(resolver: &Resolver, ip: IpAddr, helo: &str) -> Vec<Check> {
    let names = match resolver.ptr(ip).await {
        Ok(n) if !n.is_empty() => n,
        Ok(_) => {
            return vec![check(
                "reverse DNS",
                Status::Fail,
                format!(
                    "{ip} has no PTR record: many receivers refuse or junk mail from addresses without reverse DNS"
                ),
                format!("ask whoever owns {ip} (your provider) to set its PTR to {helo}"),
            )];
        }
        Err(e) => {
            return vec![check(
                "reverse DNS",
                Status::Warning,
                format!("{ip}: {e}"),
                "check [dns] nameservers",
            )];
        }
    };
    let mut out = vec![check(
        "reverse DNS",
        Status::Ok,
        format!("{ip} → {}", names.join(", ")),
        "",
    )];
    let mut confirmed = Vec::new();
    for n in &names {
        if let Ok(addrs) = resolver.addresses(n).await
            && addrs.contains(&ip)
        {
            confirmed.push(n.clone());
        }
    }
    out.push(if confirmed.is_empty() {
        check(
            "forward-confirmed reverse DNS",
            Status::Fail,
            format!("none of {} resolves back to {ip}", names.join(", ")),
            format!("publish an A/AAAA record {} → {ip}", names[0]),
        )
    } else {
        check(
            "forward-confirmed reverse DNS",
            Status::Ok,
            format!("{} → {ip}", confirmed.join(", ")),
            "",
        )
    });
    let helo_lc = helo.to_lowercase();
    out.push(if names.contains(&helo_lc) {
        check(
            "HELO name matches reverse DNS",
            Status::Ok,
            format!("we say EHLO {helo}"),
            "",
        )
    } else {
        check(
            "HELO name matches reverse DNS",
            Status::Warning,
            format!(
                "we say EHLO {helo}, but {ip} reverses to {}",
                names.join(", ")
            ),
            format!(
                "set delivery.helo_name = \"{}\" (or change the PTR to {helo})",
                names[0]
            ),
        )
    });
    out
}

/// Our own public address against the configured black lists.
async fn dnsbl(
    config: &Config,
    resolver: &Resolver,
    public: Option<IpAddr>,
    timeout: Duration,
) -> Check {
    let name = "DNS blacklists";
    if config.checks.dnsbl.is_empty() {
        return check(
            name,
            Status::Skipped,
            "no [checks] dnsbl zones are configured to look the address up in",
            "",
        );
    }
    let Some(ip) = public else {
        return check(
            name,
            Status::Skipped,
            "no public address to look up",
            "set [diagnostics] public_ip",
        );
    };
    let lists =
        crate::checks::dns_lists::DnsLists::new(resolver.clone(), &config.checks.dnsbl, &[]);
    let found = lists.check(ip, timeout).await;
    if !found.listed.is_empty() {
        let zones: Vec<String> = found
            .listed
            .iter()
            .map(|(z, r)| match r {
                Some(r) => format!("{z} ({r})"),
                None => z.clone(),
            })
            .collect();
        return check(
            name,
            Status::Fail,
            format!("{ip} is listed on {}", zones.join(", ")),
            "find out why on each list's web site and request delisting; until then, send through a smart host",
        );
    }
    if !found.failed.is_empty() {
        return check(
            name,
            Status::Warning,
            format!("no answer from {}", found.failed.join(", ")),
            "check [dns] nameservers",
        );
    }
    check(
        name,
        Status::Ok,
        format!("{ip} is on none of {} list(s)", config.checks.dnsbl.len()),
        "",
    )
}

/// Outbound port 25: a TCP connection to an MX of `probe_domain`.
async fn port_25(config: &Config, resolver: &Resolver, opts: &DoctorOptions) -> Check {
    let name = "outbound port 25";
    if config.delivery.mode == DeliveryMode::Smarthost {
        return check(
            name,
            Status::Skipped,
            "delivery goes through the smart host",
            "",
        );
    }
    let domain = &opts.probe_domain;
    let hosts = match resolver.mx(domain).await {
        Ok(MxAnswer::Records(mut r)) => {
            r.sort_by_key(|m| m.preference);
            r.into_iter().map(|m| m.host).collect()
        }
        Ok(MxAnswer::NoMx) => vec![domain.clone()],
        Ok(other) => {
            return check(
                name,
                Status::Skipped,
                format!("{domain}: {other:?}"),
                "pick another --probe-domain",
            );
        }
        Err(e) => {
            return check(
                name,
                Status::Warning,
                format!("MX lookup for {domain}: {e}"),
                "check [dns] nameservers",
            );
        }
    };
    let port = config.delivery.mx_port;
    for host in hosts.iter().take(3) {
        let Ok(addrs) = resolver.addresses(host).await else {
            continue;
        };
        let Some(ip) = addrs.first() else { continue };
        let target = SocketAddr::new(*ip, port);
        match tokio::time::timeout(opts.timeout, tokio::net::TcpStream::connect(target)).await {
            Ok(Ok(_)) => {
                return check(
                    name,
                    Status::Ok,
                    format!("connected to {host} ({target}), an MX of {domain}"),
                    "",
                );
            }
            Ok(Err(e)) => {
                return check(
                    name,
                    Status::Fail,
                    format!("connecting to {host} ({target}) failed: {e}"),
                    "your provider seems to block port 25: set delivery.mode = \"smarthost\" with your provider's smart host on port 587 (smarthost_tls = \"starttls\") and its credentials",
                );
            }
            Err(_) => {
                return check(
                    name,
                    Status::Fail,
                    format!("no answer from {host} ({target}) within {:?}", opts.timeout),
                    "your provider seems to block port 25: set delivery.mode = \"smarthost\" with your provider's smart host on port 587 (smarthost_tls = \"starttls\") and its credentials",
                );
            }
        }
    }
    check(
        name,
        Status::Warning,
        format!("no MX host of {domain} has an address"),
        "pick another --probe-domain",
    )
}

async fn smarthosts(config: &Config, resolver: &Resolver) -> Vec<Check> {
    if config.delivery.mode != DeliveryMode::Smarthost && config.smarthost.is_empty() {
        return Vec::new();
    }
    let mut out = oauth_sign_ins(config);
    let deliverer = Deliverer::new(Arc::new(config.clone()), resolver.clone());
    out.extend(
        deliverer
            .probe_smarthosts()
            .await
            .into_iter()
            .map(|(host, result)| match result {
                Ok(detail) => check(&format!("smart host {host}"), Status::Ok, detail, ""),
                Err(e) => check(
                    &format!("smart host {host}"),
                    Status::Fail,
                    e,
                    "check the profile's hosts, tls, user and credentials ([[smarthost]], or delivery.smarthost… for \"default\") against what your provider documents",
                ),
            }),
    );
    out
}

/// Whether each OAuth2 profile has someone signed in and a working refresh.
fn oauth_sign_ins(config: &Config) -> Vec<Check> {
    config
        .profiles()
        .iter()
        .filter(|p| p.oauth.is_some())
        .map(|p| {
            let name = format!("OAuth2 sign-in of profile {}", p.name);
            match crate::oauth::sign_in_state(config, p) {
                Ok(s) if s.error.is_some() => check(
                    &name,
                    Status::Fail,
                    format!(
                        "the last token refresh failed: {}",
                        s.error.unwrap_or_default()
                    ),
                    format!(
                        "fix the cause, or sign in again: portcullis oauth login {}",
                        p.name
                    ),
                ),
                Ok(s) if s.logged_in => check(&name, Status::Ok, "signed in".to_string(), ""),
                Ok(_)
                    if p.oauth.as_ref().map(|o| o.grant)
                        == Some(crate::config::OAuthGrant::ClientCredentials) =>
                {
                    check(
                        &name,
                        Status::Ok,
                        "no token yet (fetched at the first delivery)".to_string(),
                        "",
                    )
                }
                Ok(_) => check(
                    &name,
                    Status::Fail,
                    "nobody has signed in: mail through this profile waits".to_string(),
                    format!("portcullis oauth login {}", p.name),
                ),
                Err(e) => check(
                    &name,
                    Status::Fail,
                    e.to_string(),
                    "check the data directory's oauth/ files",
                ),
            }
        })
        .collect()
}

/// Our own listeners, tested with the relay battery from an untrusted address.
async fn open_relay(config: &Config, opts: &DoctorOptions) -> Check {
    let name = "not an open relay";
    let policy = Policy::from_config(config);
    let Some(listener) = config
        .listener
        .iter()
        .find(|l| l.kind == ListenerKind::Smtp)
    else {
        return check(name, Status::Skipped, "no smtp listener", "");
    };
    let target = SocketAddr::new(
        match listener.address.ip() {
            IpAddr::V4(v) if v.is_unspecified() => IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
            IpAddr::V6(v) if v.is_unspecified() => IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
            ip => ip,
        },
        listener.address.port(),
    );
    let source = super::self_test::untrusted_source(&policy, target.ip(), ListenerKind::Smtp);
    let Some(source) = source else {
        return check(
            name,
            Status::Skipped,
            "every local address is trusted: no stranger's seat to test from",
            "run `portcullis relay-test` from another machine",
        );
    };
    let report = relay_test::run(&Options {
        target,
        host: target.ip().to_string(),
        from: DEFAULT_FROM.into(),
        to: DEFAULT_TO.into(),
        helo: "doctor.portcullis-relay-test.example".into(),
        source_ip: Some(source),
        starttls: false,
        timeout: opts.timeout,
        // Our own queue: nothing of the test may be left to deliver.
        stop_before_data: true,
    })
    .await;
    match (report.relayed, report.errors) {
        (0, 0) => check(
            name,
            Status::Ok,
            format!(
                "all {} relay attempts from {source} to {target} were refused",
                report.tests.len()
            ),
            "",
        ),
        (0, _) => check(
            name,
            Status::Warning,
            format!(
                "{target}: {} of {} attempts could not run (is the server running?)",
                report.errors,
                report.tests.len()
            ),
            "start the server and run doctor again",
        ),
        (n, _) => check(
            name,
            Status::Fail,
            format!(
                "{n} of {} attempts from {source} were RELAYED by {target}",
                report.tests.len()
            ),
            "run `portcullis relay-test` for the details and `portcullis audit` for the cause",
        ),
    }
}

/// Not reachable from the Internet (private, loopback, link-local …).
fn is_private(ip: IpAddr) -> bool {
    ip.to_string()
        .parse::<crate::config::IpRange>()
        .is_ok_and(|r| crate::config::is_non_global(&r))
}

fn list(addrs: &[IpAddr]) -> String {
    addrs
        .iter()
        .map(IpAddr::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}
