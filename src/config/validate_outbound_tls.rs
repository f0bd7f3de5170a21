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
        && let Err(e) =
            crate::delivery::client_tls::webpki_verifier(Some(path), "delivery.tls_ca_file")
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
