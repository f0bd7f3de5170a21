//! The config audit: every risk of a configuration in plain words, with its
//! severity, the key it is about and the fix. It judges by the server's own
//! policy (the network lookup, the open-relay guard) and by facts of the
//! machine it runs on (the default gateways), never by a second reading of
//! the rules.

use crate::config::open_relay_entries;
use crate::config::{
    Config, DeliveryMode, FilterMode, ListenerKind, NetworkAuth, Severity as ConfigSeverity,
    SmarthostTls,
};
use crate::policy::Policy;
use serde::Serialize;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Risk,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub severity: Severity,
    pub key: String,
    pub message: String,
    pub fix: String,
}

/// Facts of the machine the audit runs on.
#[derive(Debug, Clone, Default)]
pub struct Machine {
    /// Next hops of the default routes.
    pub gateways: Vec<IpAddr>,
    /// DNS list zones whose health check failed: zone and problem.
    pub broken_zones: Vec<(String, String)>,
}

impl Machine {
    /// Reads the routing table (Linux: /proc/net/route and /proc/net/ipv6_route).
    pub fn read() -> Machine {
        let mut gateways = Vec::new();
        if let Ok(text) = std::fs::read_to_string("/proc/net/route") {
            gateways.extend(default_gateways_v4(&text));
        }
        if let Ok(text) = std::fs::read_to_string("/proc/net/ipv6_route") {
            gateways.extend(default_gateways_v6(&text));
        }
        gateways.sort();
        gateways.dedup();
        Machine {
            gateways,
            broken_zones: Vec::new(),
        }
    }

    /// Tests the config's DNS list zones (127.0.0.2 listed, 127.0.0.1 not)
    /// with its resolver, as the server does at start.
    pub async fn test_zones(&mut self, config: &Config) {
        if config.checks.dnsbl.is_empty() && config.checks.dnswl.is_empty() {
            return;
        }
        let Ok(resolver) = crate::dns::Resolver::from_config(&config.dns) else {
            return;
        };
        let lists = crate::checks::dns_lists::DnsLists::new(
            resolver,
            &config.checks.dnsbl,
            &config.checks.dnswl,
        );
        for h in lists.health_check(config.checks.dns_timeout.get()).await {
            if let Some(problem) = h.problem {
                self.broken_zones.push((h.zone, problem));
            }
        }
    }
}

/// Gateways of the IPv4 default routes in /proc/net/route (hex, host byte order).
pub fn default_gateways_v4(table: &str) -> Vec<IpAddr> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (dest, gateway, mask) = (f.get(1)?, f.get(2)?, f.get(7)?);
            if *dest != "00000000" || *mask != "00000000" {
                return None;
            }
            let raw = u32::from_str_radix(gateway, 16).ok()?;
            (raw != 0).then(|| IpAddr::V4(Ipv4Addr::from(raw.to_le_bytes())))
        })
        .collect()
}

/// Next hops of the IPv6 default routes in /proc/net/ipv6_route.
pub fn default_gateways_v6(table: &str) -> Vec<IpAddr> {
    table
        .lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (dest, prefix, next_hop) = (f.first()?, f.get(1)?, f.get(4)?);
            if !dest.trim_start_matches('0').is_empty() || *prefix != "00" {
                return None;
            }
            let raw = u128::from_str_radix(next_hop, 16).ok()?;
            (raw != 0).then(|| IpAddr::V6(Ipv6Addr::from(raw)))
        })
        .collect()
}

/// Every finding for `config` on `machine`, the gravest first.
pub fn audit(config: &Config, machine: &Machine) -> Vec<Finding> {
    let policy = Policy::from_config(config);
    let mut out = Vec::new();
    open_relay(config, &mut out);
    let open_keys: Vec<String> = out.iter().map(|f| f.key.clone()).collect();
    wide_trust(config, &mut out);
    router(config, &policy, machine, &mut out);
    exposure(config, &mut out);
    admin_page(config, &mut out);
    authentication(config, &mut out);
    smarthost(config, &mut out);
    proxies(config, &mut out);
    trusted_load_balancer(config, &policy, &mut out);
    for (zone, problem) in &machine.broken_zones {
        push(
            &mut out,
            Severity::Risk,
            "checks.dnsbl",
            format!(
                "the DNS list zone {zone} {problem}: the server sets it aside, so it protects nothing (a zone that lists everything would refuse all mail)"
            ),
            format!(
                "remove {zone} or fix access to it (many lists refuse queries from public resolvers: use a local caching resolver in [dns] nameservers)"
            ),
        );
    }
    limits(config, &mut out);
    // What validation says, unless an audit finding above already says it better.
    for f in config.findings() {
        if open_keys.contains(&f.key) {
            continue;
        }
        let severity = match f.severity {
            ConfigSeverity::Error => Severity::Risk,
            ConfigSeverity::Warning => Severity::Warning,
            ConfigSeverity::Info => Severity::Info,
        };
        out.push(Finding {
            severity,
            key: f.key.clone(),
            message: format!("`{}` = {}: {}", f.key, f.value, f.reason),
            fix: f.fix.clone().unwrap_or_else(|| {
                format!(
                    "change `{}` in the configuration file, check it with `portcullis check-config --config FILE`, then apply it with `portcullis reload`",
                    f.key
                )
            }),
        });
    }
    out.sort_by_key(|f| std::cmp::Reverse(f.severity));
    out
}

