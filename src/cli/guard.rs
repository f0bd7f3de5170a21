//! `portcullis guard`: the addresses the NAT sentinel took trust from (with
//! its evidence), and the admin's word on them. Works on `data_dir/guard.json`,
//! which a running server reads again when it changes.

use super::ConfigArgs;
use crate::config::GuardConfig;
use crate::guard::Guard;
use std::net::IpAddr;

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
    let guard = Guard::new(GuardConfig::default(), Some(config.server.data_dir.clone()));
    match args.action {
        GuardAction::List => {
            let state = guard.state();
            if args.json {
                outln!("{}", serde_json::to_string_pretty(&state)?);
                return Ok(0);
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
        }
        GuardAction::Trust { ip } => {
            guard.trust(ip);
            outln!("{ip}: trusted again (the sentinel leaves it be)");
        }
        GuardAction::Untrust { ip } => {
            guard.untrust(ip, "untrusted by an admin");
            outln!("{ip}: must authenticate to relay from now on");
        }
    }
    Ok(0)
}
