//! `portcullis cluster status`: the nodes of the cluster and their last
//! sign of life, the messages each holds, and the database with its
//! standbys, as the cluster's database says (exit 0; 1 when a node is not
//! alive or no standby is synchronous; 2 when the database cannot be asked).

use super::ConfigArgs;
use crate::cluster::ClusterStatus;

#[derive(Debug, clap::Args)]
pub struct ClusterArgs {
    #[command(subcommand)]
    action: ClusterAction,
    #[command(flatten)]
    config: ConfigArgs,
}

#[derive(Debug, clap::Subcommand)]
enum ClusterAction {
    /// Nodes, their last sign of life, the database and its standby.
    Status {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(args: ClusterArgs) -> anyhow::Result<i32> {
    let config = args.config.load()?;
    let Some(cluster) = &config.cluster else {
        anyhow::bail!(
            "this configuration has no [cluster] section: the queue is this node's own{}",
            super::config_hint(&args.config)
        );
    };
    let ClusterAction::Status { json } = args.action;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let status = match runtime.block_on(crate::cluster::status(cluster)) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return Ok(2);
        }
    };
    if json {
        outln!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print(&status);
    }
    let healthy = status.nodes.iter().all(|n| n.alive)
        && status.standbys.iter().any(|s| s.sync_state == "sync");
    Ok(if healthy { 0 } else { 1 })
}

fn print(s: &ClusterStatus) {
    outln!(
        "{} ({})",
        s.database,
        if s.primary {
            "primary"
        } else {
            "a standby in recovery"
        }
    );
    if s.standbys.is_empty() {
        outln!("standbys: none: a 250 means on the primary's disk only");
    }
    for st in &s.standbys {
        outln!("standby {}: {} ({})", st.name, st.state, st.sync_state);
    }
    if s.nodes.is_empty() {
        outln!("nodes: none has started on this database yet");
    }
    for n in &s.nodes {
        outln!(
            "node {} on {} ({}): {} seen {}s ago, holds {} message(s)",
            n.node_id,
            n.hostname,
            n.data_dir,
            if n.alive { "alive," } else { "NOT ALIVE," },
            n.seconds_since_seen,
            n.messages
        );
    }
    outln!(
        "queue: {} message(s), {} held by no live node",
        s.messages,
        s.unheld
    );
}
