//! Live reload (SIGHUP, `portcullis reload`, or changed certificate files):
//! the configuration, the users file and the certificates are read again.
//! A new connection gets the new rules; an open session finishes under the
//! rules it started with (it holds its own context); listeners added or
//! removed are bound or closed; queued mail follows the new routes at its
//! next attempt. An invalid configuration changes nothing: the error names
//! the key and the reason, and the server runs on as before.

use super::Context;
use crate::config::Config;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::SystemTime;
use tokio::sync::{mpsc, oneshot};

/// The context new connections get; replaced whole by a reload.
#[derive(Clone)]
pub struct CurrentContext(Arc<RwLock<Arc<Context>>>);

impl CurrentContext {
    pub fn new(ctx: Arc<Context>) -> CurrentContext {
        CurrentContext(Arc::new(RwLock::new(ctx)))
    }

    pub fn get(&self) -> Arc<Context> {
        Arc::clone(&self.0.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Puts a reloaded context in force for new connections.
    pub fn set(&self, ctx: Arc<Context>) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = ctx;
    }
}

/// A request to reload, with where to say how it went.
pub struct ReloadRequest {
    pub reply: Option<oneshot::Sender<Result<String, String>>>,
}

/// The way to ask the running server for a reload.
#[derive(Clone)]
pub struct ReloadHandle(mpsc::UnboundedSender<ReloadRequest>);

impl ReloadHandle {
    /// A handle, and the receiving end the running server reads requests from.
    pub fn channel() -> (ReloadHandle, mpsc::UnboundedReceiver<ReloadRequest>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (ReloadHandle(tx), rx)
    }

    /// Asks, without waiting (a signal handler).
    pub fn request(&self) {
        let _ = self.0.send(ReloadRequest { reply: None });
    }

    /// Asks and waits for the outcome: what changed, or why nothing did.
    pub async fn reload(&self) -> Result<String, String> {
        let (tx, rx) = oneshot::channel();
        self.0
            .send(ReloadRequest { reply: Some(tx) })
            .map_err(|_| "the server is stopping".to_string())?;
        rx.await.map_err(|_| "the server is stopping".to_string())?
    }
}

/// Reads the config again (from `path`, or the same one when running on the
/// embedded default) and checks what a reload cannot change.
pub fn read_config(path: Option<&PathBuf>, old: &Config) -> Result<Config, String> {
    let config = match path {
        Some(p) => Config::load(p).map_err(|e| e.to_string())?,
        None => old.clone(),
    };
    if config.server.data_dir != old.server.data_dir {
        return Err(format!(
            "server.data_dir = {:?}: the data directory cannot change on reload; restart the server",
            config.server.data_dir.display().to_string()
        ));
    }
    if config.node_id() != old.node_id() {
        return Err("server.node_id cannot change on reload; restart the server".into());
    }
    let database = |c: &Config| c.cluster.as_ref().map(|c| c.database.clone());
    if database(&config) != database(old) {
        return Err("[cluster] database cannot change on reload; restart the server".into());
    }
    Ok(config)
}

/// The new context for `config` (certificates read again).
pub fn rebuild(old: &Context, config: Config) -> Result<Context, String> {
    let certs = crate::tls::ensure_cert(
        config.tls.cert.as_deref(),
        config.tls.key.as_deref(),
        &config.server.data_dir,
        &config.hostname(),
    )
    .map_err(|e| format!("[tls]: {e}"))?;
    let tls =
        crate::tls::server_config(&certs.cert, &certs.key).map_err(|e| format!("[tls]: {e}"))?;
    Ok(old.reloaded(config, Some(tls)))
}

/// When the certificate files were last changed (to reload on renewal).
pub fn cert_stamp(config: &Config) -> Vec<Option<SystemTime>> {
    [config.tls.cert.as_ref(), config.tls.key.as_ref()]
        .into_iter()
        .map(|p| p.and_then(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok()))
        .collect()
}
