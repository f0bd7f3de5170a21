//! The running server: opens the data directory (its lock, spool recovery),
//! makes the shared context and the queue, binds the listeners, starts the
//! tasks that live as long as the server (queue manager, control socket,
//! admin page, alerts, TLS reports, archive pruning), applies reloads, and
//! stops it all within the grace period.

mod cluster;
mod listeners;
mod tls_reports;

use crate::app::{ConnectionLimits, Context, CurrentContext, ReloadHandle, ReloadRequest, reload};
use crate::config::open_relay_entries;
use crate::config::{Config, ListenerKind};
use crate::delivery::Deliverer;
use crate::dns::Resolver;
use crate::events::Event;
use crate::queue::{QueueInbox, QueueManager};
use crate::server::{accept_loop, bind_listener};
use crate::spool::Spool;
use anyhow::Context as _;
use cluster::Cluster;
use listeners::Listeners;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

const OPEN_RELAY_REMINDER: Duration = Duration::from_secs(3600);

pub struct Daemon {
    ctx: Arc<Context>,
    queue: Arc<QueueManager>,
    inbox: QueueInbox,
    control: tokio::net::UnixListener,
    /// Bound sockets with the address the config gives them.
    listeners: Vec<(TcpListener, SocketAddr, ListenerKind)>,
    limits: Arc<ConnectionLimits>,
    /// The file to read again on reload (None: the embedded default).
    config_path: Option<std::path::PathBuf>,
    reload: ReloadHandle,
    reload_rx: tokio::sync::mpsc::UnboundedReceiver<ReloadRequest>,
    /// The admin page's socket (None: `[admin] address` unset).
    admin: Option<crate::admin::AdminListener>,
    metrics: Arc<crate::metrics::Metrics>,
    history: Arc<crate::events::History>,
    alert_facts: Arc<crate::alerts::FactsCollector>,
    tls_reports: Arc<crate::tlsrpt::Collector>,
    /// In a cluster: what mirrors the counters, bans and guard decisions.
    shared: Option<Arc<crate::cluster::shared::SharedSync>>,
    _lock: std::fs::File,
}

