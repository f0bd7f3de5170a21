//! A destination SMTP server for delivery tests: records what it receives and
//! can be told to refuse, to offer or require TLS and AUTH, or to be slow.

use super::tls::TestCa;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

#[derive(Debug, Clone, Default)]
pub struct Received {
    pub helo: String,
    pub from: String,
    pub rcpts: Vec<String>,
    pub data: Vec<u8>,
    pub tls: bool,
    pub auth: Option<(String, String)>,
    /// The MAIL command as it came, parameters included.
    pub mail_line: String,
}

#[derive(Clone, Default)]
pub struct Behaviour {
    /// Banner reply; a 4xx/5xx here refuses the session.
    pub banner: Option<(u16, &'static str)>,
    /// Recipients (local parts) refused with this reply.
    pub reject_rcpt: Vec<(&'static str, u16, &'static str)>,
    /// Offer STARTTLS with a certificate from this CA.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Offer AUTH PLAIN LOGIN and require these credentials before MAIL.
    pub require_auth: Option<(String, String)>,
    /// Offer PIPELINING.
    pub pipelining: bool,
    /// Do not offer 8BITMIME: a 7-bit server.
    pub seven_bit_only: bool,
    /// Offer SMTPUTF8.
    pub smtputf8: bool,
    /// TLS from the first byte (an smtps port such as 465).
    pub implicit_tls: Option<Arc<rustls::ServerConfig>>,
    /// Sent in clear right after "220 go ahead" to STARTTLS, before the
    /// handshake: what a man in the middle would inject.
    pub starttls_injection: Option<&'static str>,
    /// Offer AUTH XOAUTH2 and require a token this authority issued (and
    /// that has not expired) before MAIL; refusals as Microsoft answers them.
    pub bearer: Option<Arc<super::oauth_peer::Authority>>,
    /// Answer every AUTH with this reply (e.g. "550 5.7.30 Basic authentication …").
    pub auth_reply: Option<&'static str>,
    /// Close the connection after answering each message's data.
    pub close_after_data: bool,
    /// With `bearer`: offer OAUTHBEARER (RFC 7628) instead of XOAUTH2.
    pub oauthbearer: bool,
    /// Answer every MAIL with this reply (a provider's quota refusal, say).
    pub mail_reply: Option<&'static str>,
}

impl Behaviour {
    pub fn accept_all() -> Behaviour {
        Behaviour {
            pipelining: true,
            ..Default::default()
        }
    }
}

pub fn tls_config(ca: &TestCa) -> Arc<rustls::ServerConfig> {
    portcullis::tls::server_config(&ca.cert_path, &ca.key_path).unwrap()
}

pub struct Sink {
    pub addr: SocketAddr,
    pub received: Arc<Mutex<Vec<Received>>>,
    /// Connections accepted so far.
    pub connections: Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
    /// The sessions in progress: a dropped sink ends them too (a next hop
    /// that went down keeps no connection a client could reuse).
    sessions: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Sink {
    /// Listens on `ip:port` (port 0 for any).
    pub async fn start(ip: &str, port: u16, behaviour: Behaviour) -> Sink {
        let listener = TcpListener::bind((ip, port)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let store = Arc::clone(&received);
        let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = Arc::clone(&connections);
        let sessions = Arc::new(Mutex::new(Vec::<tokio::task::AbortHandle>::new()));
        let running = Arc::clone(&sessions);
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let store = Arc::clone(&store);
                let b = behaviour.clone();
                let session = tokio::spawn(async move {
                    let _ = match b.implicit_tls.clone() {
                        Some(config) => {
                            let Ok(stream) =
                                tokio_rustls::TlsAcceptor::from(config).accept(tcp).await
                            else {
                                return;
                            };
                            serve(Box::new(stream), b, store, true).await
                        }
                        None => serve(Box::new(tcp), b, store, false).await,
                    };
                });
                let mut running = running.lock().unwrap();
                running.retain(|s| !s.is_finished());
                running.push(session.abort_handle());
            }
        });
        Sink {
            addr,
            received,
            connections,
            task,
            sessions,
        }
    }

