//! Semantic checks beyond what serde enforces: each finding names the key,
//! the value and the reason; errors stop `serve` and fail `check-config`.

use super::{Config, FilterMode, NetworkAuth};
use crate::smtp::address::Domain;
use std::collections::HashMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
    Info,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Finding {
    pub severity: Severity,
    pub key: String,
    pub value: String,
    pub reason: String,
    /// What to do about it, when there is more to say than "change the key".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Finding {
    /// The same finding with the fix spelled out (a command, a line to write).
    pub fn with_fix(mut self, fix: impl Into<String>) -> Finding {
        self.fix = Some(fix.into());
        self
    }
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let label = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Info => "note",
        };
        write!(
            f,
            "{label}: `{}` = {}: {}",
            self.key, self.value, self.reason
        )
    }
}

pub(super) fn finding(
    severity: Severity,
    key: impl Into<String>,
    value: impl Into<String>,
    reason: impl Into<String>,
) -> Finding {
    Finding {
        severity,
        key: key.into(),
        value: value.into(),
        reason: reason.into(),
        fix: None,
    }
}

pub fn findings(c: &Config) -> Vec<Finding> {
    let mut out = Vec::new();
    check_server(c, &mut out);
    check_admin(c, &mut out);
    check_log(c, &mut out);
    check_listeners(c, &mut out);
    check_tls(c, &mut out);
    check_networks(c, &mut out);
    check_access(c, &mut out);
    check_hidden_starttls(c, &mut out);
    check_relay(c, &mut out);
    check_delivery(c, &mut out);
    super::validate_routes::check(c, &mut out);
    super::validate_archive::check(c, &mut out);
    super::validate_cluster::check(c, &mut out);
    super::validate_notify::check(c, &mut out);
    super::validate_dkim::check(c, &mut out);
    super::validate_outbound_tls::check(c, &mut out);
    check_files(c, &mut out);
    check_checks(c, &mut out);
    check_guard(c, &mut out);
    out
}

/// Every file the config names must exist and be readable now, not fail later.
fn check_files(c: &Config, out: &mut Vec<Finding>) {
    let files: [(&str, Option<&std::path::Path>); 5] = [
        ("tls.cert", c.tls.cert.as_deref()),
        ("tls.key", c.tls.key.as_deref()),
        (
            "delivery.smarthost_password_file",
            c.delivery.smarthost_password_file.as_deref(),
        ),
        (
            "delivery.smarthost_ca_file",
            c.delivery.smarthost_ca_file.as_deref(),
        ),
        (
            "relay.valid_recipients_file",
            c.relay.valid_recipients_file.as_deref(),
        ),
    ];
    for (key, path) in files {
        let Some(path) = path else { continue };
        if let Err(e) = std::fs::File::open(path) {
            out.push(cannot_access(key, path, "read", &e));
        }
    }
    let users = c.users_file();
    match std::fs::File::open(&users) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if c.auth.users_file.is_some() {
                out.push(finding(
                    Severity::Warning,
                    "auth.users_file",
                    format!("{:?}", users.display().to_string()),
                    "does not exist yet: nobody can authenticate until `portcullis user add` creates it",
                ));
            }
        }
        // Every AUTH would fail with a 454 while the server looks healthy.
        Err(e) => out.push(
            cannot_access("auth.users_file", &users, "read", &e).with_fix(format!(
                "chown portcullis {0} && chmod 600 {0} (the user the service runs as must read it)",
                users.display()
            )),
        ),
    }
    // Transcripts are written by the running server; a directory it cannot
    // write would only show as missing transcripts.
    if let Some(dir) = c
        .log
        .transcript
        .as_deref()
        .filter(|d| !d.as_os_str().is_empty())
    {
        let key = "log.transcript";
        match writable_dir(dir) {
            Ok(()) => {}
            Err((at, e)) if at == dir => out.push(cannot_access(key, dir, "written", &e)),
            Err((at, e)) => out.push(finding(
                Severity::Error,
                key,
                format!("{:?}", dir.display().to_string()),
                format!(
                    "cannot be created: {} is not writable by {}: {e}",
                    at.display(),
                    crate::fsio::running_user()
                ),
            )),
        }
    }

    if c.relay.verify_recipients == crate::config::VerifyRecipients::List {
        match &c.relay.valid_recipients_file {
            None => out.push(finding(
                Severity::Error,
                "relay.valid_recipients_file",
                "(missing)",
                "relay.verify_recipients = \"list\" needs the file of valid addresses",
            )),
            Some(path) => {
                // A missing file is reported above; here, lines that are not addresses.
                if let (true, Err(e)) = (path.exists(), super::AddressPattern::read_list(path)) {
                    out.push(finding(
                        Severity::Error,
                        "relay.valid_recipients_file",
                        format!("{:?}", path.display().to_string()),
                        e,
                    ));
                }
            }
        }
    }
}

