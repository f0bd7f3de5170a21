//! TLS for outbound connections: verified (web PKI roots plus an optional CA
//! file) for smart hosts, or encryption without verification for opportunistic
//! MX delivery, where certificates rarely match and clear text is the alternative.

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use std::path::Path;
use std::sync::Arc;

/// A profile's TLS: the web PKI plus its `ca_file`, and its client
/// certificate when it has one (for its SMTP hosts and its HTTPS endpoints).
pub fn verified_for(profile: &crate::config::Profile) -> Result<Arc<ClientConfig>, String> {
    let roots = roots(profile.ca_file.as_deref(), &profile.key_of("ca_file"))?;
    let builder = ClientConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    let config = match (&profile.client_cert, &profile.client_key) {
        (Some(cert), Some(key)) => {
            let cert_key = profile.key_of("client_cert");
            let chain = CertificateDer::pem_file_iter(cert)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| format!("{cert_key} {}: {e}", cert.display()))?;
            let key_der = rustls::pki_types::PrivateKeyDer::from_pem_file(key)
                .map_err(|e| format!("{} {}: {e}", profile.key_of("client_key"), key.display()))?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|e| format!("{cert_key}: {e}"))?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// Verified TLS without a client certificate: the web PKI plus `ca_file`
/// (named `key` in errors), for HTTPS receivers such as webhooks.
pub fn verified_with(ca_file: Option<&Path>, key: &str) -> Result<Arc<ClientConfig>, String> {
    let roots = roots(ca_file, key)?;
    let config = ClientConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// A certificate verifier over the web PKI plus `ca_file`.
pub fn webpki_verifier(
    ca_file: Option<&Path>,
    key: &str,
) -> Result<Arc<rustls::client::WebPkiServerVerifier>, String> {
    let roots = roots(ca_file, key)?;
    rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        crate::tls::provider(),
    )
    .build()
    .map_err(|e| format!("{key}: {e}"))
}

/// The web PKI roots plus the certificates in `ca_file` (named `key` in errors).
fn roots(ca_file: Option<&Path>, key: &str) -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    // The machine's own trust store too (a private CA an admin installed
    // with update-ca-certificates, or SSL_CERT_FILE): read once. Entries it
    // cannot parse are skipped, as a browser would.
    roots.add_parsable_certificates(system_roots().iter().cloned());
    if let Some(path) = ca_file {
        roots
            .roots
            .extend(crate::tls::ca_file_roots(path, key)?.roots);
    }
    Ok(roots)
}

/// The certificates of the system's trust store (empty when it has none).
fn system_roots() -> &'static [CertificateDer<'static>] {
    static ROOTS: std::sync::OnceLock<Vec<CertificateDer<'static>>> = std::sync::OnceLock::new();
    ROOTS.get_or_init(|| {
        let found = rustls_native_certs::load_native_certs();
        for e in &found.errors {
            tracing::debug!(error = %e, "a system trust store entry could not be read");
        }
        found.certs
    })
}

pub fn unverified() -> Arc<ClientConfig> {
    let provider = crate::tls::provider();
    let config = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
        .with_no_client_auth();
    Arc::new(config)
}

/// Checks signatures (so the session is really encrypted to the key holder) but not the name or chain.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
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
            &self.0.signature_verification_algorithms,
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
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
