//! An MTA-STS policy server on loopback: `https://mta-sts.DOMAIN/.well-known/mta-sts.txt`
//! on port 443 of a chosen 127.0.0.x, with a certificate for that name
//! from its own test CA (which the test's config trusts).

use super::oauth_peer::TlsListener;
use super::tls::TestCa;
use axum::Router;
use axum::routing::get;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

pub struct PolicyServer {
    pub ca: TestCa,
    pub fetches: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl PolicyServer {
    /// Serves `policy` for `domain` on `ip`:443; None when port 443 cannot
    /// be bound here (not root).
    pub async fn start(
        dir: &std::path::Path,
        ip: &str,
        domain: &str,
        policy: &str,
    ) -> Option<PolicyServer> {
        let dir = dir.join(format!("sts-{domain}"));
        std::fs::create_dir_all(&dir).unwrap();
        let name = format!("mta-sts.{domain}");
        let ca = TestCa::generate_for(&dir, &[&name]);
        let tcp = match tokio::net::TcpListener::bind((ip, 443)).await {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => return None,
            Err(e) => panic!("cannot bind {ip}:443: {e}"),
        };
        let fetches = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&fetches);
        let text = policy.to_string();
        let app = Router::new().route(
            "/.well-known/mta-sts.txt",
            get(move || {
                counter.fetch_add(1, Ordering::SeqCst);
                let text = text.clone();
                async move { ([("content-type", "text/plain")], text) }
            }),
        );
        let listener = TlsListener {
            tcp,
            acceptor: tokio_rustls::TlsAcceptor::from(super::sink::tls_config(&ca)),
        };
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Some(PolicyServer { ca, fetches, task })
    }
}

impl Drop for PolicyServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