/// "cannot be read by portcullis (uid 105): Permission denied (os error 13)":
/// the user matters, as the service runs as another one than the admin.
/// Whether a secret's file is open to other users than its owner (group or world).
pub(super) fn readable_by_others(path: &std::path::Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o077 != 0)
}

fn cannot_access(key: &str, path: &std::path::Path, how: &str, e: &std::io::Error) -> Finding {
    finding(
        Severity::Error,
        key,
        format!("{:?}", path.display().to_string()),
        format!("cannot be {how} by {}: {e}", crate::fsio::running_user()),
    )
}

/// Whether this process may write in `dir`, or create it: the nearest part
/// of the path that exists must let it. On failure, that part and why.
fn writable_dir(dir: &std::path::Path) -> Result<(), (&std::path::Path, std::io::Error)> {
    let existing = dir
        .ancestors()
        .map(|a| {
            if a.as_os_str().is_empty() {
                std::path::Path::new(".")
            } else {
                a
            }
        })
        .find(|a| a.exists())
        .unwrap_or(dir);
    crate::fsio::may_access(existing, true).map_err(|e| (existing, e))
}

/// A smart host whose port and TLS mode disagree: port 465 speaks TLS from
/// the first byte, so STARTTLS there waits for a greeting that never comes
/// (each try hangs until the timeout); 587 and 25 greet in clear, so TLS
/// from the first byte fails there.
pub fn tls_port_mismatch(
    hop: &crate::config::NextHop,
    default: crate::config::SmarthostTls,
) -> Option<String> {
    use crate::config::SmarthostTls;
    let tls = hop.tls_or(default);
    let host = &hop.host;
    match (hop.port, tls) {
        (465, SmarthostTls::Starttls | SmarthostTls::Opportunistic | SmarthostTls::None) => {
            Some(format!(
                "port 465 speaks TLS from the first byte, but this smart host is set to {} (from delivery.smarthost_tls unless written with a scheme): every try waits until the timeout. Write \"smtps://{host}:465\"",
                tls_name(tls)
            ))
        }
        (587 | 25, SmarthostTls::Implicit) => Some(format!(
            "port {} greets in clear and offers STARTTLS, but this smart host is set to TLS from the first byte (\"implicit\"). Write \"starttls://{host}:{}\" (or \"smtps://{host}:465\" if the provider has it)",
            hop.port, hop.port
        )),
        _ => None,
    }
}

fn tls_name(tls: crate::config::SmarthostTls) -> &'static str {
    use crate::config::SmarthostTls;
    match tls {
        SmarthostTls::Starttls => "\"starttls\"",
        SmarthostTls::Implicit => "\"implicit\"",
        SmarthostTls::Opportunistic => "\"opportunistic\"",
        SmarthostTls::None => "\"none\"",
    }
}

fn check_admin(c: &Config, out: &mut Vec<Finding>) {
    let a = &c.admin;
    let Some(address) = a.address else {
        if !a.users.is_empty() {
            out.push(finding(
                Severity::Warning,
                "admin.users",
                format!("{:?}", a.users),
                "admins are named but admin.address is not set, so the admin page is off",
            ));
        }
        return;
    };
    let https = a.https(c.tls.cert.is_some());
    if !address.ip().is_loopback() && !https {
        out.push(finding(
            Severity::Error,
            "admin.address",
            format!("\"{address}\""),
            "an address other than loopback needs HTTPS: set [admin] tls = true (with [admin] or [tls] cert and key), or listen on 127.0.0.1",
        ));
    }
    if a.cert.is_some() != a.key.is_some() {
        out.push(finding(
            Severity::Error,
            if a.cert.is_some() {
                "admin.key"
            } else {
                "admin.cert"
            },
            "(missing)",
            "admin.cert and admin.key go together",
        ));
    }
    if a.users.is_empty() {
        out.push(finding(
            Severity::Warning,
            "admin.users",
            "[]",
            "nobody may log in to the admin page (only /metrics is useful); add names from the users file",
        ));
    }
    for u in &a.users {
        if !crate::users::valid_name(u) {
            out.push(finding(
                Severity::Error,
                "admin.users",
                format!("\"{u}\""),
                "not a valid user name (see `portcullis user add`)",
            ));
        }
    }
    if a.session_idle.get().is_zero() || a.session_lifetime.get().is_zero() {
        out.push(finding(
            Severity::Error,
            "admin.session_idle",
            format!("{} / {}", a.session_idle, a.session_lifetime),
            "admin session durations must be above zero",
        ));
    }
    if address.port() != 0 && c.listener.iter().any(|l| l.address == address) {
        out.push(finding(
            Severity::Error,
            "admin.address",
            format!("\"{address}\""),
            "the same address as an SMTP listener",
        ));
    }
}

