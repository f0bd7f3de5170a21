//! The admin page's sockets for axum: plain TCP (loopback) or HTTPS. Either
//! way the handlers learn the peer's address as `Peer` (for the login ban).

use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use std::net::SocketAddr;
use std::sync::Arc;
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
/// A connection with nothing read or written for this long is closed (a
/// slow client cannot hold a slot; browsers reconnect).
const IDLE: Duration = Duration::from_secs(60);

/// A connection holding one of the slots, closed when idle too long.
pub struct Bounded<T> {
    io: T,
    _slot: tokio::sync::OwnedSemaphorePermit,
    idle: std::pin::Pin<Box<tokio::time::Sleep>>,
}

impl<T> Bounded<T> {
    fn touch(&mut self) {
        self.idle.as_mut().reset(tokio::time::Instant::now() + IDLE);
    }

    fn new(io: T, slot: tokio::sync::OwnedSemaphorePermit) -> Self {
        Bounded {
            io,
            _slot: slot,
            idle: Box::pin(tokio::time::sleep(IDLE)),
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
                    self.touch();
                }
                Poll::Ready(r)
            }
            Poll::Pending => match self.idle.as_mut().poll(cx) {
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
            self.touch();
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

/// Waits a little after an accept error (out of descriptors, say) instead of spinning.
async fn accept_tcp(listener: &TcpListener) -> (TcpStream, SocketAddr) {
    loop {
        match listener.accept().await {
            Ok(pair) => return pair,
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
}

impl Plain {
    pub fn new(listener: TcpListener) -> Plain {
        Plain {
            listener,
            slots: slots(),
        }
    }
}

impl Listener for Plain {
    type Io = Bounded<TcpStream>;
    type Addr = Peer;

    async fn accept(&mut self) -> (Self::Io, Peer) {
        let slot = slot(&self.slots).await;
        let (s, a) = accept_tcp(&self.listener).await;
        (Bounded::new(s, slot), Peer(a))
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
    loop {
        let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
            return;
        };
        let connection = slot(&connections).await;
        let (stream, addr) = tokio::select! {
            pair = accept_tcp(&listener) => pair,
            _ = tx.closed() => return,
        };
        let acceptor = acceptor.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            let _permit = permit;
            if let Ok(Ok(tls)) =
                tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await
            {
                let _ = tx.send((Bounded::new(tls, connection), Peer(addr))).await;
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
