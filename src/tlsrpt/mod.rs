//! TLS reporting (RFC 8460, `[delivery] tls_rpt`): every MX delivery made
//! under an MTA-STS or DANE policy is counted per policy — a success, or a
//! failure with its result type, the MX host and address — in
//! `data_dir/tls-rpt.json` (saved every few seconds, so a restart loses at
//! most those). When a report period ends (a UTC day by default), one
//! report per policy domain goes to the `rua` of its `_smtp._tls` TXT
//! record: by mail (gzipped JSON in a multipart/report) or by HTTPS POST.

use mail_auth::report::tlsrpt::{
    DateRange, FailureDetails, Policy, PolicyDetails, PolicyType, ResultType, Summary, TlsReport,
};
use serde::{Deserialize, Serialize};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Mutex;

/// Which policy a session was made under, as the report names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PolicyKey {
    /// "sts" or "tlsa".
    pub policy_type: String,
    pub domain: String,
    /// The policy's lines (MTA-STS) or records (TLSA).
    pub strings: Vec<String>,
    /// MX patterns (MTA-STS) or the host (TLSA).
    pub mx_host: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct FailureCount {
    result_type: String,
    mx: Option<String>,
    ip: Option<IpAddr>,
    reason: String,
    count: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct PolicyCount {
    key: PolicyKey,
    success: u32,
    failure: u32,
    failures: Vec<FailureCount>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Period {
    start: i64,
    policies: Vec<PolicyCount>,
}

/// The counts of the current report period.
pub struct Collector {
    file: PathBuf,
    period: Mutex<(Period, bool)>,
}

/// Failure details kept per policy: a broken MX cannot grow the file.
const MAX_FAILURE_KINDS: usize = 100;

impl Collector {
    /// Takes back what an earlier run counted (`data_dir/tls-rpt.json`).
    pub fn open(data_dir: &std::path::Path) -> Collector {
        let file = data_dir.join("tls-rpt.json");
        let period = std::fs::read(&file)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        Collector {
            file,
            period: Mutex::new((period, false)),
        }
    }

    /// Counts one session under `key`: a success, or a failure of
    /// `result_type` with the MX host and address it concerned.
    pub fn record(
        &self,
        key: &PolicyKey,
        failure: Option<(&str, &str)>,
        mx: Option<&str>,
        ip: Option<IpAddr>,
    ) {
        let mut guard = self.period.lock().unwrap_or_else(|p| p.into_inner());
        let (period, dirty) = &mut *guard;
        *dirty = true;
        let entry = match period.policies.iter_mut().position(|p| &p.key == key) {
            Some(i) => &mut period.policies[i],
            None => {
                period.policies.push(PolicyCount {
                    key: key.clone(),
                    success: 0,
                    failure: 0,
                    failures: Vec::new(),
                });
                period.policies.last_mut().expect("just pushed")
            }
        };
        let Some((result_type, reason)) = failure else {
            entry.success += 1;
            return;
        };
        entry.failure += 1;
        let same =
            |f: &FailureCount| f.result_type == result_type && f.mx.as_deref() == mx && f.ip == ip;
        let known = entry.failures.len();
        match entry.failures.iter_mut().find(|f| same(f)) {
            Some(f) => f.count += 1,
            None if known < MAX_FAILURE_KINDS => entry.failures.push(FailureCount {
                result_type: result_type.to_string(),
                mx: mx.map(str::to_string),
                ip,
                reason: reason.chars().take(200).collect(),
                count: 1,
            }),
            None => {}
        }
    }

    /// Saves the counts when they changed (called every few seconds).
    pub fn save(&self) {
        let bytes = {
            let mut guard = self.period.lock().unwrap_or_else(|p| p.into_inner());
            if !guard.1 {
                return;
            }
            guard.1 = false;
            serde_json::to_vec(&guard.0).unwrap_or_default()
        };
        if let Err(e) = crate::fsio::replace(&self.file, &bytes, crate::fsio::NewFile::PRIVATE) {
            tracing::warn!(error = %e, "cannot save the TLS report counts");
        }
    }

    /// When the current period started (set to `now` on first use).
    pub fn period_start(&self, now: i64, period: i64) -> i64 {
        let mut guard = self.period.lock().unwrap_or_else(|p| p.into_inner());
        if guard.0.start == 0 {
            guard.0.start = now - now.rem_euclid(period.max(1));
            guard.1 = true;
        }
        guard.0.start
    }

    /// Ends the period: its reports, one per policy domain, and a fresh period from `next_start`.
    pub fn close(
        &self,
        next_start: i64,
        end: i64,
        organization: &str,
        contact: &str,
    ) -> Vec<(String, TlsReport)> {
        let closed = {
            let mut guard = self.period.lock().unwrap_or_else(|p| p.into_inner());
            let closed = std::mem::take(&mut guard.0);
            guard.0.start = next_start;
            guard.1 = true;
            closed
        };
        self.save();
        reports(&closed, end, organization, contact)
    }
}

fn result_type(name: &str) -> ResultType {
    serde_json::from_value(serde_json::Value::String(name.to_string())).unwrap_or_default()
}

/// One report per policy domain of a closed period.
fn reports(
    period: &Period,
    end: i64,
    organization: &str,
    contact: &str,
) -> Vec<(String, TlsReport)> {
    let mut domains: Vec<&str> = period
        .policies
        .iter()
        .map(|p| p.key.domain.as_str())
        .collect();
    domains.sort_unstable();
    domains.dedup();
    domains
        .into_iter()
        .map(|domain| {
            let policies = period
                .policies
                .iter()
                .filter(|p| p.key.domain == domain)
                .map(|p| Policy {
                    policy: PolicyDetails {
                        policy_type: match p.key.policy_type.as_str() {
                            "sts" => PolicyType::Sts,
                            "tlsa" => PolicyType::Tlsa,
                            _ => PolicyType::NoPolicyFound,
                        },
                        policy_string: p.key.strings.clone(),
                        policy_domain: domain.to_string(),
                        mx_host: p.key.mx_host.clone(),
                    },
                    summary: Summary {
                        total_success: p.success,
                        total_failure: p.failure,
                    },
                    failure_details: p
                        .failures
                        .iter()
                        .map(|f| FailureDetails {
                            result_type: result_type(&f.result_type),
                            sending_mta_ip: None,
                            receiving_mx_hostname: f.mx.clone(),
                            receiving_mx_helo: None,
                            receiving_ip: f.ip,
                            failed_session_count: f.count,
                            additional_information: None,
                            failure_reason_code: Some(f.reason.clone()),
                        })
                        .collect(),
                })
                .collect();
            let report = TlsReport {
                organization_name: Some(organization.to_string()),
                date_range: DateRange::from_timestamps(period.start, end),
                contact_info: Some(contact.to_string()),
                report_id: format!(
                    "{}.{}.{:08x}@{organization}",
                    period.start,
                    domain,
                    rand::random::<u32>()
                ),
                policies,
            };
            (domain.to_string(), report)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_become_one_report_per_domain_in_the_rfc_shape() {
        let dir = tempfile::tempdir().unwrap();
        let c = Collector::open(dir.path());
        let key = PolicyKey {
            policy_type: "sts".into(),
            domain: "example.org".into(),
            strings: vec!["version: STSv1".into(), "mode: testing".into()],
            mx_host: vec!["*.example.org".into()],
        };
        let start = c.period_start(86_400 * 3 + 50, 86_400);
        assert_eq!(start, 86_400 * 3);
        c.record(&key, None, Some("mx1.example.org"), None);
        let ip: IpAddr = "192.0.2.25".parse().unwrap();
        for _ in 0..2 {
            c.record(
                &key,
                Some(("certificate-host-mismatch", "name")),
                Some("mx2.example.org"),
                Some(ip),
            );
        }
        c.save();
        // Counts survive a restart.
        let c = Collector::open(dir.path());
        let reports = c.close(
            86_400 * 4,
            86_400 * 4,
            "relay.example",
            "postmaster@relay.example",
        );
        assert_eq!(reports.len(), 1);
        let json: serde_json::Value = serde_json::from_str(&reports[0].1.to_json()).unwrap();
        assert_eq!(json["organization-name"], "relay.example");
        assert_eq!(json["date-range"]["start-datetime"], "1970-01-04T00:00:00Z");
        let p = &json["policies"][0];
        assert_eq!(p["policy"]["policy-type"], "sts");
        assert_eq!(p["policy"]["policy-domain"], "example.org");
        assert_eq!(p["summary"]["total-successful-session-count"], 1);
        assert_eq!(p["summary"]["total-failure-session-count"], 2);
        let f = &p["failure-details"][0];
        assert_eq!(f["result-type"], "certificate-host-mismatch");
        assert_eq!(f["receiving-mx-hostname"], "mx2.example.org");
        assert_eq!(f["receiving-ip"], "192.0.2.25");
        assert_eq!(f["failed-session-count"], 2);
        // The next period starts empty.
        assert!(c.close(1, 2, "x", "y").is_empty());
    }
}