/// The exit status for a set of findings: 2 with a risk, 1 with warnings, else 0.
pub fn exit_code(findings: &[Finding]) -> i32 {
    match findings.iter().map(|f| f.severity).max() {
        Some(Severity::Risk) => 2,
        Some(Severity::Warning) => 1,
        _ => 0,
    }
}

fn push(
    out: &mut Vec<Finding>,
    severity: Severity,
    key: impl Into<String>,
    message: String,
    fix: String,
) {
    out.push(Finding {
        severity,
        key: key.into(),
        message,
        fix,
    });
}

/// Classic mistake 1: trust without AUTH reaching Internet addresses.
fn open_relay(config: &Config, out: &mut Vec<Finding>) {
    for e in open_relay_entries(config) {
        let allowed = if config.relay.allow_open_relay {
            " relay.allow_open_relay = true lets the server start anyway: spammers will find it within hours and your address will be blacklisted."
        } else {
            " The server refuses to start with it."
        };
        push(
            out,
            Severity::Risk,
            format!("{}.range", e.key),
            format!(
                "{}: anyone on the Internet in that range will be able to relay mail through this server without authentication.{allowed}",
                e.reason
            ),
            format!(
                "in {}, use auth = \"required\", or narrow range to your own LAN (for example \"192.168.1.0/24\")",
                e.key
            ),
        );
    }
}

/// Private ranges trusted wholesale: every device there may relay.
fn wide_trust(config: &Config, out: &mut Vec<Finding>) {
    for (i, n) in config.network.iter().enumerate() {
        // Loopback is this machine itself, however wide it is written.
        let wide = match n.range.net() {
            ipnet::IpNet::V4(v4) => v4.prefix_len() < 16 && !v4.network().is_loopback(),
            ipnet::IpNet::V6(v6) => v6.prefix_len() < 48,
        };
        if n.auth == NetworkAuth::None && wide && crate::config::is_non_global(&n.range) {
            push(
                out,
                Severity::Warning,
                format!("network[{i}].range"),
                format!(
                    "range = \"{}\" with auth = \"none\" trusts a very large private network: any device there, or any one compromised, may relay without authentication",
                    n.range
                ),
                "narrow the range to the segments whose machines must send without AUTH".into(),
            );
        }
    }
}

/// Classic mistake 3: the router (default gateway) inside a trusted range.
fn router(config: &Config, policy: &Policy, machine: &Machine, out: &mut Vec<Finding>) {
    for &gw in &machine.gateways {
        if !policy.is_trusted(gw) {
            continue;
        }
        let m = policy.networks.lookup(gw);
        let Some(i) = m.index else { continue };
        let range = config.network[i].range;
        let mut excludes: Vec<String> = config.network[i]
            .exclude
            .iter()
            .map(|e| format!("\"{e}\""))
            .collect();
        excludes.push(format!("\"{gw}\""));
        push(
            out,
            Severity::Risk,
            format!("network[{i}].exclude"),
            format!(
                "the default gateway {gw} (your router) is inside network[{i}] ({range}) with auth = \"none\": when it forwards or NATs connections from the Internet, every outside client arrives with the router's address and may relay without authentication"
            ),
            format!("in network[{i}], set exclude = [{}]", excludes.join(", ")),
        );
    }
}

fn is_local_only(ip: IpAddr) -> bool {
    ip.is_loopback()
}