fn check_log(c: &Config, out: &mut Vec<Finding>) {
    if let Some(dir) = &c.log.transcript
        && dir.as_os_str().is_empty()
    {
        out.push(finding(
            Severity::Error,
            "log.transcript",
            "\"\"",
            "an empty directory name",
        ));
    }
    if c.log.transcript.is_some() && c.log.transcript_days == 0 {
        out.push(finding(
            Severity::Error,
            "log.transcript_days",
            "0",
            "keep at least one day of transcripts",
        ));
    }
}

fn check_guard(c: &Config, out: &mut Vec<Finding>) {
    let g = &c.guard;
    for (key, value) in [
        ("guard.nat_helo_names", g.nat_helo_names),
        ("guard.nat_sender_domains", g.nat_sender_domains),
        ("guard.nat_public_helos", g.nat_public_helos),
        ("guard.flood_recipient_domains", g.flood_recipient_domains),
    ] {
        if value == 0 {
            out.push(finding(
                Severity::Error,
                key,
                "0",
                "must be at least 1 (0 would distrust or hold everyone at once)",
            ));
        }
    }
    if g.nat_helo_names == 1 {
        out.push(finding(
            Severity::Warning,
            "guard.nat_helo_names",
            "1",
            "any trusted machine that says HELO would lose its trust",
        ));
    }
    for (key, d) in [
        ("guard.nat_window", g.nat_window),
        ("guard.flood_window", g.flood_window),
    ] {
        if d.get().is_zero() {
            out.push(finding(
                Severity::Error,
                key,
                "0s",
                "must be longer than zero",
            ));
        }
    }
    if !(g.flood_baseline_factor >= 1.0 && g.flood_baseline_factor.is_finite()) {
        out.push(finding(
            Severity::Error,
            "guard.flood_baseline_factor",
            g.flood_baseline_factor.to_string(),
            "must be a number of at least 1 (a source may always reach its usual spread)",
        ));
    }
    if g.flood_recipient_domains_max < g.flood_recipient_domains {
        out.push(finding(
            Severity::Error,
            "guard.flood_recipient_domains_max",
            g.flood_recipient_domains_max.to_string(),
            format!(
                "below guard.flood_recipient_domains ({})",
                g.flood_recipient_domains
            ),
        ));
    }
    if !(g.flood_failure_rate > 0.0 && g.flood_failure_rate <= 1.0) {
        out.push(finding(
            Severity::Error,
            "guard.flood_failure_rate",
            g.flood_failure_rate.to_string(),
            "a share between 0 (excluded) and 1",
        ));
    }
}

fn check_checks(c: &Config, out: &mut Vec<Finding>) {
    let k = &c.checks;
    if k.dnsbl_threshold == 0 {
        out.push(finding(
            Severity::Error,
            "checks.dnsbl_threshold",
            "0",
            "must be at least 1 (one listing refuses)",
        ));
    } else if !k.dnsbl.is_empty() && k.dnsbl_threshold as usize > k.dnsbl.len() {
        out.push(finding(
            Severity::Warning,
            "checks.dnsbl_threshold",
            k.dnsbl_threshold.to_string(),
            format!(
                "is more than the {} zone(s) in checks.dnsbl, so no client is ever refused",
                k.dnsbl.len()
            ),
        ));
    }
    if k.dns_timeout.get().is_zero() {
        out.push(finding(
            Severity::Error,
            "checks.dns_timeout",
            "0s",
            "must be longer than zero",
        ));
    }
    if k.uses_dns() && c.dns.nameservers.is_empty() {
        out.push(finding(
            Severity::Info,
            "checks",
            "(DNS checks on)",
            "DNS checks use the system resolver (resolv.conf); a local caching resolver keeps them fast and DNSBL queries within the lists' free-use limits",
        ));
    }
    let l = &c.limits;
    if l.ban_duration.get().is_zero() && l.auth_failures_before_ban > 0 {
        out.push(finding(
            Severity::Error,
            "limits.ban_duration",
            "0s",
            "must be longer than zero (or set auth_failures_before_ban = 0)",
        ));
    }
}

