//! `portcullis dkim keygen`: a new key pair, the private half in a PEM file
//! (0600, written whole and synced), the public half as the TXT record.

use crate::dkim_key::{LoadedKey, from_der};
use mail_auth::dkim::generate::DkimKeyPair;
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs1KeyDer, PrivatePkcs8KeyDer};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Algorithm {
    Rsa,
    Ed25519,
}

/// A new key: its PEM text and what DNS must publish.
pub fn generate(algorithm: Algorithm, bits: usize) -> Result<(String, LoadedKey), String> {
    let (label, der): (&str, PrivateKeyDer<'static>) = match algorithm {
        Algorithm::Rsa => {
            let pair = DkimKeyPair::generate_rsa(bits).map_err(|e| e.to_string())?;
            (
                "RSA PRIVATE KEY",
                PrivateKeyDer::Pkcs1(PrivatePkcs1KeyDer::from(pair.private_key().to_vec())),
            )
        }
        Algorithm::Ed25519 => {
            let pair = DkimKeyPair::generate_ed25519().map_err(|e| e.to_string())?;
            (
                "PRIVATE KEY",
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pair.private_key().to_vec())),
            )
        }
    };
    let pem = pem(label, der.secret_der());
    let loaded = from_der(der)?;
    Ok((pem, loaded))
}

fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let text = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in text.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// The record split into strings of at most 255 octets, as a zone file
/// writes a long TXT value.
pub fn zone_line(name: &str, record: &str) -> String {
    let parts: Vec<String> = record
        .as_bytes()
        .chunks(255)
        .map(|c| format!("\"{}\"", String::from_utf8_lossy(c)))
        .collect();
    format!("{name}. IN TXT ( {} )", parts.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_key_reads_back_as_the_same_record() {
        for (algorithm, kind) in [(Algorithm::Ed25519, "ed25519"), (Algorithm::Rsa, "rsa")] {
            let (pem, loaded) = generate(algorithm, 2048).unwrap();
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("k.pem");
            std::fs::write(&path, &pem).unwrap();
            let again = crate::dkim_key::load(&path).unwrap();
            assert_eq!(again.record(), loaded.record());
            assert!(
                loaded
                    .record()
                    .starts_with(&format!("v=DKIM1; k={kind}; p="))
            );
        }
    }

    #[test]
    fn a_short_rsa_key_is_refused() {
        let pair = DkimKeyPair::generate_rsa(1024).unwrap();
        let der = PrivateKeyDer::Pkcs1(PrivatePkcs1KeyDer::from(pair.private_key().to_vec()));
        let err = from_der(der).err().unwrap();
        assert!(err.contains("1024 bits"), "{err}");
    }

    #[test]
    fn long_records_are_split_for_zone_files() {
        let line = zone_line("s._domainkey.example.org", &"x".repeat(600));
        assert_eq!(line.matches('"').count(), 6);
    }
}
