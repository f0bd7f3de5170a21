//! The connection as the session sees it: a buffered byte stream that reads
//! bounded lines against deadlines, batches replies for pipelining (RFC 2920)
//! and upgrades to TLS, discarding anything the client pipelined in plaintext.

use super::reply::Reply;
use std::io;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::{Instant, timeout_at};

/// Anything the session can talk over: TCP, TLS over TCP, or an in-memory pipe in tests.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

const READ_CHUNK: usize = 16 * 1024;
/// Most input `closed` gathers while it watches for the client leaving.
const LOOKAHEAD_LIMIT: usize = 16 * 1024;
/// Replies are written out once this much is waiting, even mid-pipeline.
const MAX_PENDING_OUTPUT: usize = 16 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("timed out")]
    Timeout,
    #[error("connection closed by client")]
    Closed,
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
}

/// One line read from the client.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// The line without its CRLF (or bare LF).
    Text(Vec<u8>),
    /// The line was longer than allowed; it has been read and thrown away.
    TooLong,
}

/// Facts about an established TLS session, for the log and the Received: header.
#[derive(Debug, Clone)]
pub struct TlsInfo {
    pub version: String,
    pub cipher: String,
}

pub struct SmtpStream {
    io: Box<dyn Io>,
    input: Vec<u8>,
    pos: usize,
    output: Vec<u8>,
    tls: Option<TlsInfo>,
}

impl SmtpStream {
    pub fn new(io: Box<dyn Io>) -> Self {
        Self {
            io,
            input: Vec::with_capacity(READ_CHUNK),
            pos: 0,
            output: Vec::new(),
            tls: None,
        }
    }

    pub fn with_tls(io: Box<dyn Io>, info: TlsInfo) -> Self {
        let mut s = Self::new(io);
        s.tls = Some(info);
        s
    }

    pub fn tls(&self) -> Option<&TlsInfo> {
        self.tls.as_ref()
    }

    fn buffered(&self) -> &[u8] {
        &self.input[self.pos..]
    }

    /// Whether the client has already sent more than we have handled (pipelining).
    pub fn has_buffered_input(&self) -> bool {
        self.pos < self.input.len()
    }

    /// Queues a reply; it is sent before the next read that would wait, or when much is pending.
    pub async fn send(&mut self, reply: &Reply, deadline: Instant) -> Result<(), StreamError> {
        self.output.extend_from_slice(reply.to_wire().as_bytes());
        if self.output.len() >= MAX_PENDING_OUTPUT {
            self.flush(deadline).await?;
        }
        Ok(())
    }

    pub async fn flush(&mut self, deadline: Instant) -> Result<(), StreamError> {
        if self.output.is_empty() {
            return Ok(());
        }
        let out = std::mem::take(&mut self.output);
        timeout_at(deadline, async {
            self.io.write_all(&out).await?;
            self.io.flush().await
        })
        .await
        .map_err(|_| StreamError::Timeout)??;
        Ok(())
    }

    /// Reads more input, first sending any queued replies (the client may be waiting for them).
    async fn fill(&mut self, deadline: Instant) -> Result<(), StreamError> {
        self.flush(deadline).await?;
        if self.pos > 0 {
            self.input.drain(..self.pos);
            self.pos = 0;
        }
        let start = self.input.len();
        self.input.resize(start + READ_CHUNK, 0);
        let result = timeout_at(deadline, self.io.read(&mut self.input[start..])).await;
        let n = match result {
            Err(_) => {
                self.input.truncate(start);
                return Err(StreamError::Timeout);
            }
            Ok(Err(e)) => {
                self.input.truncate(start);
                return Err(e.into());
            }
            Ok(Ok(n)) => n,
        };
        self.input.truncate(start + n);
        if n == 0 {
            return Err(StreamError::Closed);
        }
        Ok(())
    }

