//! The load generator: `--messages` messages over `--sessions` parallel
//! sessions, one connection per message (as printers, scripts and most
//! mail libraries send), optionally with STARTTLS and AUTH PLAIN. Counts a
//! message only on the 250 after its data; any failure makes the run fail.

use crate::smtp_io::Stream;
use anyhow::Context;
use base64::Engine;
use rustls_pki_types::ServerName;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// No single message may take longer (a stuck server fails the run).
const PER_MESSAGE: Duration = Duration::from_secs(60);

#[derive(clap::Args)]
pub struct Args {
    #[arg(long)]
    server: SocketAddr,
    #[arg(long)]
    messages: usize,
    #[arg(long, default_value_t = 1)]
    sessions: usize,
    /// Message size in octets, headers included.
    #[arg(long, default_value_t = 1024)]
    size: usize,
    /// STARTTLS after EHLO, verifying the server against --ca.
    #[arg(long, requires = "ca")]
    starttls: bool,
    #[arg(long)]
    ca: Option<PathBuf>,
    #[arg(long, default_value = "relay.bench.test")]
    tls_name: String,
    /// Offer the previous session for resumption (most clients that
    /// connect per message do not: by default every handshake is full).
    #[arg(long)]
    resume: bool,
    /// AUTH PLAIN with USER:PASSWORD on every connection.
    #[arg(long)]
    auth: Option<String>,
    #[arg(long, default_value = "client.bench.test")]
    helo: String,
    /// Connect from this local address (the checks case: one that is not
    /// loopback, whose reverse lookups a resolver cannot answer by itself).
    #[arg(long)]
    source: Option<std::net::IpAddr>,
    #[arg(long, default_value = "bench@client.example")]
    from: String,
    #[arg(long, default_value = "rcpt@far.example")]
    to: String,
}

struct Plan {
    args: Args,
    tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
    auth: Option<String>,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let tls = match &args.ca {
        Some(ca) if args.starttls => Some((
            connector(ca, args.resume)?,
            ServerName::try_from(args.tls_name.clone())?,
        )),
        _ => None,
    };
    let auth = args.auth.as_ref().map(|a| {
        let (user, password) = a.split_once(':').unwrap_or((a, ""));
        base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{password}"))
    });
    let plan = Arc::new(Plan { args, tls, auth });
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..plan.args.sessions.max(1) {
        let plan = Arc::clone(&plan);
        let next = Arc::clone(&next);
        workers.push(tokio::spawn(async move {
            let mut sent = 0usize;
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= plan.args.messages {
                    return Ok(sent);
                }
                tokio::time::timeout(PER_MESSAGE, send_one(&plan, n))
                    .await
                    .map_err(|_| anyhow::anyhow!("message {n}: no answer within {PER_MESSAGE:?}"))?
                    .with_context(|| format!("message {n}"))?;
                sent += 1;
            }
        }));
    }
    let mut sent = 0;
    let mut first_error = None;
    for w in workers {
        match w.await? {
            Ok(n) => sent += n,
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "sent {sent} of {} in {seconds:.3} s: {:.1} msg/s",
        plan.args.messages,
        sent as f64 / seconds
    );
    match first_error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

fn connector(ca: &Path, resume: bool) -> anyhow::Result<tokio_rustls::TlsConnector> {
    let roots = portcullis::tls::ca_file_roots(ca, "--ca").map_err(anyhow::Error::msg)?;
    let mut config = rustls::ClientConfig::builder_with_provider(portcullis::tls::provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    if !resume {
        config.resumption = rustls::client::Resumption::disabled();
    }
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

async fn send_one(plan: &Plan, n: usize) -> anyhow::Result<()> {
    let mut smtp = Stream::new(connect(&plan.args).await?);
    smtp.expect(220, "greeting").await?;
    ehlo(&mut smtp, plan).await?;
    match &plan.tls {
        None => transaction(smtp, plan, n).await,
        Some((connector, name)) => {
            smtp.write(b"STARTTLS\r\n").await?;
            smtp.expect(220, "STARTTLS").await?;
            let tls = connector.connect(name.clone(), smtp.into_inner()).await?;
            let mut smtp = Stream::new(tls);
            ehlo(&mut smtp, plan).await?;
            transaction(smtp, plan, n).await
        }
    }
}

async fn connect(a: &Args) -> anyhow::Result<TcpStream> {
    let Some(source) = a.source else {
        return Ok(TcpStream::connect(a.server).await?);
    };
    let socket = match source {
        std::net::IpAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        std::net::IpAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket
        .bind(SocketAddr::new(source, 0))
        .with_context(|| format!("binding to {source}"))?;
    Ok(socket.connect(a.server).await?)
}

async fn ehlo<S: AsyncRead + AsyncWrite + Unpin>(
    smtp: &mut Stream<S>,
    plan: &Plan,
) -> anyhow::Result<()> {
    smtp.write(format!("EHLO {}\r\n", plan.args.helo).as_bytes())
        .await?;
    smtp.expect(250, "EHLO").await
}

/// AUTH, then MAIL, RCPT and DATA pipelined, the message, QUIT.
async fn transaction<S: AsyncRead + AsyncWrite + Unpin>(
    mut smtp: Stream<S>,
    plan: &Plan,
    n: usize,
) -> anyhow::Result<()> {
    if let Some(token) = &plan.auth {
        smtp.write(format!("AUTH PLAIN {token}\r\n").as_bytes())
            .await?;
        smtp.expect(235, "AUTH").await?;
    }
    let a = &plan.args;
    smtp.write(format!("MAIL FROM:<{}>\r\nRCPT TO:<{}>\r\nDATA\r\n", a.from, a.to).as_bytes())
        .await?;
    smtp.expect(250, "MAIL").await?;
    smtp.expect(250, "RCPT").await?;
    smtp.expect(354, "DATA").await?;
    smtp.write(&message(a, n)).await?;
    smtp.expect(250, "end of data").await?;
    smtp.write(b"QUIT\r\n").await?;
    smtp.expect(221, "QUIT").await?;
    Ok(())
}

/// A message of `size` octets: headers, then 72-character lines.
fn message(a: &Args, n: usize) -> Vec<u8> {
    let mut m = format!(
        "From: <{}>\r\nTo: <{}>\r\nSubject: benchmark message {n}\r\nMessage-ID: <{n}.{}@client.example>\r\n\r\n",
        a.from,
        a.to,
        std::process::id()
    )
    .into_bytes();
    let line = [b'x'; 72];
    while m.len() + 74 <= a.size {
        m.extend_from_slice(&line);
        m.extend_from_slice(b"\r\n");
    }
    m.extend_from_slice(b".\r\n");
    m
}
