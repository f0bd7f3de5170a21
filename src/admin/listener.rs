//! The admin page's sockets for axum: plain TCP (loopback) or HTTPS. Either
//! way the handlers learn the peer's address as `Peer` (for the login ban).

use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// TLS handshakes allowed to run at once; more wait in the kernel's backlog.
const HANDSHAKES: usize = 32;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Admin connections open at once; more wait in the kernel's backlog.
const CONNECTIONS: usize = 64;
/// Admin connections one client address may hold at once, so that a few
/// clients cannot take every slot (a browser opens about six).
const PER_CLIENT: usize = 8;
/// A connection waiting for its next request is closed after this long
/// (browsers reconnect).
const IDLE: Duration = Duration::from_secs(30);
/// Once a request has begun, the whole of it must arrive within this time,
/// however the bytes trickle in: a client dripping a byte at a time
/// (slowloris) cannot hold a slot by looking busy.
const REQUEST: Duration = Duration::from_secs(10);

/// Open admin connections per client address.
#[derive(Default)]
struct PerClient(Mutex<HashMap<IpAddr, usize>>);

/// One of a client's connections; given back when dropped.
pub struct ClientSlot {
    ip: IpAddr,
    clients: Arc<PerClient>,
}

impl PerClient {
    /// A slot for `ip`, or None when it already holds `PER_CLIENT`.
    fn take(self: &Arc<Self>, ip: IpAddr) -> Option<ClientSlot> {
        let mut open = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(ip).or_default();
        if *n >= PER_CLIENT {
            return None;
        }
        *n += 1;
        Some(ClientSlot {
            ip,
            clients: Arc::clone(self),
        })
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut open = self.clients.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// A connection holding one of the slots: closed when it waits too long for
/// a request, or takes too long to send one.
pub struct Bounded<T> {
    io: T,
    _slot: tokio::sync::OwnedSemaphorePermit,
    _client: ClientSlot,
    /// When the connection is closed unless the server answers first.
    deadline: std::pin::Pin<Box<tokio::time::Sleep>>,
    /// A request has begun and its answer has not been written yet.
    receiving: bool,
}

impl<T> Bounded<T> {
    /// Bytes of a request arrived: the first of them starts its deadline,
    /// the others do not move it.
    fn request_bytes(&mut self) {
        if !self.receiving {
            self.receiving = true;
            self.deadline
                .as_mut()
                .reset(tokio::time::Instant::now() + REQUEST);
        }
    }

    /// The server wrote (an answer): the connection waits for the next request.
    fn answered(&mut self) {
        self.receiving = false;
        self.deadline
            .as_mut()
            .reset(tokio::time::Instant::now() + IDLE);
    }

    fn new(io: T, slot: tokio::sync::OwnedSemaphorePermit, client: ClientSlot) -> Self {
        Bounded {
            io,
            _slot: slot,
            _client: client,
            deadline: Box::pin(tokio::time::sleep(IDLE)),
            receiving: false,
        }
    }
}

impl<T: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Bounded<T> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::task::Poll;
        let before = buf.filled().len();
        match std::pin::Pin::new(&mut self.io).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    self.request_bytes();
                }
                Poll::Ready(r)
            }
            Poll::Pending => match self.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(std::io::ErrorKind::TimedOut.into())),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Bounded<T> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let r = std::pin::Pin::new(&mut self.io).poll_write(cx, data);
        if matches!(r, std::task::Poll::Ready(Ok(n)) if n > 0) {
            self.answered();
        }
        r
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

fn slots() -> Arc<Semaphore> {
    Arc::new(Semaphore::new(CONNECTIONS))
}

async fn slot(slots: &Arc<Semaphore>) -> tokio::sync::OwnedSemaphorePermit {
    match Arc::clone(slots).acquire_owned().await {
        Ok(p) => p,
        // The semaphore is never closed.
        Err(_) => std::future::pending().await,
    }
}

/// The client's address.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);

