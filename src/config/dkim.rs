//! `[[dkim]]`: keys that sign outgoing mail of our own domains (RFC 6376,
//! Ed25519 per RFC 8463).

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Headers signed when `headers` is not set. `From` appears twice: one more
/// than a message has, so nobody can add a second From: after signing
/// (over-signing); headers a message lacks are signed as absent for the
/// same reason.
pub const DEFAULT_SIGNED_HEADERS: &[&str] = &[
    "From",
    "From",
    "Reply-To",
    "Subject",
    "Date",
    "To",
    "Cc",
    "Message-ID",
    "In-Reply-To",
    "References",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
];

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DkimConfig {
    /// Mail whose From: is in this domain is signed (d=).
    pub domain: String,
    /// The key's name in DNS: SELECTOR._domainkey.DOMAIN (s=).
    pub selector: String,
    /// PEM: an RSA key of 2048 bits or more (PKCS#1 or PKCS#8), or Ed25519 (PKCS#8).
    pub key_file: PathBuf,
    /// The header fields signed, in order (default `DEFAULT_SIGNED_HEADERS`).
    pub headers: Option<Vec<String>>,
}

impl DkimConfig {
    pub fn signed_headers(&self) -> Vec<String> {
        match &self.headers {
            Some(h) => h.clone(),
            None => DEFAULT_SIGNED_HEADERS
                .iter()
                .map(|s| s.to_string())
                .collect(),
        }
    }

    /// The DNS name the public key is published under.
    pub fn record_name(&self) -> String {
        format!("{}._domainkey.{}", self.selector, self.domain)
    }
}
