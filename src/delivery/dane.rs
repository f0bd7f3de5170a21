//! DANE for SMTP (RFC 7672): the TLSA records of `_PORT._tcp.MXHOST`,
//! trusted only when a resolver named validating (`[dns] validating`) set
//! the AD bit on the answer — as Postfix does, we do not validate DNSSEC
//! ourselves — and the match of a server's certificate chain against them:
//! DANE-EE(3) pins the server's own certificate or key (no name or expiry
//! check, RFC 7672 3.1.1), DANE-TA(2) a trust anchor in its chain (chain
//! and name checked under that anchor). PKIX usages (0, 1) are unusable
//! for SMTP: with only those, TLS is still required but not authenticated.

use hickory_resolver::proto::op::{Edns, Message, MessageType, Query, ResponseCode};
use hickory_resolver::proto::rr::{Name, RData, RecordType};
use rustls::pki_types::CertificateDer;
use sha2::{Digest, Sha256, Sha512};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsaRecord {
    pub usage: u8,
    pub selector: u8,
    pub matching: u8,
    pub data: Vec<u8>,
}

impl TlsaRecord {
    /// As a zone file writes it ("3 1 1 ABCD…"), for TLS reports and logs.
    pub fn presentation(&self) -> String {
        let hex: String = self.data.iter().map(|b| format!("{b:02X}")).collect();
        format!("{} {} {} {hex}", self.usage, self.selector, self.matching)
    }

    fn usable(&self) -> bool {
        matches!(self.usage, 2 | 3) && self.selector <= 1 && self.matching <= 2
    }
}

/// What DNS says about a host's TLSA records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tlsa {
    /// Validated records (some may be unusable).
    Secure(Vec<TlsaRecord>),
    /// None, or not validated: DANE does not apply.
    Absent,
    /// The lookup failed: whether DANE applies is unknown (do not use the host).
    Failed(String),
}

/// The servers to ask: `[dns] nameservers`, else those of resolv.conf.
pub fn nameservers(configured: &[SocketAddr]) -> Vec<SocketAddr> {
    if !configured.is_empty() {
        return configured.to_vec();
    }
    std::fs::read_to_string("/etc/resolv.conf")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|ip| ip.trim().parse().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

/// Asks for the TLSA records of `_PORT._tcp.HOST`, with the AD bit asked
/// for (RFC 6840 5.7) and DNSSEC OK set.
pub async fn lookup(servers: &[SocketAddr], host: &str, port: u16, wait: Duration) -> Tlsa {
    let name = format!("_{port}._tcp.{}.", host.trim_end_matches('.'));
    let Ok(name) = Name::from_ascii(&name) else {
        return Tlsa::Failed(format!("bad name {name}"));
    };
    let mut last = "no DNS server to ask".to_string();
    for server in servers {
        match ask(*server, &name, wait).await {
            Ok(answer) => return answer,
            Err(e) => last = format!("{server}: {e}"),
        }
    }
    Tlsa::Failed(last)
}

fn query(name: &Name) -> Message {
    let mut m = Message::query();
    m.metadata.id = rand::random();
    m.metadata.recursion_desired = true;
    m.metadata.authentic_data = true;
    m.add_query(Query::query(name.clone(), RecordType::TLSA));
    let mut edns = Edns::new();
    edns.set_dnssec_ok(true).set_max_payload(1232);
    m.set_edns(edns);
    m
}

async fn ask(server: SocketAddr, name: &Name, wait: Duration) -> Result<Tlsa, String> {
    let q = query(name);
    let bytes = q.to_vec().map_err(|e| e.to_string())?;
    let bind: SocketAddr = if server.is_ipv4() {
        "0.0.0.0:0".parse().expect("literal")
    } else {
        "[::]:0".parse().expect("literal")
    };
    let udp = tokio::net::UdpSocket::bind(bind)
        .await
        .map_err(|e| e.to_string())?;
    udp.connect(server).await.map_err(|e| e.to_string())?;
    udp.send(&bytes).await.map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 4096];
    let reply = loop {
        let n = tokio::time::timeout(wait, udp.recv(&mut buf))
            .await
            .map_err(|_| "timed out".to_string())?
            .map_err(|e| e.to_string())?;
        let Ok(m) = Message::from_vec(&buf[..n]) else {
            continue;
        };
        if m.metadata.id == q.metadata.id && m.metadata.message_type == MessageType::Response {
            break m;
        }
    };
    let reply = if reply.metadata.truncation {
        ask_tcp(server, &bytes, q.metadata.id, wait).await?
    } else {
        reply
    };
    Ok(judge(&reply))
}

