//! DKIM keys: read from PEM (RSA of 2048 bits or more, PKCS#1 or PKCS#8;
//! Ed25519 in PKCS#8), and the public half as the DNS record publishes it.

use base64::Engine;
use mail_auth::common::crypto::{Ed25519Key, RsaKey, Sha256};
use rsa::pkcs1::DecodeRsaPrivateKey;
use rsa::pkcs8::{DecodePrivateKey, EncodePublicKey};
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject;
use std::path::Path;

/// The smallest RSA key we sign with (RFC 8301 says at least 1024 for
/// verifiers; receivers such as Google want 2048).
pub const MIN_RSA_BITS: usize = 2048;

pub enum SigningKey {
    Rsa(RsaKey<Sha256>),
    Ed25519(Ed25519Key),
}

/// A key read from its file, with what DNS must publish for it.
pub struct LoadedKey {
    pub key: SigningKey,
    /// `k=` of the record.
    pub kind: &'static str,
    /// `p=` of the record (base64).
    pub public: String,
    /// RSA: the modulus size.
    pub bits: Option<usize>,
}

impl LoadedKey {
    /// The TXT record value for SELECTOR._domainkey.DOMAIN.
    pub fn record(&self) -> String {
        format!("v=DKIM1; k={}; p={}", self.kind, self.public)
    }
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Reads a key; the error says what is wrong in words (never the key).
pub fn load(path: &Path) -> Result<LoadedKey, String> {
    let der = PrivateKeyDer::from_pem_file(path).map_err(|e| match e {
        rustls_pki_types::pem::Error::Io(io) => io.to_string(),
        _ => "not a PEM private key".to_string(),
    })?;
    from_der(der)
}

pub fn from_der(der: PrivateKeyDer<'_>) -> Result<LoadedKey, String> {
    match &der {
        PrivateKeyDer::Pkcs8(p8) => {
            if let Ok(ed) = Ed25519Key::from_pkcs8_der(p8.secret_pkcs8_der()) {
                let public = b64(&ed.public_key());
                return Ok(LoadedKey {
                    key: SigningKey::Ed25519(ed),
                    kind: "ed25519",
                    public,
                    bits: None,
                });
            }
            let rsa = rsa::RsaPrivateKey::from_pkcs8_der(p8.secret_pkcs8_der())
                .map_err(|_| "neither an Ed25519 nor an RSA key".to_string())?;
            rsa_key(rsa, der)
        }
        PrivateKeyDer::Pkcs1(p1) => {
            let rsa = rsa::RsaPrivateKey::from_pkcs1_der(p1.secret_pkcs1_der())
                .map_err(|_| "not a readable RSA key".to_string())?;
            rsa_key(rsa, der)
        }
        _ => Err("an EC key: DKIM signs with RSA or Ed25519".into()),
    }
}

fn rsa_key(rsa: rsa::RsaPrivateKey, der: PrivateKeyDer<'_>) -> Result<LoadedKey, String> {
    use rsa::traits::PublicKeyParts;
    let bits = rsa.size() * 8;
    if bits < MIN_RSA_BITS {
        return Err(format!(
            "an RSA key of {bits} bits: receivers distrust fewer than {MIN_RSA_BITS}; make a new one with `portcullis dkim keygen`"
        ));
    }
    let spki = rsa::RsaPublicKey::from(&rsa)
        .to_public_key_der()
        .map_err(|e| format!("cannot encode the public key: {e}"))?;
    let key = RsaKey::<Sha256>::from_key_der(der).map_err(|e| e.to_string())?;
    Ok(LoadedKey {
        key: SigningKey::Rsa(key),
        kind: "rsa",
        public: b64(spki.as_bytes()),
        bits: Some(bits),
    })
}

/// The `p=` of a published DKIM record (whitespace removed), if any.
pub fn published_key(record: &str) -> Option<String> {
    record.split(';').find_map(|tag| {
        let (name, value) = tag.split_once('=')?;
        (name.trim() == "p").then(|| value.split_whitespace().collect::<String>())
    })
}
