//! The Received: trace header (RFC 5321 4.4, protocol words from RFC 3848).

use crate::smtp::stream::TlsInfo;
use std::net::IpAddr;

pub struct ReceivedFacts<'a> {
    pub helo: &'a str,
    pub ip: IpAddr,
    pub hostname: &'a str,
    pub extended: bool,
    pub tls: Option<&'a TlsInfo>,
    pub authenticated: bool,
    pub smtputf8: bool,
    pub queue_id: &'a str,
    /// Named only when there is exactly one recipient (no leak of Bcc lists).
    pub single_recipient: Option<String>,
}

/// `with` protocol word: SMTP, ESMTP, ESMTPS, ESMTPA, ESMTPSA, UTF8SMTP…
fn protocol(f: &ReceivedFacts<'_>) -> &'static str {
    if !f.extended {
        return "SMTP";
    }
    match (f.smtputf8, f.tls.is_some(), f.authenticated) {
        (false, false, false) => "ESMTP",
        (false, true, false) => "ESMTPS",
        (false, false, true) => "ESMTPA",
        (false, true, true) => "ESMTPSA",
        (true, false, false) => "UTF8SMTP",
        (true, true, false) => "UTF8SMTPS",
        (true, false, true) => "UTF8SMTPA",
        (true, true, true) => "UTF8SMTPSA",
    }
}

/// Appends the client's HELO name so that it cannot break the header.
fn push_printable(out: &mut String, s: &str) {
    out.extend(
        s.chars()
            .take(255)
            .map(|c| if c.is_ascii_graphic() { c } else { '?' }),
    );
}

/// Built in one buffer: every accepted message gets one.
pub fn received_header(f: &ReceivedFacts<'_>) -> String {
    use std::fmt::Write;
    let mut h = String::with_capacity(256);
    h.push_str("Received: from ");
    push_printable(&mut h, f.helo);
    let _ = match f.ip {
        IpAddr::V4(a) => write!(h, " ([{a}])"),
        IpAddr::V6(a) => write!(h, " ([IPv6:{a}])"),
    };
    let _ = write!(
        h,
        "\r\n\tby {} (Portcullis) with {} id {}",
        f.hostname,
        protocol(f),
        f.queue_id
    );
    if let Some(tls) = f.tls {
        let _ = write!(
            h,
            "\r\n\t(using {} with cipher {})",
            tls.version, tls.cipher
        );
    }
    if let Some(rcpt) = &f.single_recipient {
        let _ = write!(h, "\r\n\tfor <{rcpt}>");
    }
    h.push_str(";\r\n\t");
    h.push_str(&chrono::Utc::now().to_rfc2822());
    h.push_str("\r\n");
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_shape() {
        let tls = TlsInfo {
            version: "TLSv1.3".into(),
            cipher: "TLS13_AES_256_GCM_SHA384".into(),
        };
        let h = received_header(&ReceivedFacts {
            helo: "pc1.lan\x07",
            ip: "192.168.1.20".parse().unwrap(),
            hostname: "relay.lan",
            extended: true,
            tls: Some(&tls),
            authenticated: true,
            smtputf8: false,
            queue_id: "0123456789ABCDEF01",
            single_recipient: Some("a@b.example".into()),
        });
        assert!(h.starts_with("Received: from pc1.lan? ([192.168.1.20])\r\n\tby relay.lan (Portcullis) with ESMTPSA id 0123456789ABCDEF01"));
        assert!(h.contains("TLSv1.3") && h.contains("for <a@b.example>;"));
        assert!(h.ends_with("\r\n"));
        assert!(h.lines().all(|l| l.len() < 100));
    }
}
