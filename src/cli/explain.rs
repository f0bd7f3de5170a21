//! `portcullis explain`: what the server would do with one client and envelope.

use crate::config::Config;
use crate::diagnostics::explain::{Question, Verdict, explain, gather};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct ExplainArgs {
    /// The config to judge by (default: the packaged one).
    #[arg(long)]
    config: Option<PathBuf>,
    /// The client's address.
    #[arg(long)]
    ip: IpAddr,
    /// The listener it connects to (IP:PORT as in the config); the first listener when absent.
    #[arg(long)]
    listener: Option<SocketAddr>,
    /// The name it gives in EHLO.
    #[arg(long, default_value = "client.invalid")]
    helo: String,
    /// Authenticate as this user (the password is taken to be right).
    #[arg(long)]
    auth: Option<String>,
    /// The client uses STARTTLS.
    #[arg(long)]
    tls: bool,
    /// MAIL FROM carries SMTPUTF8 (needed for UTF-8 addresses).
    #[arg(long)]
    smtputf8: bool,
    /// The envelope sender (`<>` for the null sender).
    #[arg(long)]
    from: String,
    /// An envelope recipient (repeat for several).
    #[arg(long, required = true)]
    to: Vec<String>,
    /// Skip DNS-based checks (and say so).
    #[arg(long)]
    offline: bool,
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
}

pub fn run(args: ExplainArgs) -> anyhow::Result<i32> {
    let config = Config::load(&super::config_file(&args.config)?)?;
    let mut question = Question {
        ip: args.ip,
        listener: args.listener,
        helo: args.helo,
        auth: args.auth,
        tls: args.tls,
        from: args.from,
        to: args.to,
        checks: Default::default(),
        recipient_checks: Vec::new(),
        smtputf8: args.smtputf8,
    };
    let looks_up = config.checks.uses_dns()
        || config.relay.verify_recipients != crate::config::VerifyRecipients::Off;
    if looks_up && !args.offline {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(gather(&config, &mut question));
    }
    let mut answer = explain(&config, &question);
    if looks_up && args.offline {
        answer.steps.insert(
            0,
            crate::policy::Step {
                stage: crate::policy::Stage::Connect,
                text: "--offline: DNS-based checks and recipient verification skipped".into(),
            },
        );
    }
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&answer)?);
    } else {
        for step in &answer.steps {
            outln!(
                "{:<8} {}",
                format!("{:?}", step.stage).to_lowercase(),
                step.text
            );
        }
        let word = match answer.verdict {
            Verdict::Accept => "ACCEPT",
            Verdict::Refuse => "REFUSE",
        };
        outln!("verdict  {word}: {}", answer.reply);
    }
    Ok(match answer.verdict {
        Verdict::Accept => 0,
        Verdict::Refuse => 1,
    })
}