fn check_server(c: &Config, out: &mut Vec<Finding>) {
    let s = &c.server;
    let positive: [(&str, u64); 7] = [
        ("server.max_hops", s.max_hops as u64),
        ("server.max_message_size", s.max_message_size),
        ("server.max_recipients", s.max_recipients as u64),
        ("server.max_errors", u64::from(s.max_errors)),
        ("server.max_connections", s.max_connections as u64),
        (
            "server.max_connections_per_ip",
            s.max_connections_per_ip as u64,
        ),
        ("server.max_text_line", s.max_text_line as u64),
    ];
    for (key, v) in positive {
        if v == 0 {
            out.push(finding(Severity::Error, key, "0", "must be at least 1"));
        }
    }
    if s.reserved_connections() >= s.max_connections && s.max_connections > 0 {
        out.push(finding(
            Severity::Error,
            "server.reserved_connections",
            s.reserved_connections().to_string(),
            "must be less than server.max_connections, or no stranger could ever connect",
        ));
    }
    if s.max_command_line < 512 {
        out.push(finding(
            Severity::Error,
            "server.max_command_line",
            s.max_command_line.to_string(),
            "must be at least 512 (RFC 5321 4.5.3.1.4)",
        ));
    }
    if s.max_text_line < 1000 && s.max_text_line > 0 {
        out.push(finding(
            Severity::Warning,
            "server.max_text_line",
            s.max_text_line.to_string(),
            "below 1000 octets refuses mail that RFC 5321 allows",
        ));
    }
    if let Some(h) = &s.hostname
        && (h.is_empty() || h.contains(|c: char| c.is_whitespace() || c.is_control()))
    {
        out.push(finding(
            Severity::Error,
            "server.hostname",
            format!("{h:?}"),
            "must be a host name without spaces",
        ));
    }
    for (key, d) in [
        ("server.command_timeout", s.command_timeout),
        ("server.data_block_timeout", s.data_block_timeout),
        ("server.data_timeout", s.data_timeout),
        ("server.session_timeout", s.session_timeout),
    ] {
        if d.get().is_zero() {
            out.push(finding(
                Severity::Error,
                key,
                format!("\"{d}\""),
                "must be longer than zero",
            ));
        }
    }
}

fn check_listeners(c: &Config, out: &mut Vec<Finding>) {
    for (i, l) in c.listener.iter().enumerate() {
        if !l.offer_starttls {
            let submission = l.kind == crate::config::ListenerKind::Submission;
            out.push(finding(
                if submission && !c.auth.allow_plaintext { Severity::Warning } else { Severity::Info },
                format!("listener[{i}].offer_starttls"),
                "false",
                if submission && !c.auth.allow_plaintext {
                    "a submission listener without STARTTLS: AUTH needs TLS, so no client can log in here (except from loopback)"
                } else {
                    "STARTTLS is hidden on this listener: mail from its clients crosses the network in clear (meant for old printers that fail on modern TLS; AUTH still needs TLS)"
                },
            ));
        }
        if l.proxy_protocol && l.proxy_from.is_empty() {
            out.push(finding(
                Severity::Error,
                format!("listener[{i}].proxy_from"),
                "[]",
                "proxy_protocol = true needs the load balancers' addresses in proxy_from",
            ));
        }
        if !l.proxy_protocol && !l.proxy_from.is_empty() {
            out.push(finding(
                Severity::Warning,
                format!("listener[{i}].proxy_from"),
                format!("{} address(es)", l.proxy_from.len()),
                "has no effect without proxy_protocol = true",
            ));
        }
    }
    if c.listener.is_empty() {
        out.push(finding(
            Severity::Error,
            "listener",
            "[]",
            "at least one [[listener]] is needed",
        ));
    }
    let mut seen = HashMap::new();
    for (i, l) in c.listener.iter().enumerate() {
        if l.address.port() != 0
            && let Some(first) = seen.insert(l.address, i)
        {
            out.push(finding(
                Severity::Error,
                format!("listener[{i}].address"),
                format!("\"{}\"", l.address),
                format!("already used by listener[{first}]"),
            ));
        }
        if !l.address.ip().is_loopback() && c.auth.allow_plaintext {
            out.push(finding(
                Severity::Warning,
                "auth.allow_plaintext",
                "true",
                format!(
                    "passwords may cross the network in clear to listener[{i}] ({})",
                    l.address
                ),
            ));
        }
    }
}