impl Daemon {
    /// Prepares the spool, TLS and users, and binds every listener.
    pub async fn bind(config: Config) -> anyhow::Result<Daemon> {
        let data_dir = config.server.data_dir.clone();
        crate::spool::set_node(config.node_id());
        let spool = Spool::open(&data_dir).with_context(|| {
            format!(
                "cannot create the spool in server.data_dir = {}",
                data_dir.display()
            )
        })?;
        let lock = crate::spool::lock_data_dir(&data_dir)?.ok_or_else(|| {
            anyhow::anyhow!(
                "server.data_dir = {}: another Portcullis server is using this data directory",
                data_dir.display()
            )
        })?;
        let recovery = spool.recover_slots().with_context(|| {
            format!("cannot recover the spool's slots in {}", data_dir.display())
        })?;
        let stale = spool.clean_tmp().unwrap_or(0) + recovery.torn;
        if stale > 0 {
            info!(
                count = stale,
                "removed unfinished spool files left by an earlier stop (those messages were never acknowledged)"
            );
        }
        if recovery.recovered > 0 {
            info!(
                count = recovery.recovered,
                "moved messages synced before a crash from slots/ into the queue"
            );
        }
        let from_journal = spool.recover_journal().with_context(|| {
            format!("cannot recover the spool journal in {}", data_dir.display())
        })?;
        if from_journal > 0 {
            info!(
                count = from_journal,
                "moved messages synced in the journal before a crash into the queue"
            );
        }
        let spool = spool
            .with_slots()
            .and_then(|s| s.with_journal())
            .with_context(|| format!("cannot prepare spool files in {}", data_dir.display()))?;
        let hostname = config.hostname();
        let certs = crate::tls::ensure_cert(
            config.tls.cert.as_deref(),
            config.tls.key.as_deref(),
            &data_dir,
            &hostname,
        )?;
        if certs.generated {
            info!(cert = %certs.cert.display(), "using a self-signed certificate (set [tls] cert and key for a real one)");
        }
        let tls = crate::tls::server_config(&certs.cert, &certs.key)?;
        let mut listeners = Vec::new();
        for (i, l) in config.listener.iter().enumerate() {
            let socket = bind_listener(l.address).with_context(|| {
                format!("listener[{i}].address = \"{}\": cannot listen", l.address)
            })?;
            listeners.push((socket, l.address, l.kind));
        }

        let resolver =
            Resolver::from_config(&config.dns).map_err(|e| anyhow::anyhow!("[dns]: {e}"))?;
        let shared = Arc::new(config.clone());
        let transcripts =
            crate::transcript::Transcripts::from_config(&config.log).map_err(anyhow::Error::msg)?;
        let admin = crate::admin::AdminListener::bind(&config).await?;
        let metrics = Arc::new(crate::metrics::Metrics::new());
        let history = Arc::new(crate::events::History::new());
        // The dashboard's figures and chart go on across a restart.
        history.load_activity(&activity_path(&data_dir), crate::clock::unix_now());
        // The guard learns from delivery results, so it is made before the events.
        let guard = Arc::new(crate::guard::Guard::new(
            config.guard.clone(),
            Some(data_dir.clone()),
        ));
        let alert_facts = Arc::new(crate::alerts::FactsCollector::new(crate::clock::unix_now()));
        let notifier = Arc::new(crate::notify::Notifier::new(
            data_dir.clone(),
            resolver.clone(),
            Some(Arc::clone(&metrics)),
        ));
        let events = crate::events::Events::with_log_and(vec![
            Arc::clone(&metrics) as Arc<dyn crate::events::Subscriber>,
            Arc::clone(&history) as Arc<dyn crate::events::Subscriber>,
            Arc::clone(&guard) as Arc<dyn crate::events::Subscriber>,
            Arc::clone(&notifier) as Arc<dyn crate::events::Subscriber>,
            Arc::clone(&alert_facts) as Arc<dyn crate::events::Subscriber>,
        ]);
        notifier
            .configure(&config, &events)
            .map_err(anyhow::Error::msg)?;
        let tls_reports = Arc::new(crate::tlsrpt::Collector::open(&data_dir));
        let cluster = match &config.cluster {
            Some(c) => Some(Cluster::connect(c, &hostname, &data_dir).await?),
            None => None,
        };
        let ledger: Arc<dyn crate::counters::Counters> = match &cluster {
            Some(c) => c.counters(),
            None => {
                let quota_file = data_dir.join("quota.json");
                Arc::new(
                    crate::counters::durable::DurableCounters::open(&quota_file).with_context(
                        || format!("cannot read the quota counts in {}", quota_file.display()),
                    )?,
                )
            }
        };
        let deliverer = Arc::new(
            Deliverer::new(Arc::clone(&shared), resolver.clone())
                .with_transcripts(transcripts.clone())
                .with_events(events.clone())
                .with_ledger(ledger)
                .with_tls_reports(Arc::clone(&tls_reports)),
        );
        let control = crate::control::bind(&data_dir).with_context(|| {
            format!(
                "cannot create the control socket {}",
                crate::control::socket_path(&data_dir).display()
            )
        })?;
        // One resolver (and one cache) for delivery and the checks.
        let mut ctx = Context::new(
            config,
            Some(tls),
            spool,
            Some(resolver),
            events.clone(),
            Arc::clone(&guard),
        );
        let sharing = match cluster {
            Some(cluster) => {
                let joined = cluster.share(&guard, &deliverer).await?;
                ctx.store = joined.store;
                ctx.checks = Arc::new(ctx.checks.counting_with(joined.counters));
                Some(joined.sync)
            }
            None => None,
        };
        // The sessions and the manager share one queue store.
        let (queue, inbox) = QueueManager::new(
            ctx.spool.clone(),
            Arc::clone(&ctx.store),
            shared,
            deliverer,
            events,
        );
        ctx.queue = Some(queue.handle());
        ctx.transcripts = transcripts;
        ctx.notifier = Some(notifier);
        let limits = Arc::clone(&ctx.limits);
        let ctx = Arc::new(ctx);
        let (reload, reload_rx) = ReloadHandle::channel();
        Ok(Daemon {
            ctx,
            queue,
            inbox,
            control,
            listeners,
            limits,
            config_path: None,
            reload,
            reload_rx,
            admin,
            metrics,
            history,
            alert_facts,
            tls_reports,
            shared: sharing,
            _lock: lock,
        })
    }

    /// The config file a reload reads again.
    pub fn with_config_path(mut self, path: std::path::PathBuf) -> Daemon {
        self.config_path = Some(path);
        self
    }

