//! TLS for the server: load the configured PEM certificate and key, or
//! generate a self-signed certificate into data_dir on first start so that
//! STARTTLS works out of the box. rustls with the ring provider only.

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("tls.cert {path}: {reason}")]
    Cert { path: PathBuf, reason: String },
    #[error("tls.key {path}: {reason}")]
    Key { path: PathBuf, reason: String },
    #[error("cannot generate a self-signed certificate: {0}")]
    Generate(String),
    #[error("TLS setup failed: {0}")]
    Rustls(#[from] rustls::Error),
}

pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The trust anchors of a CA file (PEM); errors name the setting `key` and
/// the file. Used to trust a private CA for outbound TLS, and by the config
/// check of every such setting.
pub fn ca_file_roots(path: &Path, key: &str) -> Result<rustls::RootCertStore, String> {
    let problem = |e: &dyn std::fmt::Display| format!("{key} {}: {e}", path.display());
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path).map_err(|e| problem(&e))? {
        let cert = cert.map_err(|e| problem(&e))?;
        roots.add(cert).map_err(|e| problem(&e))?;
    }
    Ok(roots)
}

/// Where the certificate and key come from.
pub struct CertSource {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub generated: bool,
}

/// The configured pair, or a self-signed one in `data_dir/tls/` (created when missing).
pub fn ensure_cert(
    cert: Option<&Path>,
    key: Option<&Path>,
    data_dir: &Path,
    hostname: &str,
) -> Result<CertSource, TlsError> {
    if let (Some(cert), Some(key)) = (cert, key) {
        return Ok(CertSource {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            generated: false,
        });
    }
    let dir = data_dir.join("tls");
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    if !(cert.exists() && key.exists()) {
        let (cert_pem, key_pem) = self_signed(hostname)?;
        fs::create_dir_all(&dir)
            .map_err(|e| TlsError::Generate(format!("{}: {e}", dir.display())))?;
        // The key first: a crash between the two leaves no certificate,
        // and both are made again at the next start.
        let written = |path: &Path, bytes: &[u8], mode: u32| {
            let new = crate::fsio::NewFile { mode, owner: None };
            crate::fsio::replace(path, bytes, new)
                .map_err(|e| TlsError::Generate(format!("{}: {e}", path.display())))
        };
        written(&key, key_pem.as_bytes(), 0o600)?;
        written(&cert, cert_pem.as_bytes(), 0o644)?;
    }
    Ok(CertSource {
        cert,
        key,
        generated: true,
    })
}

/// A self-signed certificate for `hostname` (PEM cert, PEM key).
pub fn self_signed(hostname: &str) -> Result<(String, String), TlsError> {
    let mut names = vec![hostname.to_string()];
    if hostname != "localhost" {
        names.push("localhost".into());
    }
    let certified =
        rcgen::generate_simple_self_signed(names).map_err(|e| TlsError::Generate(e.to_string()))?;
    Ok((certified.cert.pem(), certified.signing_key.serialize_pem()))
}

/// A rustls server config from PEM files.
/// An error and its sources, joined ("error sending request: tcp connect
/// error: Connection refused"): HTTP clients hide the useful part below.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    text
}

/// TLS sessions remembered for resumption by id (about 100 bytes each).
const SESSIONS_KEPT: usize = 4096;

pub fn server_config(cert_path: &Path, key_path: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_path)
        .map_err(|e| TlsError::Cert {
            path: cert_path.into(),
            reason: e.to_string(),
        })?
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Cert {
            path: cert_path.into(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Cert {
            path: cert_path.into(),
            reason: "no certificate found in the file".into(),
        });
    }
    let key = PrivateKeyDer::from_pem_file(key_path).map_err(|e| TlsError::Key {
        path: key_path.into(),
        reason: e.to_string(),
    })?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Key {
            path: key_path.into(),
            reason: format!("does not match the certificate or cannot be used: {e}"),
        })?;
    // Clients that connect for every message (printers, scripts, most
    // libraries) resume their TLS session instead of a full handshake:
    // session tickets (keys rotated by the ticketer, new on each reload)
    // and a session cache for clients that ask by id.
    if let Ok(ticketer) = rustls::crypto::ring::Ticketer::new() {
        config.ticketer = ticketer;
    }
    config.session_storage = rustls::server::ServerSessionMemoryCache::new(SESSIONS_KEPT);
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_certificate_loads_and_is_reused() {
        let dir = tempfile::tempdir().unwrap();
        let src = ensure_cert(None, None, dir.path(), "relay.test").unwrap();
        assert!(src.generated);
        server_config(&src.cert, &src.key).unwrap();
        let first = fs::read(&src.cert).unwrap();
        let again = ensure_cert(None, None, dir.path(), "relay.test").unwrap();
        assert_eq!(fs::read(again.cert).unwrap(), first);
        // The key is a secret: its owner's alone; the certificate is public.
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&src.key), 0o600);
        assert_eq!(mode(&src.cert), 0o644);
        // Written whole through a temporary file: none is left beside them.
        let names: Vec<_> = fs::read_dir(dir.path().join("tls"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }

    #[test]
    fn bad_files_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("c.pem");
        fs::write(&cert, "not a cert").unwrap();
        let err = server_config(&cert, &cert).unwrap_err().to_string();
        assert!(err.starts_with("tls.cert"), "{err}");
    }
}

/// An I/O error in words for logs and delivery results. rustls reports a
/// peer that hung up without ending TLS as an error whose text carries a
/// link to its manual; nobody reading our log needs that.
pub fn describe_io_error(e: &std::io::Error) -> String {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        return "the peer closed the connection without ending TLS properly".into();
    }
    let text = e.to_string();
    match text.find(": https://") {
        Some(cut) => text[..cut].to_string(),
        None => text,
    }
}

#[cfg(test)]
mod describe_tests {
    #[test]
    fn library_links_are_not_passed_on() {
        let eof = std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "peer closed connection without sending TLS close_notify: https://docs.rs/rustls/latest/rustls/manual/_03_howto/index.html#unexpected-eof",
        );
        let said = super::describe_io_error(&eof);
        assert!(!said.contains("https://"), "{said}");
        let other = std::io::Error::other("bad thing: https://docs.rs/x");
        assert_eq!(super::describe_io_error(&other), "bad thing");
    }
}
