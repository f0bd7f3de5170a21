//! `portcullis cluster status`: what the cluster's database says of the
//! cluster — each node's last sign of life and how many messages it holds,
//! the messages no node holds, whether this database is the primary and
//! which standbys stream from it (and whether synchronously).

use super::db::NOW;
use crate::config::ClusterConfig;
use serde::Serialize;

#[derive(Debug, Serialize)]
pub struct ClusterStatus {
    /// The database, without its password.
    pub database: String,
    /// This server is the primary (not a standby in recovery).
    pub primary: bool,
    pub standbys: Vec<Standby>,
    pub nodes: Vec<NodeSeen>,
    /// Queued messages in all, and those whose holder's lease has ended.
    pub messages: i64,
    pub unheld: i64,
}

#[derive(Debug, Serialize)]
pub struct Standby {
    pub name: String,
    pub state: String,
    /// "sync", "async", "potential" or "quorum" (`pg_stat_replication`).
    pub sync_state: String,
}

#[derive(Debug, Serialize)]
pub struct NodeSeen {
    pub node_id: i32,
    pub hostname: String,
    pub data_dir: String,
    pub seconds_since_seen: i64,
    /// Seen within one lease.
    pub alive: bool,
    /// Messages it holds under a lease still running.
    pub messages: i64,
}

/// Asks the database (read only).
pub async fn status(cluster: &ClusterConfig) -> Result<ClusterStatus, String> {
    let pool = super::db::pool(cluster)?;
    let client = pool.get().await.map_err(|e| {
        format!(
            "cluster.database: cannot connect: {}",
            super::db::describe(&e)
        )
    })?;
    let failed = |e: tokio_postgres::Error| format!("cluster.database: {e}");
    let lease = cluster.lease.get().as_secs().max(1) as i64;
    let primary: bool = client
        .query_one("SELECT NOT pg_is_in_recovery()", &[])
        .await
        .map_err(failed)?
        .get(0);
    let standbys = client
        .query(
            "SELECT coalesce(application_name, ''), coalesce(state, ''), coalesce(sync_state, '')
               FROM pg_stat_replication ORDER BY 1",
            &[],
        )
        .await
        .map_err(failed)?
        .iter()
        .map(|r| Standby {
            name: r.get(0),
            state: r.get(1),
            sync_state: r.get(2),
        })
        .collect();
    let started: bool = client
        .query_one("SELECT to_regclass('portcullis_node') IS NOT NULL", &[])
        .await
        .map_err(failed)?
        .get(0);
    if !started {
        // No node has started on this database yet: nothing to count.
        return Ok(ClusterStatus {
            database: cluster.database_shown(),
            primary,
            standbys,
            nodes: Vec::new(),
            messages: 0,
            unheld: 0,
        });
    }
    let nodes = client
        .query(
            &format!(
                "SELECT n.node_id, n.hostname, n.data_dir, {NOW} - n.last_seen,
                        (SELECT count(*) FROM portcullis_message m
                          WHERE m.owner = n.node_id AND m.lease_until >= {NOW})
                   FROM portcullis_node n ORDER BY n.node_id"
            ),
            &[],
        )
        .await
        .map_err(failed)?
        .iter()
        .map(|r| {
            let ago: i64 = r.get(3);
            NodeSeen {
                node_id: r.get(0),
                hostname: r.get(1),
                data_dir: r.get(2),
                seconds_since_seen: ago,
                alive: ago <= lease,
                messages: r.get(4),
            }
        })
        .collect();
    let counts = client
        .query_one(
            &format!(
                "SELECT count(*), count(*) FILTER (WHERE owner IS NULL OR lease_until < {NOW})
                   FROM portcullis_message"
            ),
            &[],
        )
        .await
        .map_err(failed)?;
    Ok(ClusterStatus {
        database: cluster.database_shown(),
        primary,
        standbys,
        nodes,
        messages: counts.get(0),
        unheld: counts.get(1),
    })
}