fn check_tls(c: &Config, out: &mut Vec<Finding>) {
    match (&c.tls.cert, &c.tls.key) {
        (Some(_), None) => out.push(finding(
            Severity::Error,
            "tls.key",
            "(missing)",
            "tls.cert is set, so tls.key is needed too",
        )),
        (None, Some(_)) => out.push(finding(
            Severity::Error,
            "tls.cert",
            "(missing)",
            "tls.key is set, so tls.cert is needed too",
        )),
        _ => {}
    }
}

fn check_networks(c: &Config, out: &mut Vec<Finding>) {
    let open = super::open_relay_entries(c);
    for e in &open {
        let severity = if c.relay.allow_open_relay {
            Severity::Warning
        } else {
            Severity::Error
        };
        let reason = if c.relay.allow_open_relay {
            format!(
                "{}; allowed only because relay.allow_open_relay = true: THIS SERVER IS AN OPEN RELAY",
                e.reason
            )
        } else {
            format!(
                "{}; this would make an open relay. Use auth = \"required\", narrow the range, or (only if you really mean it) set relay.allow_open_relay = true",
                e.reason
            )
        };
        out.push(finding(
            severity,
            format!("{}.range", e.key),
            format!("\"{}\"", e.range),
            reason,
        ));
    }
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (i, n) in c.network.iter().enumerate() {
        if let Some(first) = seen.insert(n.range.to_string(), i) {
            out.push(finding(
                Severity::Error,
                format!("network[{i}].range"),
                format!("\"{}\"", n.range),
                format!("the same range is already listed as network[{first}]; merge them"),
            ));
        }
        for (j, ex) in n.exclude.iter().enumerate() {
            if !(n.range.contains(ex.net().network()) && ex.prefix_len() >= n.range.prefix_len()) {
                out.push(finding(
                    Severity::Warning,
                    format!("network[{i}].exclude[{j}]"),
                    format!("\"{ex}\""),
                    format!("is not inside range {}, so it excludes nothing", n.range),
                ));
            }
        }
        for (j, other) in c.network.iter().enumerate() {
            if i != j
                && other.range.prefix_len() < n.range.prefix_len()
                && other.range.contains(n.range.net().network())
            {
                out.push(finding(
                    Severity::Info,
                    format!("network[{i}].range"),
                    format!("\"{}\"", n.range),
                    format!(
                        "lies inside network[{j}] ({}); the most specific range wins, so its clients get auth = \"{}\", not \"{}\"",
                        other.range,
                        n.auth.name(),
                        other.auth.name()
                    ),
                ));
            }
        }
    }
}

/// Ranges that hide STARTTLS: said, so that nobody forgets the cost.
fn check_hidden_starttls(c: &Config, out: &mut Vec<Finding>) {
    for (i, n) in c.network.iter().enumerate() {
        if n.offer_starttls == Some(false) {
            out.push(finding(
                Severity::Info,
                format!("network[{i}].offer_starttls"),
                "false",
                format!(
                    "STARTTLS is hidden from {}: mail from there crosses the network in clear (meant for old printers that fail on modern TLS; AUTH still needs TLS)",
                    n.range
                ),
            ));
        }
    }
}

