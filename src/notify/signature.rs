//! The `X-Portcullis-Signature` header: `t=UNIX_SECONDS,v1=HEX`, where HEX
//! is HMAC-SHA256 under the webhook's secret over `UNIX_SECONDS.BODY`. The
//! time inside the signature lets a receiver refuse replays of old posts.

use hmac::{Hmac, Mac};
use sha2::Sha256;

pub const HEADER: &str = "X-Portcullis-Signature";

fn mac(key: &[u8], t: i64, body: &[u8]) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

pub fn header_value(key: &[u8], t: i64, body: &[u8]) -> String {
    let digest = mac(key, t, body).finalize().into_bytes();
    format!("t={t},v1={}", super::payload::hex(&digest))
}

/// Whether `header` signs `body` under `key` (what a receiver does; used by tests and docs).
pub fn verify(key: &[u8], header: &str, body: &[u8]) -> bool {
    let mut t = None;
    let mut v1 = None;
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", value)) => t = value.parse::<i64>().ok(),
            Some(("v1", value)) => v1 = Some(value.to_string()),
            _ => {}
        }
    }
    let (Some(t), Some(v1)) = (t, v1) else {
        return false;
    };
    let Some(expected) = (0..v1.len())
        .step_by(2)
        .map(|i| {
            v1.get(i..i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        })
        .collect::<Option<Vec<u8>>>()
    else {
        return false;
    };
    mac(key, t, body).verify_slice(&expected).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_and_a_changed_body_does_not() {
        let h = header_value(b"s3cret", 1_700_000_000, b"{\"a\":1}");
        assert!(h.starts_with("t=1700000000,v1="));
        assert_eq!(h.len(), "t=1700000000,v1=".len() + 64);
        assert!(verify(b"s3cret", &h, b"{\"a\":1}"));
        assert!(!verify(b"s3cret", &h, b"{\"a\":2}"));
        assert!(!verify(b"other", &h, b"{\"a\":1}"));
        assert!(!verify(b"s3cret", "t=1,v1=zz", b""));
    }
}
