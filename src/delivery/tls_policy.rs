//! The outbound TLS policy of one MX delivery: DANE where a host has
//! validated TLSA records, else the domain's MTA-STS policy, else
//! opportunistic TLS as before. It decides which MX hosts may be used, how
//! each connection's certificate is checked (`PolicyCheck`, a rustls
//! verifier that also remembers its verdict), and turns each attempt into a
//! `TlsPolicyOutcome` for the result and the TLS reports.

use super::client::{ClientError, TlsMode};
use super::dane::{self, Tlsa};
use super::mta_sts::{Mode, Policy};
use super::result::{TlsPolicyKind, TlsPolicyOutcome};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// The RFC 8460 result type of a certificate error.
pub fn result_type_of(e: &rustls::Error) -> &'static str {
    match e {
        rustls::Error::InvalidCertificate(c) => match c {
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                "certificate-host-mismatch"
            }
            CertificateError::Expired
            | CertificateError::ExpiredContext { .. }
            | CertificateError::NotValidYet
            | CertificateError::NotValidYetContext { .. } => "certificate-expired",
            _ => "certificate-not-trusted",
        },
        _ => "validation-failure",
    }
}

enum Check {
    /// MTA-STS: the web PKI (plus `tls_ca_file`) and the MX host's name.
    WebPki(Arc<rustls::client::WebPkiServerVerifier>),
    /// DANE: the host's validated TLSA records.
    Dane(Vec<dane::TlsaRecord>),
}

/// A certificate check under a policy, remembering how it went. With
/// `enforce` off (MTA-STS testing) a failure is remembered, not acted on.
pub struct PolicyCheck {
    check: Check,
    enforce: bool,
    provider: Arc<rustls::crypto::CryptoProvider>,
    pub kind: TlsPolicyKind,
    pub domain: String,
    /// The policy as TLS reports name it.
    pub report_key: crate::tlsrpt::PolicyKey,
    /// A failure known before any handshake (an MX host a `testing` policy
    /// does not list): told for every attempt, whatever the certificate.
    known_failure: Option<(&'static str, String)>,
    /// The handshake's verdict: what matched, or a result type and words.
    verdict: Mutex<Option<Result<String, (&'static str, String)>>>,
}

impl std::fmt::Debug for PolicyCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PolicyCheck({:?} for {})", self.kind, self.domain)
    }
}

