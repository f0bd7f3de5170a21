//! The command line: clap subcommands, each in its own module.

#[macro_use]
mod output;

mod audit;
mod ban;
mod check;
mod cluster;
pub mod dkim;
mod doctor;
mod explain;
mod guard;
pub mod oauth;
mod queue;
mod relay_test;
mod reload;
mod serve;
mod status;
mod user;

use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "portcullis",
    version,
    about = "An SMTP relay that cannot become an open relay by accident"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the relay in the foreground (the embedded safe default without --config).
    Serve(serve::ServeArgs),
    /// Validate a config file: exit 0 when valid, otherwise name the key and the reason.
    CheckConfig(check::CheckArgs),
    /// Inspect and manage the queue (safe while the server runs).
    Queue(queue::QueueArgs),
    /// Manage the users allowed to authenticate.
    User(user::UserArgs),
    /// Show, stage by stage, what the server would do with one client and envelope.
    Explain(explain::ExplainArgs),
    /// Review a config: every risk in plain words, with the fix (exit 0 clean, 1 warnings, 2 a risk).
    Audit(audit::AuditArgs),
    /// Try to relay through one server in every known way (exit 0 only when nothing relayed).
    RelayTest(relay_test::RelayTestArgs),
    /// Check that mail from this machine will be delivered and trusted (DNS, port 25, smart host, relay).
    Doctor(doctor::DoctorArgs),
    /// Make the running server read its configuration, users and certificates again.
    Reload(reload::ReloadArgs),
    /// Whether a server runs: since when, listeners, connections, queue (exit 3 when none).
    Status(status::StatusArgs),
    /// Addresses the NAT sentinel took trust from; trust or untrust one.
    Guard(guard::GuardArgs),
    /// Addresses banned after too many failed logins; lift a ban.
    Ban(ban::BanArgs),
    /// Sign in for an OAuth2 smart-host profile, or show who is signed in.
    #[command(name = "oauth")]
    OAuth(oauth::OAuthArgs),
    /// Make a DKIM signing key and the DNS record that publishes it.
    Dkim(dkim::DkimArgs),
    /// The cluster's nodes, their last sign of life, the database and its standby.
    Cluster(cluster::ClusterArgs),
}

/// Where a command finds the configuration (shared by queue and user).
#[derive(Debug, clap::Args)]
struct ConfigArgs {
    /// Config file; the embedded default when absent.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
}

/// Where the Debian package puts the configuration.
pub const PACKAGED_CONFIG: &str = "/etc/portcullis/portcullis.toml";

impl ConfigArgs {
    fn path(&self) -> Option<&std::path::Path> {
        self.config.as_deref()
    }

    /// The config named by --config; else the packaged one when it exists;
    /// else the embedded default.
    fn load(&self) -> anyhow::Result<crate::config::Config> {
        let packaged = std::path::Path::new(PACKAGED_CONFIG);
        Ok(match &self.config {
            Some(path) => crate::config::Config::load(path)?,
            None if packaged.exists() => crate::config::Config::load(packaged)?,
            None => crate::config::Config::embedded_default(),
        })
    }
}

/// The config file a command reads: --config, else the packaged one; an
/// error that says so when there is neither.
fn config_file(arg: &Option<PathBuf>) -> anyhow::Result<PathBuf> {
    match arg {
        Some(path) => Ok(path.clone()),
        None if std::path::Path::new(PACKAGED_CONFIG).exists() => Ok(PACKAGED_CONFIG.into()),
        None => anyhow::bail!(
            "no --config given and {PACKAGED_CONFIG} does not exist: name the configuration with --config FILE"
        ),
    }
}

/// A hint for a command that found no server (or no queue) where it looked:
/// when no --config was given and there is no packaged config, it looked in
/// the embedded default's data directory, which is rarely what was meant.
fn config_hint(args: &ConfigArgs) -> String {
    if args.config.is_some() || std::path::Path::new(PACKAGED_CONFIG).exists() {
        return String::new();
    }
    format!(
        "; no --config was given and {PACKAGED_CONFIG} does not exist, so the embedded default's data directory was used: pass --config FILE for your server's"
    )
}

/// Runs the parsed command; the exit code comes back.
pub fn run(cli: Cli) -> anyhow::Result<i32> {
    match cli.command {
        Command::Serve(a) => serve::run(a),
        Command::CheckConfig(a) => check::run(a),
        Command::Queue(a) => queue::run(a),
        Command::User(a) => user::run(a),
        Command::Explain(a) => explain::run(a),
        Command::Audit(a) => audit::run(a),
        Command::RelayTest(a) => relay_test::run_cli(a),
        Command::Doctor(a) => doctor::run_cli(a),
        Command::Reload(a) => reload::run(a),
        Command::Status(a) => status::run(a),
        Command::Guard(a) => guard::run(a),
        Command::Ban(a) => ban::run(a),
        Command::OAuth(a) => oauth::run(a),
        Command::Dkim(a) => dkim::run(a),
        Command::Cluster(a) => cluster::run(a),
    }
}
