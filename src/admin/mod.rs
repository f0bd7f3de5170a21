//! The admin web page, its JSON API and `/metrics` (`[admin] address`), in
//! the server's own process. Pages are rendered on the server (askama
//! templates compiled into the binary, one stylesheet, a few lines of plain
//! JavaScript); every page has its JSON twin under `/api/`. Queue actions go
//! to the queue manager's control API, never to the spool files.

mod access;
mod api;
mod listener;
mod pages;
mod sessions;
mod settings_api;
mod users_api;
mod view;

pub use sessions::Sessions;

use crate::app::CurrentContext;
use crate::events::History;
use crate::metrics::Metrics;
use crate::queue::QueueHandle;
use anyhow::Context as _;
use axum::Router;
use axum::routing::{get, post};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// What the handlers share.
pub struct AdminState {
    pub current: CurrentContext,
    pub queue: QueueHandle,
    /// What delivery knows of the smart-host profiles (resting ones).
    pub deliverer: Arc<crate::delivery::Deliverer>,
    pub metrics: Arc<Metrics>,
    pub history: Arc<History>,
    pub sessions: Sessions,
    /// The SMTP listeners as bound now (the relay test aims at them).
    pub listeners: crate::app::BoundListeners,
    /// One relay-test battery at a time.
    pub relay_test: Arc<tokio::sync::Mutex<()>>,
    pub https: bool,
    /// The configuration file the Settings page edits (none: the server
    /// runs on the embedded default) and how to make the server read it.
    pub config_path: Option<std::path::PathBuf>,
    pub reload: Option<crate::app::ReloadHandle>,
    /// One settings change at a time.
    pub settings_lock: tokio::sync::Mutex<()>,
}

/// The bound admin socket, served once the server runs.
pub struct AdminListener {
    socket: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
}

impl AdminListener {
    /// Binds `[admin] address` (None when the admin page is off).
    pub async fn bind(config: &crate::config::Config) -> anyhow::Result<Option<AdminListener>> {
        let Some(address) = config.admin.address else {
            return Ok(None);
        };
        let socket = TcpListener::bind(address)
            .await
            .with_context(|| format!("admin.address = \"{address}\": cannot listen"))?;
        let tls = if config.admin.https(config.tls.cert.is_some()) {
            let (cert, key) = match (&config.admin.cert, &config.admin.key) {
                (Some(c), Some(k)) => (Some(c.as_path()), Some(k.as_path())),
                _ => (config.tls.cert.as_deref(), config.tls.key.as_deref()),
            };
            let certs =
                crate::tls::ensure_cert(cert, key, &config.server.data_dir, &config.hostname())?;
            let server = crate::tls::server_config(&certs.cert, &certs.key)?;
            Some(tokio_rustls::TlsAcceptor::from(server))
        } else {
            None
        };
        Ok(Some(AdminListener { socket, tls }))
    }

    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.socket.local_addr().ok()
    }

    pub fn https(&self) -> bool {
        self.tls.is_some()
    }

    /// Serves the admin page until `shutdown`.
    pub async fn serve(self, state: Arc<AdminState>, shutdown: CancellationToken) {
        let app = router(state).into_make_service_with_connect_info::<listener::Peer>();
        let addr = self.local_addr();
        tracing::info!(
            address = ?addr,
            https = self.tls.is_some(),
            "admin page listening (GET /metrics needs no login)"
        );
        let stop = shutdown.cancelled_owned();
        let result = match self.tls {
            Some(tls) => match listener::Https::new(self.socket, tls) {
                Ok(l) => axum::serve(l, app).with_graceful_shutdown(stop).await,
                Err(e) => Err(e),
            },
            None => {
                axum::serve(listener::Plain::new(self.socket), app)
                    .with_graceful_shutdown(stop)
                    .await
            }
        };
        if let Err(e) = result {
            tracing::error!("admin page stopped: {e}");
        }
    }
}

