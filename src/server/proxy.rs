//! The PROXY protocol (v1 text and v2 binary, as HAProxy and cloud load
//! balancers send it): on a listener with `proxy_protocol = true`, a
//! connection from an address in `proxy_from` must begin with a header, and
//! the source address it names is the client for every rule. The header is
//! read by peeking, so not one byte of the SMTP dialogue is taken with it;
//! its size and the wait for it are bounded.

use ppp::{HeaderResult, PartialResult};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// The largest header: v1 is at most 107 octets; v2 with its TLVs is kept small.
const MAX_HEADER: usize = 536;
/// Time the proxy has to send its header.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest v1 header, CRLF included (the specification's figure).
const V1_MAX: usize = 107;
/// How a v1 header starts.
const V1_START: &[u8] = b"PROXY ";
/// How a v2 header starts, and the size of its fixed part.
const V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";
const V2_FIXED: usize = 16;

/// What a connection's first octets hold, as far as a PROXY header goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderParse {
    /// A header may still come: wait for more octets.
    Incomplete,
    /// A whole header of `len` octets, naming `source` (None for PROXY
    /// UNKNOWN or a v2 LOCAL command: the proxy's own connection).
    Header {
        len: usize,
        source: Option<SocketAddr>,
    },
    /// Not a PROXY header, or too long: refuse the connection.
    Refused(String),
}

/// Reads a PROXY header from the start of `input` (the octets peeked so
/// far). A header is self-delimiting: what follows it never changes it.
pub fn parse_header(input: &[u8]) -> HeaderParse {
    // A v1 line is judged whole: cut short (a segment ending after
    // "56324 ", say), the parser would call it malformed.
    let (input, v1_len) = match v1_line(input) {
        V1Line::NotV1 if !starts_like(input, V2_SIGNATURE) => {
            return HeaderParse::Refused("not a PROXY header".into());
        }
        V1Line::NotV1 if input.len() < V2_FIXED => return HeaderParse::Incomplete,
        V1Line::NotV1 => (input, None),
        V1Line::Partial => return HeaderParse::Incomplete,
        V1Line::TooLong => return HeaderParse::Refused("PROXY header too long".into()),
        V1Line::Whole(line) => (line, Some(line.len())),
    };
    let parsed = HeaderResult::parse(&input[..input.len().min(MAX_HEADER)]);
    if parsed.is_incomplete() {
        return if v1_len.is_some() {
            // The whole line is there: nothing more can complete it.
            HeaderParse::Refused("malformed PROXY header".into())
        } else if input.len() >= MAX_HEADER {
            HeaderParse::Refused("PROXY header too long".into())
        } else {
            HeaderParse::Incomplete
        };
    }
    let (len, source) = match parsed {
        // The line through its CRLF, whatever the parser counted (after
        // UNKNOWN it skips to the first LF, where the line goes on).
        HeaderResult::V1(Ok(h)) => (
            v1_len.unwrap_or(h.header.len()),
            match h.addresses {
                ppp::v1::Addresses::Tcp4(a) => {
                    Some(SocketAddr::new(a.source_address.into(), a.source_port))
                }
                ppp::v1::Addresses::Tcp6(a) => {
                    Some(SocketAddr::new(a.source_address.into(), a.source_port))
                }
                ppp::v1::Addresses::Unknown => None,
            },
        ),
        HeaderResult::V2(Ok(h)) => (
            h.len(),
            match h.addresses {
                ppp::v2::Addresses::IPv4(a) => {
                    Some(SocketAddr::new(a.source_address.into(), a.source_port))
                }
                ppp::v2::Addresses::IPv6(a) => {
                    Some(SocketAddr::new(a.source_address.into(), a.source_port))
                }
                _ => None,
            },
        ),
        HeaderResult::V1(Err(e)) => {
            return HeaderParse::Refused(format!("malformed PROXY header: {e:?}"));
        }
        HeaderResult::V2(Err(e)) => {
            return HeaderParse::Refused(format!("malformed PROXY header: {e:?}"));
        }
    };
    if len == 0 || len > input.len() {
        return HeaderParse::Refused("malformed PROXY header".into());
    }
    HeaderParse::Header { len, source }
}

/// Whether `input` begins as `start` does, as far as either goes.
fn starts_like(input: &[u8], start: &[u8]) -> bool {
    let n = input.len().min(start.len());
    input[..n] == start[..n]
}

enum V1Line<'a> {
    NotV1,
    Partial,
    TooLong,
    Whole(&'a [u8]),
}

/// Where the input is (or may become) a v1 header: its line through CRLF.
fn v1_line(input: &[u8]) -> V1Line<'_> {
    if !starts_like(input, V1_START) {
        return V1Line::NotV1;
    }
    let within = &input[..input.len().min(V1_MAX)];
    match within.windows(2).position(|w| w == b"\r\n") {
        Some(end) => V1Line::Whole(&input[..end + 2]),
        None if input.len() < V1_MAX => V1Line::Partial,
        None => V1Line::TooLong,
    }
}