    /// Where the admin page listens, when it is on.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|a| a.local_addr())
    }

    /// How to ask this server for a reload once it runs.
    pub fn reload_handle(&self) -> ReloadHandle {
        self.reload.clone()
    }

    /// The addresses actually bound (port 0 in the config becomes a real port).
    pub fn local_addrs(&self) -> Vec<(SocketAddr, ListenerKind)> {
        self.listeners
            .iter()
            .filter_map(|(l, _, k)| l.local_addr().ok().map(|a| (a, *k)))
            .collect()
    }

    /// Accepts connections until `shutdown` fires, then gives open sessions
    /// `shutdown_grace` to finish.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        self.log_startup();
        self.ctx.events.emit(Event::ServerStarted {
            version: env!("CARGO_PKG_VERSION"),
            listeners: self
                .local_addrs()
                .iter()
                .map(|(a, k)| format!("{a} ({})", k.name()))
                .collect(),
        });
        // Under systemd (Type=notify): up once the listeners are bound and
        // the spool recovered, so that units ordered after us find us ready.
        if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Ready]) {
            warn!(error = %e, "cannot tell systemd that the server is ready");
        }
        let addrs = self.local_addrs();
        let tracker = TaskTracker::new();
        if self.ctx.config.relay.allow_open_relay
            && !open_relay_entries(&self.ctx.config).is_empty()
        {
            tracker.spawn(remind_open_relay(Arc::clone(&self.ctx), shutdown.clone()));
        }
        let grace = self.ctx.config.server.shutdown_grace.get();
        // The DNS list zones of the checks in force are watched; a reload
        // replaces the checks, and with them the watcher.
        let mut zone_watch = shutdown.child_token();
        tracker.spawn(
            Arc::clone(&self.ctx.checks).watch_zones(self.ctx.events.clone(), zone_watch.clone()),
        );
        tracker.spawn(Arc::clone(&self.queue).run(self.inbox, shutdown.clone(), grace));
        if let Some(shared) = &self.shared {
            tracker.spawn(Arc::clone(shared).run(shutdown.clone()));
        }
        tracker.spawn(keep_activity(
            Arc::clone(&self.history),
            self.ctx.config.server.data_dir.clone(),
            shutdown.clone(),
        ));
        let current = CurrentContext::new(Arc::clone(&self.ctx));
        tracker.spawn(prune_archive(current.clone(), shutdown.clone()));
        let alerts = crate::alerts::AlertWatch::kept_in(
            Arc::clone(&self.alert_facts),
            &self.ctx.config.server.data_dir,
            Arc::clone(&self.history),
        );
        let for_alerts = current.clone();
        tracker.spawn(alerts.run(move || for_alerts.get(), shutdown.clone()));
        let for_reports = current.clone();
        tracker.spawn(tls_reports::run(
            Arc::clone(&self.tls_reports),
            move || for_reports.get(),
            shutdown.clone(),
        ));
        let bound = crate::app::BoundListeners::new(addrs.clone());
        let control = crate::control::ServerSide {
            queue: self.queue.handle(),
            reload: self.reload.clone(),
            current: current.clone(),
            listeners: bound.clone(),
            started_at: crate::clock::unix_now(),
            config_file: self.config_path.clone(),
        };
        tracker.spawn(crate::control::serve(
            self.control,
            Arc::new(control),
            shutdown.clone(),
        ));
        if let Some(admin) = self.admin {
            let state = Arc::new(crate::admin::AdminState {
                current: current.clone(),
                queue: self.queue.handle(),
                deliverer: self.queue.deliverer(),
                metrics: Arc::clone(&self.metrics),
                history: Arc::clone(&self.history),
                sessions: crate::admin::Sessions::new(),
                listeners: bound.clone(),
                relay_test: Arc::default(),
                https: admin.https(),
                config_path: self.config_path.clone(),
                reload: Some(self.reload.clone()),
                settings_lock: tokio::sync::Mutex::new(()),
            });
            tracker.spawn(admin.serve(state, shutdown.clone()));
        }
        let mut running: Listeners = HashMap::new();
        for (listener, configured, kind) in self.listeners {
            let stop = shutdown.child_token();
            let bound = listener.local_addr().unwrap_or(configured);
            running.insert((configured, kind), (bound, stop.clone()));
            tracker.spawn(accept_loop(
                listener,
                (configured, kind),
                current.clone(),
                Arc::clone(&self.limits),
                stop,
                shutdown.clone(),
                tracker.clone(),
            ));
        }
        let mut outcome = Ok(());
        if self.ctx.config.diagnostics.self_test_on_start {
            let queue = self.queue.handle();
            if let Err(e) = crate::diagnostics::self_test::run(&self.ctx, &addrs, &queue).await {
                error!("{e}; refusing to go on serving");
                outcome = Err(anyhow::anyhow!(e));
                shutdown.cancel();
            }
        }
        let mut reload_rx = self.reload_rx;
        let mut certs = reload::cert_stamp(&self.ctx.config);
        let mut cert_check = tokio::time::interval(Duration::from_secs(30));
        loop {
            let reply = tokio::select! {
                _ = shutdown.cancelled() => break,
                Some(req) = reload_rx.recv() => req.reply,
                _ = cert_check.tick() => {
                    let now = reload::cert_stamp(&current.get().config);
                    if now == certs {
                        continue;
                    }
                    info!("certificate files changed; reloading");
                    None
                }
            };
            let result = apply_reload(
                &current,
                &self.queue,
                self.config_path.as_ref(),
                &mut running,
                &self.limits,
                &tracker,
                &shutdown,
            );
            certs = reload::cert_stamp(&current.get().config);
            bound.set(
                running
                    .iter()
                    .map(|((_, kind), (addr, _))| (*addr, *kind))
                    .collect(),
            );
            if result.is_ok() {
                zone_watch.cancel();
                zone_watch = shutdown.child_token();
                let ctx = current.get();
                tracker.spawn(
                    Arc::clone(&ctx.checks).watch_zones(ctx.events.clone(), zone_watch.clone()),
                );
            }
            current.get().events.emit(Event::Reload {
                applied: result.is_ok(),
                detail: match &result {
                    Ok(what) => what.clone(),
                    Err(e) => e.clone(),
                },
            });
            if let Some(tx) = reply {
                let _ = tx.send(result);
            }
        }
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
        self.ctx.events.emit(Event::ServerStopping {
            active: self.limits.active(),
        });
        if let Some(notifier) = &self.ctx.notifier {
            notifier.stop();
        }
        tracker.close();
        save_activity(&self.history, &self.ctx.config.server.data_dir);
        let grace = self.ctx.config.server.shutdown_grace.get();
        info!(active = self.limits.active(), grace = ?grace, "shutting down");
        if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
            warn!(
                active = self.limits.active(),
                "sessions still open after the grace period; stopping anyway"
            );
        }
        outcome
    }

    fn log_startup(&self) {
        let addrs: Vec<String> = self
            .local_addrs()
            .iter()
            .map(|(a, k)| format!("{a} ({})", k.name()))
            .collect();
        let c = &self.ctx.config;
        info!(
            "listening on {}; relay rules: {}; inbound domains: {}",
            addrs.join(", "),
            self.ctx.policy.networks.describe().join("; "),
            if c.relay.inbound_domains.is_empty() {
                "none".to_string()
            } else {
                c.relay.inbound_domains.join(", ")
            }
        );
        for f in c.findings() {
            warn!("config {f}");
        }
        warn_open_relay(&self.ctx);
    }
}

