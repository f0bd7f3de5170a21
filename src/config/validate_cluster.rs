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
            "[cluster]\nnode_id = 2\ndatabase = \"postgres://relay@db1,db2/mail?target_session_attrs=read-write\"\n",
        );
        assert!(found.is_empty(), "{found:?}");
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
            "[cluster]\nnode_id = 1\ndatabase = \"postgres://u:s3cret@db/mail\"\npassword_file = \"/nonexistent/pw\"\n",
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