    /// Reads one line of at most `max_len` octets (line ending included).
    /// Longer lines are consumed in full without being kept.
    pub async fn read_line(
        &mut self,
        max_len: usize,
        deadline: Instant,
    ) -> Result<Line, StreamError> {
        let mut too_long = false;
        loop {
            if let Some(nl) = memchr::memchr(b'\n', self.buffered()) {
                let line_end = self.pos + nl;
                let mut line = self.input[self.pos..line_end].to_vec();
                self.pos = line_end + 1;
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                if too_long || line.len() + 2 > max_len {
                    return Ok(Line::TooLong);
                }
                return Ok(Line::Text(line));
            }
            if self.buffered().len() > max_len {
                // Keep only a trailing CR that may belong to the coming CRLF.
                too_long = true;
                self.pos = self.input.len();
            }
            self.fill(deadline).await?;
        }
    }

    /// Resolves when the client closes the connection (or it fails), for work
    /// that should be abandoned once nobody waits for its answer. Whatever the
    /// client sends meanwhile is kept for the next read; past `LOOKAHEAD_LIMIT`
    /// buffered bytes it stops reading and never resolves. Cancel-safe.
    pub async fn closed(&mut self) -> StreamError {
        let mut chunk = [0u8; 1024];
        loop {
            if self.buffered().len() >= LOOKAHEAD_LIMIT {
                return std::future::pending().await;
            }
            match self.io.read(&mut chunk).await {
                Ok(0) => return StreamError::Closed,
                Ok(n) => self.input.extend_from_slice(&chunk[..n]),
                Err(e) => return e.into(),
            }
        }
    }

    /// Returns buffered input, reading when none is buffered. Call `consume` for what was used.
    pub async fn peek_some(&mut self, deadline: Instant) -> Result<&[u8], StreamError> {
        if !self.has_buffered_input() {
            self.fill(deadline).await?;
        }
        Ok(self.buffered())
    }

    pub fn consume(&mut self, n: usize) {
        self.pos = (self.pos + n).min(self.input.len());
    }

    /// Replaces the transport by a TLS session over it. Input the client
    /// pipelined before the handshake is discarded (RFC 3207 6, CVE-2011-0411).
    pub async fn upgrade(
        &mut self,
        acceptor: &tokio_rustls::TlsAcceptor,
        deadline: Instant,
    ) -> Result<(), StreamError> {
        self.flush(deadline).await?;
        self.input.clear();
        self.pos = 0;
        let plain = std::mem::replace(&mut self.io, Box::new(tokio::io::duplex(1).0));
        let tls = timeout_at(deadline, acceptor.accept(plain))
            .await
            .map_err(|_| StreamError::Timeout)??;
        self.tls = Some(tls_info(tls.get_ref().1));
        self.io = Box::new(tls);
        Ok(())
    }

    pub async fn shutdown(&mut self, deadline: Instant) {
        let _ = self.flush(deadline).await;
        let _ = timeout_at(deadline, self.io.shutdown()).await;
    }
}

/// Version and cipher suite of a server-side TLS connection.
pub fn tls_info(conn: &rustls::ServerConnection) -> TlsInfo {
    let version = match conn.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3".to_string(),
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2".to_string(),
        Some(v) => format!("{v:?}"),
        None => "unknown".to_string(),
    };
    let cipher = conn
        .negotiated_cipher_suite()
        .and_then(|c| c.suite().as_str())
        .unwrap_or("unknown")
        .to_string();
    TlsInfo { version, cipher }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(5)
    }

    #[tokio::test]
    async fn lines_and_overlong_lines() {
        let (client, server) = tokio::io::duplex(1 << 16);
        let mut s = SmtpStream::new(Box::new(server));
        let mut client = client;
        let mut long = vec![b'x'; 5000];
        long.extend_from_slice(b"\r\nNOOP\r\n");
        client.write_all(b"EHLO a\r\n").await.unwrap();
        client.write_all(&long).await.unwrap();
        assert_eq!(
            s.read_line(512, soon()).await.unwrap(),
            Line::Text(b"EHLO a".to_vec())
        );
        assert_eq!(s.read_line(512, soon()).await.unwrap(), Line::TooLong);
        assert_eq!(
            s.read_line(512, soon()).await.unwrap(),
            Line::Text(b"NOOP".to_vec())
        );
    }

    #[tokio::test]
    async fn read_times_out() {
        let (_client, server) = tokio::io::duplex(64);
        let mut s = SmtpStream::new(Box::new(server));
        let r = s
            .read_line(512, Instant::now() + Duration::from_millis(50))
            .await;
        assert!(matches!(r, Err(StreamError::Timeout)));
    }
}