fn warn_open_relay(ctx: &Context) {
    if !ctx.config.relay.allow_open_relay {
        return;
    }
    for e in open_relay_entries(&ctx.config) {
        error!(
            "THIS SERVER IS AN OPEN RELAY: {}: {} (relay.allow_open_relay = true)",
            e.key, e.reason
        );
    }
}

async fn remind_open_relay(ctx: Arc<Context>, shutdown: CancellationToken) {
    let mut every = tokio::time::interval(OPEN_RELAY_REMINDER);
    every.tick().await;
    loop {
        tokio::select! {
            _ = every.tick() => warn_open_relay(&ctx),
            _ = shutdown.cancelled() => return,
        }
    }
}

/// Reads the config again and applies it; what changed, or why nothing did.
fn apply_reload(
    current: &CurrentContext,
    queue: &Arc<QueueManager>,
    path: Option<&std::path::PathBuf>,
    running: &mut Listeners,
    limits: &Arc<ConnectionLimits>,
    tracker: &TaskTracker,
    shutdown: &CancellationToken,
) -> Result<String, String> {
    let old = current.get();
    let config = reload::read_config(path, &old.config)?;
    let mut ctx = reload::rebuild(&old, config.clone())?;
    let transcripts_changed = config.log.transcript != old.config.log.transcript
        || config.log.transcript_days != old.config.log.transcript_days;
    if transcripts_changed {
        // A directory we cannot write refuses the reload, as at start.
        ctx.transcripts = crate::transcript::Transcripts::from_config(&config.log)?;
    }
    if config.admin.address != old.config.admin.address {
        warn!("admin.address changed: the admin page moves at the next restart");
    }
    // Bind what is new before anything changes, so a busy port aborts the reload.
    let wanted: Vec<(SocketAddr, ListenerKind)> = config
        .listener
        .iter()
        .map(|l| (l.address, l.kind))
        .collect();
    let mut fresh = Vec::new();
    let mut kept = Vec::new();
    for (i, &(addr, kind)) in wanted.iter().enumerate() {
        match listeners::matching(running, addr, kind) {
            Some(key) => kept.push((key, (addr, kind))),
            None => {
                let socket = bind_listener(addr).map_err(|e| {
                    format!("listener[{i}].address = \"{addr}\": cannot listen: {e}")
                })?;
                fresh.push((socket, addr, kind));
            }
        }
    }
    if let Some(notifier) = &ctx.notifier {
        notifier.configure(&config, &ctx.events)?;
    }
    if transcripts_changed {
        queue.set_transcripts(ctx.transcripts.clone());
    }
    current.set(Arc::new(ctx));
    queue.reconfigure(Arc::new(config.clone()));
    current.get().guard.reconfigure(config.guard.clone());
    let mut closed = 0;
    let mut still: Listeners = HashMap::new();
    for (key, (bound, stop)) in running.drain() {
        match kept.iter().find(|(old, _)| *old == key) {
            Some((_, new_key)) => {
                still.insert(*new_key, (bound, stop));
            }
            None => {
                stop.cancel();
                closed += 1;
            }
        }
    }
    *running = still;
    let opened = fresh.len();
    for (socket, addr, kind) in fresh {
        let stop = shutdown.child_token();
        let bound = socket.local_addr().unwrap_or(addr);
        running.insert((addr, kind), (bound, stop.clone()));
        tracker.spawn(accept_loop(
            socket,
            (addr, kind),
            current.clone(),
            Arc::clone(limits),
            stop,
            shutdown.clone(),
            tracker.clone(),
        ));
    }
    Ok(format!(
        "{} listener(s) ({opened} opened, {closed} closed); relay rules: {}",
        running.len(),
        current.get().policy.networks.describe().join("; ")
    ))
}

