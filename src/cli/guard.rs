//! `portcullis guard`: the addresses the NAT sentinel took trust from (with
//! its evidence), and the admin's word on them. A running server is the one
//! writer of its guard state: these go through its control socket. With no
//! server running, the command edits `data_dir/guard.json` itself while it
//! holds the data directory's lock (so no server can start meanwhile).

use super::ConfigArgs;
use crate::config::GuardConfig;
use crate::control::{Answer, Command, ControlError, GuardCommand, request};
use crate::guard::{Guard, GuardState};
use std::net::IpAddr;
use std::time::Duration;

#[derive(Debug, clap::Args)]
pub struct GuardArgs {
    #[command(subcommand)]
    action: GuardAction,
    #[command(flatten)]
    config: ConfigArgs,
    /// Machine-readable output.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Debug, clap::Subcommand)]
enum GuardAction {
    /// Addresses that lost their trust, with the evidence, and those an admin trusted again.
    List,
    /// Trust an address again (its network's rules apply), and remember that an admin said so.
    Trust { ip: IpAddr },
    /// Take an address's trust: it must authenticate to relay.
    Untrust { ip: IpAddr },
}

pub fn run(args: GuardArgs) -> anyhow::Result<i32> {
    let config = args.config.load()?;
    let data_dir = &config.server.data_dir;
    let command = match &args.action {
        GuardAction::List => GuardCommand::List,
        GuardAction::Trust { ip } => GuardCommand::Trust { ip: *ip },
        GuardAction::Untrust { ip } => GuardCommand::Untrust { ip: *ip },
    };
    let state = match request(data_dir, &Command::Guard(command), Duration::from_secs(30)) {
        Ok(Answer::Guard { state }) => state,
        Ok(Answer::Error { message }) => anyhow::bail!(message),
        Ok(other) => anyhow::bail!("unexpected answer: {other:?}"),
        Err(ControlError::NoServer) => offline(data_dir, &args.action)?,
        Err(e) => anyhow::bail!(e),
    };
    match args.action {
        GuardAction::List => print(&state, args.json)?,
        GuardAction::Trust { ip } => outln!("{ip}: trusted again (the sentinel leaves it be)"),
        GuardAction::Untrust { ip } => outln!("{ip}: must authenticate to relay from now on"),
    }
    Ok(0)
}

/// No server runs: the file is changed here, under the data directory's lock.
fn offline(data_dir: &std::path::Path, action: &GuardAction) -> anyhow::Result<GuardState> {
    let _lock = crate::spool::lock_data_dir(data_dir)
        .map_err(|e| anyhow::anyhow!("cannot lock {}: {e}", data_dir.display()))?
        .ok_or_else(|| {
            anyhow::anyhow!(
                "{} is in use by a server that does not answer on its control socket; try again",
                data_dir.display()
            )
        })?;
    let guard = Guard::new(GuardConfig::default(), Some(data_dir.to_path_buf()));
    match action {
        GuardAction::List => {}
        GuardAction::Trust { ip } => guard.trust(*ip),
        GuardAction::Untrust { ip } => guard.untrust(*ip, "untrusted by an admin"),
    }
    Ok(guard.state())
}

fn print(state: &GuardState, json: bool) -> anyhow::Result<()> {
    if json {
        outln!("{}", serde_json::to_string_pretty(state)?);
        return Ok(());
    }
    if state.untrusted.is_empty() {
        outln!("no address has lost its trust");
    }
    for (ip, u) in &state.untrusted {
        let when = chrono::DateTime::from_timestamp(u.since, 0)
            .map(|d| d.format("%Y-%m-%d %H:%M:%S UTC").to_string())
            .unwrap_or_default();
        outln!("{ip}: untrusted since {when}: {}", u.evidence);
    }
    for ip in &state.trusted_by_admin {
        outln!("{ip}: trusted again by an admin");
    }
    Ok(())
}
