//! A webhook receiver on loopback: records every POST (headers and body),
//! checks the `X-Portcullis-Signature` with its own HMAC code, and can be
//! told to fail (500), hang past the sender's timeout, or answer slowly.

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Mode {
    Ok = 0,
    Fail = 1,
    Hang = 2,
    Slow = 3,
}

#[derive(Debug, Clone)]
pub struct Post {
    pub at: Instant,
    pub status: u16,
    pub body: Vec<u8>,
    pub json: serde_json::Value,
    pub signature: Option<String>,
    /// The signature checked out under the receiver's secret.
    pub signed: bool,
}

struct Shared {
    secret: Vec<u8>,
    mode: AtomicU8,
    posts: Mutex<Vec<Post>>,
}

#[derive(Clone)]
pub struct Receiver {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
}

/// HMAC-SHA256 over "T.BODY", as CONTRACT.md describes it, written here
/// independently of the server's code.
pub fn check_signature(secret: &[u8], header: &str, body: &[u8]) -> bool {
    let mut t = None;
    let mut v1 = None;
    for part in header.split(',') {
        if let Some(x) = part.strip_prefix("t=") {
            t = Some(x.to_string());
        }
        if let Some(x) = part.strip_prefix("v1=") {
            v1 = Some(x.to_string());
        }
    }
    let (Some(t), Some(v1)) = (t, v1) else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
    mac.update(format!("{t}.").as_bytes());
    mac.update(body);
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    hex == v1
}

async fn hook(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let mode = shared.mode.load(Ordering::SeqCst);
    let status = match mode {
        x if x == Mode::Fail as u8 => StatusCode::INTERNAL_SERVER_ERROR,
        x if x == Mode::Hang as u8 => {
            tokio::time::sleep(Duration::from_secs(120)).await;
            StatusCode::OK
        }
        x if x == Mode::Slow as u8 => {
            tokio::time::sleep(Duration::from_millis(300)).await;
            StatusCode::OK
        }
        _ => StatusCode::OK,
    };
    let signature = headers
        .get("x-portcullis-signature")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let signed = signature
        .as_deref()
        .is_some_and(|s| check_signature(&shared.secret, s, &body));
    shared.posts.lock().unwrap().push(Post {
        at: Instant::now(),
        status: status.as_u16(),
        json: serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
        body: body.to_vec(),
        signature,
        signed,
    });
    status
}

impl Receiver {
    pub async fn start(ip: &str, secret: &str) -> Receiver {
        let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            secret: secret.as_bytes().to_vec(),
            mode: AtomicU8::new(Mode::Ok as u8),
            posts: Mutex::default(),
        });
        let app = Router::new()
            .route("/hook", post(hook))
            .with_state(Arc::clone(&shared));
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver { addr, shared }
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    pub fn set_mode(&self, mode: Mode) {
        self.shared.mode.store(mode as u8, Ordering::SeqCst);
    }

    pub fn posts(&self) -> Vec<Post> {
        self.shared.posts.lock().unwrap().clone()
    }

    /// The bodies it answered 2xx to.
    pub fn taken(&self) -> Vec<serde_json::Value> {
        self.posts()
            .into_iter()
            .filter(|p| p.status == 200)
            .map(|p| p.json)
            .collect()
    }

    /// Waits until `pred` holds for what was taken, or `limit` passes.
    pub async fn wait_until(
        &self,
        limit: Duration,
        pred: impl Fn(&[serde_json::Value]) -> bool,
    ) -> Vec<serde_json::Value> {
        let start = Instant::now();
        loop {
            let taken = self.taken();
            if pred(&taken) || start.elapsed() > limit {
                return taken;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
