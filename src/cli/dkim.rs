//! `portcullis dkim keygen DOMAIN SELECTOR`: writes a new signing key (0600,
//! handed to the service's user when run as root) and prints the DNS record
//! to publish and the `[[dkim]]` lines to add.

use super::ConfigArgs;
use crate::dkim::keygen::{self, Algorithm};
use crate::fsio::{NewFile, Owner};
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct DkimArgs {
    #[command(subcommand)]
    action: DkimAction,
    #[command(flatten)]
    config: ConfigArgs,
}

#[derive(Debug, clap::Subcommand)]
enum DkimAction {
    /// Make a key pair: the private key in a file, the public key as a TXT record.
    Keygen {
        domain: String,
        selector: String,
        #[arg(long, value_enum, default_value = "rsa")]
        algorithm: Algorithm,
        /// RSA key size.
        #[arg(long, default_value_t = 2048)]
        bits: usize,
        /// Where to write the key (default: DOMAIN.SELECTOR.key here).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

pub fn run(args: DkimArgs) -> anyhow::Result<i32> {
    match args.action {
        DkimAction::Keygen {
            domain,
            selector,
            algorithm,
            bits,
            out,
        } => keygen_cmd(&args.config, &domain, &selector, algorithm, bits, out),
    }
}

fn keygen_cmd(
    config: &ConfigArgs,
    domain: &str,
    selector: &str,
    algorithm: Algorithm,
    bits: usize,
    out: Option<PathBuf>,
) -> anyhow::Result<i32> {
    if algorithm == Algorithm::Rsa && !(crate::dkim_key::MIN_RSA_BITS..=8192).contains(&bits) {
        anyhow::bail!(
            "--bits {bits}: use 2048 to 8192 (receivers distrust smaller keys; 4096 is the most many DNS hosts can publish)"
        );
    }
    let path = out.unwrap_or_else(|| PathBuf::from(format!("{domain}.{selector}.key")));
    if path.exists() {
        anyhow::bail!(
            "{} exists: a key is never overwritten (a new key goes with a new selector); remove it first if you mean to",
            path.display()
        );
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", parent.display()))?;
    }
    let (pem, loaded) = keygen::generate(algorithm, bits).map_err(anyhow::Error::msg)?;
    // The service reads the key as its own user: give it the data directory's owner.
    let owner = config
        .load()
        .ok()
        .and_then(|c| Owner::of(&c.server.data_dir).ok());
    crate::fsio::replace(&path, pem.as_bytes(), NewFile::PRIVATE.owned_by(owner))
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
    let name = format!("{selector}._domainkey.{domain}");
    outln!("Wrote the private key to {} (mode 0600).", path.display());
    outln!();
    outln!("Publish this TXT record in {domain}'s DNS:");
    outln!("{}", keygen::zone_line(&name, &loaded.record()));
    outln!();
    outln!("Its value alone, for a DNS provider's web form:");
    outln!("{}", loaded.record());
    outln!();
    outln!("Then add to the configuration and reload:");
    outln!("[[dkim]]");
    outln!("domain = \"{domain}\"");
    outln!("selector = \"{selector}\"");
    outln!("key_file = \"{}\"", absolute(&path).display());
    outln!();
    outln!("`portcullis doctor` checks the published record against the key.");
    Ok(0)
}

fn absolute(path: &std::path::Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}
