//! Checks of `[[webhook]]` and `[[alert]]`: a receiver must be reachable
//! without leaking (https, or http on this machine only), its secret
//! readable, and every alert must have somewhere to go.

use super::validate::{Finding, Severity, finding};
use super::{AlertOn, Config, WEBHOOK_KINDS};
use std::collections::HashSet;

pub fn check(c: &Config, out: &mut Vec<Finding>) {
    let mut names = HashSet::new();
    for (i, w) in c.webhook.iter().enumerate() {
        let key = |k: &str| format!("webhook[{i}].{k}");
        let name_ok = !w.name.is_empty()
            && w.name.len() <= 64
            && w.name
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || "-_.".contains(ch))
            && !w.name.starts_with('.');
        if !name_ok {
            out.push(finding(
                Severity::Error,
                key("name"),
                format!("{:?}", w.name),
                "must be 1-64 letters, digits, '-', '_' or '.' (it names the webhook's outbox directory)",
            ));
        } else if !names.insert(w.name.as_str()) {
            out.push(finding(
                Severity::Error,
                key("name"),
                format!("{:?}", w.name),
                "is used by another [[webhook]]",
            ));
        }
        if let Err(reason) = receiver_url_problem(&w.url) {
            out.push(finding(
                Severity::Error,
                key("url"),
                format!("{:?}", w.url),
                reason,
            ));
        }
        for e in &w.events {
            if e != "*" && !WEBHOOK_KINDS.contains(&e.as_str()) {
                out.push(finding(
                    Severity::Error,
                    key("events"),
                    format!("{e:?}"),
                    format!(
                        "is not a notification kind; use one of {}",
                        WEBHOOK_KINDS.join(", ")
                    ),
                ));
            }
        }
        let named_by_alert = c
            .alert
            .iter()
            .any(|a| a.webhook.as_deref() == Some(&w.name));
        if w.events.is_empty() && !named_by_alert {
            out.push(finding(
                Severity::Warning,
                key("events"),
                "[]",
                "no events and no [[alert]] names this webhook: it will receive nothing",
            ));
        }
        match &w.secret_file {
            None => out.push(finding(
                Severity::Warning,
                key("secret_file"),
                "(unset)",
                "notifications are sent unsigned: a receiver cannot tell them from forgeries",
            )),
            Some(path) => match std::fs::read_to_string(path) {
                Err(e) => out.push(finding(
                    Severity::Error,
                    key("secret_file"),
                    format!("{:?}", path.display().to_string()),
                    format!("cannot be read by {}: {e}", crate::fsio::running_user()),
                )),
                Ok(text) if text.trim().is_empty() => out.push(finding(
                    Severity::Error,
                    key("secret_file"),
                    format!("{:?}", path.display().to_string()),
                    "is empty",
                )),
                Ok(_) => {
                    if super::validate::readable_by_others(path) {
                        out.push(finding(
                            Severity::Warning,
                            key("secret_file"),
                            format!("{:?}", path.display().to_string()),
                            "can be read by other users; chmod 600 it",
                        ));
                    }
                }
            },
        }
        if let Some(path) = &w.ca_file
            && let Err(e) = std::fs::File::open(path)
        {
            out.push(finding(
                Severity::Error,
                key("ca_file"),
                format!("{:?}", path.display().to_string()),
                format!("cannot be read: {e}"),
            ));
        }
        if w.outbox_max_bytes < 64 * 1024 {
            out.push(finding(
                Severity::Error,
                key("outbox_max_bytes"),
                w.outbox_max_bytes.to_string(),
                "must be at least 65536",
            ));
        }
        if w.timeout.get().is_zero() || w.timeout.get().as_secs() > 300 {
            out.push(finding(
                Severity::Error,
                key("timeout"),
                w.timeout.to_string(),
                "must be between 1s and 5m",
            ));
        }
    }
    for (i, a) in c.alert.iter().enumerate() {
        let key = |k: &str| format!("alert[{i}].{k}");
        if a.webhook.is_none() && a.email.is_none() {
            out.push(finding(
                Severity::Error,
                key("on"),
                format!("{:?}", a.on.name()),
                "has nowhere to go: set webhook = \"NAME\", email = \"ADDRESS\" or both",
            ));
        }
        if let Some(name) = &a.webhook
            && !c.webhook.iter().any(|w| &w.name == name)
        {
            out.push(finding(
                Severity::Error,
                key("webhook"),
                format!("{name:?}"),
                "names no [[webhook]]",
            ));
        }
        if let Some(to) = &a.email
            && !super::validate_routes::is_address(to)
        {
            out.push(finding(
                Severity::Error,
                key("email"),
                format!("{to:?}"),
                "must be a mailbox address such as \"ops@example.org\"",
            ));
        }
        if a.threshold == Some(0) && matches!(a.on, AlertOn::QueueSize | AlertOn::Bounce) {
            out.push(finding(
                Severity::Error,
                key("threshold"),
                "0",
                "would fire for nothing; the default is 1000 messages (queue_size) or 1 bounce",
            ));
        }
        match a.on {
            AlertOn::OpenRelay if !c.diagnostics.self_test_on_start => out.push(finding(
                Severity::Info,
                key("on"),
                "\"open_relay\"",
                "fires on a self-test that relayed: set [diagnostics] self_test_on_start = true for one at every start and reload (the admin page's relay test counts too)",
            )),
            AlertOn::DnsblListed if c.checks.dnsbl.is_empty() => out.push(finding(
                Severity::Warning,
                key("on"),
                "\"dnsbl_listed\"",
                "looks our public address up in the zones of [checks] dnsbl, and none is set",
            )),
            _ => {}
        }
    }
}

/// Why a webhook URL may not be used: only `https://`, or `http://` to this
/// machine, and never with a password in it.
pub fn receiver_url_problem(url: &str) -> Result<(), String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("is not a URL: {e}"))?;
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err("must not carry a user or password; the receiver checks the signature made with secret_file".into());
    }
    match parsed.scheme() {
        "https" => Ok(()),
        "http" => {
            let loopback = match parsed.host() {
                Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
                Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
                Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
                None => false,
            };
            if loopback {
                Ok(())
            } else {
                Err("http:// is only allowed to this machine (127.0.0.1, ::1, localhost); use https://".into())
            }
        }
        other => Err(format!("scheme {other}: is not https")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receivers_are_https_or_this_machine() {
        assert!(receiver_url_problem("https://hooks.example.org/x").is_ok());
        assert!(receiver_url_problem("http://127.0.0.1:8080/hook").is_ok());
        assert!(receiver_url_problem("http://[::1]:8080/hook").is_ok());
        assert!(receiver_url_problem("http://localhost/hook").is_ok());
        assert!(receiver_url_problem("http://10.0.0.5/hook").is_err());
        assert!(receiver_url_problem("http://hooks.example.org/").is_err());
        assert!(receiver_url_problem("https://u:p@hooks.example.org/").is_err());
        assert!(receiver_url_problem("ftp://127.0.0.1/").is_err());
        assert!(receiver_url_problem("not a url").is_err());
    }
}
