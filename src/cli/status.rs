//! `portcullis status`: whether a server runs on this data directory, since
//! when, on which listeners, with how many connections and queued messages
//! (exit 0), or that none runs (exit 3, as service managers say it).

use super::ConfigArgs;
use crate::control::{Answer, Command, ControlError, Status, request};
use std::time::Duration;

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
}

/// The exit code when no server runs.
const NOT_RUNNING: i32 = 3;

pub fn run(args: StatusArgs) -> anyhow::Result<i32> {
    let config = args.config.load()?;
    let data_dir = &config.server.data_dir;
    match request(data_dir, &Command::Status, Duration::from_secs(30)) {
        Ok(Answer::Status(status)) => {
            print(&status, args.json)?;
            Ok(0)
        }
        Ok(Answer::Error { message }) => anyhow::bail!(message),
        Ok(other) => anyhow::bail!("unexpected answer: {other:?}"),
        Err(ControlError::NoServer) => {
            if args.json {
                outln!("{}", serde_json::json!({ "running": false }));
            } else {
                outln!(
                    "no server is running on {}{}",
                    data_dir.display(),
                    super::config_hint(&args.config)
                );
            }
            Ok(NOT_RUNNING)
        }
        Err(e) => anyhow::bail!(e),
    }
}

fn print(s: &Status, json: bool) -> anyhow::Result<()> {
    if json {
        let mut value = serde_json::to_value(s)?;
        value["running"] = serde_json::Value::Bool(true);
        outln!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    let since = chrono::DateTime::from_timestamp(s.started_at, 0)
        .map(|d| d.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_default();
    let up = (crate::clock::unix_now() - s.started_at).max(0) as u64;
    outln!(
        "running: Portcullis {} (pid {}, node {}) as {} since {since} ({} up)",
        s.version,
        s.pid,
        s.node_id,
        s.hostname,
        humantime::format_duration(Duration::from_secs(up))
    );
    outln!(
        "config: {}",
        s.config_file.as_deref().unwrap_or("the embedded default")
    );
    outln!("listening: {}", s.listeners.join(", "));
    outln!("connections: {}", s.connections);
    let q = &s.queue;
    match (&q.cluster, &q.cluster_error) {
        (Some(all), _) => {
            outln!("queue (whole cluster): {}", queue_line(all));
            outln!("queue (this node): {}", queue_line(q));
        }
        (None, Some(error)) => {
            outln!("queue (this node): {}", queue_line(q));
            outln!("queue (whole cluster): unknown, {error}");
        }
        (None, None) => outln!("queue: {}", queue_line(q)),
    }
    Ok(())
}

/// "N message(s), …" for `status`.
fn queue_line(q: &crate::queue::QueueStats) -> String {
    format!(
        "{} message(s), {} held, {} recipient(s) waiting{}",
        q.messages,
        q.held,
        q.recipients_queued,
        q.oldest_received_at
            .map(|t| format!(
                ", oldest received {} ago",
                humantime::format_duration(Duration::from_secs(
                    (crate::clock::unix_now() - t).max(0) as u64
                ))
            ))
            .unwrap_or_default()
    )
}
