//! A throwaway CA and one ECDSA P-256 server certificate for every TLS peer
//! of the benchmark (both relays and the sink), so that handshakes cost the
//! same whoever makes them.

use anyhow::Context;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Directory for ca.pem, cert.pem and key.pem.
    #[arg(long)]
    dir: PathBuf,
    /// Names in the server certificate.
    #[arg(long, default_values_t = ["relay.bench.test".to_string(), "sink.bench.test".to_string(), "localhost".to_string()])]
    name: Vec<String>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Portcullis benchmark CA");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;
    let key = KeyPair::generate()?;
    let cert = CertificateParams::new(args.name)?.signed_by(&key, &ca)?;
    std::fs::create_dir_all(&args.dir)?;
    let write = |name: &str, text: String| {
        let path = args.dir.join(name);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
    };
    write("ca.pem", ca.pem())?;
    write("cert.pem", cert.pem())?;
    write("key.pem", key.serialize_pem())?;
    Ok(())
}
