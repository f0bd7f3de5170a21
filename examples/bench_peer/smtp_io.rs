//! Line-level SMTP I/O shared by the load generator and the sink: bounded
//! line reads over any stream, and replies gathered until the last line.

use anyhow::{Context, bail};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};

/// Longer lines than this are a broken peer (RFC 5321 allows 1,000 octets).
const MAX_LINE: usize = 64 * 1024;
/// A reply of more lines than this is a broken peer.
const MAX_REPLY_LINES: usize = 100;

pub struct Stream<S> {
    inner: BufReader<S>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Stream<S> {
    pub fn new(stream: S) -> Self {
        Stream {
            inner: BufReader::with_capacity(16 * 1024, stream),
        }
    }

    /// The stream, for a TLS handshake. Only after a command the peer must
    /// answer before sending more (STARTTLS), so nothing buffered is lost.
    pub fn into_inner(self) -> S {
        self.inner.into_inner()
    }

    /// True when everything received so far has been read: the moment to
    /// flush replies to a pipelining client.
    pub fn drained(&self) -> bool {
        self.inner.buffer().is_empty()
    }

    /// One line with its ending, or None at end of stream.
    pub async fn line(&mut self, line: &mut Vec<u8>) -> anyhow::Result<bool> {
        line.clear();
        let mut limited = (&mut self.inner).take(MAX_LINE as u64);
        let n = limited.read_until(b'\n', line).await?;
        if n == 0 {
            return Ok(false);
        }
        if !line.ends_with(b"\n") && n >= MAX_LINE {
            bail!("line longer than {MAX_LINE} octets");
        }
        Ok(true)
    }

    pub async fn write(&mut self, data: &[u8]) -> anyhow::Result<()> {
        self.inner.get_mut().write_all(data).await?;
        Ok(())
    }

    pub async fn flush(&mut self) -> anyhow::Result<()> {
        self.inner.get_mut().flush().await?;
        Ok(())
    }

    /// Reads one reply and checks its code; the text comes back for errors.
    pub async fn expect(&mut self, code: u16, what: &str) -> anyhow::Result<()> {
        let mut line = Vec::new();
        let mut text = String::new();
        for _ in 0..MAX_REPLY_LINES {
            if !self.line(&mut line).await? {
                bail!("{what}: connection closed");
            }
            text.push_str(String::from_utf8_lossy(&line).trim_end());
            if line.len() < 4 || line[3] != b'-' {
                let got: u16 = std::str::from_utf8(&line[..line.len().min(3)])
                    .ok()
                    .and_then(|c| c.parse().ok())
                    .with_context(|| format!("{what}: not a reply: {text:?}"))?;
                if got != code {
                    bail!("{what}: expected {code}, got {text:?}");
                }
                return Ok(());
            }
            text.push(' ');
        }
        bail!("{what}: reply longer than {MAX_REPLY_LINES} lines")
    }
}
