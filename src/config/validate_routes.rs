//! Checks of `[[smarthost]]` profiles and `[[route]]`s: each finding names
//! the key as written (or the old `[delivery]` key the profile came from).

use super::validate::{Finding, Severity, finding};
use super::{Config, OAuthGrant, Preset, Profile, ProfileAuth, SmarthostTls, Transport};
use std::collections::HashSet;

/// What the old `[delivery] smarthost…` keys became, for check-config
/// (not a finding: nothing is wrong with them).
pub fn legacy_profile_note(c: &Config) -> Option<String> {
    Profile::from_legacy(&c.delivery)?;
    Some(
        "the [delivery] smarthost keys make the smart-host profile \"default\": smarthost → hosts, smarthost_tls → tls, smarthost_verify → verify, smarthost_ca_file → ca_file, smarthost_user → user, smarthost_password_file → password_file".to_string(),
    )
}

pub fn check(c: &Config, out: &mut Vec<Finding>) {
    let profiles = c.profiles();
    check_names(c, &profiles, out);
    for p in profiles.iter().filter(|p| p.key != "delivery") {
        check_profile(c, p, out);
    }
    check_routes(c, &profiles, out);
    check_policies(c, &profiles, out);
    check_quotas(c, &profiles, out);
}

/// Quotas: above what the preset's provider allows, zero, and overflow
/// chains that name no profile or come back to where they started.
fn check_quotas(c: &Config, profiles: &[Profile], out: &mut Vec<Finding>) {
    for (i, s) in c.smarthost.iter().enumerate() {
        let key = |k: &str| format!("smarthost[{i}].{k}");
        let set = [
            ("messages_per_minute", s.messages_per_minute),
            ("messages_per_day", s.messages_per_day),
            ("recipients_per_day", s.recipients_per_day),
            ("recipients_per_message", s.recipients_per_message),
        ];
        for (k, v) in set {
            if v == Some(0) {
                out.push(finding(
                    Severity::Error,
                    key(k),
                    "0",
                    "must be at least 1 (leave it out for no limit)",
                ));
            }
        }
        if let Some(published) = s.preset_quota() {
            let limits = [
                (
                    "messages_per_minute",
                    s.messages_per_minute,
                    published.messages_per_minute,
                ),
                (
                    "messages_per_day",
                    s.messages_per_day,
                    published.messages_per_day,
                ),
                (
                    "recipients_per_day",
                    s.recipients_per_day,
                    published.recipients_per_day,
                ),
                (
                    "recipients_per_message",
                    s.recipients_per_message,
                    published.recipients_per_message,
                ),
            ];
            for (k, mine, theirs) in limits {
                if let (Some(mine), Some(theirs)) = (mine, theirs)
                    && mine > theirs
                {
                    out.push(finding(
                        Severity::Warning,
                        key(k),
                        mine.to_string(),
                        format!(
                            "is above what {} allows ({theirs}): the provider will refuse the excess, and may lock the mailbox for a day",
                            s.preset.map(|p| p.name()).unwrap_or_default()
                        ),
                    ).with_fix(format!("set {} = {theirs} or less, or leave it out (the preset's figure)", key(k))));
                }
            }
        }
    }
    for p in profiles {
        let Some(first) = &p.overflow else { continue };
        let mut seen = vec![p.name.clone()];
        let mut next = Some(first.clone());
        while let Some(name) = next {
            if seen.contains(&name) {
                out.push(finding(
                    Severity::Error,
                    p.key_of("overflow"),
                    format!("{first:?}"),
                    format!(
                        "overflow goes round in a loop: {} → {name}",
                        seen.join(" → ")
                    ),
                ));
                break;
            }
            match profiles.iter().find(|q| q.name == name) {
                None => {
                    out.push(finding(
                        Severity::Error,
                        p.key_of("overflow"),
                        format!("{first:?}"),
                        format!("names no profile ({name:?})"),
                    ));
                    break;
                }
                Some(q) => {
                    seen.push(name);
                    next = q.overflow.clone();
                }
            }
        }
    }
}

