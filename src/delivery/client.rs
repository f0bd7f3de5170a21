//! Our outbound SMTP client: connect, EHLO, STARTTLS, AUTH, then per message
//! MAIL, RCPT (pipelined when offered), DATA with the dot-stuffed body and
//! the final dot in one write, and a result for every recipient.

use crate::smtp::stream::Io;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

const MAX_REPLY_LINE: usize = 4096;
const MAX_REPLY_LINES: usize = 200;
/// Room made in the reply buffer before each read.
const READ_ROOM: usize = 4096;

/// The step of our conversation with a next hop that a reply answers (or
/// a wait is for): typed, so that a misspelt step cannot silently become
/// another stage in a delivery report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Banner,
    Ehlo,
    Helo,
    StartTls,
    TlsHandshake,
    Auth,
    MailFrom,
    RcptTo,
    Data,
    EndOfData,
    /// The next hop taking the message content we write.
    TakeData,
    Rset,
    Quit,
}

impl Step {
    /// The step in words, as the log and the reports say it.
    pub fn name(self) -> &'static str {
        match self {
            Step::Banner => "banner",
            Step::Ehlo => "EHLO",
            Step::Helo => "HELO",
            Step::StartTls => "STARTTLS",
            Step::TlsHandshake => "TLS handshake",
            Step::Auth => "AUTH",
            Step::MailFrom => "MAIL FROM",
            Step::RcptTo => "RCPT TO",
            Step::Data => "DATA",
            Step::EndOfData => "end of data",
            Step::TakeData => "the next hop to take data",
            Step::Rset => "RSET",
            Step::Quit => "QUIT",
        }
    }

    /// What a timeout at this step was waiting for.
    fn awaited(self) -> &'static str {
        match self {
            Step::EndOfData => "the reply to end of data",
            other => other.name(),
        }
    }

    /// The stage of a delivery report this step belongs to.
    pub fn stage(self) -> super::Stage {
        use super::Stage;
        match self {
            Step::Banner => Stage::Greeting,
            Step::Ehlo | Step::Helo => Stage::Helo,
            Step::StartTls | Step::TlsHandshake => Stage::StartTls,
            Step::Auth => Stage::Auth,
            Step::MailFrom => Stage::MailFrom,
            Step::RcptTo => Stage::RcptTo,
            Step::Data | Step::EndOfData | Step::TakeData => Stage::Data,
            Step::Rset | Step::Quit => Stage::Session,
        }
    }
}

/// A reply from the next hop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerReply {
    pub code: u16,
    pub text: String,
    /// The step it answered.
    pub step: Step,
    /// Decided here before asking the next hop (no SMTPUTF8 there, too
    /// large for its SIZE): reported as ours, never as the next hop's reply.
    pub local: bool,
}

impl ServerReply {
    pub fn is_ok(&self) -> bool {
        (200..400).contains(&self.code)
    }
    pub fn is_permanent(&self) -> bool {
        self.code >= 500
    }
    /// "Bad sequence of commands": the next hop thinks the session is in
    /// another state than we do (a transaction it still holds open, say).
    /// That is our conversation's trouble, never the recipient's: it is
    /// retried on a fresh connection and never bounced.
    pub fn is_out_of_sequence(&self) -> bool {
        self.code == 503
    }
}

impl std::fmt::Display for ServerReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.code, self.text.replace('\n', " / "))
    }
}

/// Why a connection or transaction could not go on.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    /// No SMTP session: `unreachable` when our own network has no way there
    /// (no route), as opposed to a host that refused or did not answer.
    #[error("connect to {addr} failed: {reason}")]
    Connect {
        addr: SocketAddr,
        reason: String,
        unreachable: bool,
    },
    #[error("timeout waiting for {}", .0.awaited())]
    Timeout(Step),
    #[error("connection lost: {0}")]
    Io(String),
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The server answered a session-level step (banner, EHLO, AUTH, MAIL) with this.
    #[error("{} answered {reply}", stage.name())]
    Rejected { stage: Step, reply: ServerReply },
    #[error("TLS required but {0}")]
    TlsUnavailable(String),
    #[error("TLS handshake failed: {0}")]
    TlsFailed(String),
    #[error("AUTH required but {0}")]
    AuthUnavailable(String),
}

impl ClientError {
    /// Whether the failure says the server refuses for good (a 5xx at session level).
    pub fn is_permanent(&self) -> bool {
        matches!(self, ClientError::Rejected { reply, .. }
            if reply.is_permanent() && !reply.is_out_of_sequence())
    }

