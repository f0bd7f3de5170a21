//! MTA-STS (RFC 8461): a domain's `_mta-sts` TXT record names its policy's
//! id; the policy itself comes over HTTPS from `mta-sts.DOMAIN` (web PKI
//! plus `[delivery] tls_ca_file`, no redirects, 64 KB at most). Policies are
//! cached for their `max_age` in memory and in `data_dir/mta-sts.json`
//! (so a restart does not forget a policy an attacker could then strip),
//! fetched again when the id changes, and kept when a new fetch fails.

use crate::dns::Resolver;
use mail_auth::common::parse::TxtRecordParser;
use mail_auth::mta_sts::MtaSts;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

/// The most of a policy file we read.
const MAX_POLICY_BYTES: usize = 64 * 1024;
/// RFC 8461 3.2: max_age is at most a year.
const MAX_AGE_LIMIT: u64 = 31_557_600;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Enforce,
    Testing,
    None,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    pub mode: Mode,
    /// MX patterns: a host name, or `*.` and a domain (one label).
    pub mx: Vec<String>,
    pub max_age: u64,
    /// The policy's lines as published (for TLS reports).
    pub text: Vec<String>,
}

impl Policy {
    /// Whether MX host `host` is one the policy names.
    pub fn allows(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.mx.iter().any(|p| mx_matches(p, &host))
    }
}

/// RFC 8461 4.1: a wildcard stands for exactly one leftmost label.
pub fn mx_matches(pattern: &str, host: &str) -> bool {
    let pattern = pattern.trim_end_matches('.').to_ascii_lowercase();
    match pattern.strip_prefix("*.") {
        Some(parent) => host
            .split_once('.')
            .is_some_and(|(label, rest)| !label.is_empty() && rest == parent),
        None => pattern == host,
    }
}

/// Reads a policy file (`key: value` lines, CRLF or LF).
pub fn parse_policy(text: &str) -> Result<Policy, String> {
    let mut version = None;
    let mut mode = None;
    let mut mx = Vec::new();
    let mut max_age = None;
    let mut lines = Vec::new();
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        lines.push(line.to_string());
        let Some((key, value)) = line.split_once(':') else {
            return Err(format!("line {line:?} is not `key: value`"));
        };
        let value = value.trim();
        match key.trim() {
            "version" => version = Some(value.to_string()),
            "mode" => {
                mode = Some(match value {
                    "enforce" => Mode::Enforce,
                    "testing" => Mode::Testing,
                    "none" => Mode::None,
                    other => return Err(format!("unknown mode {other:?}")),
                })
            }
            "mx" => mx.push(value.to_ascii_lowercase()),
            "max_age" => {
                let age: u64 = value
                    .parse()
                    .map_err(|_| format!("max_age {value:?} is not a number of seconds"))?;
                max_age = Some(age.min(MAX_AGE_LIMIT));
            }
            // Unknown keys are ignored (RFC 8461 3.2).
            _ => {}
        }
    }
    if version.as_deref() != Some("STSv1") {
        return Err("no `version: STSv1`".into());
    }
    let mode = mode.ok_or("no `mode`")?;
    let max_age = max_age.ok_or("no `max_age`")?;
    if mode != Mode::None && mx.is_empty() {
        return Err("no `mx` line".into());
    }
    Ok(Policy {
        mode,
        mx,
        max_age,
        text: lines,
    })
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Cached {
    id: String,
    policy: Policy,
    /// Unix seconds.
    expires: i64,
}

/// What was found for a domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lookup {
    /// The policy in force (a `none` policy is no policy).
    pub policy: Option<Policy>,
    /// A problem worth a TLS report: an RFC 8460 result type and words.
    pub problem: Option<(&'static str, String)>,
}

pub struct StsPolicies {
    resolver: Resolver,
    client: Result<reqwest::Client, String>,
    cache: Mutex<HashMap<String, Cached>>,
    file: Option<PathBuf>,
}

impl StsPolicies {
    pub fn new(
        resolver: Resolver,
        ca_file: Option<&std::path::Path>,
        file: Option<PathBuf>,
    ) -> StsPolicies {
        let client =
            crate::client_tls::verified_with(ca_file, "delivery.tls_ca_file").and_then(|tls| {
                reqwest::Client::builder()
                    .use_preconfigured_tls((*tls).clone())
                    .dns_resolver(crate::dns::for_http(&resolver))
                    .https_only(true)
                    .redirect(reqwest::redirect::Policy::none())
                    .connect_timeout(Duration::from_secs(10))
                    .timeout(Duration::from_secs(30))
                    .user_agent(concat!("Portcullis/", env!("CARGO_PKG_VERSION")))
                    .build()
                    .map_err(|e| e.to_string())
            });
        let cache = file
            .as_ref()
            .and_then(|f| std::fs::read(f).ok())
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        StsPolicies {
            resolver,
            client,
            cache: Mutex::new(cache),
            file,
        }
    }

    fn cached(&self, domain: &str, now: i64) -> Option<Cached> {
        self.cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(domain)
            .filter(|c| c.expires > now)
            .cloned()
    }