/// Whether `s` looks like a mailbox address (`local@domain.tld`, no blanks).
pub(super) fn is_address(s: &str) -> bool {
    matches!(s.rsplit_once('@'), Some((l, d)) if !l.is_empty() && d.contains('.') && !s.contains(char::is_whitespace))
}

/// `[[policy]]` rules: each needs a matcher; its targets must exist; a
/// wildcard sender domain the rule's logins do not own is a warning.
fn check_policies(c: &Config, profiles: &[Profile], out: &mut Vec<Finding>) {
    use super::SenderRule;
    for (i, r) in c.policy.iter().enumerate() {
        let key = |k: &str| format!("policy[{i}].{k}");
        if r.user.is_empty() && r.network.is_empty() {
            out.push(finding(
                Severity::Error,
                format!("policy[{i}]"),
                "(no matcher)",
                "a policy needs user = [...] or network = [...] to say whose mail it rules",
            ));
        }
        if let Some(via) = &r.via
            && !profiles.iter().any(|p| &p.name == via)
        {
            out.push(finding(
                Severity::Error,
                key("via"),
                format!("{via:?}"),
                "names no [[smarthost]] profile",
            ));
        }
        if let Some(to) = &r.redirect_to
            && !is_address(to)
        {
            out.push(finding(
                Severity::Error,
                key("redirect_to"),
                format!("{to:?}"),
                "must be one mailbox address such as \"test-inbox@example.org\"",
            ));
        }
        if let Some(h) = &r.redirect_header
            && (h.is_empty() || !h.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '-'))
        {
            out.push(finding(
                Severity::Error,
                key("redirect_header"),
                format!("{h:?}"),
                "must be a header field name of letters, digits and dashes (\"X-Original-To\")",
            ));
        }
        for d in &r.allowed_recipient_domains {
            let bare = d.strip_prefix("*.").unwrap_or(d);
            if bare.is_empty() || bare.contains(['@', ' ', '*']) {
                out.push(finding(
                    Severity::Error,
                    key("allowed_recipient_domains"),
                    format!("{d:?}"),
                    "must be a domain (\"partner.example\") or \"*.partner.example\"",
                ));
            }
        }
        if r.messages_per_hour == Some(0) {
            out.push(finding(
                Severity::Warning,
                key("messages_per_hour"),
                "0",
                "refuses every message of these clients; remove the rule's limit or set a number",
            ));
        }
        // "*@domain" lets the login send as anyone there: fine for its own
        // domain (a login named app@domain), a risk for any other.
        let own: Vec<String> = r
            .user
            .iter()
            .filter_map(|u| {
                u.rsplit_once('@')
                    .map(|(_, d)| crate::smtp::address::Domain::normalize(d))
            })
            .collect();
        for rule in &r.allowed_senders {
            if let SenderRule::Pattern(super::AddressPattern::Domain(d)) = rule
                && !own.contains(d)
            {
                out.push(finding(
                    Severity::Warning,
                    key("allowed_senders"),
                    format!("\"*@{d}\""),
                    format!(
                        "lets {} send as any address of {d}, a domain none of its logins belongs to: a leaked password could then impersonate anyone there",
                        r.describe()
                    ),
                )
                .with_fix(format!("name the addresses it sends as (\"noreply@{d}\"), or \"$user\"")));
            }
        }
    }
}