    pub fn messages(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// Waits (bounded) until at least `n` messages have arrived.
    pub async fn wait_for(&self, n: usize, limit: std::time::Duration) -> Vec<Received> {
        let start = std::time::Instant::now();
        loop {
            let got = self.messages();
            if got.len() >= n || start.elapsed() > limit {
                return got;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.task.abort();
        for session in self.sessions.lock().unwrap().drain(..) {
            session.abort();
        }
    }
}

type Stream = Box<dyn crate::support::client::Io>;

async fn serve(
    io: Stream,
    b: Behaviour,
    store: Arc<Mutex<Vec<Received>>>,
    started_in_tls: bool,
) -> std::io::Result<()> {
    let mut io = BufReader::new(io);
    let (code, text) = b.banner.unwrap_or((220, "sink.test ESMTP"));
    io.write_all(format!("{code} {text}\r\n").as_bytes())
        .await?;
    if code != 220 {
        return Ok(());
    }
    let mut tls = started_in_tls;
    let mut cur = Received::default();
    let mut authed: Option<(String, String)> = None;
    loop {
        let mut line = String::new();
        if io.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let line = line.trim_end().to_string();
        let upper = line.to_ascii_uppercase();
        let reply: String = if upper.starts_with("EHLO") || upper.starts_with("HELO") {
            cur.helo = line[5.min(line.len())..].to_string();
            let mut caps = vec!["250-sink.test".to_string(), "250-SIZE 100000000".into()];
            if !b.seven_bit_only {
                caps.push("250-8BITMIME".into());
            }
            if b.smtputf8 {
                caps.push("250-SMTPUTF8".into());
            }
            if b.pipelining {
                caps.push("250-PIPELINING".into());
            }
            if b.tls.is_some() && !tls {
                caps.push("250-STARTTLS".into());
            }
            if b.bearer.is_some() && b.oauthbearer {
                caps.push("250-AUTH OAUTHBEARER".into());
            } else if b.bearer.is_some() {
                caps.push("250-AUTH LOGIN XOAUTH2".into());
            } else if b.require_auth.is_some() || b.auth_reply.is_some() {
                caps.push("250-AUTH PLAIN LOGIN".into());
            }
            caps.push("250 HELP".into());
            caps.join("\r\n")
        } else if upper == "STARTTLS" && b.tls.is_some() && !tls {
            // One write: the injected lines arrive with the 220.
            let go = format!(
                "220 go ahead\r\n{}",
                b.starttls_injection.unwrap_or_default()
            );
            io.write_all(go.as_bytes()).await?;
            let inner = io.into_inner();
            let acceptor = tokio_rustls::TlsAcceptor::from(b.tls.clone().unwrap());
            let stream = acceptor.accept(inner).await?;
            io = BufReader::new(Box::new(stream) as Stream);
            tls = true;
            cur = Received::default();
            continue;
        } else if let (true, Some(fixed)) = (upper.starts_with("AUTH "), b.auth_reply) {
            fixed.to_string()
        } else if let (Some(authority), Some(initial)) = (
            &b.bearer,
            if b.oauthbearer {
                upper.strip_prefix("AUTH OAUTHBEARER ").map(|_| &line[17..])
            } else {
                upper.strip_prefix("AUTH XOAUTH2 ").map(|_| &line[13..])
            },
        ) {
            use base64::Engine;
            let b64 = base64::engine::general_purpose::STANDARD;
            let decoded =
                String::from_utf8_lossy(&b64.decode(initial).unwrap_or_default()).into_owned();
            // XOAUTH2: "user=U^A…"; OAUTHBEARER (RFC 7628): "n,a=U,^A…".
            let user = decoded
                .strip_prefix("user=")
                .or_else(|| decoded.strip_prefix("n,a="))
                .and_then(|u| u.split(['\x01', ',']).next())
                .unwrap_or_default()
                .to_string();
            let token = decoded
                .split("auth=Bearer ")
                .nth(1)
                .and_then(|t| t.split('\x01').next())
                .unwrap_or_default()
                .to_string();
            if authority.valid(&token) {
                authed = Some((user, format!("Bearer {token}")));
                "235 2.7.0 Authentication successful".into()
            } else {
                // SASL XOAUTH2: an error challenge, the client's empty answer, then 535.
                let challenge = b64.encode(
                    r#"{"status":"401","schemes":"bearer","scope":"https://outlook.office.com/SMTP.Send"}"#,
                );
                io.write_all(format!("334 {challenge}\r\n").as_bytes())
                    .await?;
                let mut answer = String::new();
                io.read_line(&mut answer).await?;
                "535 5.7.3 Authentication unsuccessful".into()
            }
        } else if let Some(token) = upper.strip_prefix("AUTH PLAIN ").map(|_| &line[11..]) {
            use base64::Engine;
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(token)
                .unwrap_or_default();
            let parts: Vec<String> = decoded
                .split(|&c| c == 0)
                .map(|p| String::from_utf8_lossy(p).into_owned())
                .collect();
            let creds = (
                parts.get(1).cloned().unwrap_or_default(),
                parts.get(2).cloned().unwrap_or_default(),
            );
            if Some(&creds) == b.require_auth.as_ref() {
                authed = Some(creds);
                "235 2.7.0 ok".into()
            } else {
                "535 5.7.8 bad credentials".into()
            }
        } else if let (true, Some(fixed)) = (upper.starts_with("MAIL FROM:"), b.mail_reply) {
            fixed.to_string()
        } else if upper.starts_with("MAIL FROM:") {
            if (b.require_auth.is_some() || b.bearer.is_some()) && authed.is_none() {
                "530 5.7.57 Client not authenticated to send mail".into()
            } else {
                cur.from = between(&line, '<', '>');
                cur.mail_line = line.clone();
                cur.rcpts.clear();
                "250 2.1.0 ok".into()
            }
        } else if upper.starts_with("RCPT TO:") {
            let rcpt = between(&line, '<', '>');
            let local = rcpt.split('@').next().unwrap_or_default().to_string();
            match b.reject_rcpt.iter().find(|(l, _, _)| *l == local) {
                Some((_, code, text)) => format!("{code} {text}"),
                None => {
                    cur.rcpts.push(rcpt);
                    "250 2.1.5 ok".into()
                }
            }
        } else if upper == "DATA" {
            if cur.rcpts.is_empty() {
                "554 5.5.1 no valid recipients".into()
            } else {
                io.write_all(b"354 go\r\n").await?;
                cur.data = read_data(&mut io).await?;
                cur.tls = tls;
                cur.auth = authed.clone();
                store.lock().unwrap().push(cur.clone());
                cur.rcpts.clear();
                if b.close_after_data {
                    io.write_all(b"250 2.0.0 queued in the sink\r\n").await?;
                    return Ok(());
                }
                "250 2.0.0 queued in the sink".into()
            }
        } else if upper == "RSET" {
            cur.rcpts.clear();
            "250 2.0.0 ok".into()
        } else if upper == "QUIT" {
            io.write_all(b"221 2.0.0 bye\r\n").await?;
            return Ok(());
        } else if upper == "NOOP" {
            "250 2.0.0 ok".into()
        } else {
            "502 5.5.1 not here".into()
        };
        io.write_all(format!("{reply}\r\n").as_bytes()).await?;
    }
}

fn between(s: &str, a: char, b: char) -> String {
    let start = s.find(a).map_or(0, |i| i + 1);
    let end = s.rfind(b).unwrap_or(s.len());
    s.get(start..end).unwrap_or_default().to_string()
}

/// Reads dot-stuffed data up to CRLF.CRLF and undoes the stuffing.
async fn read_data(io: &mut BufReader<Stream>) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let mut line = Vec::new();
        let n = io.read_until(b'\n', &mut line).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if line == b".\r\n" {
            return Ok(out);
        }
        if line.starts_with(b".") {
            line.remove(0);
        }
        out.extend_from_slice(&line);
    }
}
