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

/// One message from an outsider to `b@example.lan` on a greeted session,
/// then QUIT: the code that ended it (DATA's, or MAIL's refusal). The
/// nodes share counts every 100 ms: it waits 400 ms before it returns.
pub async fn inbound_message_code(c: &mut super::client::SmtpClient, subject: &str) -> u16 {
    let r = c.cmd("MAIL FROM:<a@spread.test>").await;
    let code = if r.code == 250 {
        c.expect("RCPT TO:<b@example.lan>", 250).await;
        c.expect("DATA", 354).await;
        c.cmd(&format!("Subject: {subject}\r\n\r\nx\r\n."))
            .await
            .code
    } else {
        r.code
    };
    c.cmd("QUIT").await;
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    code
}
