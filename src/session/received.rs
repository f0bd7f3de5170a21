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
fn protocol(f: &ReceivedFacts<'_>) -> String {
    if !f.extended {
        return "SMTP".into();
    }
    let base = if f.smtputf8 { "UTF8SMTP" } else { "ESMTP" };
    let s = if f.tls.is_some() { "S" } else { "" };
    let a = if f.authenticated { "A" } else { "" };
    format!("{base}{s}{a}")
}

/// Keeps the client's HELO name from breaking the header.
fn printable(s: &str) -> String {
    s.chars()
        .take(255)
        .map(|c| if c.is_ascii_graphic() { c } else { '?' })
        .collect()
}

pub fn received_header(f: &ReceivedFacts<'_>) -> String {
    let ip = match f.ip {
        IpAddr::V4(a) => a.to_string(),
        IpAddr::V6(a) => format!("IPv6:{a}"),
    };
    let mut h = format!(
        "Received: from {} ([{}])\r\n\tby {} (Portcullis) with {} id {}",
        printable(f.helo),
        ip,
        f.hostname,
        protocol(f),
        f.queue_id
    );
    if let Some(tls) = f.tls {
        h.push_str(&format!(
            "\r\n\t(using {} with cipher {})",
            tls.version, tls.cipher
        ));
    }
    if let Some(rcpt) = &f.single_recipient {
        h.push_str(&format!("\r\n\tfor <{rcpt}>"));
    }
    h.push_str(&format!(";\r\n\t{}\r\n", chrono::Utc::now().to_rfc2822()));
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