    /// A 503 at session level: the next hop's idea of the session differs from ours.
    pub fn is_out_of_sequence(&self) -> bool {
        matches!(self, ClientError::Rejected { reply, .. } if reply.is_out_of_sequence())
    }

    /// Whether another server of the same destination may do better.
    pub fn try_next_host(&self) -> bool {
        !matches!(
            self,
            ClientError::Rejected {
                stage: Step::MailFrom,
                ..
            }
        )
    }
}

#[derive(Debug, Clone, Default)]
pub struct Capabilities {
    pub pipelining: bool,
    pub starttls: bool,
    pub auth_plain: bool,
    pub auth_login: bool,
    pub auth_xoauth2: bool,
    pub auth_oauthbearer: bool,
    pub eight_bit: bool,
    pub smtputf8: bool,
    pub size: Option<u64>,
}

fn parse_capabilities(reply: &ServerReply) -> Capabilities {
    let mut caps = Capabilities::default();
    for line in reply.text.lines().skip(1) {
        let mut words = line.split_whitespace();
        let Some(kw) = words.next() else { continue };
        match kw.to_ascii_uppercase().as_str() {
            "PIPELINING" => caps.pipelining = true,
            "STARTTLS" => caps.starttls = true,
            "8BITMIME" => caps.eight_bit = true,
            "SMTPUTF8" => caps.smtputf8 = true,
            "SIZE" => caps.size = words.next().and_then(|n| n.parse().ok()).filter(|n| *n > 0),
            "AUTH" => {
                for m in words {
                    match m.to_ascii_uppercase().as_str() {
                        "PLAIN" => caps.auth_plain = true,
                        "LOGIN" => caps.auth_login = true,
                        "XOAUTH2" => caps.auth_xoauth2 = true,
                        "OAUTHBEARER" => caps.auth_oauthbearer = true,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    caps
}

/// How to treat TLS on this connection.
#[derive(Clone)]
pub enum TlsMode {
    None,
    /// STARTTLS when offered.
    Opportunistic(Arc<rustls::ClientConfig>),
    /// STARTTLS or fail.
    Required(Arc<rustls::ClientConfig>),
    /// TLS from the first byte.
    Implicit(Arc<rustls::ClientConfig>),
}

/// How we log in to a next hop.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    /// AUTH PLAIN (or LOGIN).
    Password { user: String, password: String },
    /// An OAuth2 access token: SASL XOAUTH2 as Microsoft and Google define
    /// it, or OAUTHBEARER (RFC 7628) where only that is offered.
    Bearer { user: String, token: String },
}

impl Credentials {
    pub fn user(&self) -> &str {
        match self {
            Credentials::Password { user, .. } | Credentials::Bearer { user, .. } => user,
        }
    }
}

/// Secrets stay out of every Debug print.
impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Password { user, .. } => write!(f, "Password({user:?}, ****)"),
            Credentials::Bearer { user, .. } => write!(f, "Bearer({user:?}, ****)"),
        }
    }
}

#[derive(Clone)]
pub struct ConnectOptions {
    pub helo: String,
    /// The name to check the certificate against and send as SNI.
    pub server_name: String,
    pub tls: TlsMode,
    pub auth: Option<Credentials>,
    pub connect_timeout: Duration,
    pub reply_timeout: Duration,
    pub data_timeout: Duration,
    /// Where the conversation is written, when transcripts are kept.
    pub transcripts: Option<Arc<crate::transcript::Transcripts>>,
    /// The outbound TLS policy (MTA-STS, DANE) the certificate is checked
    /// under; such a connection is never pooled (its verdict is its own).
    pub policy: Option<Arc<super::tls_policy::PolicyCheck>>,
}

/// One message to send on an open connection. The content is streamed from
/// the first `body_len` bytes of the spool file, never held whole in memory.
#[derive(Clone, Copy)]
pub struct Outgoing<'a> {
    pub sender: &'a str,
    pub recipients: &'a [String],
    pub body_path: &'a std::path::Path,
    pub body_len: u64,
    /// The same content in memory, when the queue still has it (no file read then).
    pub body_memory: Option<&'a [u8]>,
    pub eight_bit: bool,
    pub smtputf8: bool,
}