fn check_access(c: &Config, out: &mut Vec<Finding>) {
    match c.access.filter {
        FilterMode::Deny if c.access.deny.is_empty() => out.push(finding(
            Severity::Warning,
            "access.deny",
            "[]",
            "filter = \"deny\" with an empty deny list filters nothing",
        )),
        FilterMode::Allow => {
            if c.access.allow.is_empty() {
                out.push(finding(
                    Severity::Warning,
                    "access.allow",
                    "[]",
                    "filter = \"allow\" with an empty allow list refuses every connection",
                ));
            }
            for (i, n) in c.network.iter().enumerate() {
                if n.auth != NetworkAuth::Deny
                    && !c.access.allow.iter().any(|a| {
                        a.contains(n.range.net().network())
                            && a.prefix_len() <= n.range.prefix_len()
                    })
                {
                    out.push(finding(
                        Severity::Warning,
                        "access.allow",
                        format!(
                            "{:?}",
                            c.access
                                .allow
                                .iter()
                                .map(|a| a.to_string())
                                .collect::<Vec<_>>()
                        ),
                        format!(
                            "does not include network[{i}] ({}): its clients cannot even connect",
                            n.range
                        ),
                    ));
                }
            }
        }
        _ => {}
    }
}

fn check_relay(c: &Config, out: &mut Vec<Finding>) {
    for (i, d) in c.relay.inbound_domains.iter().enumerate() {
        let t = Domain::normalize(d);
        if t.is_empty() || t.contains(['@', ' ', '/', '[', ']']) || t == "*" {
            out.push(finding(
                Severity::Error,
                format!("relay.inbound_domains[{i}]"),
                format!("{d:?}"),
                "must be a plain domain name such as \"example.lan\"",
            ));
        }
    }
    for (i, d) in c.relay.inbound_domains.iter().enumerate() {
        let d = Domain::normalize(d);
        if !c
            .route
            .iter()
            .any(|r| !r.domain.is_empty() && r.domain_matches(&d))
        {
            out.push(finding(
                Severity::Warning,
                format!("relay.inbound_domains[{i}]"),
                format!("{d:?}"),
                "has no [[route]]: its mail is delivered by MX lookup; if that MX is this server, mail loops (refused after server.max_hops)",
            ));
        }
    }
    if !c.relay.inbound_domains.is_empty()
        && c.relay.verify_recipients == crate::config::VerifyRecipients::Off
    {
        out.push(
            finding(
                Severity::Warning,
                "relay.verify_recipients",
                "\"off\"",
                "mail for the inbound domains is taken for any address there; whatever the next hop then refuses bounces to its sender, who is usually forged (backscatter: the bounces go to innocent people and get this server listed)",
            )
            .with_fix(
                "set [relay] verify_recipients = \"callout\" (ask the next hop at RCPT) or \"list\" with valid_recipients_file",
            ),
        );
    }
    if c.relay.allow_open_relay && super::open_relay_entries(c).is_empty() {
        out.push(finding(
            Severity::Info,
            "relay.allow_open_relay",
            "true",
            "no entry opens the relay, so this switch has no effect; remove it",
        ));
    }
}

