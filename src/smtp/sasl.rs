//! SASL responses for AUTH PLAIN and LOGIN (RFC 4954, RFC 4616), decoded
//! without I/O so that the session and the fuzzer share them.

use super::reply::{self, Reply};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;

/// A client's answer to a SASL challenge (or an initial response).
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    Data(Vec<u8>),
    Cancelled,
    BadBase64,
}

impl Answer {
    /// The decoded bytes, or the reply that ends the exchange.
    pub fn into_data(self) -> Result<Vec<u8>, Reply> {
        match self {
            Answer::Data(d) => Ok(d),
            Answer::Cancelled => Err(reply::AUTH_CANCELLED),
            Answer::BadBase64 => Err(reply::AUTH_BAD_BASE64),
        }
    }
}

/// Decodes one response line: base64, `*` to cancel, `=` for empty.
pub fn decode_answer(line: &[u8]) -> Answer {
    let line = line.trim_ascii();
    if line == b"*" {
        return Answer::Cancelled;
    }
    if line == b"=" {
        return Answer::Data(Vec::new());
    }
    match B64.decode(line) {
        Ok(d) => Answer::Data(d),
        Err(_) => Answer::BadBase64,
    }
}

/// Splits a PLAIN message (authzid NUL authcid NUL passwd) into user and password.
pub fn parse_plain(data: &[u8]) -> Result<(String, String), Reply> {
    let bad = || Reply::new(501, "5.5.2", "Malformed PLAIN response");
    let parts: Vec<&[u8]> = data.split(|&b| b == 0).collect();
    let [authz, user, pass] = parts.as_slice() else {
        return Err(bad());
    };
    let (Ok(authz), Ok(user), Ok(pass)) = (
        std::str::from_utf8(authz),
        std::str::from_utf8(user),
        std::str::from_utf8(pass),
    ) else {
        return Err(bad());
    };
    if !authz.is_empty() && authz != user {
        return Err(Reply::new(
            535,
            "5.7.8",
            "Acting as another user is not allowed",
        ));
    }
    Ok((user.to_string(), pass.to_string()))
}

/// The LOGIN user name and password, which must be UTF-8.
pub fn login_credentials(user: Vec<u8>, pass: Vec<u8>) -> Result<(String, String), Reply> {
    match (String::from_utf8(user), String::from_utf8(pass)) {
        (Ok(u), Ok(p)) => Ok((u, p)),
        _ => Err(Reply::new(
            501,
            "5.5.2",
            "User name and password must be UTF-8",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_and_its_failures() {
        let Answer::Data(d) = decode_answer(b"AGJvYgBidWlsZGVy") else {
            panic!("valid base64");
        };
        assert_eq!(parse_plain(&d).unwrap(), ("bob".into(), "builder".into()));
        assert_eq!(decode_answer(b"*"), Answer::Cancelled);
        assert_eq!(decode_answer(b"=="), Answer::BadBase64);
        assert_eq!(parse_plain(b"a\0b").unwrap_err().code, 501);
        assert_eq!(parse_plain(b"eve\0bob\0pw").unwrap_err().code, 535);
        assert_eq!(parse_plain(b"\0\xff\0pw").unwrap_err().code, 501);
    }
}
