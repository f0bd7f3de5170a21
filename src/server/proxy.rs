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
        let parsed = HeaderResult::parse(&buf[..n]);
        if parsed.is_incomplete() {
            if n >= MAX_HEADER {
                return Err("PROXY header too long".into());
            }
            // More is on its way: wait a moment (peek returns the same bytes until then).
            tokio::time::sleep(Duration::from_millis(10)).await;
            if Instant::now() >= deadline {
                return Err("incomplete PROXY header".into());
            }
            continue;
        }
        let (len, source) = match parsed {
            HeaderResult::V1(Ok(h)) => (
                h.header.len(),
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
            HeaderResult::V1(Err(e)) => return Err(format!("malformed PROXY header: {e:?}")),
            HeaderResult::V2(Err(e)) => return Err(format!("malformed PROXY header: {e:?}")),
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
