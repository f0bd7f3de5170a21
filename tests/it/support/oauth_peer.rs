//! The providers' side of OAuth2 on loopback, over HTTPS from the test CA:
//! a token endpoint (RFC 6749 client credentials and refresh tokens, RFC
//! 8628 device code, Microsoft's paths) that issues short-lived tokens, and
//! a Microsoft Graph-shaped `sendMail` that checks the bearer token and
//! keeps the MIME it receives. The SMTP side (XOAUTH2) is in `sink`, which
//! checks tokens against the same `Authority`.

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Who may get tokens, and which tokens are good now.
pub struct Authority {
    pub client_id: String,
    pub client_secret: String,
    /// Seconds each new access token lives.
    pub lifetime: AtomicU64,
    access: Mutex<HashMap<String, Instant>>,
    refresh: Mutex<HashSet<String>>,
    /// Device codes: code → approved.
    devices: Mutex<HashMap<String, bool>>,
    /// Grants served, by grant type.
    pub grants: Mutex<Vec<String>>,
    /// Every token issued, in order.
    pub issued: Mutex<Vec<String>>,
    /// Graph answers 429 with Retry-After while this is set.
    pub throttle: AtomicBool,
    /// Every request to the token endpoint.
    pub token_requests: AtomicUsize,
    counter: AtomicU64,
}

impl Authority {
    pub fn new(client_id: &str, client_secret: &str) -> Arc<Authority> {
        Arc::new(Authority {
            client_id: client_id.into(),
            client_secret: client_secret.into(),
            lifetime: AtomicU64::new(3600),
            access: Mutex::default(),
            refresh: Mutex::default(),
            devices: Mutex::default(),
            grants: Mutex::default(),
            issued: Mutex::default(),
            throttle: AtomicBool::new(false),
            token_requests: AtomicUsize::new(0),
            counter: AtomicU64::new(0),
        })
    }

    /// Whether `token` is an access token issued here and not yet expired or revoked.
    pub fn valid(&self, token: &str) -> bool {
        self.access
            .lock()
            .unwrap()
            .get(token)
            .is_some_and(|t| *t > Instant::now())
    }

    /// The user signs in and approves every pending device code.
    pub fn approve_devices(&self) -> usize {
        let mut d = self.devices.lock().unwrap();
        d.values_mut().for_each(|v| *v = true);
        d.len()
    }

    pub fn grant_count(&self, grant: &str) -> usize {
        self.grants
            .lock()
            .unwrap()
            .iter()
            .filter(|g| g.as_str() == grant)
            .count()
    }

    fn tokens(&self, with_refresh: bool) -> serde_json::Value {
        let n = self.counter.fetch_add(1, Ordering::SeqCst);
        let token = format!("at-{n}-{:016x}", rand_u64());
        let lifetime = self.lifetime.load(Ordering::SeqCst);
        self.access.lock().unwrap().insert(
            token.clone(),
            Instant::now() + Duration::from_secs(lifetime),
        );
        self.issued.lock().unwrap().push(token.clone());
        let mut body = serde_json::json!({
            "token_type": "Bearer",
            "access_token": token,
            "expires_in": lifetime,
            "ext_expires_in": lifetime,
        });
        if with_refresh {
            let rt = format!("rt-{n}-{:016x}", rand_u64());
            self.refresh.lock().unwrap().insert(rt.clone());
            body["refresh_token"] = rt.into();
        }
        body
    }
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(Instant::now().elapsed().as_nanos() as u64);
    h.finish()
}

/// What Graph received.
#[derive(Debug, Clone)]
pub struct GraphMail {
    pub user: String,
    pub mime: Vec<u8>,
}

#[derive(Clone)]
struct Peer {
    authority: Arc<Authority>,
    mails: Arc<Mutex<Vec<GraphMail>>>,
}