/// Reads the header: the client it names (None for PROXY UNKNOWN / LOCAL:
/// then the connection is the proxy's own, e.g. a health check).
pub async fn read_header(tcp: &mut TcpStream) -> Result<Option<SocketAddr>, String> {
    let deadline = Instant::now() + HEADER_TIMEOUT;
    let mut buf = vec![0u8; MAX_HEADER];
    loop {
        let n = tokio::time::timeout_at(deadline, tcp.peek(&mut buf))
            .await
            .map_err(|_| "no PROXY header in time".to_string())?
            .map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("connection closed before the PROXY header".into());
        }
        let (len, source) = match parse_header(&buf[..n]) {
            HeaderParse::Header { len, source } => (len, source),
            HeaderParse::Refused(why) => return Err(why),
            HeaderParse::Incomplete => {
                // More is on its way: wait a moment (peek returns the same bytes until then).
                tokio::time::sleep(Duration::from_millis(10)).await;
                if Instant::now() >= deadline {
                    return Err("incomplete PROXY header".into());
                }
                continue;
            }
        };
        // Consume exactly the header.
        let mut header = vec![0u8; len];
        tokio::time::timeout_at(
            deadline,
            tokio::io::AsyncReadExt::read_exact(tcp, &mut header),
        )
        .await
        .map_err(|_| "PROXY header not read in time".to_string())?
        .map_err(|e| e.to_string())?;
        return Ok(source);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A PROXY v2 header: `command` 0x20 LOCAL or 0x21 PROXY, then the
    /// address block (family 0x11 is TCP over IPv4).
    fn v2(command: u8, family: u8, addresses: &[u8]) -> Vec<u8> {
        let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
        h.push(command);
        h.push(family);
        h.extend_from_slice(&(addresses.len() as u16).to_be_bytes());
        h.extend_from_slice(addresses);
        h
    }

    fn v2_ipv4() -> Vec<u8> {
        v2(
            0x21,
            0x11,
            &[192, 0, 2, 1, 198, 51, 100, 2, 0xdc, 0x04, 0, 25],
        )
    }

    #[test]
    fn whole_headers_name_their_client_and_their_length() {
        for (header, source) in [
            (
                &b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 25\r\n"[..],
                Some("192.0.2.1:56324"),
            ),
            (
                b"PROXY TCP6 2001:db8::1 2001:db8::2 40000 25\r\n",
                Some("[2001:db8::1]:40000"),
            ),
            (b"PROXY UNKNOWN\r\n", None),
        ] {
            assert_eq!(
                parse_header(header),
                HeaderParse::Header {
                    len: header.len(),
                    source: source.map(|s| s.parse().unwrap())
                },
                "{}",
                String::from_utf8_lossy(header)
            );
        }
        // After UNKNOWN anything may follow up to the CRLF, a bare LF too
        // (found by the fuzzer: the parser once counted only up to the LF).
        let odd = b"PROXY UNKNOWN \n\r0PROXY\xff\n 31070 65535\r\nEHLO x\r\n";
        assert_eq!(
            parse_header(odd),
            HeaderParse::Header {
                len: odd.len() - 8,
                source: None
            }
        );
        let binary = v2_ipv4();
        assert_eq!(
            parse_header(&binary),
            HeaderParse::Header {
                len: 28,
                source: Some("192.0.2.1:56324".parse().unwrap())
            }
        );
        let local = v2(0x20, 0x00, &[]);
        assert_eq!(
            parse_header(&local),
            HeaderParse::Header {
                len: 16,
                source: None
            }
        );
    }

    #[test]
    fn what_follows_a_header_never_changes_it() {
        for header in [
            b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 25\r\n".to_vec(),
            b"PROXY UNKNOWN\r\n".to_vec(),
            v2_ipv4(),
        ] {
            let alone = parse_header(&header);
            for tail in [&b"EHLO x\r\n"[..], b"\r\n\r\n\0\r\nQUIT\n", &[0xff; 600]] {
                let mut input = header.clone();
                input.extend_from_slice(tail);
                assert_eq!(parse_header(&input), alone, "{header:?} then {tail:?}");
            }
        }
    }

    #[test]
    fn a_partial_header_waits_and_anything_else_is_refused() {
        for header in [
            b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 25\r\n".to_vec(),
            v2_ipv4(),
        ] {
            for cut in 1..header.len() {
                assert_eq!(
                    parse_header(&header[..cut]),
                    HeaderParse::Incomplete,
                    "{header:?} cut at {cut}"
                );
            }
        }
        for bad in [
            &b"EHLO example.com\r\n"[..],
            b"PROXY TCP4 999.0.2.1 198.51.100.2 56324 25\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.2 99999 25\r\n",
            b"PROXY SCTP 192.0.2.1 198.51.100.2 1 25\r\n",
            // A whole line the parser would still call unfinished (fuzzer).
            b"PROXY TCP6 2001edbd8::1\t\r\n",
        ] {
            assert!(
                matches!(parse_header(bad), HeaderParse::Refused(_)),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        // A v2 header announcing more than we read is too long, not a wait.
        let mut huge = v2(0x21, 0x11, &[0; 600]);
        huge.truncate(MAX_HEADER);
        assert!(matches!(parse_header(&huge), HeaderParse::Refused(_)));
        // Neither is a v1 line that never ends.
        let mut endless = b"PROXY TCP4 ".to_vec();
        endless.resize(MAX_HEADER, b'1');
        assert!(matches!(parse_header(&endless), HeaderParse::Refused(_)));
    }
}
