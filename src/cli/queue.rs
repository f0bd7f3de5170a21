//! `portcullis queue`: list and manage spooled messages. Works on the files,
//! so it is safe while the server runs (state changes are atomic renames).

use super::ConfigArgs;
use crate::spool::{QueuedMessage, RecipientStatus, Spool};
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct QueueArgs {
    #[command(subcommand)]
    action: QueueAction,
    #[command(flatten)]
    config: ConfigArgs,
    /// Overrides server.data_dir.
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    /// Machine-readable output.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Debug, clap::Subcommand)]
enum QueueAction {
    /// Every queued message, oldest first.
    List,
    /// One message: envelope, per-recipient state, headers.
    Show { id: String },
    /// Remove a message without delivering it.
    Delete { id: String },
    /// Keep a message from being delivered until released.
    Hold { id: String },
    /// Let a held message be delivered again.
    Release { id: String },
    /// Try delivery now instead of at the next scheduled time.
    Retry {
        /// The message; or --all.
        id: Option<String>,
        /// Every queued message.
        #[arg(long, conflicts_with = "id")]
        all: bool,
    },
}

pub fn run(args: QueueArgs) -> anyhow::Result<i32> {
    let config = args.config.load()?;
    let data_dir = args
        .data_dir
        .clone()
        .unwrap_or(config.server.data_dir.clone());
    let spool = Spool::open_existing(&data_dir)?;
    match &args.action {
        QueueAction::List => list(&spool, args.json),
        QueueAction::Show { id } => show(&spool, id, args.json),
        QueueAction::Delete { id } => {
            spool.delete(id)?;
            spool.poke()?;
            report(args.json, id, "deleted");
            Ok(0)
        }
        QueueAction::Hold { id } => set_held(&spool, id, true, args.json),
        QueueAction::Release { id } => set_held(&spool, id, false, args.json),
        QueueAction::Retry { id, all } => {
            let ids = match (id, all) {
                (Some(id), false) => vec![id.clone()],
                (None, true) => spool.ids()?,
                _ => anyhow::bail!("say which message: queue retry ID, or queue retry --all"),
            };
            let now = chrono::Utc::now().timestamp();
            for id in &ids {
                let mut state = spool.load(id)?.state;
                for r in state
                    .recipients
                    .iter_mut()
                    .filter(|r| r.status == RecipientStatus::Queued)
                {
                    r.next_attempt = Some(now);
                }
                spool.write_state(id, &state)?;
                report(args.json, id, "due now");
            }
            spool.poke()?;
            Ok(0)
        }
    }
}

fn report(json: bool, id: &str, what: &str) {
    if json {
        println!("{}", serde_json::json!({"id": id, "result": what}));
    } else {
        println!("{id}: {what}");
    }
}

fn set_held(spool: &Spool, id: &str, held: bool, json: bool) -> anyhow::Result<i32> {
    let mut state = spool.load(id)?.state;
    state.held = held;
    spool.write_state(id, &state)?;
    spool.poke()?;
    report(json, id, if held { "held" } else { "released" });
    Ok(0)
}

fn summary(m: &QueuedMessage) -> serde_json::Value {
    let count = |s: RecipientStatus| m.state.recipients.iter().filter(|r| r.status == s).count();
    serde_json::json!({
        "id": m.envelope.id,
        "received_at": m.envelope.received_at,
        "size": m.envelope.size,
        "sender": m.envelope.sender,
        "recipients": m.envelope.recipients.iter().map(|r| r.address.clone()).collect::<Vec<_>>(),
        "held": m.state.held,
        "queued": count(RecipientStatus::Queued),
        "delivered": count(RecipientStatus::Delivered),
        "failed": count(RecipientStatus::Failed),
    })
}

fn list(spool: &Spool, json: bool) -> anyhow::Result<i32> {
    let mut rows = Vec::new();
    for id in spool.ids()? {
        match spool.load(&id) {
            Ok(m) => rows.push(m),
            Err(e) => eprintln!("warning: {id}: {e}"),
        }
    }
    if json {
        println!(
            "{}",
            serde_json::Value::Array(rows.iter().map(summary).collect())
        );
        return Ok(0);
    }
    if rows.is_empty() {
        println!("queue is empty");
        return Ok(0);
    }
    println!(
        "{:<18}  {:<23}  {:>9}  {:<6}  {:<30}  recipients",
        "ID", "received (UTC)", "size", "state", "sender"
    );
    for m in &rows {
        let received = when(m.envelope.received_at);
        let sender = if m.envelope.sender.is_empty() {
            "<>"
        } else {
            &m.envelope.sender
        };
        let rcpts: Vec<&str> = m
            .envelope
            .recipients
            .iter()
            .map(|r| r.address.as_str())
            .collect();
        println!(
            "{:<18}  {:<23}  {:>9}  {:<6}  {:<30}  {}",
            m.envelope.id,
            received,
            m.envelope.size,
            if m.state.held { "held" } else { "queued" },
            sender,
            rcpts.join(", ")
        );
    }
    println!("{} message(s)", rows.len());
    Ok(0)
}

/// A queue timestamp for people: UTC date and time.
fn when(t: i64) -> String {
    chrono::DateTime::from_timestamp(t, 0)
        .map(|d| d.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|| t.to_string())
}

fn show(spool: &Spool, id: &str, json: bool) -> anyhow::Result<i32> {
    let m = spool.load(id)?;
    let body = spool.read_body(id)?;
    let header_end = body
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(body.len(), |p| p + 2);
    let headers = String::from_utf8_lossy(&body[..header_end]);
    if json {
        println!(
            "{}",
            serde_json::json!({"envelope": m.envelope, "state": m.state, "headers": headers})
        );
        return Ok(0);
    }
    let e = &m.envelope;
    println!("id:          {}", e.id);
    println!(
        "received:    {} from {} (HELO {})",
        when(e.received_at),
        e.client_ip,
        e.helo
    );
    println!(
        "sender:      {}",
        if e.sender.is_empty() { "<>" } else { &e.sender }
    );
    println!("auth user:   {}", e.auth_user.as_deref().unwrap_or("-"));
    println!("size:        {}", e.size);
    println!("held:        {}", m.state.held);
    println!("recipients:");
    for r in &m.state.recipients {
        println!(
            "  {:<40} {:?}, attempts {}, next {}, last error: {}",
            r.address,
            r.status,
            r.attempts,
            r.next_attempt.map(when).unwrap_or_else(|| "-".into()),
            r.last_error.as_deref().unwrap_or("-")
        );
    }
    println!("headers:\n{headers}");
    Ok(0)
}
