//! Listeners: bind with a large backlog, filter each connection by IP,
//! enforce connection caps, run a session per connection, shut down gracefully.

mod limits;

pub use limits::{ConnectionLimits, LimitSettings};

use crate::config::{Config, ListenerKind};
use crate::delivery::Deliverer;
use crate::dns::Resolver;
use crate::events::{ConnectionRefusal, Event};
use crate::policy::ClientFacts;
use crate::policy::open_relay_entries;
use crate::queue::{QueueInbox, QueueManager};
use crate::session::{Context, Session};
use crate::smtp::reply::{self, Reply};
use crate::smtp::stream::{SmtpStream, tls_info};
use crate::spool::Spool;
use anyhow::Context as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

const LISTEN_BACKLOG: i32 = 1024;
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
const OPEN_RELAY_REMINDER: Duration = Duration::from_secs(3600);

pub struct Server {
    ctx: Arc<Context>,
    queue: Arc<QueueManager>,
    inbox: QueueInbox,
    control: tokio::net::UnixListener,
    listeners: Vec<(TcpListener, ListenerKind)>,
    limits: Arc<ConnectionLimits>,
    _lock: std::fs::File,
}

impl Server {
    /// Prepares the spool, TLS and users, and binds every listener.
    pub async fn bind(config: Config) -> anyhow::Result<Server> {
        let data_dir = config.server.data_dir.clone();
        crate::spool::set_node(config.server.node_id);
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
        let stale = spool.clean_tmp().unwrap_or(0);
        if stale > 0 {
            info!(
                count = stale,
                "removed unfinished spool files left by an earlier stop (those messages were never acknowledged)"
            );
        }
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
            listeners.push((socket, l.kind));
        }

        let resolver =
            Resolver::from_config(&config.dns).map_err(|e| anyhow::anyhow!("[dns]: {e}"))?;
        let shared = Arc::new(config.clone());
        let deliverer = Arc::new(Deliverer::new(Arc::clone(&shared), resolver.clone()));
        let events = crate::events::Events::new();
        let (queue, inbox) = QueueManager::new(spool.clone(), shared, deliverer, events.clone());
        let control = crate::queue::bind_control(&data_dir).with_context(|| {
            format!(
                "cannot create the control socket {}",
                crate::queue::socket_path(&data_dir).display()
            )
        })?;
        // One resolver (and one cache) for delivery and the checks.
        let mut ctx = Context::new(config, Some(tls), spool, Some(resolver));
        ctx.events = events;
        ctx.queue = Some(queue.handle());
        let limits = Arc::clone(&ctx.limits);
        let ctx = Arc::new(ctx);
        Ok(Server {
            ctx,
            queue,
            inbox,
            control,
            listeners,
            limits,
            _lock: lock,
        })
    }

    /// The addresses actually bound (port 0 in the config becomes a real port).
    pub fn local_addrs(&self) -> Vec<(SocketAddr, ListenerKind)> {
        self.listeners
            .iter()
            .filter_map(|(l, k)| l.local_addr().ok().map(|a| (a, *k)))
            .collect()
    }

    /// Accepts connections until `shutdown` fires, then gives open sessions
    /// `shutdown_grace` to finish.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        self.log_startup();
        let addrs = self.local_addrs();
        let tracker = TaskTracker::new();
        if self.ctx.config.relay.allow_open_relay
            && !open_relay_entries(&self.ctx.config).is_empty()
        {
            tracker.spawn(remind_open_relay(Arc::clone(&self.ctx), shutdown.clone()));
        }
        let grace = self.ctx.config.server.shutdown_grace.get();
        tracker.spawn(
            Arc::clone(&self.ctx.checks).watch_zones(self.ctx.events.clone(), shutdown.clone()),
        );
        tracker.spawn(Arc::clone(&self.queue).run(self.inbox, shutdown.clone(), grace));
        tracker.spawn(crate::queue::serve_control(
            self.control,
            self.queue.handle(),
            shutdown.clone(),
        ));
        for (listener, kind) in self.listeners {
            let ctx = Arc::clone(&self.ctx);
            let limits = Arc::clone(&self.limits);
            let shutdown = shutdown.clone();
            let sessions = tracker.clone();
            tracker.spawn(accept_loop(listener, kind, ctx, limits, shutdown, sessions));
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
        shutdown.cancelled().await;
        tracker.close();
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

fn bind_listener(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(false).ok();
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    TcpListener::from_std(socket.into())
}

async fn accept_loop(
    listener: TcpListener,
    kind: ListenerKind,
    ctx: Arc<Context>,
    limits: Arc<ConnectionLimits>,
    shutdown: CancellationToken,
    sessions: TaskTracker,
) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.cancelled() => return,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: wait a little instead of spinning.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let ctx = Arc::clone(&ctx);
        let limits = Arc::clone(&limits);
        let shutdown = shutdown.clone();
        sessions.spawn(async move {
            handle_connection(tcp, peer, kind, ctx, limits, shutdown).await;
        });
    }
}

