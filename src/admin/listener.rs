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

pub struct Plain(pub TcpListener);

impl Listener for Plain {
    type Io = TcpStream;
    type Addr = Peer;

    async fn accept(&mut self) -> (TcpStream, Peer) {
        let (s, a) = accept_tcp(&self.0).await;
        (s, Peer(a))
    }

    fn local_addr(&self) -> std::io::Result<Peer> {
        self.0.local_addr().map(Peer)
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
    ready: mpsc::Receiver<(TlsStream<TcpStream>, Peer)>,
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
    tx: mpsc::Sender<(TlsStream<TcpStream>, Peer)>,
) {
    let permits = Arc::new(Semaphore::new(HANDSHAKES));
    loop {
        let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
            return;
        };
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
                let _ = tx.send((tls, Peer(addr))).await;
            }
        });
    }
}

impl Listener for Https {
    type Io = TlsStream<TcpStream>;
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
