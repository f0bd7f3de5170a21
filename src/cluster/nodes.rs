//! The nodes' register: each node number is held by one live node. A node
//! signs in at start and renews its sign of life with its leases; a number
//! whose holder has not been seen for a lease is free again, and the same
//! installation (machine and data directory) restarting takes its own
//! number back at once.

use super::db::NOW;

/// Why a node could not sign in.
#[derive(Debug)]
pub enum RegisterError {
    /// The database did not answer or failed: worth trying again.
    Database(String),
    /// Another live node holds the number: a configuration to fix.
    InUse(String),
    /// The database answers, but not to this configuration (its
    /// certificate is not trusted, the login is refused): to fix too.
    Misconfigured(String),
}

impl std::fmt::Display for RegisterError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RegisterError::Database(e)
            | RegisterError::InUse(e)
            | RegisterError::Misconfigured(e) => f.write_str(e),
        }
    }
}

/// Signs this node in, or says who holds its number.
pub async fn register(
    client: &tokio_postgres::Client,
    node: u8,
    hostname: &str,
    data_dir: &std::path::Path,
    lease: i64,
) -> Result<(), RegisterError> {
    let node = i32::from(node);
    let dir = data_dir.display().to_string();
    let taken = client
        .query_opt(
            &format!(
                "INSERT INTO portcullis_node (node_id, hostname, data_dir, last_seen)
                 VALUES ($1, $2, $3, {NOW})
                 ON CONFLICT (node_id) DO UPDATE
                    SET hostname = EXCLUDED.hostname, data_dir = EXCLUDED.data_dir,
                        last_seen = EXCLUDED.last_seen
                  WHERE portcullis_node.last_seen < {NOW} - $4
                     OR (portcullis_node.hostname = EXCLUDED.hostname
                         AND portcullis_node.data_dir = EXCLUDED.data_dir)
                 RETURNING node_id"
            ),
            &[&node, &hostname, &dir, &lease],
        )
        .await
        .map_err(|e| {
            RegisterError::Database(format!("cluster.database: cannot register this node: {e}"))
        })?;
    if taken.is_some() {
        return Ok(());
    }
    let holder = client
        .query_one(
            &format!(
                "SELECT hostname, data_dir, {NOW} - last_seen AS ago FROM portcullis_node WHERE node_id = $1"
            ),
            &[&node],
        )
        .await
        .map_err(|e| RegisterError::Database(format!("cluster.database: {e}")))?;
    let (host, dir, ago): (String, String, i64) = (
        holder.get("hostname"),
        holder.get("data_dir"),
        holder.get("ago"),
    );
    Err(RegisterError::InUse(format!(
        "cluster.node_id = {node} is in use by {host} ({dir}), seen {ago}s ago: give each node its own number"
    )))
}

/// Who a node is: its number and its installation.
#[derive(Debug, Clone)]
pub struct Identity {
    pub node: i32,
    pub hostname: String,
    pub data_dir: String,
}

/// This node is alive. Only while the number is still this installation's:
/// a node that stalled past its lease while another took its number over
/// does not keep that other one's sign of life fresh.
pub async fn heartbeat(
    client: &tokio_postgres::Client,
    me: &Identity,
) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            &format!(
                "UPDATE portcullis_node SET last_seen = {NOW}
                  WHERE node_id = $1 AND hostname = $2 AND data_dir = $3"
            ),
            &[&me.node, &me.hostname, &me.data_dir],
        )
        .await
        .map(|_| ())
}

/// This node stops: its number is free for any installation at once.
pub async fn sign_out(
    client: &tokio_postgres::Client,
    me: &Identity,
) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "UPDATE portcullis_node SET last_seen = 0
              WHERE node_id = $1 AND hostname = $2 AND data_dir = $3",
            &[&me.node, &me.hostname, &me.data_dir],
        )
        .await
        .map(|_| ())
}
