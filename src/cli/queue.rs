//! `portcullis queue`: list and manage spooled messages. With a server
//! running, every command goes through its control socket (the queue manager
//! alone writes queue state); with none, the CLI takes the data-dir lock and
//! applies the same commands to the files itself (a cluster node's CLI
//! to the shared queue in the database).

use super::ConfigArgs;
use crate::clock::unix_now;
use crate::control::{ControlError, ask_queue};
use crate::queue::{
    Changed, Index, MessageDetail, MessageSummary, QueueAnswer, QueueCommand, Selector,
};
use crate::spool::{QueueId, Spool, lock_data_dir};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long the CLI waits for the server's answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);

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

/// A message by ID, or every message from one source.
#[derive(Debug, clap::Args)]
struct Target {
    /// The message's queue ID.
    #[arg(required_unless_present = "source")]
    id: Option<String>,
    /// Every message from this client IP address or authenticated user.
    #[arg(long, conflicts_with = "id")]
    source: Option<String>,
}

#[derive(Debug, clap::Subcommand)]
enum QueueAction {
    /// Every queued message, oldest first.
    List,
    /// One message: envelope, per-recipient state, headers.
    Show { id: String },
    /// Remove messages without delivering them.
    Delete(Target),
    /// Keep messages from being delivered until released.
    Hold(Target),
    /// Let held messages be delivered again.
    Release(Target),
    /// Try delivery now instead of at the next scheduled time.
    Retry {
        /// The message; or --all, or --source.
        #[arg(required_unless_present_any = ["all", "source"])]
        id: Option<String>,
        /// Every queued message.
        #[arg(long, conflicts_with_all = ["id", "source"])]
        all: bool,
        /// Every message from this client IP address or authenticated user.
        #[arg(long, conflicts_with = "id")]
        source: Option<String>,
    },
}

pub fn run(args: QueueArgs) -> anyhow::Result<i32> {
    let config = args.config.load()?;
    let data_dir = args
        .data_dir
        .clone()
        .unwrap_or(config.server.data_dir.clone());
    let command = command_of(&args.action)?;
    let answer = match ask_queue(&data_dir, &command, ANSWER_TIMEOUT) {
        Ok(answer) => answer,
        // A cluster node's queue is in the database, not in its data dir.
        Err(ControlError::NoServer) => match &config.cluster {
            Some(cluster) => crate::cluster::queue_admin::answer_offline(cluster, &command)
                .map_err(anyhow::Error::msg)?,
            None => offline(&data_dir, &command).map_err(|e| {
                // Looked where the embedded default keeps its data: rarely what was meant.
                let hint = if args.data_dir.is_none() {
                    super::config_hint(&args.config)
                } else {
                    String::new()
                };
                anyhow::anyhow!("{e:#}{hint}")
            })?,
        },
        Err(e) => anyhow::bail!(e),
    };
    print_answer(answer, args.json, &config)
}

fn parse_id(id: &str) -> anyhow::Result<QueueId> {
    QueueId::parse(id)
        .ok_or_else(|| anyhow::anyhow!("no message {id} in the queue (not a queue ID)"))
}

fn selector(id: &Option<String>, all: bool, source: &Option<String>) -> anyhow::Result<Selector> {
    Ok(match (id, all, source) {
        (Some(id), false, None) => Selector::Id(parse_id(id)?),
        (None, true, None) => Selector::All,
        (None, false, Some(s)) => Selector::Source(s.clone()),
        _ => anyhow::bail!("say which messages: an ID, --all (retry only) or --source IP|USER"),
    })
}

fn command_of(action: &QueueAction) -> anyhow::Result<QueueCommand> {
    let target = |t: &Target| selector(&t.id, false, &t.source);
    Ok(match action {
        QueueAction::List => QueueCommand::List,
        QueueAction::Show { id } => QueueCommand::Show {
            id: parse_id(id)?,
            body: false,
        },
        QueueAction::Delete(t) => QueueCommand::Delete { select: target(t)? },
        QueueAction::Hold(t) => QueueCommand::Hold { select: target(t)? },
        QueueAction::Release(t) => QueueCommand::Release { select: target(t)? },
        QueueAction::Retry { id, all, source } => QueueCommand::Retry {
            select: selector(id, *all, source)?,
        },
    })
}

/// No server runs: hold the lock and apply the command to the files.
fn offline(data_dir: &Path, command: &QueueCommand) -> anyhow::Result<QueueAnswer> {
    let spool = Spool::open_existing(data_dir)?;
    let Some(_lock) = lock_data_dir(data_dir)? else {
        anyhow::bail!(
            "a server holds {} but its control socket does not answer; try again",
            data_dir.display()
        );
    };
    // A crash may have left acknowledged messages in slots/ (see spool/slots.rs).
    spool.recover_slots()?;
    // ... and in the journal (see spool/journal.rs).
    spool.recover_journal()?;
    let (mut index, problems) = Index::load(&spool)?;
    for (id, e) in problems {
        eprintln!("warning: {id}: {e}");
    }
    let applied = index.apply(command, unix_now());
    let mut answer = applied.answer;
    if let (Some(content), QueueAnswer::Show { message }) = (applied.headers_from, &mut answer) {
        message.headers = content.headers()?;
    }
    for write in applied.writes {
        let state = index.entries.get(write.id()).map(|e| &e.state);
        write.carry_out(&spool, state)?;
    }
    Ok(answer)
}