    fn store(&self, domain: &str, cached: Cached) {
        let snapshot = {
            let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            cache.insert(domain.to_string(), cached);
            serde_json::to_vec(&*cache).unwrap_or_default()
        };
        if let Some(file) = &self.file
            && let Err(e) = crate::fsio::replace(file, &snapshot, crate::fsio::NewFile::PRIVATE)
        {
            tracing::warn!(error = %e, "cannot save the MTA-STS policy cache");
        }
    }

    /// The policy in force for mail to `domain`.
    pub async fn lookup(&self, domain: &str, now: i64) -> Lookup {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        let cached = self.cached(&domain, now);
        let in_force =
            |c: Option<&Cached>| c.map(|c| c.policy.clone()).filter(|p| p.mode != Mode::None);
        let id = match self.resolver.txt(&format!("_mta-sts.{domain}")).await {
            Ok(records) => {
                let ids: Vec<String> = records
                    .iter()
                    .filter(|r| r.starts_with("v=STSv1"))
                    .filter_map(|r| MtaSts::parse(r.as_bytes()).ok().map(|m| m.id))
                    .collect();
                // Exactly one valid record, or none at all (RFC 8461 3.1).
                (ids.len() == 1).then(|| ids[0].clone())
            }
            Err(_) => None,
        };
        let Some(id) = id else {
            // No record (or a DNS failure): a cached policy stays in force.
            return Lookup {
                policy: in_force(cached.as_ref()),
                problem: None,
            };
        };
        if let Some(c) = &cached
            && c.id == id
        {
            return Lookup {
                policy: in_force(Some(c)),
                problem: None,
            };
        }
        match self.fetch(&domain).await {
            Ok(policy) => {
                let expires = now + policy.max_age as i64;
                self.store(
                    &domain,
                    Cached {
                        id,
                        policy: policy.clone(),
                        expires,
                    },
                );
                Lookup {
                    policy: (policy.mode != Mode::None).then_some(policy),
                    problem: None,
                }
            }
            Err((kind, why)) => {
                tracing::warn!(domain = %domain, error = %why, "MTA-STS policy could not be fetched");
                Lookup {
                    policy: in_force(cached.as_ref()),
                    problem: Some((kind, why)),
                }
            }
        }
    }

    async fn fetch(&self, domain: &str) -> Result<Policy, (&'static str, String)> {
        let client = self
            .client
            .as_ref()
            .map_err(|e| ("sts-policy-fetch-error", e.clone()))?;
        let url = format!("https://mta-sts.{domain}/.well-known/mta-sts.txt");
        let mut response = client.get(&url).send().await.map_err(|e| {
            let text = describe(&e);
            let kind = if text.contains("certificate") || text.contains("InvalidCertificate") {
                "sts-webpki-invalid"
            } else {
                "sts-policy-fetch-error"
            };
            (kind, format!("{url}: {text}"))
        })?;
        if response.status() != reqwest::StatusCode::OK {
            return Err((
                "sts-policy-fetch-error",
                format!("{url}: HTTP {}", response.status()),
            ));
        }
        let plain = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|t| t.trim().to_ascii_lowercase().starts_with("text/plain"));
        if !plain {
            return Err((
                "sts-policy-invalid",
                format!("{url}: the policy is not served as text/plain"),
            ));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| ("sts-policy-fetch-error", format!("{url}: {}", describe(&e))))?
        {
            body.extend_from_slice(&chunk);
            if body.len() > MAX_POLICY_BYTES {
                return Err(("sts-policy-invalid", format!("{url}: larger than 64 KB")));
            }
        }
        let text = String::from_utf8(body)
            .map_err(|_| ("sts-policy-invalid", format!("{url}: not UTF-8 text")))?;
        parse_policy(&text).map_err(|e| ("sts-policy-invalid", format!("{url}: {e}")))
    }
}

fn describe(e: &reqwest::Error) -> String {
    crate::tls::error_chain(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_policy_reads_with_crlf_and_unknown_keys() {
        let p = parse_policy(
            "version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\nmx: *.example.net\r\nmax_age: 86400\r\nextension: x\r\n",
        )
        .unwrap();
        assert_eq!(p.mode, Mode::Enforce);
        assert_eq!(p.max_age, 86400);
        assert!(p.allows("mail.example.com"));
        assert!(p.allows("MX1.example.net."));
        assert!(!p.allows("a.b.example.net"), "one label only");
        assert!(!p.allows("example.net"));
        assert!(!p.allows("evil.example.com"));
        assert!(parse_policy("mode: enforce\nmx: a\nmax_age: 1\n").is_err());
        assert!(parse_policy("version: STSv1\nmode: enforce\nmax_age: 1\n").is_err());
        assert!(parse_policy("version: STSv1\nmode: bogus\nmx: a\nmax_age: 1\n").is_err());
        assert!(parse_policy("version: STSv1\nmode: none\nmax_age: 1\n").is_ok());
        let long = parse_policy("version: STSv1\nmode: testing\nmx: a\nmax_age: 99999999999\n");
        assert_eq!(long.unwrap().max_age, MAX_AGE_LIMIT);
    }
}
