//! Real certificates for tests: a throwaway CA and a server certificate it signs.

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub struct TestCa {
    pub ca_pem: String,
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    /// A client certificate (TLS client authentication) from the same CA.
    pub client_cert_path: PathBuf,
    pub client_key_path: PathBuf,
}

impl TestCa {
    /// Writes `cert.pem` and `key.pem` for `localhost` into `dir`.
    pub fn generate(dir: &Path) -> TestCa {
        Self::generate_for(dir, &["localhost", "relay.test"])
    }

    /// Writes `cert.pem` and `key.pem` for `names` into `dir`.
    pub fn generate_for(dir: &Path, names: &[&str]) -> TestCa {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Portcullis test CA");
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        let leaf_key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .unwrap()
            .signed_by(&leaf_key, &ca)
            .unwrap();
        let cert_path = dir.join("cert.pem");
        let key_path = dir.join("key.pem");
        std::fs::write(&cert_path, leaf.pem()).unwrap();
        std::fs::write(&key_path, leaf_key.serialize_pem()).unwrap();
        let client_key = KeyPair::generate().unwrap();
        let mut client_params =
            CertificateParams::new(vec!["relay.client.test".to_string()]).unwrap();
        client_params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let client = client_params.signed_by(&client_key, &ca).unwrap();
        let client_cert_path = dir.join("client.pem");
        let client_key_path = dir.join("client-key.pem");
        std::fs::write(&client_cert_path, client.pem()).unwrap();
        std::fs::write(&client_key_path, client_key.serialize_pem()).unwrap();
        TestCa {
            ca_pem: ca.pem(),
            cert_path,
            key_path,
            client_cert_path,
            client_key_path,
        }
    }

    /// A client config that trusts only this CA.
    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        use rustls_pki_types::CertificateDer;
        use rustls_pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(self.ca_pem.as_bytes()).unwrap())
            .unwrap();
        Arc::new(
            rustls::ClientConfig::builder_with_provider(portcullis::tls::provider())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth(),
        )
    }

    pub fn ca_file(&self, dir: &Path) -> PathBuf {
        let p = dir.join("ca.pem");
        std::fs::write(&p, &self.ca_pem).unwrap();
        p
    }
}
