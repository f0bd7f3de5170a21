//! `portcullis relay-test HOST[:PORT]`: the open-relay battery against one server.

use crate::diagnostics::relay_test::{DEFAULT_FROM, DEFAULT_TO, Options, Report, Verdict, run};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

#[derive(Debug, clap::Args)]
pub struct RelayTestArgs {
    /// The server to test: one host (name or address), port 25 unless given.
    target: String,
    /// Envelope sender of the test messages.
    #[arg(long, default_value = DEFAULT_FROM)]
    from: String,
    /// A mailbox you control: a test message that arrives there proves a relay.
    #[arg(long, default_value = DEFAULT_TO)]
    to: String,
    /// The name to give in EHLO.
    #[arg(long, default_value = "portcullis-relay-test.example")]
    helo: String,
    /// Connect from this local address (to test as an outsider would).
    #[arg(long)]
    source_ip: Option<IpAddr>,
    /// Run every test over STARTTLS.
    #[arg(long)]
    starttls: bool,
    /// Seconds to wait for each connection and reply.
    #[arg(long, default_value_t = 30)]
    timeout: u64,
    /// Machine-readable output: {"tests": [{"name", "verdict", "commands", "replies"}], "relayed": N}.
    #[arg(long)]
    json: bool,
}

pub fn run_cli(args: RelayTestArgs) -> anyhow::Result<i32> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let (host, target) = resolve(&args.target).await?;
        let opts = Options {
            target,
            host,
            from: args.from,
            to: args.to,
            helo: args.helo,
            source_ip: args.source_ip,
            starttls: args.starttls,
            timeout: Duration::from_secs(args.timeout.max(1)),
        };
        let report = run(&opts).await;
        if args.json {
            outln!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            print_report(&report);
        }
        Ok(report.exit_code())
    })
}

/// One host, never a range: the first address of HOST[:PORT].
async fn resolve(target: &str) -> anyhow::Result<(String, SocketAddr)> {
    if target.contains('/') || target.contains(',') || target.contains('*') {
        anyhow::bail!("{target}: relay-test takes one host, not a range or a list");
    }
    if let Ok(addr) = target.parse::<SocketAddr>() {
        return Ok((addr.ip().to_string(), addr));
    }
    if let Ok(ip) = target.parse::<IpAddr>() {
        return Ok((ip.to_string(), SocketAddr::new(ip, 25)));
    }
    let (host, port) = match target.rsplit_once(':') {
        Some((h, p)) if p.parse::<u16>().is_ok() => (h, p.parse::<u16>()?),
        _ => (target, 25),
    };
    let addr = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| anyhow::anyhow!("cannot resolve {host}: {e}"))?
        .next()
        .ok_or_else(|| anyhow::anyhow!("{host} has no address"))?;
    Ok((host.to_string(), addr))
}

fn print_report(report: &Report) {
    outln!("relay test of {} ({})", report.host, report.server_name);
    for t in &report.tests {
        let word = match t.verdict {
            Verdict::Refused => "refused",
            Verdict::Relayed => "RELAYED",
            Verdict::Error => "error",
        };
        outln!("{word:<8} {}: {}", t.name, t.note);
        if let Some(banner) = t.replies.first() {
            outln!("           < {banner}");
        }
        for (i, c) in t.commands.iter().enumerate() {
            outln!("           > {c}");
            if let Some(r) = t.replies.get(i + 1) {
                outln!("           < {r}");
            }
        }
    }
    outln!(
        "{} tests: {} relayed, {} refused, {} could not run",
        report.tests.len(),
        report.relayed,
        report.refused,
        report.errors
    );
    if report.relayed > 0 {
        outln!(
            "{} IS AN OPEN RELAY for the tests marked RELAYED",
            report.host
        );
    } else if report.errors == 0 {
        outln!("no test was relayed");
    }
}