fn check_delivery(c: &Config, out: &mut Vec<Finding>) {
    use super::{DeliveryMode, SmarthostTls};
    let d = &c.delivery;
    if d.mode == DeliveryMode::Smarthost && d.smarthost.is_empty() && c.smarthost.is_empty() {
        out.push(finding(
            Severity::Error,
            "delivery.smarthost",
            "[]",
            "mode = \"smarthost\" needs at least one smarthost = \"HOST:PORT\" or a [[smarthost]] profile",
        ));
    }
    if d.smarthost_user.is_some() != d.smarthost_password_file.is_some() {
        out.push(finding(
            Severity::Error,
            "delivery.smarthost_password_file",
            format!("{:?}", d.smarthost_password_file),
            "smarthost_user and smarthost_password_file go together",
        ));
    }
    if let Some(h) = &d.helo_name
        && (h.is_empty() || h.contains(|c: char| c.is_whitespace() || c.is_control()))
    {
        out.push(finding(
            Severity::Error,
            "delivery.helo_name",
            format!("{h:?}"),
            "must be a host name without spaces or control characters (it goes into EHLO)",
        ));
    }
    for (i, hop) in d.smarthost.iter().enumerate() {
        if let Some(reason) = tls_port_mismatch(hop, d.smarthost_tls) {
            let fixed = match hop.port {
                465 => format!("smtps://{}:465", hop.host),
                port => format!("starttls://{}:{port}", hop.host),
            };
            out.push(
                finding(
                    Severity::Warning,
                    format!("delivery.smarthost[{i}]"),
                    format!("\"{hop}\""),
                    reason,
                )
                .with_fix(format!(
                    "in [delivery] smarthost, write \"{fixed}\" instead of \"{hop}\"; then `portcullis check-config --config FILE` and `portcullis reload`"
                )),
            );
        }
    }
    if d.smarthost_user.is_some() && d.smarthost_tls == SmarthostTls::None {
        out.push(finding(
            Severity::Warning,
            "delivery.smarthost_tls",
            "\"none\"",
            "the smart-host password would cross the network in clear",
        ));
    }
    if d.retry_schedule.is_empty() || d.retry_schedule.iter().any(|r| r.get().is_zero()) {
        out.push(finding(
            Severity::Error,
            "delivery.retry_schedule",
            format!(
                "{:?}",
                d.retry_schedule
                    .iter()
                    .map(|r| r.to_string())
                    .collect::<Vec<_>>()
            ),
            "needs at least one interval, each longer than zero",
        ));
    }
    for (key, v) in [
        ("delivery.concurrency", d.concurrency),
        ("delivery.per_domain_concurrency", d.per_domain_concurrency),
    ] {
        if v == 0 {
            out.push(finding(Severity::Error, key, "0", "must be at least 1"));
        }
    }
    if d.mx_port == 0 {
        out.push(finding(
            Severity::Error,
            "delivery.mx_port",
            "0",
            "must be a port number",
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_relay_refused_and_names_the_entry() {
        let err = Config::parse("[[network]]\nrange = \"0.0.0.0/0\"\nauth = \"none\"\n", "t")
            .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("network[0].range")
                && msg.contains("0.0.0.0/0")
                && msg.contains("open relay"),
            "{msg}"
        );
    }

    #[test]
    fn open_relay_allowed_explicitly_is_a_loud_warning() {
        let c = Config::parse("[[network]]\nrange = \"0.0.0.0/0\"\nauth = \"none\"\n[relay]\nallow_open_relay = true\n", "t").unwrap();
        assert!(
            c.findings()
                .iter()
                .any(|f| f.severity == Severity::Warning && f.reason.contains("OPEN RELAY"))
        );
    }

    #[test]
    fn filter_warnings() {
        let c = Config::parse("[access]\nfilter = \"deny\"\n", "t").unwrap();
        assert!(c.findings().iter().any(|f| f.key == "access.deny"));
        let c = Config::parse(
            "[access]\nfilter = \"allow\"\nallow = [\"10.0.0.0/8\"]\n[[network]]\nrange = \"192.168.1.0/24\"\nauth = \"none\"\n",
            "t",
        )
        .unwrap();
        assert!(
            c.findings()
                .iter()
                .any(|f| f.key == "access.allow" && f.reason.contains("network[0]"))
        );
    }

    #[test]
    fn a_smart_host_port_that_disagrees_with_its_tls_mode_is_named() {
        let c: Config = toml::from_str(
            "[delivery]\nmode = \"smarthost\"\nsmarthost = [\"smtp.isp.example:587\", \"smtp2.isp.example:465\", \"smtps://smtp3.isp.example:465\"]\nsmarthost_tls = \"starttls\"\n",
        )
        .unwrap();
        let f = c.findings();
        let mismatched: Vec<&Finding> = f
            .iter()
            .filter(|f| f.key.starts_with("delivery.smarthost["))
            .collect();
        assert_eq!(mismatched.len(), 1, "{f:?}");
        assert_eq!(mismatched[0].key, "delivery.smarthost[1]");
        assert!(
            mismatched[0]
                .reason
                .contains("smtps://smtp2.isp.example:465")
        );
    }

    #[test]
    fn files_named_by_the_config_must_exist() {
        let c = Config::parse(
            "[delivery]\nmode = \"smarthost\"\nsmarthost = \"smtp.isp.example:587\"\nsmarthost_user = \"u\"\nsmarthost_password_file = \"/nonexistent/pass\"\n",
            "t",
        );
        let e = c.unwrap_err().to_string();
        assert!(
            e.contains("delivery.smarthost_password_file") && e.contains("cannot be read"),
            "{e}"
        );
        let c = Config::parse("[relay]\nverify_recipients = \"list\"\n", "t");
        assert!(
            c.unwrap_err()
                .to_string()
                .contains("relay.valid_recipients_file")
        );
    }
}
