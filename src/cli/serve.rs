//! `portcullis serve`

use crate::config::{Config, LogFormat};
use crate::daemon::Daemon;
use std::path::PathBuf;
use tokio_util::sync::CancellationToken;

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Config file (TOML); without it, the embedded safe default.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Overrides server.data_dir.
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

pub fn run(args: ServeArgs) -> anyhow::Result<i32> {
    let mut config = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::embedded_default(),
    };
    if let Some(dir) = args.data_dir {
        config.server.data_dir = dir;
    }
    let _log_flush = init_logging(&config);
    // Queued mail, tokens and keys are nobody else's business: whatever
    // umask we were started with, what we create is ours alone (0600 files,
    // 0700 directories), and a data directory open to every local user is
    // closed to them.
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    close_to_others(&config.server.data_dir);
    // Every connection is a descriptor: use what the system allows, and keep
    // one in reserve for when it runs out anyway.
    let limit = crate::server::descriptors::raise_limit();
    crate::server::descriptors::keep_reserve();
    let needed = config.server.max_connections as u64 + 2 * config.delivery.concurrency as u64 + 64;
    match limit {
        Some(limit) if limit < needed => tracing::warn!(
            open_files = limit,
            needed,
            "the open-file limit is below max_connections plus deliveries: raise it (LimitNOFILE= in the unit, ulimit -n) or lower server.max_connections"
        ),
        _ => {}
    }
    match &args.config {
        Some(path) => tracing::info!(config = %path.display(), "configuration read"),
        None if std::path::Path::new(super::PACKAGED_CONFIG).exists() => tracing::warn!(
            "no --config given: running on the embedded safe default (loopback only), NOT on {0}; to run that one: portcullis serve --config {0}",
            super::PACKAGED_CONFIG
        ),
        None => tracing::info!(
            "no --config given: running on the embedded safe default (loopback only, data in {})",
            config.server.data_dir.display()
        ),
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let config_path = args.config.clone();
    runtime.block_on(async move {
        let mut server = Daemon::bind(config).await?;
        if let Some(path) = config_path {
            server = server.with_config_path(path);
        }
        // The handlers exist before "listening on" is logged: a SIGHUP or
        // SIGTERM sent as soon as the server says it is up must not find
        // the default action (which ends the process) still in place.
        use tokio::signal::unix::{SignalKind, signal};
        let term = signal(SignalKind::terminate())?;
        let int = signal(SignalKind::interrupt())?;
        let hup = signal(SignalKind::hangup())?;
        let shutdown = CancellationToken::new();
        tokio::spawn(stop_on_signal(term, int, shutdown.clone()));
        tokio::spawn(reload_on_sighup(hup, server.reload_handle()));
        server.run(shutdown).await
    })?;
    Ok(0)
}

async fn stop_on_signal(
    mut term: tokio::signal::unix::Signal,
    mut int: tokio::signal::unix::Signal,
    shutdown: CancellationToken,
) {
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
    shutdown.cancel();
}

/// SIGHUP: read the configuration, users and certificates again.
async fn reload_on_sighup(mut hup: tokio::signal::unix::Signal, reload: crate::app::ReloadHandle) {
    while hup.recv().await.is_some() {
        tracing::info!("SIGHUP received: reloading");
        reload.request();
    }
}

/// Logs go to stderr through the batching writer; the guard writes what is
/// left when the server stops.
fn init_logging(config: &Config) -> crate::log_writer::FlushOnDrop {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(config.log.level.as_deref().unwrap_or("info")))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    // No colours: every control byte is escaped in the log (see log_writer),
    // so that a client's terminal escapes can never reach the admin's screen.
    let ansi = false;
    let (writer, flush) = crate::log_writer::BatchedWriter::start(std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_target(false)
        .with_ansi(ansi);
    // Under systemd the journal stamps every line itself.
    let journald = std::env::var_os("JOURNAL_STREAM").is_some();
    match (config.log.format, journald) {
        (LogFormat::Json, _) => builder.json().init(),
        (LogFormat::Text, true) => builder.without_time().init(),
        (LogFormat::Text, false) => builder.init(),
    }
    flush
}

/// Takes the permissions of "other" users away from an existing data
/// directory (a group, as the package's 0750, is left as it is).
fn close_to_others(data_dir: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    let Ok(meta) = std::fs::metadata(data_dir) else {
        return; // made at start, under our umask
    };
    let mode = meta.permissions().mode();
    if mode & 0o007 != 0 {
        let closed = mode & !0o007;
        match std::fs::set_permissions(data_dir, std::fs::Permissions::from_mode(closed)) {
            Ok(()) => tracing::warn!(
                data_dir = %data_dir.display(),
                "the data directory was open to every local user (mode {:o}); now {:o}",
                mode & 0o7777,
                closed & 0o7777
            ),
            Err(e) => tracing::warn!(
                data_dir = %data_dir.display(),
                error = %e,
                "the data directory is open to every local user (mode {:o}) and cannot be closed: chmod o-rwx it",
                mode & 0o7777
            ),
        }
    }
}