/// Where the dashboard's minute counts are kept between runs.
fn activity_path(data_dir: &std::path::Path) -> std::path::PathBuf {
    data_dir.join("activity.json")
}

fn save_activity(history: &crate::events::History, data_dir: &std::path::Path) {
    if let Err(e) = history.save_activity(&activity_path(data_dir)) {
        warn!(error = %crate::tls::describe_io_error(&e), "cannot keep the dashboard's history");
    }
}

/// Removes archived copies past `[archive] retention_days`, at start and
/// every hour (the config in force each time: a reload may change it).
async fn prune_archive(current: CurrentContext, stop: CancellationToken) {
    let mut every = tokio::time::interval(std::time::Duration::from_secs(3600));
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = stop.cancelled() => return,
        }
        let archive = current.get().config.archive.clone();
        let (Some(dir), Some(days)) = (archive.dir, archive.retention_days) else {
            continue;
        };
        let shown = dir.display().to_string();
        match tokio::task::spawn_blocking(move || {
            crate::archive::prune(&dir, days, chrono::Utc::now())
        })
        .await
        {
            Ok(Ok(0)) | Err(_) => {}
            Ok(Ok(n)) => {
                info!(dir = %shown, removed = n, days, "archived copies past their retention removed")
            }
            Ok(Err(e)) => warn!(dir = %shown, error = %e, "cannot prune the archive"),
        }
    }
}

/// Saves the dashboard's counts every minute, so that even a kill -9 loses
/// at most a minute of them.
async fn keep_activity(
    history: Arc<crate::events::History>,
    data_dir: std::path::PathBuf,
    stop: CancellationToken,
) {
    let mut every = tokio::time::interval(std::time::Duration::from_secs(60));
    every.tick().await;
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = stop.cancelled() => return,
        }
        let history = Arc::clone(&history);
        let dir = data_dir.clone();
        let _ = tokio::task::spawn_blocking(move || save_activity(&history, &dir)).await;
    }
}