fn router(state: Arc<AdminState>) -> Router {
    Router::new()
        .route("/", get(pages::dashboard))
        .route("/login", get(pages::login_form).post(pages::login))
        .route("/logout", post(pages::logout))
        .route("/queue", get(pages::queue))
        .route("/queue/action", post(pages::queue_action))
        .route("/queue/{id}", get(pages::message))
        .route("/log", get(pages::log))
        .route("/diagnostics", get(pages::diagnostics))
        .route("/settings", get(pages::settings))
        .route("/static/style.css", get(pages::stylesheet))
        .route("/static/app.js", get(pages::script))
        .route("/static/favicon.svg", get(pages::favicon))
        .route("/favicon.ico", get(pages::favicon))
        .route("/metrics", get(api::metrics))
        .route("/api/session", get(api::session))
        .route("/api/dashboard", get(api::dashboard))
        .route("/api/queue", get(api::queue))
        .route("/api/queue/selection/{action}", post(api::queue_selection))
        .route("/api/queue/{id}", get(api::message))
        .route("/api/queue/{id}/{action}", post(api::queue_action))
        .route("/api/events", get(api::events))
        .route("/api/audit", get(api::audit))
        .route("/api/bans", get(api::bans))
        .route("/api/bans/{ip}/lift", post(api::lift_ban))
        .route("/bans/lift", post(pages::lift_ban))
        .route(
            "/api/settings",
            get(settings_api::get_settings).post(settings_api::save),
        )
        .route("/api/settings/check", post(settings_api::check))
        .route("/api/settings/preview", post(settings_api::preview))
        .route("/api/settings/edit", post(settings_api::edit))
        .route("/api/settings/apply", post(settings_api::apply))
        .route("/static/settings.js", get(pages::settings_script))
        .route("/api/settings/history", get(settings_api::history))
        .route("/api/settings/restore", post(settings_api::restore))
        .route("/api/users", get(users_api::list).post(users_api::set))
        .route("/api/users/{name}/delete", post(users_api::remove))
        .route("/api/diagnostics/relay-test", post(api::relay_test))
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            known_host_only,
        ))
        .with_state(state)
}

/// Refuses a request whose Host header is a name this page was not given:
/// DNS rebinding points an attacker's name at 127.0.0.1, and the browser
/// then sends that name. IP literals, `localhost`, the server's host name
/// and `[admin] hostnames` are ours.
async fn known_host_only(
    axum::extract::State(state): axum::extract::State<Arc<AdminState>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let host = request
        .headers()
        .get(axum::http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    let config = state.current.get().config.clone();
    if host_is_ours(host, &config) {
        next.run(request).await
    } else {
        tracing::warn!(host = %host.escape_default(), "admin page: request for an unknown Host refused (DNS rebinding?)");
        (
            axum::http::StatusCode::MISDIRECTED_REQUEST,
            "this admin page does not answer to that host name; list it in [admin] hostnames",
        )
            .into_response()
    }
}

/// Whether `host` (a Host header: name or address, with or without a port)
/// names this admin page.
fn host_is_ours(host: &str, config: &crate::config::Config) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    if name.is_empty() {
        return false;
    }
    name.parse::<std::net::IpAddr>().is_ok()
        || name == "localhost"
        || name == config.hostname().to_ascii_lowercase()
        || config
            .admin
            .hostnames
            .iter()
            .any(|h| h.trim_end_matches('.').eq_ignore_ascii_case(&name))
}

#[cfg(test)]
mod host_tests {
    #[test]
    fn only_our_names_and_addresses_are_answered() {
        let config = crate::config::Config::parse(
            "[server]\nhostname = \"relay.example.lan\"\n[admin]\naddress = \"127.0.0.1:8025\"\nhostnames = [\"mail-admin.example.lan\"]\n",
            "t",
        )
        .unwrap();
        for ok in [
            "127.0.0.1:8025",
            "[::1]:8025",
            "localhost:8025",
            "relay.example.lan:8025",
            "MAIL-ADMIN.example.lan",
        ] {
            assert!(super::host_is_ours(ok, &config), "{ok}");
        }
        for bad in [
            "rebind.evil.example:8025",
            "",
            "evil.example",
            "localhost.evil.example",
        ] {
            assert!(!super::host_is_ours(bad, &config), "{bad}");
        }
    }
}
