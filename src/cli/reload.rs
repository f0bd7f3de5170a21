//! `portcullis reload`: asks the running server to read its configuration,
//! users and certificates again, and says whether the new config was taken.

use super::ConfigArgs;
use crate::control::{Answer, Command, ControlError, request};
use std::time::Duration;

#[derive(Debug, clap::Args)]
pub struct ReloadArgs {
    #[command(flatten)]
    config: ConfigArgs,
}

pub fn run(args: ReloadArgs) -> anyhow::Result<i32> {
    // The server judges the new config itself (and names what is wrong with
    // it); here only its data directory is needed, to find the server.
    let data_dir = match args.config.load() {
        Ok(config) => config.server.data_dir,
        Err(e) => match lenient_data_dir(args.config.path()) {
            Some(dir) => dir,
            None => anyhow::bail!(e),
        },
    };
    let data_dir = &data_dir;
    match request(data_dir, &Command::Reload, Duration::from_secs(60)) {
        Ok(Answer::Reloaded { message }) => {
            outln!("reloaded: {message}");
            Ok(0)
        }
        Ok(Answer::Error { message }) => {
            eprintln!("not reloaded, the server runs on its previous configuration: {message}");
            Ok(1)
        }
        Ok(other) => anyhow::bail!("unexpected answer: {other:?}"),
        Err(ControlError::NoServer) => {
            eprintln!(
                "no server is running on {}{}",
                data_dir.display(),
                super::config_hint(&args.config)
            );
            Ok(2)
        }
        Err(e) => anyhow::bail!(e),
    }
}

/// `server.data_dir` from a config file that may not be valid otherwise.
fn lenient_data_dir(path: Option<&std::path::Path>) -> Option<std::path::PathBuf> {
    let text = std::fs::read_to_string(path?).ok()?;
    let value: toml::Value = toml::from_str(&text).ok()?;
    let dir = value
        .get("server")
        .and_then(|s| s.get("data_dir"))
        .and_then(|d| d.as_str())
        .unwrap_or("portcullis-data");
    Some(std::path::PathBuf::from(dir))
}
