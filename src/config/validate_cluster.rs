//! Checks of `[cluster]`: a connection string that parses (never repeated
//! in the finding: it may hold a password), one node number for the queue
//! ids, a lease and a pool that make sense.

use super::Config;
use super::validate::{Finding, Severity, finding};

pub fn check(c: &Config, out: &mut Vec<Finding>) {
    let Some(cl) = &c.cluster else {
        return;
    };
    // tokio-postgres's parse errors never repeat the string.
    if let Err(e) = cl.database.parse::<tokio_postgres::Config>() {
        out.push(finding(
            Severity::Error,
            "cluster.database",
            "(not shown: it may hold a password)",
            format!(
                "is not a PostgreSQL connection string ({}); write \"postgres://USER@HOST/DB\" or \"host=H dbname=D user=U\"",
                e
            ),
        ));
    }
    if cl
        .database
        .parse::<tokio_postgres::Config>()
        .is_ok_and(|d| d.get_password().is_some())
    {
        out.push(finding(
            Severity::Warning,
            "cluster.database",
            "(not shown: it holds a password)",
            "holds the database password, which the Settings page and the config's backups then show; put it in cluster.password_file (0600) instead",
        ));
    }
    if let Ok(parsed) = cl.database.parse::<tokio_postgres::Config>() {
        check_encryption(cl, &parsed, out);
    }
    if let Some(path) = &cl.password_file
        && let Err(e) = std::fs::read(path)
    {
        out.push(finding(
            Severity::Error,
            "cluster.password_file",
            path.display().to_string(),
            format!("cannot be read: {e}"),
        ));
    }
    if c.server.node_id != 0 && c.server.node_id != cl.node_id {
        out.push(finding(
            Severity::Error,
            "server.node_id",
            c.server.node_id.to_string(),
            format!(
                "differs from cluster.node_id = {}: a cluster node's queue ids carry cluster.node_id; leave server.node_id out",
                cl.node_id
            ),
        ));
    }
    let lease = cl.lease.get();
    if lease < std::time::Duration::from_secs(1) {
        out.push(finding(
            Severity::Error,
            "cluster.lease",
            cl.lease.to_string(),
            "must be at least 1s",
        ));
    } else if lease < std::time::Duration::from_secs(30) {
        out.push(finding(
            Severity::Warning,
            "cluster.lease",
            cl.lease.to_string(),
            "is short: a node that pauses longer (a busy disk, a VM migration) loses its messages to the others, which then deliver them too; 2m is the default",
        ));
    }
    if cl.pool_size == 0 || cl.pool_size > 256 {
        out.push(finding(
            Severity::Error,
            "cluster.pool_size",
            cl.pool_size.to_string(),
            "must be between 1 and 256",
        ));
    }
}

/// TLS to the database: `sslmode=require` for any host beyond this
/// machine (the queue's content and the password cross the network), and
/// a readable `ca_file`, which means nothing without it.
fn check_encryption(
    cl: &super::ClusterConfig,
    parsed: &tokio_postgres::Config,
    out: &mut Vec<Finding>,
) {
    use tokio_postgres::config::{Host, SslMode};
    let required = parsed.get_ssl_mode() == SslMode::Require;
    let remote = parsed.get_hosts().iter().find_map(|h| match h {
        Host::Tcp(name) if !is_loopback(name) => Some(name.clone()),
        _ => None,
    });
    if let (false, Some(host)) = (required, remote) {
        out.push(finding(
            Severity::Warning,
            "cluster.database",
            "(not shown: it may hold a password)",
            format!(
                "reaches {host} without TLS: the messages and the password cross the network in clear; add sslmode=require (and cluster.ca_file for a private CA) unless that network is private to the nodes"
            ),
        ));
    }
    match &cl.ca_file {
        Some(path) if !required => out.push(finding(
            Severity::Warning,
            "cluster.ca_file",
            path.display().to_string(),
            "is used only with sslmode=require in cluster.database",
        )),
        Some(path) => {
            if let Err(e) = crate::tls::ca_file_roots(path, "cluster.ca_file") {
                out.push(finding(
                    Severity::Error,
                    "cluster.ca_file",
                    path.display().to_string(),
                    e,
                ));
            }
        }
        None => {}
    }
}

fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, Severity};

    fn findings(cluster: &str) -> Vec<(Severity, String, String)> {
        toml::from_str::<Config>(cluster)
            .unwrap()
            .findings()
            .into_iter()
            .filter(|f| f.key.starts_with("cluster.") || f.key == "server.node_id")
            .map(|f| {
                (
                    f.severity,
                    f.key.clone(),
                    format!("{} {}", f.value, f.reason),
                )
            })
            .collect()
    }

    #[test]
    fn a_sound_cluster_section_passes() {
        let found = findings(
            "[cluster]\nnode_id = 2\ndatabase = \"postgres://relay@db1,db2/mail?target_session_attrs=read-write&sslmode=require\"\n",
        );
        assert!(found.is_empty(), "{found:?}");
        let found = findings(
            "[cluster]\nnode_id = 2\ndatabase = \"host=127.0.0.1 user=relay dbname=mail\"\n",
        );
        assert!(found.is_empty(), "loopback needs no TLS: {found:?}");
        let found =
            findings("[cluster]\nnode_id = 2\ndatabase = \"host=db1 user=relay dbname=mail\"\n");
        assert!(
            found.iter().any(|(s, k, r)| *s == Severity::Warning
                && k == "cluster.database"
                && r.contains("without TLS")),
            "{found:?}"
        );
        let c = Config::parse(
            "[cluster]\nnode_id = 2\ndatabase = \"host=db user=relay password=s3cret dbname=mail\"\n",
            "t",
        )
        .unwrap();
        assert_eq!(c.node_id(), 2, "queue ids carry the cluster's node number");
        let shown = c.cluster.unwrap().database_shown();
        assert!(!shown.contains("s3cret") && shown.contains("db"), "{shown}");
    }

    #[test]
    fn mistakes_are_named_without_showing_the_password() {
        let found = findings(
            "[server]\nnode_id = 3\n[cluster]\nnode_id = 4\ndatabase = \"postgres://u:s3cret@db/mail?nonsense=1\"\nlease = \"5s\"\npool_size = 0\n",
        );
        let keys: Vec<&str> = found.iter().map(|(_, k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "cluster.database",
                "server.node_id",
                "cluster.lease",
                "cluster.pool_size"
            ],
            "{found:?}"
        );
        assert!(found.iter().all(|(_, _, text)| !text.contains("s3cret")));
        assert_eq!(found[2].0, Severity::Warning, "a short lease is a warning");
        // A password in the connection string: said, not shown.
        let found = findings(
            "[cluster]\nnode_id = 1\ndatabase = \"postgres://u:s3cret@db/mail?sslmode=require\"\npassword_file = \"/nonexistent/pw\"\n",
        );
        let keys: Vec<&str> = found.iter().map(|(_, k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            ["cluster.database", "cluster.password_file"],
            "{found:?}"
        );
        assert!(found.iter().all(|(_, _, text)| !text.contains("s3cret")));
    }
}