pub struct SmtpConnection {
    io: Box<dyn Io>,
    buf: Vec<u8>,
    pub caps: Capabilities,
    pub tls: Option<String>,
    opts: ConnectOptions,
    recorder: Option<crate::transcript::Recorder>,
    /// The current message's content (or its final dot) was written: from
    /// then on the next hop may have taken it, even if no reply comes.
    data_sent: bool,
    /// MAIL was sent and the transaction was not closed since (by the reply
    /// to the final dot or by RSET): the next hop may still hold it open.
    transaction_open: bool,
}

impl SmtpConnection {
    pub async fn connect(
        peer: SocketAddr,
        opts: &ConnectOptions,
    ) -> Result<SmtpConnection, ClientError> {
        let tcp = timeout(opts.connect_timeout, TcpStream::connect(peer))
            .await
            .map_err(|_| ClientError::Connect {
                addr: peer,
                reason: "timed out".into(),
                unreachable: false,
            })?
            .map_err(|e| ClientError::Connect {
                addr: peer,
                reason: e.to_string(),
                unreachable: matches!(
                    e.kind(),
                    std::io::ErrorKind::NetworkUnreachable | std::io::ErrorKind::HostUnreachable
                ),
            })?;
        let _ = tcp.set_nodelay(true);
        let mut conn = SmtpConnection {
            io: Box::new(tcp),
            buf: Vec::new(),
            caps: Capabilities::default(),
            tls: None,
            opts: opts.clone(),
            recorder: opts
                .transcripts
                .as_ref()
                .map(|t| t.recorder(&format!("out {peer}"))),
            data_sent: false,
            transaction_open: false,
        };
        if let TlsMode::Implicit(cfg) = &opts.tls {
            conn.handshake(Arc::clone(cfg)).await?;
        }
        let banner = conn.read_reply(Step::Banner).await?;
        if !banner.is_ok() {
            return Err(ClientError::Rejected {
                stage: Step::Banner,
                reply: banner,
            });
        }
        conn.hello().await?;
        match &opts.tls {
            TlsMode::Opportunistic(cfg) | TlsMode::Required(cfg) if conn.caps.starttls => {
                let reply = conn.command("STARTTLS", Step::StartTls).await?;
                if reply.code != 220 {
                    if matches!(opts.tls, TlsMode::Required(_)) {
                        return Err(ClientError::TlsUnavailable(format!(
                            "STARTTLS answered {reply}"
                        )));
                    }
                } else {
                    conn.handshake(Arc::clone(cfg)).await?;
                    conn.hello().await?;
                }
            }
            TlsMode::Required(_) => {
                return Err(ClientError::TlsUnavailable(
                    "the server does not offer STARTTLS".into(),
                ));
            }
            _ => {}
        }
        match opts.auth.clone() {
            Some(Credentials::Password { user, password }) => {
                conn.authenticate(&user, &password).await?
            }
            Some(Credentials::Bearer { user, token }) => {
                conn.authenticate_bearer(&user, &token).await?
            }
            None => {}
        }
        Ok(conn)
    }

    async fn handshake(&mut self, cfg: Arc<rustls::ClientConfig>) -> Result<(), ClientError> {
        let name = rustls::pki_types::ServerName::try_from(self.opts.server_name.clone()).map_err(
            |e| ClientError::TlsFailed(format!("bad server name {:?}: {e}", self.opts.server_name)),
        )?;
        let io = std::mem::replace(&mut self.io, Box::new(tokio::io::duplex(1).0));
        self.buf.clear();
        let tls = timeout(
            self.opts.reply_timeout,
            tokio_rustls::TlsConnector::from(cfg).connect(name, io),
        )
        .await
        .map_err(|_| ClientError::Timeout(Step::TlsHandshake))?
        .map_err(|e| ClientError::TlsFailed(crate::tls::describe_io_error(&e)))?;
        let version = tls
            .get_ref()
            .1
            .protocol_version()
            .map(|v| format!("{v:?}"))
            .unwrap_or_default();
        self.tls = Some(version.replace("TLSv1_", "TLSv1."));
        self.io = Box::new(tls);
        if let (Some(r), Some(policy)) = (&mut self.recorder, &self.opts.policy) {
            r.note(&format!("TLS policy: {}", policy.describe()));
        }
        Ok(())
    }

