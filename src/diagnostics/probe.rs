//! A bare SMTP client for diagnostics: sends exactly the lines it is given,
//! reads every reply whole, can upgrade to TLS (without checking the
//! certificate: a diagnosis must reach servers with any certificate), and
//! keeps a transcript of commands and replies.

use crate::client_tls;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpSocket;
use tokio::time::timeout;

/// Most lines read for one reply.
const MAX_REPLY_LINES: usize = 100;
/// Longest reply line kept.
const MAX_LINE: usize = 4096;

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// One reply: its code and its lines joined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub code: u16,
    pub text: String,
}

impl Answer {
    pub fn positive(&self) -> bool {
        (200..400).contains(&self.code)
    }
}

impl std::fmt::Display for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.code, self.text)
    }
}

pub struct Probe {
    io: BufReader<Box<dyn Io>>,
    limit: Duration,
    server_name: String,
    /// What was sent, in order (message bodies summarised).
    pub commands: Vec<String>,
    /// What came back, in order, the banner first.
    pub replies: Vec<String>,
}

impl Probe {
    /// Connects (from `source` when given) and reads the banner.
    pub async fn connect(
        target: SocketAddr,
        server_name: &str,
        source: Option<IpAddr>,
        limit: Duration,
    ) -> io::Result<(Probe, Answer)> {
        let socket = match target {
            SocketAddr::V4(_) => TcpSocket::new_v4()?,
            SocketAddr::V6(_) => TcpSocket::new_v6()?,
        };
        if let Some(ip) = source {
            socket.bind(SocketAddr::new(ip, 0))?;
        }
        let tcp = timeout(limit, socket.connect(target))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
        let mut probe = Probe {
            io: BufReader::new(Box::new(tcp)),
            limit,
            server_name: server_name.to_string(),
            commands: Vec::new(),
            replies: Vec::new(),
        };
        let banner = probe.read_answer().await?;
        Ok((probe, banner))
    }

    /// Sends one command line and reads its reply.
    pub async fn command(&mut self, line: &str) -> io::Result<Answer> {
        self.commands.push(line.to_string());
        self.write(format!("{line}\r\n").as_bytes()).await?;
        self.read_answer().await
    }

    /// Sends message content (dot-stuffed by the caller) and the final dot.
    pub async fn message(&mut self, content: &str, summary: &str) -> io::Result<Answer> {
        self.commands.push(summary.to_string());
        let mut wire = content.replace("\r\n.", "\r\n..");
        wire.push_str("\r\n.\r\n");
        self.write(wire.as_bytes()).await?;
        self.read_answer().await
    }

    /// STARTTLS and the handshake; the caller says EHLO again.
    pub async fn starttls(&mut self) -> io::Result<Answer> {
        let answer = self.command("STARTTLS").await?;
        if answer.code != 220 {
            return Ok(answer);
        }
        let name = rustls::pki_types::ServerName::try_from(self.server_name.clone())
            .unwrap_or_else(|_| {
                rustls::pki_types::ServerName::try_from("localhost").expect("a valid name")
            });
        let connector = tokio_rustls::TlsConnector::from(client_tls::unverified());
        let plain = std::mem::replace(
            &mut self.io,
            BufReader::new(Box::new(tokio::io::duplex(1).0)),
        );
        let tls = timeout(self.limit, connector.connect(name, plain.into_inner()))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))??;
        self.io = BufReader::new(Box::new(tls));
        Ok(answer)
    }

    async fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        timeout(self.limit, async {
            self.io.get_mut().write_all(bytes).await?;
            self.io.get_mut().flush().await
        })
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "write timed out"))?
    }

    async fn read_answer(&mut self) -> io::Result<Answer> {
        let mut lines = Vec::new();
        loop {
            let mut raw = Vec::new();
            let n = timeout(
                self.limit,
                (&mut self.io)
                    .take(MAX_LINE as u64)
                    .read_until(b'\n', &mut raw),
            )
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no reply in time"))??;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed",
                ));
            }
            let line = String::from_utf8_lossy(&raw).trim_end().to_string();
            let code: u16 = line.get(..3).and_then(|c| c.parse().ok()).ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("not an SMTP reply: {line:?}"),
                )
            })?;
            let more = line.as_bytes().get(3) == Some(&b'-');
            lines.push(line.get(4..).unwrap_or_default().to_string());
            if !more || lines.len() >= MAX_REPLY_LINES {
                let answer = Answer {
                    code,
                    text: lines.join(" / "),
                };
                self.replies.push(answer.to_string());
                return Ok(answer);
            }
        }
    }

    /// Says QUIT, without waiting long for the answer.
    pub async fn quit(mut self) {
        self.limit = self.limit.min(Duration::from_secs(2));
        let _ = self.command("QUIT").await;
    }
}
