//! Listeners: bind with a large backlog, take each connection (PROXY
//! header first where configured), filter it by IP, enforce the connection
//! caps, and run a session on it. What is shared between connections comes
//! from `app/`; `daemon/` decides which listeners run.

pub mod descriptors;
pub mod proxy;

use crate::app::{ConnectionLimits, Context, CurrentContext, Refusal, Slot};
use crate::config::ListenerKind;
use crate::events::{ConnectionRefusal, Event};
use crate::policy::ClientFacts;
use crate::session::Session;
use crate::smtp::reply::{self, Reply};
use crate::smtp::stream::{SmtpStream, tls_info};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

const LISTEN_BACKLOG: i32 = 1024;
/// A TLS handshake on an implicit-TLS listener is a few round trips: a
/// client that has not finished it by then is holding a slot, not talking.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Binds `addr` with a large backlog (IPv6 sockets take IPv4 too).
pub fn bind_listener(addr: SocketAddr) -> std::io::Result<TcpListener> {
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

/// Accepts until `stop` (this listener closed) or the server shuts down; each
/// connection runs with the context current when it arrived.
pub async fn accept_loop(
    listener: TcpListener,
    (configured, kind): (SocketAddr, ListenerKind),
    current: CurrentContext,
    limits: Arc<ConnectionLimits>,
    stop: CancellationToken,
    shutdown: CancellationToken,
    sessions: TaskTracker,
) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.cancelled() => return,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) if descriptors::exhausted(&e) => {
                // Out of descriptors: shed one waiting connection with the
                // reserve, so the backlog does not stall every client.
                let shed = descriptors::shed_one(&listener).await;
                warn!(error = %e, shed, listener = %configured, "accept failed: out of file descriptors");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
            Err(e) => {
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let ctx = current.get();
        let limits = Arc::clone(&limits);
        let shutdown = shutdown.clone();
        sessions.spawn(async move {
            handle_connection(tcp, peer, (configured, kind), ctx, limits, shutdown).await;
        });
    }
}

async fn handle_connection(
    mut tcp: TcpStream,
    mut peer: SocketAddr,
    (configured, kind): (SocketAddr, ListenerKind),
    ctx: Arc<Context>,
    limits: Arc<ConnectionLimits>,
    shutdown: CancellationToken,
) {
    // Behind a load balancer, the client is the one its PROXY header names.
    let mut via_proxy = None;
    // A PROXY header with no client (LOCAL): the load balancer's own
    // health check.
    let mut proxy_check = false;
    let proxied = ctx
        .config
        .listener
        .iter()
        .find(|l| l.address == configured && l.kind == kind && l.proxy_protocol);
    if let Some(listener) = proxied {
        let from = peer.ip().to_canonical();
        let refused = |refusal| {
            ctx.events.emit(Event::ConnectionRefused {
                client: from,
                listener: kind,
                refusal,
            })
        };
        if !listener.proxy_from.iter().any(|r| r.contains(from)) {
            refused(ConnectionRefusal::NotAProxy);
            return;
        }
        match proxy::read_header(&mut tcp).await {
            Ok(Some(client)) => {
                via_proxy = Some(from);
                peer = client;
            }
            Ok(None) => proxy_check = true,
            Err(e) => {
                warn!(proxy = %from, error = %e, "bad PROXY header");
                refused(ConnectionRefusal::BadProxyHeader);
                return;
            }
        }
    }
    let ip = peer.ip().to_canonical();
    let admitted = admit(&ctx, &limits, ip, kind, proxy_check);
    if kind == ListenerKind::Smtps && admitted.is_err() {
        // Nothing readable can be said before TLS on an implicit-TLS port,
        // and a refused client must not hold a descriptor through a
        // handshake: closed at once (the refusal is already logged).
        return;
    }
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
                debug!(client = %ip, error = %crate::tls::describe_io_error(&e), "TLS handshake failed on smtps listener");
                tls_refused(&ctx, ip, kind);
                return;
            }
            Err(_) => {
                debug!(client = %ip, "TLS handshake timed out on smtps listener");
                tls_refused(&ctx, ip, kind);
                return;
            }
        }
    } else {
        SmtpStream::new(Box::new(tcp))
    };

    let offer_starttls = ctx
        .config
        .listener
        .iter()
        .find(|l| l.address == configured && l.kind == kind)
        .is_none_or(|l| l.offer_starttls);
    match admitted {
        Ok(slot) => {
            Session::new(
                ctx,
                kind,
                SocketAddr::new(ip, peer.port()),
                stream,
                shutdown,
            )
            .offering_starttls(offer_starttls)
            .via_proxy(via_proxy)
            .run()
            .await;
            drop(slot);
        }
        Err(r) => refuse(stream, &ctx, r).await,
    }
}

/// An implicit-TLS connection whose handshake did not complete (counted).
fn tls_refused(ctx: &Context, client: std::net::IpAddr, kind: ListenerKind) {
    ctx.events.emit(Event::ConnectionRefused {
        client,
        listener: kind,
        refusal: ConnectionRefusal::TlsHandshake,
    });
}

/// The connection filter, then the connection caps: a slot, or the reply that refuses.
fn admit(
    ctx: &Context,
    limits: &Arc<ConnectionLimits>,
    ip: std::net::IpAddr,
    kind: ListenerKind,
    proxy_check: bool,
) -> Result<Slot, Reply> {
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
    let trusted = ctx.trusts(ip);
    if ctx.checks.banned_for(ip, trusted).is_some() {
        refused(ConnectionRefusal::Banned);
        return Err(reply::BANNED);
    }
    // Only trusted networks may use the reserved slots and skip the rate
    // cap. Privilege comes with trust (or AUTH, which is not known yet),
    // not with the port: a stranger on 587 or 465 is still a stranger.
    // A health check from a configured load balancer is not held to the
    // rate cap either: HAProxy checking every second must not lock itself
    // out and take the node out of service.
    let privileged = trusted || proxy_check;
    limits
        .acquire(ip, privileged)
        .map_err(|refusal| match refusal {
            Refusal::Total => {
                refused(ConnectionRefusal::TooManyConnections);
                reply::TOO_MANY_CONNECTIONS
            }
            Refusal::PerIp => {
                refused(ConnectionRefusal::TooManyFromAddress);
                reply::TOO_MANY_FROM_IP
            }
            Refusal::Rate => {
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