fn check_names(c: &Config, profiles: &[Profile], out: &mut Vec<Finding>) {
    let mut seen = HashSet::new();
    for (i, s) in c.smarthost.iter().enumerate() {
        let key = format!("smarthost[{i}].name");
        if s.name.trim().is_empty() || s.name.contains(char::is_whitespace) {
            out.push(finding(
                Severity::Error,
                key,
                format!("{:?}", s.name),
                "every profile needs a name without spaces (routes name it in via = \"NAME\")",
            ));
            continue;
        }
        let legacy_clash =
            s.name == super::LEGACY_PROFILE && Profile::from_legacy(&c.delivery).is_some();
        if !seen.insert(s.name.clone()) || legacy_clash {
            out.push(finding(
                Severity::Error,
                key,
                format!("{:?}", s.name),
                if legacy_clash {
                    "the [delivery] smarthost keys already make the profile \"default\": give this one another name or remove those keys"
                } else {
                    "two profiles have this name"
                },
            ));
        }
    }
    let _ = profiles;
}

fn readable(key: String, path: &std::path::Path, out: &mut Vec<Finding>) {
    if let Err(e) = std::fs::File::open(path) {
        out.push(finding(
            Severity::Error,
            key,
            format!("{:?}", path.display().to_string()),
            format!("cannot be read by {}: {e}", crate::fsio::running_user()),
        ));
    }
}

fn check_profile(c: &Config, p: &Profile, out: &mut Vec<Finding>) {
    let k = |key: &str| p.key_of(key);
    if p.transport == Transport::Smtp && p.hosts.is_empty() {
        out.push(finding(
            Severity::Error,
            k("hosts"),
            "[]",
            "a profile needs hosts = [\"HOST:PORT\"] or a preset",
        ));
    }
    for (i, hop) in p.hosts.iter().enumerate() {
        if let Some(reason) = super::validate::tls_port_mismatch(hop, p.tls) {
            out.push(finding(
                Severity::Warning,
                format!("{}[{i}]", k("hosts")),
                format!("\"{hop}\""),
                reason.replace("delivery.smarthost_tls", &k("tls")),
            ));
        }
    }
    if matches!(p.tls, SmarthostTls::Opportunistic | SmarthostTls::None) {
        out.push(
            finding(
                Severity::Warning,
                k("tls"),
                format!("{:?}", format!("{:?}", p.tls).to_lowercase()),
                "THIS PROFILE MAY SEND IN CLEAR: mail and credentials can be read or changed on the way, and a man in the middle can strip STARTTLS",
            )
            .with_fix(format!("set {} = \"starttls\" (or \"implicit\" on port 465)", k("tls"))),
        );
    }
    for (key, path) in [
        ("ca_file", &p.ca_file),
        ("client_cert", &p.client_cert),
        ("client_key", &p.client_key),
        ("password_file", &p.password_file),
    ] {
        if let Some(path) = path {
            readable(k(key), path, out);
        }
    }
    if p.client_cert.is_some() != p.client_key.is_some() {
        out.push(finding(
            Severity::Error,
            k("client_key"),
            format!("{:?}", p.client_key),
            "client_cert and client_key go together",
        ));
    }
    match p.auth {
        ProfileAuth::None => {}
        ProfileAuth::Password => {
            if p.user.is_none() || p.password_file.is_none() {
                out.push(finding(
                    Severity::Error,
                    k("password_file"),
                    format!("{:?}", p.password_file),
                    "auth = \"password\" needs user and password_file",
                ));
            }
            if p.preset == Some(Preset::Microsoft365) {
                out.push(
                    finding(
                        Severity::Warning,
                        k("auth"),
                        "\"password\"",
                        "Microsoft 365 turns off basic (password) SMTP AUTH by default at the end of December 2026; mail will then be refused with 550 5.7.30",
                    )
                    .with_fix(format!("set {} = \"xoauth2\" with an app registration (README: Microsoft 365)", k("auth"))),
                );
            }
        }
        ProfileAuth::Xoauth2 => check_oauth(c, p, out),
    }
    if p.transport == Transport::Graph {
        if p.auth != ProfileAuth::Xoauth2 {
            out.push(finding(
                Severity::Error,
                k("auth"),
                format!("{:?}", format!("{:?}", p.auth).to_lowercase()),
                "transport = \"graph\" sends with an OAuth2 token: set auth = \"xoauth2\" and the oauth_ keys",
            ));
        }
        if !p.graph_url.starts_with("https://") {
            out.push(finding(
                Severity::Error,
                k("graph_url"),
                format!("{:?}", p.graph_url),
                "must be an https:// URL (the token travels with every message)",
            ));
        }
    }
    if let Some(rewrite) = &p.rewrite_sender {
        match rewrite.rsplit_once('@') {
            Some((local, domain)) if !local.is_empty() && domain.contains('.') => {
                let domain = crate::smtp::address::Domain::normalize(domain);
                if let Some(account) = p.account_domain()
                    && account != domain
                {
                    out.push(finding(
                        Severity::Warning,
                        k("rewrite_sender"),
                        format!("{rewrite:?}"),
                        format!("is outside the profile's account domain {account}: the provider usually refuses to send as another domain"),
                    ));
                }
            }
            _ => out.push(finding(
                Severity::Error,
                k("rewrite_sender"),
                format!("{rewrite:?}"),
                "must be a mailbox address such as \"scanner@example.org\"",
            )),
        }
    }
}

