//! Peers for the relay benchmark (`bench/relay.py`), the same for Portcullis
//! and Postfix: a load generator that speaks STARTTLS and AUTH (Postfix's
//! smtp-source speaks neither), a discarding sink that speaks STARTTLS
//! (smtp-sink does not), a loopback DNS server with fixed answers for the
//! checks case, and the certificates they all use.
//!
//! Build: `cargo build --release --example bench_peer`.

mod cert;
mod dns;
mod load;
mod sink;
mod smtp_io;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Benchmark peers: load generator, TLS sink, loopback DNS, certificates")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Writes a throwaway CA and a server certificate it signs.
    Cert(cert::Args),
    /// Sends messages, one connection per message, and counts the 250s.
    Load(load::Args),
    /// Accepts and discards mail, counting messages into a file.
    Sink(sink::Args),
    /// Answers A and PTR queries from fixed records; NXDOMAIN otherwise.
    Dns(dns::Args),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        match cli.command {
            Command::Cert(args) => cert::run(args),
            Command::Load(args) => load::run(args).await,
            Command::Sink(args) => sink::run(args).await,
            Command::Dns(args) => dns::run(args).await,
        }
    })
}