/// The next connection from a client below its share; one over it is
/// closed at once. Waits a little after an accept error (out of
/// descriptors, say) instead of spinning.
async fn accept_tcp(
    listener: &TcpListener,
    clients: &Arc<PerClient>,
) -> (TcpStream, SocketAddr, ClientSlot) {
    loop {
        match listener.accept().await {
            Ok((stream, addr)) => match clients.take(addr.ip()) {
                Some(client) => return (stream, addr, client),
                None => {
                    tracing::warn!(client = %addr.ip(), "admin page: too many connections from one client; closed");
                    drop(stream);
                }
            },
            Err(e) => {
                tracing::warn!("admin page: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

pub struct Plain {
    listener: TcpListener,
    slots: Arc<Semaphore>,
    clients: Arc<PerClient>,
}

impl Plain {
    pub fn new(listener: TcpListener) -> Plain {
        Plain {
            listener,
            slots: slots(),
            clients: Arc::default(),
        }
    }
}

impl Listener for Plain {
    type Io = Bounded<TcpStream>;
    type Addr = Peer;

    async fn accept(&mut self) -> (Self::Io, Peer) {
        let slot = slot(&self.slots).await;
        let (s, a, client) = accept_tcp(&self.listener, &self.clients).await;
        (Bounded::new(s, slot, client), Peer(a))
    }

    fn local_addr(&self) -> std::io::Result<Peer> {
        self.listener.local_addr().map(Peer)
    }
}

impl Connected<IncomingStream<'_, Plain>> for Peer {
    fn connect_info(stream: IncomingStream<'_, Plain>) -> Self {
        *stream.remote_addr()
    }
}

/// HTTPS: handshakes run beside the accept loop, bounded in number and time,
/// and finished streams are handed to axum.
pub struct Https {
    local: SocketAddr,
    ready: mpsc::Receiver<(Bounded<TlsStream<TcpStream>>, Peer)>,
}

impl Https {
    pub fn new(listener: TcpListener, acceptor: TlsAcceptor) -> std::io::Result<Https> {
        let local = listener.local_addr()?;
        let (tx, ready) = mpsc::channel(HANDSHAKES);
        tokio::spawn(handshakes(listener, acceptor, tx));
        Ok(Https { local, ready })
    }
}

async fn handshakes(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    tx: mpsc::Sender<(Bounded<TlsStream<TcpStream>>, Peer)>,
) {
    let permits = Arc::new(Semaphore::new(HANDSHAKES));
    let connections = slots();
    let clients = Arc::<PerClient>::default();
    loop {
        let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
            return;
        };
        let connection = slot(&connections).await;
        let (stream, addr, client) = tokio::select! {
            accepted = accept_tcp(&listener, &clients) => accepted,
            _ = tx.closed() => return,
        };
        let acceptor = acceptor.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            let _permit = permit;
            if let Ok(Ok(tls)) =
                tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await
            {
                let _ = tx
                    .send((Bounded::new(tls, connection, client), Peer(addr)))
                    .await;
            }
        });
    }
}

impl Listener for Https {
    type Io = Bounded<TlsStream<TcpStream>>;
    type Addr = Peer;

    async fn accept(&mut self) -> (Self::Io, Peer) {
        match self.ready.recv().await {
            Some(pair) => pair,
            // The handshake task ended (its listener failed): serve nothing more.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Peer> {
        Ok(Peer(self.local))
    }
}

impl Connected<IncomingStream<'_, Https>> for Peer {
    fn connect_info(stream: IncomingStream<'_, Https>) -> Self {
        *stream.remote_addr()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_client_holds_at_most_its_share_and_gets_slots_back() {
        let clients = Arc::<PerClient>::default();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let mut held: Vec<ClientSlot> = (0..PER_CLIENT).map(|_| clients.take(a).unwrap()).collect();
        assert!(clients.take(a).is_none(), "over its share");
        let other = clients.take(b).expect("another client is not affected");
        held.pop();
        assert!(
            clients.take(a).is_some(),
            "a closed connection gives its slot back"
        );
        drop(held);
        drop(other);
        assert!(
            clients.0.lock().unwrap().is_empty(),
            "nothing kept for gone clients"
        );
    }
}