async fn ask_tcp(
    server: SocketAddr,
    bytes: &[u8],
    id: u16,
    wait: Duration,
) -> Result<Message, String> {
    let work = async {
        let mut tcp = tokio::net::TcpStream::connect(server).await?;
        let mut framed = (bytes.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(bytes);
        tcp.write_all(&framed).await?;
        let mut len = [0u8; 2];
        tcp.read_exact(&mut len).await?;
        let mut body = vec![0u8; u16::from_be_bytes(len) as usize];
        tcp.read_exact(&mut body).await?;
        Ok::<_, std::io::Error>(body)
    };
    let body = tokio::time::timeout(wait, work)
        .await
        .map_err(|_| "timed out (TCP)".to_string())?
        .map_err(|e| e.to_string())?;
    let m = Message::from_vec(&body).map_err(|e| e.to_string())?;
    if m.metadata.id != id {
        return Err("answer to another query".into());
    }
    Ok(m)
}

/// What an answer means for DANE.
fn judge(reply: &Message) -> Tlsa {
    match reply.metadata.response_code {
        ResponseCode::NoError | ResponseCode::NXDomain => {}
        other => return Tlsa::Failed(format!("the resolver answered {other}")),
    }
    if !reply.metadata.authentic_data {
        return Tlsa::Absent;
    }
    let records: Vec<TlsaRecord> = reply
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::TLSA(t) => Some(TlsaRecord {
                usage: u8::from(t.cert_usage),
                selector: u8::from(t.selector),
                matching: u8::from(t.matching),
                data: t.cert_data.clone(),
            }),
            _ => None,
        })
        .collect();
    if records.is_empty() {
        Tlsa::Absent
    } else {
        Tlsa::Secure(records)
    }
}

/// Whether `records` hold a usable one (else TLS without authentication).
pub fn any_usable(records: &[TlsaRecord]) -> bool {
    records.iter().any(TlsaRecord::usable)
}

/// The bytes a record's selector picks from a certificate.
fn selected(cert: &[u8], selector: u8) -> Option<Vec<u8>> {
    match selector {
        0 => Some(cert.to_vec()),
        1 => x509_parser::parse_x509_certificate(cert)
            .ok()
            .map(|(_, c)| c.tbs_certificate.subject_pki.raw.to_vec()),
        _ => None,
    }
}

/// Whether a certificate matches a record.
pub fn matches(record: &TlsaRecord, cert: &[u8]) -> bool {
    let Some(bytes) = selected(cert, record.selector) else {
        return false;
    };
    match record.matching {
        0 => bytes == record.data,
        1 => Sha256::digest(&bytes).as_slice() == record.data.as_slice(),
        2 => Sha512::digest(&bytes).as_slice() == record.data.as_slice(),
        _ => false,
    }
}

/// The DANE verdict on a presented chain: Ok with what matched, or Err
/// with an RFC 8460 result type and words.
pub fn verify(
    records: &[TlsaRecord],
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    server_name: &rustls::pki_types::ServerName<'_>,
    now: rustls::pki_types::UnixTime,
    provider: &std::sync::Arc<rustls::crypto::CryptoProvider>,
) -> Result<String, (&'static str, String)> {
    for r in records.iter().filter(|r| r.usable() && r.usage == 3) {
        if matches(r, end_entity) {
            return Ok(format!(
                "DANE-EE {} matched the server's certificate",
                r.presentation()
            ));
        }
    }
    for r in records.iter().filter(|r| r.usable() && r.usage == 2) {
        let Some(anchor) = intermediates.iter().find(|c| matches(r, c)) else {
            continue;
        };
        let mut roots = rustls::RootCertStore::empty();
        if roots.add(anchor.clone()).is_err() {
            continue;
        }
        let Ok(verifier) = rustls::client::WebPkiServerVerifier::builder_with_provider(
            std::sync::Arc::new(roots),
            std::sync::Arc::clone(provider),
        )
        .build() else {
            continue;
        };
        use rustls::client::danger::ServerCertVerifier;
        match verifier.verify_server_cert(end_entity, intermediates, server_name, &[], now) {
            Ok(_) => {
                return Ok(format!(
                    "DANE-TA {} matched a trust anchor of the chain, and the chain and name check out",
                    r.presentation()
                ));
            }
            Err(e) => {
                return Err((
                    super::tls_policy::result_type_of(&e),
                    format!("DANE-TA {} matched, but: {e}", r.presentation()),
                ));
            }
        }
    }
    Err((
        "tlsa-invalid",
        "no TLSA record matches the certificate chain the server presented".into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_match_by_certificate_or_key_digest() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["mx.example.org".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let der = cert.der().to_vec();
        let spki = rcgen::PublicKeyData::subject_public_key_info(&key);
        let full = TlsaRecord {
            usage: 3,
            selector: 0,
            matching: 1,
            data: Sha256::digest(&der).to_vec(),
        };
        let key_pin = TlsaRecord {
            usage: 3,
            selector: 1,
            matching: 2,
            data: Sha512::digest(&spki).to_vec(),
        };
        assert!(matches(&full, &der));
        assert!(matches(&key_pin, &der));
        let mut wrong = full.clone();
        wrong.data[0] ^= 1;
        assert!(!matches(&wrong, &der));
        assert!(full.presentation().starts_with("3 0 1 "));
        assert!(!any_usable(&[TlsaRecord { usage: 1, ..full }]));
    }
}