impl PolicyCheck {
    fn remember(&self, verdict: Result<String, (&'static str, String)>) {
        *self.verdict.lock().unwrap_or_else(|p| p.into_inner()) = Some(verdict);
    }

    /// The handshake's verdict so far, in words (for transcripts).
    pub fn describe(&self) -> String {
        let verdict = self.verdict.lock().unwrap_or_else(|p| p.into_inner());
        match &*verdict {
            Some(Ok(what)) => format!("{} for {}: {what}", self.kind.name(), self.domain),
            Some(Err((kind, why))) => {
                format!("{} for {}: {kind}: {why}", self.kind.name(), self.domain)
            }
            None => format!(
                "{} for {}: no certificate checked yet",
                self.kind.name(),
                self.domain
            ),
        }
    }

    /// How the attempt fared under the policy: `error` is the attempt's own
    /// failure, if it failed.
    pub fn outcome(&self, error: Option<&ClientError>) -> TlsPolicyOutcome {
        let verdict = self
            .verdict
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let (failure, detail) = match (verdict, error) {
            (Some(Err((kind, why))), _) => (Some(kind.to_string()), why),
            (_, _) if self.known_failure.is_some() => {
                let (kind, why) = self.known_failure.clone().expect("just checked");
                (Some(kind.to_string()), why)
            }
            (_, Some(ClientError::TlsUnavailable(why))) => {
                (Some("starttls-not-supported".to_string()), why.clone())
            }
            (None, None) if self.kind == TlsPolicyKind::StsTesting => (
                Some("starttls-not-supported".to_string()),
                "the server does not offer STARTTLS".into(),
            ),
            (Some(Ok(what)), _) => (None, what),
            (None, Some(e)) => (None, format!("no TLS verdict: {e}")),
            (None, None) => (None, "TLS established".into()),
        };
        TlsPolicyOutcome {
            policy: self.kind,
            domain: self.domain.clone(),
            failure,
            detail,
        }
    }
}

impl ServerCertVerifier for PolicyCheck {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verdict = match &self.check {
            Check::WebPki(v) => v
                .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
                .map(|_| format!("certificate valid for {}", server_name.to_str()))
                .map_err(|e| (result_type_of(&e), e.to_string())),
            Check::Dane(records) if !dane::any_usable(records) => {
                Ok("TLS required; no usable TLSA record to authenticate with".into())
            }
            Check::Dane(records) => dane::verify(
                records,
                end_entity,
                intermediates,
                server_name,
                now,
                &self.provider,
            ),
        };
        let failed = verdict.as_ref().err().map(|(_, why)| why.clone());
        self.remember(verdict);
        match failed {
            Some(why) if self.enforce => Err(rustls::Error::General(why)),
            _ => Ok(ServerCertVerified::assertion()),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// How to treat one MX host.
pub enum HostPlan {
    /// As before this module: opportunistic TLS, no policy.
    Plain,
    /// Not to be used; the RFC 8460 result type and why.
    Skip(TlsPolicyOutcome, crate::tlsrpt::PolicyKey),
    /// TLS checked by `check`.
    Checked(Arc<PolicyCheck>, TlsMode),
}

/// The policy facts of one destination domain.
pub struct DomainPlan {
    pub domain: String,
    pub sts: Option<Policy>,
    /// Validated TLSA answers by MX host.
    pub tlsa: HashMap<String, Tlsa>,
    /// A policy fetch problem to report (MTA-STS).
    pub sts_problem: Option<(&'static str, String)>,
}

impl DomainPlan {
    pub fn none(domain: &str) -> DomainPlan {
        DomainPlan {
            domain: domain.to_string(),
            sts: None,
            tlsa: HashMap::new(),
            sts_problem: None,
        }
    }

    /// Whether any policy applies at all (else delivery goes on as before).
    pub fn is_empty(&self) -> bool {
        self.sts.is_none() && self.tlsa.is_empty()
    }

    /// How TLS reports name the policy of `kind` for `host`.
    pub fn report_key(&self, kind: TlsPolicyKind, host: &str) -> crate::tlsrpt::PolicyKey {
        match kind {
            TlsPolicyKind::Dane => crate::tlsrpt::PolicyKey {
                policy_type: "tlsa".into(),
                domain: self.domain.clone(),
                strings: match self.tlsa.get(host) {
                    Some(Tlsa::Secure(records)) => {
                        records.iter().map(|r| r.presentation()).collect()
                    }
                    _ => Vec::new(),
                },
                mx_host: vec![host.to_string()],
            },
            _ => crate::tlsrpt::PolicyKey {
                policy_type: "sts".into(),
                domain: self.domain.clone(),
                strings: self
                    .sts
                    .as_ref()
                    .map(|p| p.text.clone())
                    .unwrap_or_default(),
                mx_host: self.sts.as_ref().map(|p| p.mx.clone()).unwrap_or_default(),
            },
        }
    }

    /// How to connect to `host`.
    pub fn for_host(
        &self,
        host: &str,
        webpki: &Arc<rustls::client::WebPkiServerVerifier>,
    ) -> HostPlan {
        let provider = crate::tls::provider();
        let checked = |check: Check, enforce: bool, kind: TlsPolicyKind, known_failure| {
            let check = Arc::new(PolicyCheck {
                check,
                enforce,
                provider: Arc::clone(&provider),
                kind,
                domain: self.domain.clone(),
                report_key: self.report_key(kind, host),
                known_failure,
                verdict: Mutex::new(None),
            });
            let config = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
                .with_safe_default_protocol_versions()
                .expect("ring supports the default protocol versions")
                .dangerous()
                .with_custom_certificate_verifier(Arc::clone(&check) as Arc<dyn ServerCertVerifier>)
                .with_no_client_auth();
            let config = Arc::new(config);
            let mode = if enforce {
                TlsMode::Required(config)
            } else {
                TlsMode::Opportunistic(config)
            };
            HostPlan::Checked(check, mode)
        };
        match self.tlsa.get(host) {
            Some(Tlsa::Secure(records)) => {
                return checked(
                    Check::Dane(records.clone()),
                    true,
                    TlsPolicyKind::Dane,
                    None,
                );
            }
            Some(Tlsa::Failed(why)) => {
                return HostPlan::Skip(
                    TlsPolicyOutcome {
                        policy: TlsPolicyKind::Dane,
                        domain: self.domain.clone(),
                        failure: Some("dnssec-invalid".into()),
                        detail: format!(
                            "the TLSA lookup for {host} failed ({why}): not used until it answers"
                        ),
                    },
                    self.report_key(TlsPolicyKind::Dane, host),
                );
            }
            Some(Tlsa::Absent) | None => {}
        }
        match &self.sts {
            Some(p) if p.mode == Mode::Enforce => {
                if !p.allows(host) {
                    return HostPlan::Skip(
                        TlsPolicyOutcome {
                            policy: TlsPolicyKind::StsEnforce,
                            domain: self.domain.clone(),
                            failure: Some("validation-failure".into()),
                            detail: format!(
                                "MX host {host} is not one the MTA-STS policy names ({})",
                                p.mx.join(", ")
                            ),
                        },
                        self.report_key(TlsPolicyKind::StsEnforce, host),
                    );
                }
                checked(
                    Check::WebPki(Arc::clone(webpki)),
                    true,
                    TlsPolicyKind::StsEnforce,
                    None,
                )
            }
            Some(p) if p.mode == Mode::Testing => {
                // Testing: delivered anyway; an unlisted MX is reported.
                let unlisted = (!p.allows(host)).then(|| {
                    (
                        "validation-failure",
                        format!("MX host {host} is not one the MTA-STS policy names"),
                    )
                });
                checked(
                    Check::WebPki(Arc::clone(webpki)),
                    false,
                    TlsPolicyKind::StsTesting,
                    unlisted,
                )
            }
            _ => HostPlan::Plain,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn webpki() -> Arc<rustls::client::WebPkiServerVerifier> {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            crate::tls::provider(),
        )
        .build()
        .unwrap()
    }

    fn policy(mode: Mode) -> Policy {
        Policy {
            mode,
            mx: vec!["*.example.org".into()],
            max_age: 86400,
            text: vec![],
        }
    }

    #[test]
    fn enforce_skips_hosts_outside_the_policy_and_requires_tls_for_the_rest() {
        let mut plan = DomainPlan::none("example.org");
        plan.sts = Some(policy(Mode::Enforce));
        let v = webpki();
        assert!(
            matches!(plan.for_host("mx.evil.example", &v), HostPlan::Skip(o, _) if o.failure.as_deref() == Some("validation-failure"))
        );
        assert!(matches!(
            plan.for_host("mx1.example.org", &v),
            HostPlan::Checked(_, TlsMode::Required(_))
        ));
        plan.sts = Some(policy(Mode::Testing));
        assert!(matches!(
            plan.for_host("mx.evil.example", &v),
            HostPlan::Checked(_, TlsMode::Opportunistic(_))
        ));
    }

    #[test]
    fn an_unlisted_mx_under_testing_is_reported_even_with_a_good_certificate() {
        let mut plan = DomainPlan::none("example.org");
        plan.sts = Some(policy(Mode::Testing));
        let HostPlan::Checked(check, _) = plan.for_host("mx.evil.example", &webpki()) else {
            panic!("testing delivers to every MX");
        };
        for _ in 0..2 {
            // Each attempt (each address of the host) says so again.
            check.remember(Ok("certificate valid for mx.evil.example".into()));
            let o = check.outcome(None);
            assert_eq!(o.failure.as_deref(), Some("validation-failure"), "{o:?}");
        }
        let HostPlan::Checked(listed, _) = plan.for_host("mx1.example.org", &webpki()) else {
            panic!("a listed MX is checked");
        };
        listed.remember(Ok("certificate valid".into()));
        assert_eq!(listed.outcome(None).failure, None);
    }

    #[test]
    fn dane_comes_first_and_a_failed_lookup_keeps_the_host_out() {
        let mut plan = DomainPlan::none("example.org");
        plan.sts = Some(policy(Mode::Enforce));
        plan.tlsa
            .insert("mx1.example.org".into(), Tlsa::Secure(vec![]));
        plan.tlsa
            .insert("mx2.example.org".into(), Tlsa::Failed("SERVFAIL".into()));
        let v = webpki();
        assert!(
            matches!(plan.for_host("mx1.example.org", &v), HostPlan::Checked(c, _) if c.kind == TlsPolicyKind::Dane)
        );
        assert!(
            matches!(plan.for_host("mx2.example.org", &v), HostPlan::Skip(o, _) if o.failure.as_deref() == Some("dnssec-invalid"))
        );
    }
}
