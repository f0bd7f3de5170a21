//! A discarding SMTP server for the benchmark's next hop, with STARTTLS when
//! given a certificate (the relay's own server TLS: session tickets and a
//! session cache, so a relay that resumes can). The number of messages taken so far is written to
//! `--count-file` (replaced atomically, every few milliseconds while it
//! changes), where the benchmark polls it.

use crate::smtp_io::Stream;
use anyhow::Context;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

const COUNT_EVERY: Duration = Duration::from_millis(5);
/// A session sending more commands than this is not a relay.
const MAX_COMMANDS: usize = 100_000;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long)]
    listen: SocketAddr,
    #[arg(long, requires = "key")]
    cert: Option<PathBuf>,
    #[arg(long)]
    key: Option<PathBuf>,
    #[arg(long)]
    count_file: PathBuf,
}

enum End {
    Closed,
    StartTls,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let acceptor = match (&args.cert, &args.key) {
        (Some(cert), Some(key)) => Some(acceptor(cert, key)?),
        _ => None,
    };
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let count = Arc::new(AtomicU64::new(0));
    tokio::spawn(write_count(Arc::clone(&count), args.count_file.clone()));
    loop {
        let (tcp, _) = listener.accept().await?;
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let count = Arc::clone(&count);
        tokio::spawn(async move {
            let mut smtp = Stream::new(tcp);
            let offer_tls = acceptor.is_some();
            if let Ok(End::StartTls) = session(&mut smtp, true, offer_tls, &count).await
                && let Some(acceptor) = acceptor
                && let Ok(tls) = acceptor.accept(smtp.into_inner()).await
            {
                let _ = session(&mut Stream::new(tls), false, false, &count).await;
            }
        });
    }
}

/// The relay's own server TLS (tickets and a session cache included).
fn acceptor(cert: &Path, key: &Path) -> anyhow::Result<TlsAcceptor> {
    Ok(TlsAcceptor::from(portcullis::tls::server_config(
        cert, key,
    )?))
}

/// Serves commands until QUIT, the end of the stream, or STARTTLS (the
/// caller then hands the stream to TLS and serves the new session).
async fn session<S: AsyncRead + AsyncWrite + Unpin>(
    smtp: &mut Stream<S>,
    greet: bool,
    offer_tls: bool,
    count: &AtomicU64,
) -> anyhow::Result<End> {
    // After STARTTLS the greeting is not repeated.
    if greet {
        smtp.write(b"220 sink.bench.test ESMTP\r\n").await?;
    }
    let mut line = Vec::new();
    for _ in 0..MAX_COMMANDS {
        if smtp.drained() {
            smtp.flush().await?;
        }
        if !smtp.line(&mut line).await? {
            return Ok(End::Closed);
        }
        let verb = line
            .iter()
            .take_while(|b| b.is_ascii_alphabetic())
            .map(|b| b.to_ascii_uppercase())
            .collect::<Vec<u8>>();
        match verb.as_slice() {
            b"EHLO" => {
                let tls = if offer_tls { "250-STARTTLS\r\n" } else { "" };
                let reply = format!(
                    "250-sink.bench.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n{tls}250 SIZE 0\r\n"
                );
                smtp.write(reply.as_bytes()).await?;
            }
            b"HELO" => smtp.write(b"250 sink.bench.test\r\n").await?,
            b"MAIL" => smtp.write(b"250 2.1.0 Ok\r\n").await?,
            b"RCPT" => smtp.write(b"250 2.1.5 Ok\r\n").await?,
            b"RSET" | b"NOOP" => smtp.write(b"250 2.0.0 Ok\r\n").await?,
            b"DATA" => {
                smtp.write(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                    .await?;
                smtp.flush().await?;
                discard_data(smtp, &mut line).await?;
                count.fetch_add(1, Ordering::Relaxed);
                smtp.write(b"250 2.0.0 Ok: discarded\r\n").await?;
            }
            b"STARTTLS" if offer_tls => {
                smtp.write(b"220 2.0.0 Ready to start TLS\r\n").await?;
                smtp.flush().await?;
                return Ok(End::StartTls);
            }
            b"QUIT" => {
                smtp.write(b"221 2.0.0 Bye\r\n").await?;
                smtp.flush().await?;
                return Ok(End::Closed);
            }
            _ => smtp.write(b"502 5.5.2 Command not recognised\r\n").await?,
        }
    }
    Ok(End::Closed)
}

async fn discard_data<S: AsyncRead + AsyncWrite + Unpin>(
    smtp: &mut Stream<S>,
    line: &mut Vec<u8>,
) -> anyhow::Result<()> {
    loop {
        if !smtp.line(line).await? {
            anyhow::bail!("connection closed in DATA");
        }
        if line == b".\r\n" || line == b".\n" {
            return Ok(());
        }
    }
}

/// Keeps `path` holding the current count (also the DNS server's).
pub async fn write_count(count: Arc<AtomicU64>, path: PathBuf) {
    let tmp = path.with_extension("tmp");
    let mut written = u64::MAX;
    loop {
        let now = count.load(Ordering::Relaxed);
        if now != written
            && std::fs::write(&tmp, now.to_string()).is_ok()
            && std::fs::rename(&tmp, &path).is_ok()
        {
            written = now;
        }
        tokio::time::sleep(COUNT_EVERY).await;
    }
}
