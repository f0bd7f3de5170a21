//! A plain SMTP client for dialogue tests: send a line, read the reply, check the code.
//! Its socket is bound to a chosen 127.0.0.x source address.

use super::WAIT;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::timeout;

pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

#[derive(Debug, Clone)]
pub struct Reply {
    pub code: u16,
    pub lines: Vec<String>,
}

impl Reply {
    pub fn text(&self) -> String {
        self.lines.join("\n")
    }
}

pub struct SmtpClient {
    io: Box<dyn Io>,
    buf: Vec<u8>,
    /// After STARTTLS: whether the TLS session was resumed (not a full handshake).
    pub resumed: Option<bool>,
}

pub async fn tcp_from(source: &str, server: SocketAddr) -> TcpStream {
    let socket = if source.contains(':') {
        TcpSocket::new_v6().unwrap()
    } else {
        TcpSocket::new_v4().unwrap()
    };
    socket
        .bind(SocketAddr::new(source.parse().unwrap(), 0))
        .expect("bind source address");
    timeout(WAIT, socket.connect(server))
        .await
        .expect("connect in time")
        .expect("connect")
}

impl SmtpClient {
    /// Wraps a connection already made (banner not read).
    pub fn from_stream(tcp: TcpStream) -> SmtpClient {
        SmtpClient {
            io: Box::new(tcp),
            buf: Vec::new(),
            resumed: None,
        }
    }

    /// Connects from `source` (e.g. "127.0.0.2") without reading the banner.
    pub async fn connect_raw(server: SocketAddr, source: &str) -> SmtpClient {
        SmtpClient::from_stream(tcp_from(source, server).await)
    }

    /// Connected from `source` and greeted with `EHLO helo` (250 asserted).
    pub async fn greeted(server: SocketAddr, source: &str, helo: &str) -> SmtpClient {
        let mut c = SmtpClient::connect(server, source).await;
        c.expect(&format!("EHLO {helo}"), 250).await;
        c
    }

    /// Connects and checks the 220 banner.
    pub async fn connect(server: SocketAddr, source: &str) -> SmtpClient {
        let mut c = Self::connect_raw(server, source).await;
        let banner = c.read_reply().await;
        assert_eq!(banner.code, 220, "banner: {banner:?}");
        c
    }

    /// Implicit TLS (smtps), then the banner.
    pub async fn connect_tls(
        server: SocketAddr,
        source: &str,
        config: Arc<rustls::ClientConfig>,
    ) -> SmtpClient {
        let tcp = tcp_from(source, server).await;
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect("localhost".try_into().unwrap(), tcp)
            .await
            .expect("TLS handshake");
        let resumed =
            Some(tls.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed));
        let mut c = SmtpClient {
            io: Box::new(tls),
            buf: Vec::new(),
            resumed,
        };
        assert_eq!(c.read_reply().await.code, 220);
        c
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        timeout(WAIT, self.io.write_all(bytes))
            .await
            .expect("write in time")
            .expect("write");
    }

    /// Writes, reporting instead of failing when the server has gone away.
    pub async fn try_send(&mut self, bytes: &[u8]) -> bool {
        matches!(timeout(WAIT, self.io.write_all(bytes)).await, Ok(Ok(())))
    }

    /// Reads one (possibly multi-line) reply.
    pub async fn read_reply(&mut self) -> Reply {
        self.try_read_reply()
            .await
            .expect("a reply, not end of connection")
    }

    /// One reply, or None when the server closed the connection.
    pub async fn try_read_reply(&mut self) -> Option<Reply> {
        let mut lines = Vec::new();
        loop {
            let line = self.read_line().await?;
            assert!(line.len() >= 3, "short reply line {line:?}");
            let code: u16 = line[..3].parse().expect("reply code");
            let last = line.as_bytes().get(3) != Some(&b'-');
            lines.push(line.get(4..).unwrap_or_default().to_string());
            if last {
                return Some(Reply { code, lines });
            }
        }
    }

    async fn read_line(&mut self) -> Option<String> {
        loop {
            if let Some(pos) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line: Vec<u8> = self.buf.drain(..pos + 2).collect();
                return Some(String::from_utf8_lossy(&line[..pos]).into_owned());
            }
            let mut chunk = [0u8; 4096];
            let n = timeout(WAIT, self.io.read(&mut chunk))
                .await
                .expect("reply in time")
                .unwrap_or(0);
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    pub async fn cmd(&mut self, line: &str) -> Reply {
        self.send_raw(format!("{line}\r\n").as_bytes()).await;
        self.read_reply().await
    }

    /// Sends a command and asserts the reply code.
    pub async fn expect(&mut self, line: &str, code: u16) -> Reply {
        let r = self.cmd(line).await;
        assert_eq!(r.code, code, "{line:?} got {r:?}");
        r
    }

    /// True when the server has closed the connection (after any pending replies).
    pub async fn closed(&mut self) -> bool {
        loop {
            match self.try_read_reply().await {
                None => return true,
                Some(_) => continue,
            }
        }
    }

    pub async fn starttls(&mut self, config: Arc<rustls::ClientConfig>) {
        self.expect("STARTTLS", 220).await;
        self.upgrade_after_220(config).await;
    }

    /// The TLS handshake, once the server has said 220 to STARTTLS.
    pub async fn upgrade_after_220(&mut self, config: Arc<rustls::ClientConfig>) {
        assert!(
            self.buf.is_empty(),
            "nothing may follow the 220 before the handshake"
        );
        let io = std::mem::replace(&mut self.io, Box::new(tokio::io::duplex(1).0));
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect("localhost".try_into().unwrap(), io)
            .await
            .expect("STARTTLS handshake");
        self.resumed =
            Some(tls.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed));
        self.io = Box::new(tls);
    }

    /// AUTH PLAIN with an initial response.
    pub async fn auth_plain(&mut self, user: &str, pass: &str) -> Reply {
        use base64::Engine;
        let token = base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{pass}"));
        self.cmd(&format!("AUTH PLAIN {token}")).await
    }

    /// A whole transaction with DATA; returns the reply to the final dot.
    pub async fn send_mail(&mut self, from: &str, to: &[&str], body: &[u8]) -> Reply {
        self.expect(&format!("MAIL FROM:<{from}>"), 250).await;
        for r in to {
            self.expect(&format!("RCPT TO:<{r}>"), 250).await;
        }
        self.expect("DATA", 354).await;
        self.send_raw(body).await;
        self.send_raw(b".\r\n").await;
        self.read_reply().await
    }
}
