//! A cluster node's config file for the tests: the test's own sections,
//! then `[cluster]` on the test's PostgreSQL.

use std::path::{Path, PathBuf};

/// `[cluster]` as a test sets it.
pub struct ClusterSection<'a> {
    pub node_id: u8,
    pub database: &'a str,
    pub lease: &'a str,
    pub pool_size: usize,
}

/// Writes `dir/portcullis.toml`: `sections` (listeners, networks,
/// delivery…, completed with the data dir, certificates and DNS every test
/// config has), then `[cluster]`.
pub fn write(dir: &Path, sections: &str, cluster: &ClusterSection) -> PathBuf {
    let ca = super::tls::TestCa::generate(dir);
    let ClusterSection {
        node_id,
        database,
        lease,
        pool_size,
    } = cluster;
    let text = super::server::complete_config(
        &format!(
            "{sections}[cluster]\nnode_id = {node_id}\ndatabase = \"{database}\"\nlease = \"{lease}\"\npool_size = {pool_size}\n"
        ),
        dir,
        &ca,
    );
    let path = dir.join("portcullis.toml");
    std::fs::write(&path, text).unwrap();
    path
}