pub struct OAuthPeer {
    pub addr: SocketAddr,
    pub authority: Arc<Authority>,
    pub mails: Arc<Mutex<Vec<GraphMail>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for OAuthPeer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Accepts TCP and completes TLS before handing the stream to axum.
pub struct TlsListener {
    pub tcp: tokio::net::TcpListener,
    pub acceptor: tokio_rustls::TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((tcp, addr)) = self.tcp.accept().await else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            if let Ok(Ok(tls)) =
                tokio::time::timeout(Duration::from_secs(5), self.acceptor.accept(tcp)).await
            {
                return (tls, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

impl OAuthPeer {
    /// Serves HTTPS on `ip` (port chosen) with `tls`.
    pub async fn start(
        ip: &str,
        tls: Arc<rustls::ServerConfig>,
        authority: Arc<Authority>,
    ) -> OAuthPeer {
        let tcp = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let mails = Arc::new(Mutex::new(Vec::new()));
        let peer = Peer {
            authority: Arc::clone(&authority),
            mails: Arc::clone(&mails),
        };
        let app = Router::new()
            .route("/{tenant}/oauth2/v2.0/token", post(token))
            .route("/{tenant}/oauth2/v2.0/devicecode", post(devicecode))
            .route("/v1.0/users/{user}/sendMail", post(send_mail))
            .with_state(peer);
        let listener = TlsListener {
            tcp,
            acceptor: tokio_rustls::TlsAcceptor::from(tls),
        };
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        OAuthPeer {
            addr,
            authority,
            mails,
            task,
        }
    }

    pub fn mails(&self) -> Vec<GraphMail> {
        self.mails.lock().unwrap().clone()
    }
}

fn oauth_error(code: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        axum::Json(
            serde_json::json!({"error": code, "error_description": format!("AADSTS: {code}")}),
        ),
    )
        .into_response()
}

/// The client's id and secret, from the form or HTTP Basic (RFC 6749 2.3.1).
fn client_of(form: &HashMap<String, String>, headers: &HeaderMap) -> (String, String) {
    if let Some(basic) = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        && let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(basic)
    {
        let text = String::from_utf8_lossy(&decoded).into_owned();
        let (id, secret) = text.split_once(':').unwrap_or((&text, ""));
        return (id.to_string(), secret.to_string());
    }
    (
        form.get("client_id").cloned().unwrap_or_default(),
        form.get("client_secret").cloned().unwrap_or_default(),
    )
}

async fn token(State(peer): State<Peer>, headers: HeaderMap, body: String) -> Response {
    let a = &peer.authority;
    a.token_requests.fetch_add(1, Ordering::SeqCst);
    let form: HashMap<String, String> = form_urlencoded::parse(body.as_bytes())
        .into_owned()
        .collect();
    let grant = form.get("grant_type").cloned().unwrap_or_default();
    let (id, secret) = client_of(&form, &headers);
    if id != a.client_id {
        return oauth_error("invalid_client");
    }
    match grant.as_str() {
        "client_credentials" => {
            if secret != a.client_secret {
                return oauth_error("invalid_client");
            }
            a.grants.lock().unwrap().push(grant);
            axum::Json(a.tokens(false)).into_response()
        }
        "refresh_token" => {
            let rt = form.get("refresh_token").cloned().unwrap_or_default();
            if !a.refresh.lock().unwrap().remove(&rt) {
                return oauth_error("invalid_grant");
            }
            a.grants.lock().unwrap().push(grant);
            // Rotated, as Microsoft does: the old one is spent.
            axum::Json(a.tokens(true)).into_response()
        }
        "urn:ietf:params:oauth:grant-type:device_code" => {
            let code = form.get("device_code").cloned().unwrap_or_default();
            let approved = a.devices.lock().unwrap().get(&code).copied();
            match approved {
                None => oauth_error("expired_token"),
                Some(false) => oauth_error("authorization_pending"),
                Some(true) => {
                    a.devices.lock().unwrap().remove(&code);
                    a.grants.lock().unwrap().push("device_code".into());
                    axum::Json(a.tokens(true)).into_response()
                }
            }
        }
        _ => oauth_error("unsupported_grant_type"),
    }
}

async fn devicecode(State(peer): State<Peer>, body: String) -> Response {
    let form: HashMap<String, String> = form_urlencoded::parse(body.as_bytes())
        .into_owned()
        .collect();
    if form.get("client_id") != Some(&peer.authority.client_id) {
        return oauth_error("invalid_client");
    }
    let device_code = format!("dc-{:016x}", rand_u64());
    peer.authority
        .devices
        .lock()
        .unwrap()
        .insert(device_code.clone(), false);
    axum::Json(serde_json::json!({
        "device_code": device_code,
        "user_code": "PCX-7421",
        "verification_uri": "https://microsoft.test/devicelogin",
        "expires_in": 300,
        "interval": 1,
    }))
    .into_response()
}

async fn send_mail(
    State(peer): State<Peer>,
    Path(user): Path<String>,
    headers: HeaderMap,
    body: String,
) -> Response {
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    if !peer.authority.valid(token) {
        return (
            StatusCode::UNAUTHORIZED,
            axum::Json(serde_json::json!({"error": {"code": "InvalidAuthenticationToken", "message": "Access token has expired or is not yet valid."}})),
        )
            .into_response();
    }
    if peer.authority.throttle.load(Ordering::SeqCst) {
        let mut r = (
            StatusCode::TOO_MANY_REQUESTS,
            axum::Json(serde_json::json!({"error": {"code": "ApplicationThrottled", "message": "Application is over its MailboxConcurrency limit."}})),
        )
            .into_response();
        r.headers_mut()
            .insert("retry-after", axum::http::HeaderValue::from_static("7"));
        return r;
    }
    let is_text = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/plain"));
    let Ok(mime) = base64::engine::general_purpose::STANDARD.decode(body.trim()) else {
        return (StatusCode::BAD_REQUEST, "not base64").into_response();
    };
    if !is_text {
        return (StatusCode::BAD_REQUEST, "MIME goes as text/plain").into_response();
    }
    peer.mails.lock().unwrap().push(GraphMail { user, mime });
    StatusCode::ACCEPTED.into_response()
}
