//! `portcullis doctor`: will mail from this machine be delivered and trusted?

use super::ConfigArgs;
use crate::diagnostics::doctor::{DoctorOptions, Status, run};
use std::net::IpAddr;
use std::time::Duration;

#[derive(Debug, clap::Args)]
pub struct DoctorArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// The address the world sees mail come from (default: [diagnostics] public_ip, or the default route's source).
    #[arg(long)]
    public_ip: Option<IpAddr>,
    /// A domain whose mail servers to try outbound port 25 against.
    #[arg(long, default_value = "gmail.com")]
    probe_domain: String,
    /// Seconds to wait for each connection.
    #[arg(long, default_value_t = 10)]
    timeout: u64,
    /// Machine-readable output: {"checks": [{"name", "status", "detail", "fix"}]}.
    #[arg(long)]
    json: bool,
}

pub fn run_cli(args: DoctorArgs) -> anyhow::Result<i32> {
    let config = args.config.load()?;
    let opts = DoctorOptions {
        public_ip: args.public_ip,
        probe_domain: args.probe_domain,
        timeout: Duration::from_secs(args.timeout.max(1)),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let checks = runtime.block_on(run(&config, &opts));
    if args.json {
        outln!("{}", serde_json::json!({ "checks": checks }));
    } else {
        for c in &checks {
            let word = match c.status {
                Status::Ok => "ok",
                Status::Warning => "WARNING",
                Status::Fail => "FAIL",
                Status::Skipped => "skipped",
            };
            outln!("{word:<8} {}: {}", c.name, c.detail);
            if !c.fix.is_empty() && c.status != Status::Ok {
                outln!("         fix: {}", c.fix);
            }
        }
    }
    Ok(if checks.iter().any(|c| c.status == Status::Fail) {
        1
    } else {
        0
    })
}
