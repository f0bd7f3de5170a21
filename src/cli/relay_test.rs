//! `portcullis relay-test HOST[:PORT]`: the open-relay battery against one server.

use crate::diagnostics::relay_test::{DEFAULT_FROM, DEFAULT_TO, Options, Report, Verdict, run};
use crate::queue::{QueueAnswer, QueueCommand, Selector};
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
    /// For a target on this machine: the configuration it runs, to know
    /// which local addresses it trusts (default: the packaged one).
    #[command(flatten)]
    config: super::ConfigArgs,
}

pub fn run_cli(args: RelayTestArgs) -> anyhow::Result<i32> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let (host, target) = resolve(&args.target).await?;
        let ours = our_listener(&args.config, target);
        let seat = match &ours {
            Some(config) => match choose_seat(config, target, args.source_ip) {
                Ok(seat) => seat,
                Err(why) => {
                    eprintln!("relay-test: {why}");
                    return Ok(2);
                }
            },
            None => Seat {
                source: args.source_ip,
                note: None,
            },
        };
        // Our own running server: whole transactions, and whatever it took is
        // deleted from its queue afterwards. Our server without a control
        // socket to delete through: each test stops before DATA instead.
        let control = ours.as_ref().and_then(|c| {
            let data_dir = c.server.data_dir.clone();
            crate::control::ask_queue(&data_dir, &QueueCommand::Stats, Duration::from_secs(10))
                .ok()
                .map(|_| data_dir)
        });
        let opts = Options {
            target,
            host,
            from: args.from,
            to: args.to,
            helo: args.helo,
            source_ip: seat.source,
            starttls: args.starttls,
            timeout: Duration::from_secs(args.timeout.max(1)),
            stop_before_data: ours.is_some() && control.is_none(),
        };
        let report = run(&opts).await;
        let deleted = match &control {
            Some(data_dir) => delete_test_messages(data_dir, &report),
            None => 0,
        };
        if args.json {
            let mut value = serde_json::to_value(&report)?;
            value["source"] = serde_json::json!(seat.source);
            value["seat_note"] = serde_json::json!(seat.note);
            value["this_server"] = serde_json::json!(ours.is_some());
            value["stopped_before_data"] = serde_json::json!(opts.stop_before_data);
            value["deleted_test_messages"] = serde_json::json!(deleted);
            outln!("{}", serde_json::to_string_pretty(&value)?);
        } else {
            if let Some(note) = &seat.note {
                outln!("note: {note}");
            }
            if opts.stop_before_data {
                outln!(
                    "note: {target} is this machine's relay: each test ends with RSET once the recipient is accepted, so no test message is queued"
                );
            }
            print_report(&report);
            if deleted > 0 {
                outln!("{deleted} accepted test message(s) deleted from this server's queue");
            }
        }
        Ok(report.exit_code())
    })
}

/// Where the battery runs from, and what the admin should know about that.
struct Seat {
    source: Option<IpAddr>,
    note: Option<String>,
}

/// The configuration of the Portcullis on this machine whose smtp listener
/// `target` is (loaded from --config or the packaged file), if it is one.
fn our_listener(args: &super::ConfigArgs, target: SocketAddr) -> Option<crate::config::Config> {
    let local = target.ip().is_loopback()
        || std::net::UdpSocket::bind(SocketAddr::new(target.ip(), 0)).is_ok();
    if !local || (args.path().is_none() && !std::path::Path::new(super::PACKAGED_CONFIG).exists()) {
        return None;
    }
    let config = args.load().ok()?;
    let listens = config.listener.iter().any(|l| {
        let ip_matches = l.address.ip() == target.ip() || l.address.ip().is_unspecified();
        let port_matches = l.address.port() == target.port() || l.address.port() == 0;
        l.kind == crate::config::ListenerKind::Smtp && ip_matches && port_matches
    });
    listens.then_some(config)
}

/// For our own server, a seat its configuration does not trust: from a
/// trusted address every test would "relay" by design. An address asked for
/// with --source-ip is kept, with a warning when it is trusted.
fn choose_seat(
    config: &crate::config::Config,
    target: SocketAddr,
    asked: Option<IpAddr>,
) -> Result<Seat, String> {
    let policy = crate::policy::Policy::from_config(config);
    // Without --source-ip, the kernel connects from the target's own address.
    let natural = asked.unwrap_or(target.ip());
    if !policy.is_trusted(natural) {
        return Ok(Seat {
            source: asked,
            note: None,
        });
    }
    if asked.is_some() {
        return Ok(Seat {
            source: asked,
            note: Some(format!(
                "{natural} is trusted by this server's configuration: it may relay by design, so RELAYED below says nothing about strangers"
            )),
        });
    }
    let kind = crate::config::ListenerKind::Smtp;
    match crate::diagnostics::self_test::untrusted_source(&policy, target.ip(), kind) {
        Some(seat) => Ok(Seat {
            source: Some(seat),
            note: Some(format!(
                "{natural} is trusted by this server's configuration (it may relay by design): testing from {seat}, which it does not trust, as a stranger would"
            )),
        }),
        None => Err(format!(
            "{natural} is trusted by this server's configuration (from there it relays by design) and no local address it does not trust was found to test from: run relay-test from another machine, or name a seat with --source-ip"
        )),
    }
}

/// Deletes the test messages our server accepted; how many.
fn delete_test_messages(data_dir: &std::path::Path, report: &Report) -> usize {
    crate::diagnostics::self_test::accepted_test_messages(report)
        .into_iter()
        .filter(|id| {
            let delete = QueueCommand::Delete {
                select: Selector::Id(id.clone()),
            };
            matches!(
                crate::control::ask_queue(data_dir, &delete, Duration::from_secs(10)),
                Ok(QueueAnswer::Changed { changed }) if !changed.is_empty()
            )
        })
        .count()
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
