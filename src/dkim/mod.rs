//! DKIM signing (`[[dkim]]`): at delivery, after any sender rewriting, a
//! message from a trusted or authenticated source whose From: domain has a
//! key is signed with each of that domain's keys (RSA and Ed25519 side by
//! side is the RFC 8463 advice). A stranger's message is never signed.

pub mod keygen;

use crate::config::DkimConfig;
use crate::dkim_key::{LoadedKey, SigningKey};
use mail_auth::common::crypto::{Ed25519Key, RsaKey, Sha256};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::{Canonicalization, DkimSigner, Done};

enum Signer {
    Rsa(DkimSigner<RsaKey<Sha256>, Done>),
    Ed25519(DkimSigner<Ed25519Key, Done>),
}

struct DomainSigner {
    domain: String,
    signer: Signer,
}

/// Every configured key, ready to sign.
#[derive(Default)]
pub struct Signers {
    signers: Vec<DomainSigner>,
}

impl Signers {
    /// The signers of `config`; a key that cannot be read is left out and
    /// named in the errors (check-config refuses such a file before).
    pub fn from_config(config: &[DkimConfig]) -> (Signers, Vec<String>) {
        let mut signers = Vec::new();
        let mut errors = Vec::new();
        for (i, d) in config.iter().enumerate() {
            match crate::dkim_key::load(&d.key_file) {
                Ok(loaded) => signers.push(DomainSigner {
                    domain: d.domain.to_ascii_lowercase(),
                    signer: build(d, loaded),
                }),
                Err(e) => errors.push(format!("dkim[{i}].key_file {}: {e}", d.key_file.display())),
            }
        }
        (Signers { signers }, errors)
    }

    pub fn is_empty(&self) -> bool {
        self.signers.is_empty()
    }

    /// The DKIM-Signature header fields to put on top of `message`, or None
    /// when no key is for its From: domain.
    pub fn sign(&self, message: &[u8]) -> Option<Vec<u8>> {
        if self.signers.is_empty() {
            return None;
        }
        let domain = from_domain(message)?;
        let mut out = Vec::new();
        for s in self.signers.iter().filter(|s| s.domain == domain) {
            let signature = match &s.signer {
                Signer::Rsa(k) => k.sign(message),
                Signer::Ed25519(k) => k.sign(message),
            };
            match signature {
                Ok(sig) => out.extend_from_slice(sig.to_header().as_bytes()),
                Err(e) => {
                    tracing::warn!(domain = %s.domain, error = %e, "cannot DKIM-sign a message; it goes unsigned")
                }
            }
        }
        (!out.is_empty()).then_some(out)
    }
}

fn build(d: &DkimConfig, loaded: LoadedKey) -> Signer {
    match loaded.key {
        SigningKey::Rsa(k) => Signer::Rsa(signer(d, k)),
        SigningKey::Ed25519(k) => Signer::Ed25519(signer(d, k)),
    }
}

/// relaxed/relaxed: survives the header refolding and trailing-space
/// changes that mail systems on the way make.
fn signer<K: mail_auth::common::crypto::SigningKey>(d: &DkimConfig, key: K) -> DkimSigner<K, Done> {
    DkimSigner::from_key(key)
        .domain(d.domain.clone())
        .selector(d.selector.clone())
        .headers(d.signed_headers())
        .header_canonicalization(Canonicalization::Relaxed)
        .body_canonicalization(Canonicalization::Relaxed)
}

/// The one domain of the From: header (lower case); None when there is no
/// From:, or its addresses are in more than one domain.
pub fn from_domain(message: &[u8]) -> Option<String> {
    let parsed = mail_parser::MessageParser::new().parse_headers(message)?;
    let from = parsed.from()?;
    let mut domains = from.iter().filter_map(|a| a.address()).filter_map(|a| {
        a.rsplit_once('@')
            .map(|(_, d)| d.trim_end_matches('.').to_ascii_lowercase())
    });
    let first = domains.next()?;
    domains.all(|d| d == first).then_some(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_from_domain_is_read_from_the_header() {
        assert_eq!(
            from_domain(b"Subject: x\r\nFrom: \"Ann\" <ann@Example.ORG>\r\n\r\nbody\r\n")
                .as_deref(),
            Some("example.org")
        );
        assert_eq!(from_domain(b"Subject: x\r\n\r\nbody\r\n"), None);
        assert_eq!(
            from_domain(b"From: a@one.example, b@two.example\r\n\r\n"),
            None,
            "two domains: no single one to sign for"
        );
    }

    #[test]
    fn only_a_listed_domain_is_signed() {
        let dir = tempfile::tempdir().unwrap();
        let (pem, _) = keygen::generate(keygen::Algorithm::Ed25519, 0).unwrap();
        let path = dir.path().join("k.pem");
        std::fs::write(&path, pem).unwrap();
        let config: Vec<DkimConfig> = vec![DkimConfig {
            domain: "example.org".into(),
            selector: "s1".into(),
            key_file: path,
            headers: None,
        }];
        let (signers, errors) = Signers::from_config(&config);
        assert!(errors.is_empty());
        let header = signers
            .sign(b"From: ann@example.org\r\nSubject: hi\r\n\r\nbody\r\n")
            .unwrap();
        let text = String::from_utf8(header).unwrap();
        assert!(text.starts_with("DKIM-Signature: "), "{text}");
        assert!(
            text.contains("d=example.org") && text.contains("s=s1"),
            "{text}"
        );
        assert!(text.contains("a=ed25519-sha256"), "{text}");
        assert!(
            text.to_ascii_lowercase().contains("h=from:from:")
                || text.to_ascii_lowercase().contains("from:from"),
            "From is over-signed: {text}"
        );
        assert!(
            signers
                .sign(b"From: eve@elsewhere.example\r\n\r\nbody\r\n")
                .is_none()
        );
    }
}
