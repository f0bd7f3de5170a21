//! The connection pool to the cluster's database, with bounded waits.

use crate::config::ClusterConfig;

/// The longest wait for a connection from the pool, or a new one: a
/// database that does not answer makes a session answer 451 within
/// seconds instead of hanging.
const DB_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// The database's "now", in unix seconds (leases and signs of life use the
/// database's clock, so nodes whose clocks differ still agree).
pub const NOW: &str = "extract(epoch from now())::bigint";

/// A pool for `cluster.database` (the password from `password_file` when
/// set). Connects lazily: the first `get` says whether the database answers.
pub fn pool(cluster: &ClusterConfig) -> Result<deadpool_postgres::Pool, String> {
    let mut config: tokio_postgres::Config = cluster
        .database
        .parse()
        .map_err(|e| format!("cluster.database: {e}"))?;
    config.connect_timeout(DB_WAIT);
    if let Some(path) = &cluster.password_file {
        let password = std::fs::read_to_string(path)
            .map_err(|e| format!("cluster.password_file {}: {e}", path.display()))?;
        config.password(password.trim_end_matches(['\r', '\n']));
    }
    let manager_config = deadpool_postgres::ManagerConfig {
        recycling_method: deadpool_postgres::RecyclingMethod::Fast,
    };
    // sslmode=require: TLS, the server's certificate verified and its name
    // checked. Otherwise in clear (libpq's "prefer" would try TLS without
    // verifying anything, which protects against nothing that matters).
    let manager = if config.get_ssl_mode() == tokio_postgres::config::SslMode::Require {
        let tls = crate::client_tls::verified_with(cluster.ca_file.as_deref(), "cluster.ca_file")?;
        deadpool_postgres::Manager::from_config(
            config,
            tokio_postgres_rustls::MakeRustlsConnect::new((*tls).clone()),
            manager_config,
        )
    } else {
        deadpool_postgres::Manager::from_config(config, tokio_postgres::NoTls, manager_config)
    };
    deadpool_postgres::Pool::builder(manager)
        .max_size(cluster.pool_size.max(1))
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .wait_timeout(Some(DB_WAIT))
        .create_timeout(Some(DB_WAIT))
        .recycle_timeout(Some(DB_WAIT))
        .build()
        .map_err(|e| format!("cluster.database: {e}"))
}

/// An error with its causes ("error performing TLS handshake: invalid peer
/// certificate: UnknownIssuer"): the top line alone seldom says what to fix.
/// tokio-postgres never puts the connection string in its errors.
pub fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let said = cause.to_string();
        if !text.contains(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        source = cause.source();
    }
    text
}

/// Whether a failure to connect is one that waiting will not mend: the
/// server's certificate is not trusted (or names another host), the login
/// is refused, or the database does not exist. Anything else (refused,
/// timed out, shutting down) may pass.
pub fn is_misconfiguration(e: &deadpool_postgres::PoolError) -> bool {
    let deadpool_postgres::PoolError::Backend(e) = e else {
        return false;
    };
    if let Some(db) = e.as_db_error() {
        let code = db.code().code();
        // 28xxx: invalid authorization; 3D000: no such database.
        return code.starts_with("28") || code == "3D000";
    }
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        // An io::Error's source skips the error it wraps: look inside too.
        let wrapped = c
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .map(|inner| inner as &(dyn std::error::Error + 'static));
        if c.is::<rustls::Error>() || wrapped.is_some_and(|w| w.is::<rustls::Error>()) {
            return true;
        }
        cause = c.source();
    }
    false
}
