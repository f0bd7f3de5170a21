//! `portcullis check-config`

use crate::config::{Config, Severity};
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// The config to check (default: the packaged one).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Print findings as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(args: CheckArgs) -> anyhow::Result<i32> {
    let path = super::config_file(&args.config)?;
    let text = std::fs::read_to_string(&path)
        .map_err(|e| anyhow::anyhow!("cannot read config file {}: {e}", path.display()))?;
    let origin = path.display().to_string();
    // Parse without stopping at the first error, so that every finding is shown.
    let config: Config = match toml::from_str(&text) {
        Ok(c) => c,
        Err(e) => {
            let msg = format!("{origin}: {}", crate::config::parse_error_text(&e, &text));
            if args.json {
                outln!(
                    "{}",
                    serde_json::json!({"valid": false, "findings": [{"severity": "error", "key": "", "value": "", "reason": msg}]})
                );
            } else {
                eprintln!("error: {msg}");
            }
            return Ok(2);
        }
    };
    let findings = config.findings();
    let valid = !findings.iter().any(|f| f.severity == Severity::Error);
    if args.json {
        outln!(
            "{}",
            serde_json::json!({"valid": valid, "findings": findings, "legacy_profile": config.legacy_profile_note()})
        );
    } else {
        for f in &findings {
            if f.severity == Severity::Error {
                eprintln!("{origin}: {f}");
            } else {
                outln!("{origin}: {f}");
            }
        }
        if let Some(note) = config.legacy_profile_note() {
            outln!("{origin}: note: {note}");
        }
        if valid {
            outln!("{origin}: configuration is valid");
            let overlapping = config.network.iter().enumerate().any(|(i, a)| {
                config.network.iter().skip(i + 1).any(|b| {
                    let (na, nb) = (a.range.net(), b.range.net());
                    na.contains(&nb.network()) || nb.contains(&na.network())
                })
            });
            if overlapping {
                outln!(
                    "note: overlapping [[network]] ranges: the most specific range wins; an excluded address is never trusted without AUTH"
                );
            }
        }
    }
    Ok(if valid { 0 } else { 2 })
}
