//! `portcullis ban`: the addresses banned after too many failed logins
//! (SMTP AUTH or the admin page), and lifting a ban. Bans live in the
//! running server's memory, so these go through its control socket.

use super::ConfigArgs;
use crate::control::{Answer, BanCommand, Command, ControlError, request};
use std::net::IpAddr;
use std::time::Duration;

#[derive(Debug, clap::Args)]
pub struct BanArgs {
    #[command(subcommand)]
    action: BanAction,
    #[command(flatten)]
    config: ConfigArgs,
    /// Machine-readable output.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Debug, clap::Subcommand)]
enum BanAction {
    /// Banned addresses and the time each ban has left.
    List,
    /// End an address's ban now (its failed logins are forgotten too).
    Lift { ip: IpAddr },
}

pub fn run(args: BanArgs) -> anyhow::Result<i32> {
    let config = args.config.load()?;
    let command = match args.action {
        BanAction::List => Command::Bans(BanCommand::List),
        BanAction::Lift { ip } => Command::Bans(BanCommand::Lift { ip }),
    };
    let data_dir = &config.server.data_dir;
    let answer = match request(data_dir, &command, Duration::from_secs(30)) {
        Ok(a) => a,
        Err(ControlError::NoServer) => {
            eprintln!(
                "no server is running on {} (bans live in the running server's memory, or in a cluster's database){}",
                data_dir.display(),
                super::config_hint(&args.config)
            );
            return Ok(2);
        }
        Err(e) => anyhow::bail!(e),
    };
    match answer {
        Answer::Bans { bans } if args.json => {
            outln!("{}", serde_json::json!({ "bans": bans }));
        }
        Answer::Bans { bans } => {
            if bans.is_empty() {
                outln!("no address is banned");
            }
            for b in bans {
                outln!(
                    "{}: banned for {} more",
                    b.ip,
                    humantime::format_duration(Duration::from_secs(b.seconds_left))
                );
            }
        }
        Answer::Lifted { ip, was_banned } => {
            if args.json {
                outln!(
                    "{}",
                    serde_json::json!({"ip": ip, "was_banned": was_banned})
                );
            } else if was_banned {
                outln!("{ip}: ban lifted");
            } else {
                outln!("{ip}: was not banned (its failed logins are forgotten)");
            }
        }
        Answer::Error { message } => anyhow::bail!(message),
        other => anyhow::bail!("unexpected answer: {other:?}"),
    }
    Ok(0)
}