    async fn hello(&mut self) -> Result<(), ClientError> {
        let ehlo = self
            .command(&format!("EHLO {}", self.opts.helo), Step::Ehlo)
            .await?;
        if ehlo.is_ok() {
            self.caps = parse_capabilities(&ehlo);
            return Ok(());
        }
        let helo = self
            .command(&format!("HELO {}", self.opts.helo), Step::Helo)
            .await?;
        if !helo.is_ok() {
            return Err(ClientError::Rejected {
                stage: Step::Helo,
                reply: helo,
            });
        }
        self.caps = Capabilities::default();
        Ok(())
    }

    async fn authenticate(&mut self, user: &str, pass: &str) -> Result<(), ClientError> {
        let reply = if self.caps.auth_plain {
            let token = B64.encode(format!("\0{user}\0{pass}"));
            self.command(&format!("AUTH PLAIN {token}"), Step::Auth)
                .await?
        } else if self.caps.auth_login {
            let r = self.command("AUTH LOGIN", Step::Auth).await?;
            if r.code != 334 {
                return Err(ClientError::Rejected {
                    stage: Step::Auth,
                    reply: r,
                });
            }
            let r = self.command(&B64.encode(user), Step::Auth).await?;
            if r.code != 334 {
                return Err(ClientError::Rejected {
                    stage: Step::Auth,
                    reply: r,
                });
            }
            self.command(&B64.encode(pass), Step::Auth).await?
        } else {
            // Never fall back to sending unauthenticated: that is a temporary failure.
            return Err(ClientError::AuthUnavailable(
                "the server does not offer AUTH PLAIN or LOGIN".into(),
            ));
        };
        if reply.code != 235 {
            return Err(ClientError::Rejected {
                stage: Step::Auth,
                reply,
            });
        }
        Ok(())
    }

    /// Logs in with an OAuth2 access token. A refusal comes as a 334 with an
    /// error (base64 JSON: status, schemes, scope) that the client must
    /// answer before the final reply; that JSON is kept in the reply's
    /// text, as it says why (it holds no secret).
    async fn authenticate_bearer(&mut self, user: &str, token: &str) -> Result<(), ClientError> {
        let (line, cancel) = if self.caps.auth_xoauth2 {
            let initial = B64.encode(format!("user={user}\x01auth=Bearer {token}\x01\x01"));
            (format!("AUTH XOAUTH2 {initial}"), "")
        } else if self.caps.auth_oauthbearer {
            let initial = B64.encode(format!("n,a={user},\x01auth=Bearer {token}\x01\x01"));
            // RFC 7628 3.2.3: the client answers the error with a lone %x01.
            (format!("AUTH OAUTHBEARER {initial}"), "AQ==")
        } else {
            return Err(ClientError::AuthUnavailable(
                "the server offers neither XOAUTH2 nor OAUTHBEARER".into(),
            ));
        };
        let mut reply = self.command(&line, Step::Auth).await?;
        if reply.code == 334 {
            let said = B64
                .decode(reply.text.trim())
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default();
            let mut last = self.command(cancel, Step::Auth).await?;
            if !said.is_empty() {
                last.text = format!("{} (the server said {said})", last.text);
            }
            reply = last;
        }
        if reply.code != 235 {
            return Err(ClientError::Rejected {
                stage: Step::Auth,
                reply,
            });
        }
        Ok(())
    }

