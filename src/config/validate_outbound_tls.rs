//! Checks of the outbound TLS policy keys: MTA-STS, DANE and TLS-RPT only
//! do something in the combinations that make sense; say so otherwise.

use super::validate::{Finding, Severity, finding};
use super::{Config, DeliveryMode};

pub fn check(c: &Config, out: &mut Vec<Finding>) {
    let d = &c.delivery;
    if d.dane.is_on() && !c.dns.validating {
        out.push(finding(
            Severity::Warning,
            "delivery.dane",
            "\"on\"",
            "has no effect until [dns] validating = true says the resolvers validate DNSSEC (their AD bit is trusted)",
        ));
    }
    if c.dns.validating && c.dns.nameservers.is_empty() {
        out.push(finding(
            Severity::Info,
            "dns.validating",
            "true",
            "trusts the AD bit of the resolvers in /etc/resolv.conf: make sure they validate (a local unbound, say)",
        ));
    }
    if d.tls_rpt && !d.mta_sts.is_on() && !d.dane.is_on() {
        out.push(finding(
            Severity::Warning,
            "delivery.tls_rpt",
            "true",
            "reports on MTA-STS and DANE sessions, and both are off",
        ));
    }
    let period = d.tls_rpt_period.get().as_secs();
    if d.tls_rpt && period == 0 {
        out.push(finding(
            Severity::Error,
            "delivery.tls_rpt_period",
            d.tls_rpt_period.to_string(),
            "must be longer than zero",
        ));
    } else if d.tls_rpt && period < 3600 {
        out.push(finding(
            Severity::Warning,
            "delivery.tls_rpt_period",
            d.tls_rpt_period.to_string(),
            "is shorter than an hour: receivers expect a report a day (RFC 8460)",
        ));
    }
    if let Some(path) = &d.tls_ca_file
        && let Err(e) = crate::tls::ca_file_roots(path, "delivery.tls_ca_file")
    {
        out.push(finding(
            Severity::Error,
            "delivery.tls_ca_file",
            format!("{:?}", path.display().to_string()),
            e,
        ));
    }
    if d.mode == DeliveryMode::Smarthost && (d.mta_sts.is_on() || d.dane.is_on()) {
        out.push(finding(
            Severity::Info,
            "delivery.mta_sts",
            "\"on\"",
            "MTA-STS and DANE apply to deliveries by MX, and mode = \"smarthost\" sends mail to the smart host",
        ));
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, Severity};

    fn ca_file_findings(path: &std::path::Path) -> Vec<String> {
        let text = format!(
            "[delivery]\ntls_ca_file = {:?}\n",
            path.display().to_string()
        );
        let config: Config = toml::from_str(&text).unwrap();
        config
            .findings()
            .into_iter()
            .filter(|f| f.key == "delivery.tls_ca_file" && f.severity == Severity::Error)
            .map(|f| f.reason)
            .collect()
    }

    #[test]
    fn a_ca_file_must_hold_certificates_usable_as_trust_anchors() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("ca.pem");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = params
            .self_signed(&rcgen::KeyPair::generate().unwrap())
            .unwrap();
        std::fs::write(&good, ca.pem()).unwrap();
        assert!(ca_file_findings(&good).is_empty());

        let broken = dir.path().join("broken.pem");
        std::fs::write(
            &broken,
            "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let reasons = ca_file_findings(&broken);
        assert_eq!(reasons.len(), 1, "{reasons:?}");
        assert!(
            reasons[0].starts_with("delivery.tls_ca_file "),
            "{reasons:?}"
        );

        let missing = ca_file_findings(&dir.path().join("missing.pem"));
        assert_eq!(missing.len(), 1, "{missing:?}");
    }
}