/// Classic mistake 2: no connection filter on a listener reachable from outside.
/// The admin page on a network address: its logins are guarded, but
/// `/metrics` is not, and it tells a stranger the traffic and queue.
fn admin_page(config: &Config, out: &mut Vec<Finding>) {
    let Some(address) = config.admin.address else {
        return;
    };
    if is_local_only(address.ip()) {
        return;
    }
    push(
        out,
        Severity::Warning,
        "admin.address",
        format!(
            "the admin page listens on {address}, reachable from the network: its pages need a login, but /metrics needs none and shows your traffic, refusals and queue to anyone who can connect"
        ),
        "listen on 127.0.0.1 (reach it through SSH or a reverse proxy), or firewall the port to the operators' and Prometheus's addresses".into(),
    );
}

fn exposure(config: &Config, out: &mut Vec<Finding>) {
    let exposed: Vec<&crate::config::ListenerConfig> = config
        .listener
        .iter()
        .filter(|l| !is_local_only(l.address.ip()))
        .collect();
    let names = |kinds: &dyn Fn(ListenerKind) -> bool| {
        exposed
            .iter()
            .filter(|l| kinds(l.kind))
            .map(|l| l.address.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    // An smtp listener open to all serves only the LAN when no outside sender
    // has any business with it (no inbound domains); AUTH-only listeners and
    // inbound mail are meant to be reached from anywhere.
    let lan_only = names(&|k| k == ListenerKind::Smtp);
    if !lan_only.is_empty()
        && config.relay.inbound_domains.is_empty()
        && config.access.filter == FilterMode::Off
    {
        push(
            out,
            Severity::Warning,
            "access.filter",
            format!(
                "listener {lan_only} accepts connections from any address and the connection filter is off, though no outside sender needs it (no inbound domains): strangers can reach the SMTP dialogue (they still cannot relay without AUTH, but they can probe and guess passwords)"
            ),
            "set [access] filter = \"allow\" with allow = your LAN ranges, or listen on the LAN address only".into(),
        );
    }
    let all = names(&|_| true);
    if !all.is_empty() && config.tls.cert.is_none() {
        push(
            out,
            Severity::Warning,
            "tls.cert",
            format!(
                "listener {all} is reachable from the network but uses a self-signed certificate: clients cannot tell this server from an impostor, and strict clients refuse it"
            ),
            "set [tls] cert and key to a certificate for the server's name (for example from Let's Encrypt)".into(),
        );
    }
}

fn authentication(config: &Config, out: &mut Vec<Finding>) {
    if !config.auth.allow_plaintext {
        return;
    }
    let exposed = config
        .listener
        .iter()
        .any(|l| !is_local_only(l.address.ip()));
    push(
        out,
        if exposed { Severity::Risk } else { Severity::Info },
        "auth.allow_plaintext",
        "AUTH is offered on unencrypted connections: passwords cross the network in clear, where anyone on the path can read them".into(),
        "set auth.allow_plaintext = false; clients use STARTTLS (port 587) or implicit TLS (port 465)".into(),
    );
}

fn smarthost(config: &Config, out: &mut Vec<Finding>) {
    let d = &config.delivery;
    if d.mode != DeliveryMode::Smarthost {
        return;
    }
    let credentials = d.smarthost_user.is_some();
    match d.smarthost_tls {
        SmarthostTls::None => push(
            out,
            if credentials { Severity::Risk } else { Severity::Warning },
            "delivery.smarthost_tls",
            if credentials {
                "mail and the smart-host password travel to the smart host in clear".into()
            } else {
                "mail travels to the smart host in clear".into()
            },
            "set delivery.smarthost_tls = \"starttls\" (port 587) or \"implicit\" (port 465)".into(),
        ),
        SmarthostTls::Opportunistic if credentials => push(
            out,
            Severity::Warning,
            "delivery.smarthost_tls",
            "STARTTLS to the smart host is opportunistic: an attacker on the path can strip it and read the password".into(),
            "set delivery.smarthost_tls = \"starttls\", which refuses to send without TLS".into(),
        ),
        _ => {}
    }
    if !d.smarthost_verify {
        push(
            out,
            Severity::Warning,
            "delivery.smarthost_verify",
            "the smart host's certificate is not checked: anyone who can redirect the connection receives the mail (and the password)".into(),
            "set delivery.smarthost_verify = true, and delivery.smarthost_ca_file for a private CA".into(),
        );
    }
}

/// Each (listener index, `proxy_from` entry) of the listeners that take
/// PROXY headers.
fn proxy_sources(config: &Config) -> impl Iterator<Item = (usize, &crate::config::IpRange)> {
    config
        .listener
        .iter()
        .enumerate()
        .filter(|(_, l)| l.proxy_protocol)
        .flat_map(|(i, l)| l.proxy_from.iter().map(move |r| (i, r)))
}

/// PROXY headers are believed from `proxy_from`: anyone there can claim any address.
fn proxies(config: &Config, out: &mut Vec<Finding>) {
    for (i, r) in proxy_sources(config) {
        let wide = match r.net() {
            ipnet::IpNet::V4(v4) => v4.prefix_len() < 24,
            ipnet::IpNet::V6(v6) => v6.prefix_len() < 112,
        };
        if wide || !crate::config::is_non_global(r) {
            push(
                out,
                Severity::Risk,
                format!("listener[{i}].proxy_from"),
                format!(
                    "PROXY headers are believed from {r}: any machine there can claim to be any client — a trusted one included — and relay"
                ),
                "list only your load balancers' own addresses".into(),
            );
        } else if config.cluster.is_some() && r.net().prefix_len() < r.net().max_prefix_len() {
            // A cluster's front is one or two known machines (HAProxy,
            // keepalived pairs): a range believes more than them.
            push(
                out,
                Severity::Warning,
                format!("listener[{i}].proxy_from"),
                format!(
                    "PROXY headers are believed from the whole range {r}: every machine in it, not only the cluster's load balancer, can claim to be any client"
                ),
                format!(
                    "list each load balancer's own address (e.g. proxy_from = [\"{}/{}\"])",
                    r.net().network(),
                    r.net().max_prefix_len()
                ),
            );
        }
    }
}

/// A load balancer inside a network that relays without AUTH: whatever
/// reaches a node from it without a PROXY header naming the client (a
/// listener without `proxy_protocol` it also forwards to, its own checks)
/// is trusted, so every Internet client behind it could relay: the
/// router problem again, one hop further.
fn trusted_load_balancer(config: &Config, policy: &Policy, out: &mut Vec<Finding>) {
    for (i, r) in proxy_sources(config) {
        let balancer = r.net().network();
        if policy.is_trusted(balancer) {
            push(
                out,
                Severity::Risk,
                format!("listener[{i}].proxy_from"),
                format!(
                    "the load balancer {r} is inside a network that relays without AUTH: a connection from it without a PROXY header (a listener without proxy_protocol it forwards to, or its health check) relays for whoever is behind it"
                ),
                format!(
                    "exclude {balancer} from that [[network]] (exclude = [\"{balancer}\"]), and give every listener the load balancer reaches proxy_protocol = true"
                ),
            );
        }
    }
}

fn limits(config: &Config, out: &mut Vec<Finding>) {
    let s = &config.server;
    if s.max_connections > 10_000 {
        push(
            out,
            Severity::Warning,
            "server.max_connections",
            format!(
                "{} connections at once protects nothing on a small relay: a flood can use up memory and file handles first",
                s.max_connections
            ),
            "keep it near what your clients need (the default is 200)".into(),
        );
    }
    if s.max_connections_per_ip >= s.max_connections {
        push(
            out,
            Severity::Warning,
            "server.max_connections_per_ip",
            "one address may take every connection slot".into(),
            "keep it well below server.max_connections (the default is 20)".into(),
        );
    }
    if s.max_recipients > 1000 {
        push(
            out,
            Severity::Warning,
            "server.max_recipients",
            format!(
                "{} recipients per message makes this relay an efficient spam cannon if a device or password is compromised",
                s.max_recipients
            ),
            "keep it near what your applications need (the default is 100)".into(),
        );
    }
    if s.reserved_connections() == 0 {
        push(out, Severity::Warning, "server.reserved_connections", "no connection slots are kept for your own networks: a flood of strangers can lock the office out".into(), "leave it unset (a tenth of the slots) or set a few slots".into());
    }
    if s.max_connection_rate_per_ip == 0 {
        push(
            out,
            Severity::Info,
            "server.max_connection_rate_per_ip",
            "strangers may open connections as fast as they like".into(),
            "set a rate such as 60 per minute".into(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_tables_give_their_default_gateways() {
        let v4 = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                  eth0\t00000000\t0101A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
                  eth0\t0001A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n";
        assert_eq!(
            default_gateways_v4(v4),
            vec!["192.168.1.1".parse::<IpAddr>().unwrap()]
        );
        let v6 = "00000000000000000000000000000000 00 00000000000000000000000000000000 00 fe800000000000000000000000000001 00000400 00000001 00000000 00000003 eth0\n\
                  fe800000000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001 eth0\n";
        assert_eq!(
            default_gateways_v6(v6),
            vec!["fe80::1".parse::<IpAddr>().unwrap()]
        );
    }

    fn config(text: &str) -> Config {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn the_router_in_a_trusted_range_is_a_risk_with_its_exclude_line() {
        let c = config("[[network]]\nrange = \"192.168.1.0/24\"\nauth = \"none\"\n");
        let machine = Machine {
            gateways: vec!["192.168.1.1".parse().unwrap()],
            broken_zones: Vec::new(),
        };
        let found = audit(&c, &machine);
        let f = found
            .iter()
            .find(|f| f.key == "network[0].exclude")
            .expect("router finding");
        assert_eq!(f.severity, Severity::Risk);
        assert!(f.message.contains("192.168.1.1"));
        assert_eq!(f.fix, "in network[0], set exclude = [\"192.168.1.1\"]");
        let c = config(
            "[[network]]\nrange = \"192.168.1.0/24\"\nauth = \"none\"\nexclude = [\"192.168.1.1\"]\n",
        );
        assert!(
            !audit(&c, &machine)
                .iter()
                .any(|f| f.key.ends_with(".exclude"))
        );
    }

    #[test]
    fn the_whole_internet_trusted_is_a_risk_and_loopback_is_clean() {
        let c = config(
            "[[network]]\nrange = \"0.0.0.0/0\"\nauth = \"none\"\n[relay]\nallow_open_relay = true\n",
        );
        let found = audit(&c, &Machine::default());
        assert_eq!(exit_code(&found), 2);
        assert!(
            found[0].message.contains("anyone on the Internet"),
            "{:?}",
            found[0]
        );
        let safe = config(
            "[[listener]]\naddress = \"127.0.0.1:2525\"\n[[network]]\nrange = \"127.0.0.0/8\"\nauth = \"none\"\n",
        );
        assert_eq!(audit(&safe, &Machine::default()), vec![]);
    }

    #[test]
    fn a_load_balancer_inside_a_trusted_network_is_a_risk() {
        let node = |network: &str| {
            config(&format!(
                "[[listener]]\naddress = \"10.0.0.11:2525\"\nproxy_protocol = true\nproxy_from = [\"10.0.0.10/32\"]\n\
                 [[network]]\nrange = \"{network}\"\nauth = \"none\"\n"
            ))
        };
        let found = audit(&node("10.0.0.0/24"), &Machine::default());
        let f = found
            .iter()
            .find(|f| f.key == "listener[0].proxy_from" && f.message.contains("load balancer"))
            .expect("the load balancer finding");
        assert_eq!(f.severity, Severity::Risk);
        assert!(f.fix.contains("exclude = [\"10.0.0.10\"]"), "{}", f.fix);
        let apart = audit(&node("192.168.1.0/24"), &Machine::default());
        assert!(
            !apart.iter().any(|f| f.message.contains("load balancer")),
            "{apart:?}"
        );
    }

    #[test]
    fn a_cluster_node_believing_proxy_headers_from_a_range_is_warned() {
        let node = |from: &str| {
            config(&format!(
                "[[listener]]\naddress = \"10.0.0.11:2525\"\nproxy_protocol = true\nproxy_from = [\"{from}\"]\n\
                 [cluster]\nnode_id = 1\ndatabase = \"postgres://relay@10.0.0.20/mail?sslmode=require\"\n"
            ))
        };
        let found = audit(&node("10.0.0.8/29"), &Machine::default());
        let f = found
            .iter()
            .find(|f| f.key == "listener[0].proxy_from")
            .expect("the range is named");
        assert_eq!(f.severity, Severity::Warning);
        assert!(f.fix.contains("10.0.0.8/32"), "{}", f.fix);
        let alone = audit(&node("10.0.0.10/32"), &Machine::default());
        assert!(
            !alone.iter().any(|f| f.key == "listener[0].proxy_from"),
            "{alone:?}"
        );
    }

    #[test]
    fn an_admin_page_on_the_network_is_a_warning() {
        let base = "[[listener]]\naddress = \"127.0.0.1:2525\"\n[admin]\nusers = [\"alice\"]\n";
        let local = config(&format!("{base}address = \"127.0.0.1:8025\"\n"));
        assert!(audit(&local, &Machine::default()).is_empty());
        let public = config(&format!("{base}address = \"0.0.0.0:8025\"\ntls = true\n"));
        let found = audit(&public, &Machine::default());
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].key, "admin.address");
        assert!(found[0].message.contains("/metrics"));
    }
}