    /// Sends one message. Returns one reply per recipient, in order: the RCPT
    /// refusal, or the reply to the final dot for the recipients that were accepted.
    pub async fn send(&mut self, msg: &Outgoing<'_>) -> Result<Vec<ServerReply>, ClientError> {
        self.data_sent = false;
        if msg.smtputf8 && !self.caps.smtputf8 {
            let reply = ServerReply {
                step: Step::MailFrom,
                code: 553,
                text: "5.6.7 the next hop does not support SMTPUTF8, which this message needs"
                    .into(),
                local: true,
            };
            return Ok(vec![reply; msg.recipients.len()]);
        }
        // A next hop without 8BITMIME gets 8-bit content converted to 7 bits
        // (RFC 6152 3): never 8-bit octets to a 7-bit server.
        let converted = if self.caps.eight_bit {
            None
        } else {
            seven_bit_copy(msg).await?
        };
        let body_len = converted.as_ref().map_or(msg.body_len, |c| c.len() as u64);
        let content = converted
            .as_deref()
            .or(msg.body_memory.filter(|b| b.len() as u64 == msg.body_len));
        // Nothing from the spool or the configuration may end a command
        // early or smuggle another one in.
        if let Some(bad) = std::iter::once(msg.sender)
            .chain(msg.recipients.iter().map(String::as_str))
            .find(|a| has_line_break(a))
        {
            return Err(ClientError::Protocol(format!(
                "refusing to send an address with a CR, LF or NUL in it: {:?}",
                bad.escape_default().to_string()
            )));
        }
        let mut mail = format!("MAIL FROM:<{}>", msg.sender);
        if let Some(max) = self.caps.size {
            if body_len > max {
                let reply = ServerReply {
                    step: Step::MailFrom,
                    code: 552,
                    text: format!(
                        "5.3.4 message size {body_len} exceeds the next hop's limit {max}"
                    ),
                    local: true,
                };
                return Ok(vec![reply; msg.recipients.len()]);
            }
            mail.push_str(&format!(" SIZE={body_len}"));
        }
        if msg.eight_bit && self.caps.eight_bit {
            mail.push_str(" BODY=8BITMIME");
        }
        if msg.smtputf8 {
            mail.push_str(" SMTPUTF8");
        }
        let mut replies = Vec::with_capacity(msg.recipients.len());
        if self.caps.pipelining {
            let mut batch = format!("{mail}\r\n");
            for r in msg.recipients {
                batch.push_str(&format!("RCPT TO:<{r}>\r\n"));
            }
            batch.push_str("DATA\r\n");
            self.transaction_open = true;
            self.write(batch.as_bytes()).await?;
            let mail_reply = self.read_reply(Step::MailFrom).await?;
            for _ in msg.recipients {
                replies.push(self.read_reply(Step::RcptTo).await?);
            }
            let data_reply = self.read_reply(Step::Data).await?;
            if !mail_reply.is_ok() {
                return Err(ClientError::Rejected {
                    stage: Step::MailFrom,
                    reply: mail_reply,
                });
            }
            return self.finish_data(msg, content, replies, data_reply).await;
        }
        self.transaction_open = true;
        let mail_reply = self.command(&mail, Step::MailFrom).await?;
        if !mail_reply.is_ok() {
            return Err(ClientError::Rejected {
                stage: Step::MailFrom,
                reply: mail_reply,
            });
        }
        for r in msg.recipients {
            replies.push(
                self.command(&format!("RCPT TO:<{r}>"), Step::RcptTo)
                    .await?,
            );
        }
        if !replies.iter().any(ServerReply::is_ok) {
            self.reset().await?;
            return Ok(replies);
        }
        let data_reply = self.command("DATA", Step::Data).await?;
        self.finish_data(msg, content, replies, data_reply).await
    }

    /// Sends the content (`content` when given, else the spool file) after
    /// a 354 and reads the reply to the final dot.
    async fn finish_data(
        &mut self,
        msg: &Outgoing<'_>,
        content: Option<&[u8]>,
        mut replies: Vec<ServerReply>,
        data_reply: ServerReply,
    ) -> Result<Vec<ServerReply>, ClientError> {
        let any_accepted = replies.iter().any(ServerReply::is_ok);
        if data_reply.code != 354 {
            // No data phase: accepted recipients take the DATA refusal.
            if any_accepted {
                for r in replies.iter_mut().filter(|r| r.is_ok()) {
                    *r = data_reply.clone();
                }
            }
            return Ok(replies);
        }
        self.data_sent = true;
        if !any_accepted {
            // The server opened DATA although nobody was accepted: end it empty.
            self.write(b".\r\n").await?;
            let _ = self.read_reply(Step::EndOfData).await?;
            self.transaction_open = false;
            return Ok(replies);
        }
        match content {
            Some(bytes) => self.write_body_from(bytes).await?,
            None => self.write_body(msg.body_path, msg.body_len).await?,
        }
        let deadline = self.opts.data_timeout;
        let done = timeout(deadline, self.read_reply_untimed(Step::EndOfData))
            .await
            .map_err(|_| ClientError::Timeout(Step::EndOfData))??;
        // Whatever it said, the reply to the final dot ends the transaction.
        self.transaction_open = false;
        for r in replies.iter_mut().filter(|r| r.is_ok()) {
            *r = done.clone();
        }
        Ok(replies)
    }

    /// Sends content held in memory, dot-stuffed, with the final dot, in one write.
    async fn write_body_from(&mut self, content: &[u8]) -> Result<(), ClientError> {
        let out = dot_stuff(content);
        if let Some(r) = &mut self.recorder {
            r.note(&format!("(message content, {} bytes)", content.len()));
            r.client(b".");
        }
        self.write_raw(&out).await
    }

