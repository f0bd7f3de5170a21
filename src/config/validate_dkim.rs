//! Checks of `[[dkim]]`: names DNS can carry, a key that reads and is
//! strong enough, kept private, and a signature that covers From:.

use super::Config;
use super::validate::{Finding, Severity, finding};
use std::collections::HashSet;

fn is_dns_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        })
}

pub fn check(c: &Config, out: &mut Vec<Finding>) {
    let mut seen = HashSet::new();
    for (i, d) in c.dkim.iter().enumerate() {
        let key = |k: &str| format!("dkim[{i}].{k}");
        if !is_dns_name(&d.domain) || !d.domain.contains('.') {
            out.push(finding(
                Severity::Error,
                key("domain"),
                format!("{:?}", d.domain),
                "must be a domain name such as \"example.org\"",
            ));
        }
        if !is_dns_name(&d.selector) {
            out.push(finding(
                Severity::Error,
                key("selector"),
                format!("{:?}", d.selector),
                "must be a DNS label such as \"mail2026\" (letters, digits, '-')",
            ));
        }
        if !seen.insert((
            d.domain.to_ascii_lowercase(),
            d.selector.to_ascii_lowercase(),
        )) {
            out.push(finding(
                Severity::Error,
                key("selector"),
                format!("{:?}", d.selector),
                format!("is used twice for {}", d.domain),
            ));
        }
        let path = format!("{:?}", d.key_file.display().to_string());
        match crate::dkim_key::load(&d.key_file) {
            Err(e) => out.push(
                finding(
                    Severity::Error,
                    key("key_file"),
                    path.clone(),
                    format!("cannot be used by {}: {e}", crate::fsio::running_user()),
                )
                .with_fix(format!(
                    "portcullis dkim keygen {} {} --out {}",
                    d.domain,
                    d.selector,
                    d.key_file.display()
                )),
            ),
            Ok(_) => {
                if super::validate::readable_by_others(&d.key_file) {
                    out.push(finding(
                        Severity::Warning,
                        key("key_file"),
                        path,
                        "can be read by other users: anyone who reads it can sign as your domain; chmod 600 it",
                    ));
                }
            }
        }
        let headers = d.signed_headers();
        if !headers.iter().any(|h| h.eq_ignore_ascii_case("from")) {
            out.push(finding(
                Severity::Error,
                key("headers"),
                format!("{headers:?}"),
                "must include \"From\" (RFC 6376 requires it signed)",
            ));
        }
        for h in &headers {
            if ["received", "return-path", "dkim-signature"]
                .iter()
                .any(|x| h.eq_ignore_ascii_case(x))
            {
                out.push(finding(
                    Severity::Warning,
                    key("headers"),
                    format!("{h:?}"),
                    "is added or changed on the way: signing it breaks the signature",
                ));
            }
        }
    }
}
