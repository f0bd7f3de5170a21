//! `portcullis audit`: every risk of a config in plain words, with the fix.

use crate::config::Config;
use crate::diagnostics::audit::{Finding, Machine, Severity, audit, exit_code};
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct AuditArgs {
    /// The config to review (default: the packaged one).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Machine-readable output: {"findings": [{"severity", "key", "message", "fix"}]}.
    #[arg(long)]
    json: bool,
}

pub fn run(args: AuditArgs) -> anyhow::Result<i32> {
    let path = super::config_file(&args.config)?;
    let text = std::fs::read_to_string(&path)
        .map_err(|e| anyhow::anyhow!("cannot read config file {}: {e}", path.display()))?;
    // Parsed without validation, so that a config the server would refuse is still reviewed.
    let findings = match toml::from_str::<Config>(&text) {
        Ok(config) => {
            let mut machine = Machine::read();
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(machine.test_zones(&config));
            audit(&config, &machine)
        }
        Err(e) => vec![Finding {
            severity: Severity::Risk,
            key: String::new(),
            message: format!("{}: {}", path.display(), e.to_string().trim_end()),
            fix: "correct the file: the server cannot start with it".into(),
        }],
    };
    if args.json {
        outln!("{}", serde_json::json!({ "findings": findings }));
    } else if findings.is_empty() {
        outln!("{}: no findings", path.display());
    } else {
        for f in &findings {
            let label = match f.severity {
                Severity::Risk => "RISK",
                Severity::Warning => "warning",
                Severity::Info => "note",
            };
            outln!("{label}: [{}] {}\n    fix: {}", f.key, f.message, f.fix);
        }
    }
    Ok(exit_code(&findings))
}