fn print_answer(
    answer: QueueAnswer,
    json: bool,
    config: &crate::config::Config,
) -> anyhow::Result<i32> {
    match answer {
        QueueAnswer::List { messages } => list(&messages, json),
        QueueAnswer::Show { message } => show(&message, json, config),
        QueueAnswer::Changed { changed } => {
            report(&changed, json);
            Ok(0)
        }
        QueueAnswer::Stats { stats } => {
            outln!("{}", serde_json::to_string(&stats)?);
            Ok(0)
        }
        QueueAnswer::Error { message } => anyhow::bail!(message),
    }
}

fn report(changed: &[Changed], json: bool) {
    for c in changed {
        if json {
            outln!("{}", serde_json::json!({"id": c.id, "result": c.result}));
        } else {
            outln!("{}: {}", c.id, c.result);
        }
    }
    if changed.is_empty() && !json {
        outln!("no message matched");
    }
}

fn list(rows: &[MessageSummary], json: bool) -> anyhow::Result<i32> {
    if json {
        outln!("{}", serde_json::to_string(rows)?);
        return Ok(0);
    }
    if rows.is_empty() {
        outln!("queue is empty");
        return Ok(0);
    }
    // In a cluster each message shows the node that holds it ("-": none
    // alive does; the next claim takes it).
    let cluster = rows.iter().any(|m| m.node.is_some());
    let node = |m: &MessageSummary| match (cluster, m.node) {
        (false, _) => String::new(),
        (true, Some(n)) => format!("{n:<4}  "),
        (true, None) => "-     ".to_string(),
    };
    outln!(
        "{:<20}  {}{:<23}  {:>9}  {:<9}  {:<30}  recipients",
        "ID",
        if cluster { "node  " } else { "" },
        "received (UTC)",
        "size",
        "state",
        "sender"
    );
    for m in rows {
        let state = m.state_word();
        outln!(
            "{:<20}  {}{:<23}  {:>9}  {:<9}  {:<30}  {}",
            m.id,
            node(m),
            when(m.received_at),
            m.size,
            state,
            if m.sender.is_empty() { "<>" } else { &m.sender },
            m.recipients.join(", ")
        );
    }
    outln!("{} message(s)", rows.len());
    Ok(0)
}

/// A queue timestamp for people: UTC date and time.
fn when(t: i64) -> String {
    chrono::DateTime::from_timestamp(t, 0)
        .map(|d| d.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|| t.to_string())
}

/// Where each recipient goes under the current config: (address, next hop, profile).
fn routes(
    m: &MessageDetail,
    config: &crate::config::Config,
) -> Vec<(String, String, Option<String>)> {
    let facts = crate::queue::route_facts(&m.envelope);
    m.state
        .recipients
        .iter()
        .map(|r| {
            let (via, profile) = crate::delivery::route::next_hop_words(&r.address, &facts, config);
            (r.address.clone(), via, profile)
        })
        .collect()
}

fn show(m: &MessageDetail, json: bool, config: &crate::config::Config) -> anyhow::Result<i32> {
    let routes = routes(m, config);
    if json {
        let routes: Vec<_> = routes
            .iter()
            .map(|(rcpt, via, profile)| serde_json::json!({"recipient": rcpt, "next_hop": via, "profile": profile}))
            .collect();
        outln!(
            "{}",
            serde_json::json!({"envelope": m.envelope, "state": m.state, "in_flight": m.in_flight, "status": m.state_word(), "headers": m.headers, "routes": routes})
        );
        return Ok(0);
    }
    let e = &m.envelope;
    outln!("id:          {}", e.id);
    outln!(
        "received:    {} from {} (HELO {})",
        when(e.received_at),
        e.client_ip,
        e.helo
    );
    outln!(
        "sender:      {}",
        if e.sender.is_empty() { "<>" } else { &e.sender }
    );
    outln!("auth user:   {}", e.auth_user.as_deref().unwrap_or("-"));
    outln!("size:        {}", e.size);
    outln!("state:       {}", m.state_word());
    outln!("recipients:");
    for (r, (_, via, _)) in m.state.recipients.iter().zip(&routes) {
        outln!(
            "  {:<40} {}, via {via}, attempts {}, next {}, last error: {}",
            r.address,
            crate::queue::recipient_state(r),
            r.attempts,
            r.next_attempt.map(when).unwrap_or_else(|| "-".into()),
            r.last_error().unwrap_or_else(|| "-".into())
        );
        if let Some(policy) = r.last_result.as_ref().and_then(|l| l.tls_policy.as_ref()) {
            outln!("  {:<40} TLS policy: {policy}", "");
        }
    }
    outln!("headers:\n{}", m.headers);
    Ok(0)
}