fn check_oauth(c: &Config, p: &Profile, out: &mut Vec<Finding>) {
    let k = |key: &str| p.key_of(key);
    let Some(o) = &p.oauth else {
        out.push(finding(
            Severity::Error,
            k("oauth_token_url"),
            "(missing)",
            "auth = \"xoauth2\" needs oauth_token_url (or a preset)",
        ));
        return;
    };
    if !o.token_url.starts_with("https://") {
        out.push(finding(
            Severity::Error,
            k("oauth_token_url"),
            format!("{:?}", o.token_url),
            "must be an https:// URL (client secrets and tokens cross it)",
        ));
    }
    if o.client_id.is_empty() {
        out.push(finding(
            Severity::Error,
            k("oauth_client_id"),
            "(missing)",
            "auth = \"xoauth2\" needs the application (client) ID of the app registration",
        ));
    }
    if p.user.is_none() {
        out.push(finding(
            Severity::Error,
            k("user"),
            "(missing)",
            "auth = \"xoauth2\" needs the mailbox to log in as (user = \"relay@example.org\")",
        ));
    }
    if let Some(path) = &o.client_secret_file {
        readable(k("oauth_client_secret_file"), path, out);
    }
    match o.grant {
        OAuthGrant::ClientCredentials => {
            if o.client_secret_file.is_none() {
                out.push(finding(
                    Severity::Error,
                    k("oauth_client_secret_file"),
                    "(missing)",
                    "oauth_grant = \"client_credentials\" needs the application's client secret",
                ));
            }
            if p.preset == Some(Preset::Microsoft365) && o.token_url.contains("/organizations/") {
                out.push(finding(
                    Severity::Error,
                    k("tenant"),
                    "(missing)",
                    "the application's own identity (client_credentials) needs the tenant: tenant = \"contoso.onmicrosoft.com\" or its ID",
                ));
            }
        }
        OAuthGrant::RefreshToken => {
            let file = c.oauth_token_file(&p.name);
            if !file.exists() {
                out.push(
                    finding(
                        Severity::Warning,
                        k("oauth_grant"),
                        "\"refresh_token\"",
                        format!("nobody has signed in for this profile yet: its mail waits in the queue until someone runs `portcullis oauth login {}`", p.name),
                    )
                    .with_fix(format!("portcullis oauth login {}", p.name)),
                );
            }
        }
    }
}

