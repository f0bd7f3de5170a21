//! `doctor`'s checks of a cluster node: the database answers and is the
//! primary, a standby is synchronous (or the weaker promise is said), this
//! node's number is not held by another live installation, and every node
//! the database knows is alive.

use super::doctor::{Check, Status};
use crate::config::Config;

pub async fn checks(config: &Config) -> Vec<Check> {
    let Some(cluster) = &config.cluster else {
        return Vec::new();
    };
    let check = |name: &str, status, detail: String, fix: &str| Check {
        name: name.to_string(),
        status,
        detail,
        fix: fix.to_string(),
    };
    let status = match crate::cluster::status(cluster).await {
        Ok(s) => s,
        Err(e) => {
            return vec![check(
                "cluster database",
                Status::Fail,
                e,
                "start PostgreSQL or correct cluster.database / cluster.password_file; until then new mail gets 451",
            )];
        }
    };
    let mut out = vec![check(
        "cluster database",
        if status.primary {
            Status::Ok
        } else {
            Status::Fail
        },
        format!(
            "{} ({})",
            status.database,
            if status.primary {
                "the primary"
            } else {
                "a standby in recovery: nothing can be written"
            }
        ),
        "name every host in cluster.database with target_session_attrs=read-write, so that the primary is found",
    )];
    out.push(
        match status.standbys.iter().find(|s| s.sync_state == "sync") {
            Some(s) => check(
                "cluster standby",
                Status::Ok,
                format!(
                    "{} streams synchronously: a 250 means on two machines",
                    s.name
                ),
                "",
            ),
            None => check(
                "cluster standby",
                Status::Warning,
                "no synchronous standby: a 250 means on the primary's disk only".into(),
                "add a standby and name it in synchronous_standby_names on the primary",
            ),
        },
    );
    let me = config.hostname();
    let data_dir = config.server.data_dir.display().to_string();
    let holder = status
        .nodes
        .iter()
        .find(|n| n.node_id == i32::from(cluster.node_id));
    out.push(match holder {
        Some(n) if n.alive && (n.hostname != me || n.data_dir != data_dir) => check(
            "cluster node id",
            Status::Fail,
            format!(
                "cluster.node_id = {} is held by {} ({}), seen {}s ago",
                cluster.node_id, n.hostname, n.data_dir, n.seconds_since_seen
            ),
            "give each node its own cluster.node_id",
        ),
        _ => check(
            "cluster node id",
            Status::Ok,
            format!(
                "cluster.node_id = {} is this installation's",
                cluster.node_id
            ),
            "",
        ),
    });
    let silent: Vec<String> = status
        .nodes
        .iter()
        .filter(|n| !n.alive)
        .map(|n| {
            format!(
                "node {} on {} ({}s ago)",
                n.node_id, n.hostname, n.seconds_since_seen
            )
        })
        .collect();
    out.push(if silent.is_empty() {
        check(
            "cluster nodes",
            Status::Ok,
            format!("{} node(s), all alive", status.nodes.len()),
            "",
        )
    } else {
        check(
            "cluster nodes",
            Status::Warning,
            format!("not seen within a lease: {}", silent.join(", ")),
            "their messages go to the nodes that are alive; start them again, or forget a node for good by deleting its row from portcullis_node",
        )
    });
    out
}