    /// Streams the content dot-stuffed; the last piece and the final dot go in one write.
    async fn write_body(&mut self, path: &std::path::Path, len: u64) -> Result<(), ClientError> {
        use tokio::io::AsyncReadExt as _;
        const CHUNK: usize = 64 * 1024;
        let local =
            |e: std::io::Error| ClientError::Io(format!("reading the spooled message: {e}"));
        let mut file = tokio::fs::File::open(path).await.map_err(local)?;
        let mut stuffer = DotStuffer::default();
        let mut buf = vec![0u8; CHUNK.min(len as usize)];
        let mut out = Vec::with_capacity(buf.len() + buf.len() / 32 + 8);
        let mut remaining = len;
        loop {
            let n = CHUNK.min(remaining as usize);
            file.read_exact(&mut buf[..n]).await.map_err(local)?;
            remaining -= n as u64;
            out.clear();
            stuffer.push(&buf[..n], &mut out);
            if remaining == 0 {
                stuffer.finish(&mut out);
                if let Some(r) = &mut self.recorder {
                    r.note(&format!("(message content, {len} bytes)"));
                    r.client(b".");
                }
                return self.write_raw(&out).await;
            }
            self.write_raw(&out).await?;
        }
    }

    /// Whether the last `send` got as far as writing the message content: a
    /// failure after that must not be retried at once elsewhere, as the next
    /// hop may have accepted the message without our hearing its reply.
    pub fn sent_data(&self) -> bool {
        self.data_sent
    }

    /// Asks whether the server takes mail for `rcpt` (MAIL FROM:<>, RCPT TO,
    /// RSET), without sending any message: recipient verification by callout.
    pub async fn probe_recipient(&mut self, rcpt: &str) -> Result<ServerReply, ClientError> {
        self.transaction_open = true;
        let mail = self.command("MAIL FROM:<>", Step::MailFrom).await?;
        if !mail.is_ok() {
            return Err(ClientError::Rejected {
                stage: Step::MailFrom,
                reply: mail,
            });
        }
        let reply = self
            .command(&format!("RCPT TO:<{rcpt}>"), Step::RcptTo)
            .await?;
        let _ = self.reset().await;
        Ok(reply)
    }

    /// Whether a transaction may still be open at the next hop (a refused
    /// MAIL, every recipient refused with pipelined DATA, a DATA refusal):
    /// the connection must be reset before it carries another message.
    pub fn needs_reset(&self) -> bool {
        self.transaction_open
    }

    /// Ends any transaction (RSET and its reply), ready for another message.
    pub async fn reset(&mut self) -> Result<(), ClientError> {
        let r = self.command("RSET", Step::Rset).await?;
        if r.is_ok() {
            self.transaction_open = false;
            Ok(())
        } else {
            Err(ClientError::Rejected {
                stage: Step::Rset,
                reply: r,
            })
        }
    }

    pub async fn quit(mut self) {
        let _ = timeout(Duration::from_secs(5), async {
            let _ = self.write(b"QUIT\r\n").await;
            let _ = self.read_reply_untimed(Step::Quit).await;
            let _ = self.io.shutdown().await;
        })
        .await;
    }