fn check_routes(c: &Config, profiles: &[Profile], out: &mut Vec<Finding>) {
    for (i, r) in c.route.iter().enumerate() {
        let key = |k: &str| format!("route[{i}].{k}");
        for d in &r.domain {
            let bare = d.strip_prefix("*.").unwrap_or(d);
            if bare.trim().is_empty() || bare.contains(['@', ' ', '*']) {
                out.push(finding(
                    Severity::Error,
                    key("domain"),
                    format!("{d:?}"),
                    "must be a plain domain name (or \"*.example.org\" for its subdomains)",
                ));
            }
        }
        match (&r.host, &r.via) {
            (Some(_), Some(_)) => out.push(finding(
                Severity::Error,
                key("via"),
                format!("{:?}", r.via.as_deref().unwrap_or_default()),
                "a route has one next hop: host = \"HOST:PORT\" or via = \"PROFILE\", not both",
            )),
            (None, None) => out.push(finding(
                Severity::Error,
                key("host"),
                "(missing)",
                "a route needs host = \"HOST:PORT\" or via = \"PROFILE\"",
            )),
            (None, Some(via)) if !profiles.iter().any(|p| &p.name == via) => {
                out.push(finding(
                    Severity::Error,
                    key("via"),
                    format!("{via:?}"),
                    format!(
                        "names no profile; the profiles are: {}",
                        if profiles.is_empty() {
                            "(none: add a [[smarthost]] with this name)".to_string()
                        } else {
                            profiles
                                .iter()
                                .map(|p| format!("{:?}", p.name))
                                .collect::<Vec<_>>()
                                .join(", ")
                        }
                    ),
                ));
            }
            _ => {}
        }
        let matches_all =
            r.domain.is_empty() && r.sender.is_empty() && r.user.is_empty() && r.network.is_empty();
        if matches_all && i + 1 < c.route.len() {
            out.push(finding(
                Severity::Warning,
                format!("route[{i}]"),
                "(no matcher)",
                format!(
                    "matches every recipient, so the {} route(s) after it never apply; move it last",
                    c.route.len() - i - 1
                ),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    fn errors(text: &str) -> String {
        match Config::parse(text, "t") {
            Ok(c) => c
                .findings()
                .iter()
                .map(|f| f.to_string())
                .collect::<Vec<_>>()
                .join("\n"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn a_route_via_an_unknown_profile_is_refused_with_the_names() {
        let e = errors(
            "[[smarthost]]\nname = \"isp\"\nhosts = \"smtp.isp.example\"\n[[route]]\nsender = \"*@app.example\"\nvia = \"m365\"\n",
        );
        assert!(e.contains("route[0].via") && e.contains("\"isp\""), "{e}");
    }

    #[test]
    fn a_clear_text_profile_is_a_loud_warning() {
        let c = Config::parse(
            "[[smarthost]]\nname = \"lan\"\nhosts = \"10.0.0.5:25\"\ntls = \"none\"\n",
            "t",
        )
        .unwrap();
        let f = c.findings();
        assert!(
            f.iter()
                .any(|f| f.key == "smarthost[0].tls" && f.reason.contains("CLEAR")),
            "{f:?}"
        );
    }

    #[test]
    fn xoauth2_needs_its_keys_and_names_them() {
        let e =
            errors("[[smarthost]]\nname = \"m\"\nhosts = \"smtp.test:587\"\nauth = \"xoauth2\"\n");
        assert!(e.contains("smarthost[0].oauth_token_url"), "{e}");
        let e = errors(
            "[[smarthost]]\nname = \"m\"\npreset = \"microsoft365\"\nuser = \"a@b.example\"\noauth_client_id = \"x\"\noauth_grant = \"client_credentials\"\noauth_client_secret_file = \"/nonexistent/secret\"\n",
        );
        assert!(
            e.contains("smarthost[0].oauth_client_secret_file") && e.contains("cannot be read"),
            "{e}"
        );
    }

    #[test]
    fn rewrite_outside_the_account_domain_is_named() {
        let c = Config::parse(
            "[[smarthost]]\nname = \"m\"\nhosts = \"smtp.test:587\"\nuser = \"relay@contoso.example\"\nrewrite_sender = \"scanner@other.example\"\n",
            "t",
        )
        .unwrap();
        assert!(c.findings().iter().any(
            |f| f.key == "smarthost[0].rewrite_sender" && f.reason.contains("contoso.example")
        ));
    }
}
