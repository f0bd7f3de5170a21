//! The connection as the session sees it: a buffered byte stream that reads
//! bounded lines against deadlines, batches replies for pipelining (RFC 2920)
//! and upgrades to TLS, discarding anything the client pipelined in plaintext.
//!
//! Every read and write is cancel-safe (a read appends only what arrived; a
//! write drops only what was sent; an overlong line being skipped stays
//! skipped), so the session may stop waiting and wait again. An idle
//! connection keeps no buffer: memory is taken while input is being handled
//! and given back when the client goes quiet.

use super::reply::Reply;
use std::io;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::{Instant, timeout_at};

/// Anything the session can talk over: TCP, TLS over TCP, or an in-memory pipe in tests.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Room made for one read of commands.
const LINE_READ: usize = 2 * 1024;
/// Room made for one read of message data.
const DATA_READ: usize = 64 * 1024;
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
    #[error("I/O error: {}", crate::tls::describe_io_error(.0))]
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

/// Where the dialogue of a connection is written down (a transcript): the
/// client's lines, our replies, and notes such as TLS starting. Kept here as
/// a trait so that the protocol layer depends on no writer.
pub trait Record: Send {
    fn client(&mut self, line: &[u8]);
    fn server(&mut self, reply: &str);
    fn note(&mut self, what: &str);
}

pub struct SmtpStream {
    io: Box<dyn Io>,
    input: Vec<u8>,
    pos: usize,
    output: Vec<u8>,
    tls: Option<TlsInfo>,
    /// An overlong line is being skipped up to its end.
    skipping_line: bool,
    /// Writes the conversation to the transcript, when one is kept.
    recorder: Option<Box<dyn Record>>,
}

impl SmtpStream {
    pub fn new(io: Box<dyn Io>) -> Self {
        Self {
            io,
            input: Vec::new(),
            pos: 0,
            output: Vec::new(),
            tls: None,
            skipping_line: false,
            recorder: None,
        }
    }

    /// Records every command line read and every reply sent from now on.
    pub fn record_to(&mut self, mut recorder: impl Record + 'static) {
        if let Some(tls) = &self.tls {
            recorder.note(&format!("TLS {} {}", tls.version, tls.cipher));
        }
        self.recorder = Some(Box::new(recorder));
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
        let start = self.output.len();
        reply.write_wire(&mut self.output);
        if let Some(r) = &mut self.recorder {
            r.server(&String::from_utf8_lossy(&self.output[start..]));
        }
        if self.output.len() >= MAX_PENDING_OUTPUT {
            self.flush(deadline).await?;
        }
        Ok(())
    }

    pub async fn flush(&mut self, deadline: Instant) -> Result<(), StreamError> {
        timeout_at(deadline, async {
            while !self.output.is_empty() {
                let n = self.io.write(&self.output).await?;
                if n == 0 {
                    return Err(io::Error::from(io::ErrorKind::WriteZero));
                }
                self.output.drain(..n);
            }
            self.io.flush().await
        })
        .await
        .map_err(|_| StreamError::Timeout)??;
        if self.output.capacity() > MAX_PENDING_OUTPUT {
            self.output = Vec::new();
        }
        Ok(())
    }

    /// Reads more input (room for at least `room` octets), first sending any
    /// queued replies (the client may be waiting for them).
    async fn fill(&mut self, deadline: Instant, room: usize) -> Result<(), StreamError> {
        self.flush(deadline).await?;
        if self.pos > 0 {
            self.input.drain(..self.pos);
            self.pos = 0;
        }
        if self.input.capacity() - self.input.len() < room / 2 {
            self.input.reserve(room);
        }
        let n = timeout_at(deadline, self.io.read_buf(&mut self.input))
            .await
            .map_err(|_| StreamError::Timeout)??;
        if n == 0 {
            return Err(StreamError::Closed);
        }
        Ok(())
    }

    /// Gives the input buffer back once everything in it has been handled.
    fn release_if_drained(&mut self) {
        if self.pos == self.input.len() && self.input.capacity() > 0 {
            self.input = Vec::new();
            self.pos = 0;
        }
    }

    /// Reads one line of at most `max_len` octets (line ending included).
    /// Longer lines are consumed in full without being kept.
    pub async fn read_line(
        &mut self,
        max_len: usize,
        deadline: Instant,
    ) -> Result<Line, StreamError> {
        loop {
            if let Some(nl) = memchr::memchr(b'\n', self.buffered()) {
                let line_end = self.pos + nl;
                let mut line = self.input[self.pos..line_end].to_vec();
                self.pos = line_end + 1;
                self.release_if_drained();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                if std::mem::take(&mut self.skipping_line) || line.len() + 2 > max_len {
                    if let Some(r) = &mut self.recorder {
                        r.note("(an overlong line, not kept)");
                    }
                    return Ok(Line::TooLong);
                }
                if let Some(r) = &mut self.recorder {
                    r.client(&line);
                }
                return Ok(Line::Text(line));
            }
            if self.buffered().len() > max_len {
                // Drop what is buffered; the rest of the line is dropped as it comes.
                self.skipping_line = true;
                self.pos = self.input.len();
            }
            self.fill(deadline, LINE_READ).await?;
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
            self.fill(deadline, DATA_READ).await?;
        }
        Ok(self.buffered())
    }

    pub fn consume(&mut self, n: usize) {
        self.pos = (self.pos + n).min(self.input.len());
        self.release_if_drained();
    }

    /// Replaces the transport by a TLS session over it. Input the client
    /// pipelined before the handshake is discarded (RFC 3207 6, CVE-2011-0411).
    pub async fn upgrade(
        &mut self,
        acceptor: &tokio_rustls::TlsAcceptor,
        deadline: Instant,
    ) -> Result<(), StreamError> {
        self.flush(deadline).await?;
        self.input = Vec::new();
        self.pos = 0;
        self.skipping_line = false;
        let plain = std::mem::replace(&mut self.io, Box::new(tokio::io::duplex(1).0));
        let tls = timeout_at(deadline, acceptor.accept(plain))
            .await
            .map_err(|_| StreamError::Timeout)??;
        let info = tls_info(tls.get_ref().1);
        if let Some(r) = &mut self.recorder {
            r.note(&format!("TLS {} {}", info.version, info.cipher));
        }
        self.tls = Some(info);
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
    async fn an_overlong_line_stays_skipped_across_a_timeout() {
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let mut s = SmtpStream::new(Box::new(server));
        client.write_all(&[b'x'; 3000]).await.unwrap();
        let quick = || Instant::now() + Duration::from_millis(50);
        assert!(matches!(
            s.read_line(512, quick()).await,
            Err(StreamError::Timeout)
        ));
        // The tail of the long line must not come back as a command.
        client.write_all(b"RSET\r\nNOOP\r\n").await.unwrap();
        assert_eq!(s.read_line(512, soon()).await.unwrap(), Line::TooLong);
        assert_eq!(
            s.read_line(512, soon()).await.unwrap(),
            Line::Text(b"NOOP".to_vec())
        );
    }

    #[tokio::test]
    async fn an_idle_stream_holds_no_buffer() {
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let mut s = SmtpStream::new(Box::new(server));
        client.write_all(b"NOOP\r\n").await.unwrap();
        s.read_line(512, soon()).await.unwrap();
        assert_eq!(s.input.capacity(), 0);
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