    /// Writes command lines (recorded in the transcript).
    async fn write(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        if let Some(r) = &mut self.recorder {
            for line in bytes.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                r.client(line);
            }
        }
        self.write_raw(bytes).await
    }

    /// Writes message content (never recorded).
    async fn write_raw(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        timeout(self.opts.reply_timeout, async {
            self.io.write_all(bytes).await?;
            self.io.flush().await
        })
        .await
        .map_err(|_| ClientError::Timeout(Step::TakeData))?
        .map_err(|e| ClientError::Io(crate::tls::describe_io_error(&e)))
    }

    async fn command(&mut self, line: &str, stage: Step) -> Result<ServerReply, ClientError> {
        if has_line_break(line) {
            return Err(ClientError::Protocol(format!(
                "refusing to send {} with a CR, LF or NUL in it",
                stage.name()
            )));
        }
        self.write(format!("{line}\r\n").as_bytes()).await?;
        self.read_reply(stage).await
    }

    async fn read_reply(&mut self, stage: Step) -> Result<ServerReply, ClientError> {
        timeout(self.opts.reply_timeout, self.read_reply_untimed(stage))
            .await
            .map_err(|_| ClientError::Timeout(stage))?
    }

    async fn read_reply_untimed(&mut self, stage: Step) -> Result<ServerReply, ClientError> {
        let mut lines: Vec<String> = Vec::new();
        let mut code = 0u16;
        loop {
            let line = self.read_line().await?;
            let bad =
                || ClientError::Protocol(format!("malformed reply to {}: {line:?}", stage.name()));
            if line.len() < 3 {
                return Err(bad());
            }
            let this: u16 = line[..3].parse().map_err(|_| bad())?;
            if !(200..600).contains(&this) || (code != 0 && this != code) {
                return Err(bad());
            }
            code = this;
            lines.push(line.get(4..).unwrap_or_default().to_string());
            match line.as_bytes().get(3) {
                Some(b'-') if lines.len() < MAX_REPLY_LINES => continue,
                Some(b'-') => {
                    return Err(ClientError::Protocol(format!(
                        "reply to {} is too long",
                        stage.name()
                    )));
                }
                _ => {
                    return Ok(ServerReply {
                        code,
                        text: lines.join("\n"),
                        step: stage,
                        local: false,
                    });
                }
            }
        }
    }

    async fn read_line(&mut self) -> Result<String, ClientError> {
        loop {
            if let Some(pos) = memchr::memchr(b'\n', &self.buf) {
                let mut line: Vec<u8> = self.buf.drain(..=pos).collect();
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                let line = String::from_utf8_lossy(&line).into_owned();
                if let Some(r) = &mut self.recorder {
                    r.server(&line);
                }
                return Ok(line);
            }
            if self.buf.len() > MAX_REPLY_LINE {
                return Err(ClientError::Protocol("reply line too long".into()));
            }
            // Straight into the buffer's spare room: a stack chunk here would
            // be zeroed on every read and would sit in every delivery future
            // up to the spawned task (4 KB of each, moved at every spawn).
            self.buf.reserve(READ_ROOM);
            let n = self
                .io
                .read_buf(&mut self.buf)
                .await
                .map_err(|e| ClientError::Io(crate::tls::describe_io_error(&e)))?;
            if n == 0 {
                return Err(ClientError::Io("connection closed by the next hop".into()));
            }
        }
    }
}

/// Whether `text` holds a byte that would end or split a command line.
fn has_line_break(text: &str) -> bool {
    text.contains(['\r', '\n', '\0'])
}

/// The message converted to 7 bits when it holds 8-bit octets; None when
/// it can go as it is. Read whole: a next hop without 8BITMIME is rare, and
/// the content is bounded by the server's message size limit.
async fn seven_bit_copy(msg: &Outgoing<'_>) -> Result<Option<Vec<u8>>, ClientError> {
    let content = match msg.body_memory {
        Some(bytes) if bytes.len() as u64 == msg.body_len => bytes.to_vec(),
        _ => {
            let mut file = tokio::fs::read(msg.body_path)
                .await
                .map_err(|e| ClientError::Io(format!("reading the spooled message: {e}")))?;
            file.truncate(msg.body_len as usize);
            file
        }
    };
    tokio::task::spawn_blocking(move || {
        super::downgrade::has_eight_bit(&content).then(|| super::downgrade::to_seven_bit(&content))
    })
    .await
    .map_err(|e| ClientError::Io(format!("converting the message to 7 bits: {e}")))
}

/// Dot-stuffing for content that arrives in pieces: a dot at the start of a
/// line is doubled, a missing final CRLF is added, and ".\r\n" ends it.
/// A bare CR or LF (which the spool should never hold) goes out as CRLF:
/// we never send the ambiguous line ends that SMTP smuggling lives on.
#[derive(Debug)]
pub struct DotStuffer {
    at_line_start: bool,
    /// The last byte pushed was a CR whose LF may come in the next piece.
    pending_cr: bool,
}

impl Default for DotStuffer {
    fn default() -> Self {
        Self {
            at_line_start: true,
            pending_cr: false,
        }
    }
}