async fn handle_connection(
    tcp: TcpStream,
    peer: SocketAddr,
    kind: ListenerKind,
    ctx: Arc<Context>,
    limits: Arc<ConnectionLimits>,
    shutdown: CancellationToken,
) {
    let ip = peer.ip().to_canonical();
    let admitted = admit(&ctx, &limits, ip, kind);
    let stream = if kind == ListenerKind::Smtps {
        let Some(acceptor) = ctx.tls.clone() else {
            return;
        };
        match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
            Ok(Ok(tls)) => {
                let info = tls_info(tls.get_ref().1);
                SmtpStream::with_tls(Box::new(tls), info)
            }
            Ok(Err(e)) => {
                warn!(client = %ip, error = %e, "TLS handshake failed on smtps listener");
                return;
            }
            Err(_) => {
                warn!(client = %ip, "TLS handshake timed out on smtps listener");
                return;
            }
        }
    } else {
        SmtpStream::new(Box::new(tcp))
    };

    match admitted {
        Ok(slot) => {
            Session::new(
                ctx,
                kind,
                SocketAddr::new(ip, peer.port()),
                stream,
                shutdown,
            )
            .run()
            .await;
            drop(slot);
        }
        Err(r) => refuse(stream, &ctx, r).await,
    }
}

/// The connection filter, then the connection caps: a slot, or the reply that refuses.
fn admit(
    ctx: &Context,
    limits: &Arc<ConnectionLimits>,
    ip: std::net::IpAddr,
    kind: ListenerKind,
) -> Result<limits::Slot, Reply> {
    let refused = |refusal: ConnectionRefusal| {
        ctx.events.emit(Event::ConnectionRefused {
            client: ip,
            listener: kind,
            refusal,
        })
    };
    if let Err(reason) = ctx.policy.connect(&ClientFacts::new(ip, kind)).verdict {
        let reply = reason.reply();
        refused(ConnectionRefusal::Policy { reason });
        return Err(reply);
    }
    if ctx.checks.banned(ip).is_some() {
        refused(ConnectionRefusal::Banned);
        return Err(reply::BANNED);
    }
    // Trusted networks and AUTH-only listeners may use the reserved slots.
    let privileged = kind.requires_auth() || ctx.policy.is_trusted(ip);
    limits
        .acquire(ip, privileged)
        .map_err(|refusal| match refusal {
            limits::Refusal::Total => {
                refused(ConnectionRefusal::TooManyConnections);
                reply::TOO_MANY_CONNECTIONS
            }
            limits::Refusal::PerIp => {
                refused(ConnectionRefusal::TooManyFromAddress);
                reply::TOO_MANY_FROM_IP
            }
            limits::Refusal::Rate => {
                refused(ConnectionRefusal::TooFast);
                reply::CONNECTING_TOO_FAST
            }
        })
}

/// Sends one reply in place of the banner and closes.
async fn refuse(mut stream: SmtpStream, ctx: &Context, r: Reply) {
    let r = Reply::with_text(r.code, r.enhanced, format!("{} {}", ctx.hostname, r.text));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let _ = stream.send(&r, deadline).await;
    stream.shutdown(deadline).await;
}
