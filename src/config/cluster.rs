//! `[cluster]`: several nodes sharing one queue in PostgreSQL. Absent, the
//! node keeps its queue in its own data directory (the embedded default).

use super::ConfigDuration;
use serde::{Deserialize, Serialize};
use std::time::Duration;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// This node's number, unique in the cluster (checked at start against
    /// the database): the node part of the queue ids it mints.
    pub node_id: u8,
    /// The database: a libpq-style URL or key=value string. Several hosts
    /// with `target_session_attrs=read-write` find the primary after a
    /// failover. May hold a password: it is never logged or shown.
    pub database: String,
    /// How long a node holds a message without renewing its lease; a dead
    /// node's messages are delivered by the others this long after it
    /// stopped answering.
    #[serde(default = "default_lease")]
    pub lease: ConfigDuration,
    /// The database password, in a file of its own (0600) rather than in
    /// `database`, which the Settings page and config backups show.
    #[serde(default)]
    pub password_file: Option<std::path::PathBuf>,
    /// Connections to the database this node keeps open at most.
    #[serde(default = "default_pool_size")]
    pub pool_size: usize,
    /// With `sslmode=require` in `database`: a CA file (PEM) trusted for
    /// the database server's certificate, besides the web PKI and the
    /// system's trust store.
    #[serde(default)]
    pub ca_file: Option<std::path::PathBuf>,
}

fn default_lease() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(120))
}

fn default_pool_size() -> usize {
    8
}

impl ClusterConfig {
    /// `database` without its password, for messages and pages.
    pub fn database_shown(&self) -> String {
        match self.database.parse::<tokio_postgres::Config>() {
            Ok(c) => {
                let hosts: Vec<String> = c
                    .get_hosts()
                    .iter()
                    .map(|h| match h {
                        tokio_postgres::config::Host::Tcp(name) => name.clone(),
                        tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
                    })
                    .collect();
                format!(
                    "database {:?} on {} as {:?}",
                    c.get_dbname().unwrap_or("(default)"),
                    hosts.join(","),
                    c.get_user().unwrap_or("(default)")
                )
            }
            Err(_) => "(an unreadable connection string)".into(),
        }
    }
}