impl DotStuffer {
    pub fn push(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        out.reserve(chunk.len() + 8);
        let mut i = 0;
        while i < chunk.len() {
            if std::mem::take(&mut self.pending_cr) {
                // CR then LF is one line end; CR then anything else a bare CR.
                out.extend_from_slice(b"\r\n");
                self.at_line_start = true;
                if chunk[i] == b'\n' {
                    i += 1;
                    continue;
                }
            }
            // Copy the run up to the next CR or LF at once.
            let run_end = memchr::memchr2(b'\r', b'\n', &chunk[i..]).map_or(chunk.len(), |p| i + p);
            if run_end > i {
                if self.at_line_start && chunk[i] == b'.' {
                    out.push(b'.');
                }
                out.extend_from_slice(&chunk[i..run_end]);
                self.at_line_start = false;
            }
            i = run_end;
            match chunk.get(i) {
                Some(b'\r') => self.pending_cr = true,
                Some(_) => {
                    // A bare LF.
                    out.extend_from_slice(b"\r\n");
                    self.at_line_start = true;
                }
                None => break,
            }
            i += 1;
        }
    }

    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if std::mem::take(&mut self.pending_cr) || !self.at_line_start {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b".\r\n");
    }
}

/// The whole body as it goes on the wire (for small, in-memory content).
pub fn dot_stuff(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + body.len() / 64 + 5);
    let mut stuffer = DotStuffer::default();
    stuffer.push(body, &mut out);
    stuffer.finish(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_stuffing() {
        assert_eq!(
            dot_stuff(b"a\r\n.b\r\n..c\r\n"),
            b"a\r\n..b\r\n...c\r\n.\r\n"
        );
        assert_eq!(dot_stuff(b"no end"), b"no end\r\n.\r\n");
        assert_eq!(dot_stuff(b""), b".\r\n");
        assert_eq!(dot_stuff(b".\r\n"), b"..\r\n.\r\n");
        // Bare line ends never go out as they are.
        assert_eq!(dot_stuff(b"a\n.b\rc\r"), b"a\r\n..b\r\nc\r\n.\r\n");
    }

    /// Every bare CR or LF made CRLF, byte by byte.
    fn crlf_only(body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < body.len() {
            match (body[i], body.get(i + 1)) {
                (b'\r', Some(b'\n')) => {
                    out.extend_from_slice(b"\r\n");
                    i += 2;
                }
                (b'\r' | b'\n', _) => {
                    out.extend_from_slice(b"\r\n");
                    i += 1;
                }
                (b, _) => {
                    out.push(b);
                    i += 1;
                }
            }
        }
        out
    }

    /// The plain rule, one line at a time, to check the fast one against.
    fn stuffed_line_by_line(body: &[u8]) -> Vec<u8> {
        let body = &crlf_only(body)[..];
        let mut out = Vec::new();
        for line in body.split_inclusive(|&b| b == b'\n') {
            if line.first() == Some(&b'.') {
                out.push(b'.');
            }
            out.extend_from_slice(line);
        }
        if !body.is_empty() && !body.ends_with(b"\r\n") {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b".\r\n");
        out
    }

    proptest::proptest! {
        #[test]
        fn stuffing_in_any_pieces_follows_the_rule(
            body in proptest::collection::vec(proptest::sample::select(vec![b'.', b'\r', b'\n', b'a']), 0..200),
            cuts in proptest::collection::vec(0usize..200, 0..6),
        ) {
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(body.len())).collect();
            cuts.sort();
            let mut s = DotStuffer::default();
            let mut out = Vec::new();
            let mut from = 0;
            for c in cuts.into_iter().chain([body.len()]) {
                s.push(&body[from..c], &mut out);
                from = c;
            }
            s.finish(&mut out);
            proptest::prop_assert_eq!(out, stuffed_line_by_line(&body));
        }
    }

    #[test]
    fn stuffing_in_pieces_matches_stuffing_whole() {
        let body = b"first\r\n.dot\r\n..two\r\nx.y\r\n.\r\nend\r";
        let whole = dot_stuff(body);
        for split in 0..=body.len() {
            let mut s = DotStuffer::default();
            let mut out = Vec::new();
            s.push(&body[..split], &mut out);
            s.push(&body[split..], &mut out);
            s.finish(&mut out);
            assert_eq!(out, whole, "split at {split}");
        }
    }

    #[test]
    fn capabilities() {
        let r = ServerReply {
            code: 250,
            text: "mx.example\nPIPELINING\nSIZE 1000\nAUTH LOGIN PLAIN\nSTARTTLS\n8BITMIME".into(),
            step: Step::Ehlo,
            local: false,
        };
        let c = parse_capabilities(&r);
        assert!(
            c.pipelining
                && c.starttls
                && c.auth_plain
                && c.auth_login
                && c.eight_bit
                && !c.smtputf8
        );
        assert_eq!(c.size, Some(1000));
    }
}
