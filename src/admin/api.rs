//! The JSON API (`/api/...`) and `/metrics`. Reads need a login (401
//! without); changes also need the CSRF token (403 without).

use super::AdminState;
use super::access::{ApiChange, ApiLogin};
use super::view;
use crate::events::EventFilter;
use crate::queue::{QueueAnswer, QueueCommand, Selector};
use crate::spool::QueueId;
use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;

type Shared = State<Arc<AdminState>>;

/// A JSON error answer: `{"error": message}`.
pub(super) fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({"error": message.into()}))).into_response()
}

pub async fn metrics(State(state): Shared, headers: HeaderMap) -> Response {
    let stats = view::queue_stats(&state).await;
    let untrusted = state.current.get().guard.state().untrusted.len();
    let body = state
        .metrics
        .render(stats.as_ref(), untrusted, crate::clock::unix_now());
    // OpenMetrics to those who ask for it (Prometheus does), the classic
    // text format to everyone else (curl, older scrapers and parsers).
    let openmetrics = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("application/openmetrics-text"));
    if openmetrics {
        let content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8";
        ([(header::CONTENT_TYPE, content_type)], body).into_response()
    } else {
        let content_type = "text/plain; version=0.0.4; charset=utf-8";
        let classic = crate::metrics::classic_text(&body);
        ([(header::CONTENT_TYPE, content_type)], classic).into_response()
    }
}

pub async fn session(ApiLogin(login): ApiLogin) -> Response {
    Json(json!({"user": login.user, "csrf": login.csrf})).into_response()
}

pub async fn dashboard(State(state): Shared, _login: ApiLogin) -> Response {
    Json(view::dashboard(&state).await).into_response()
}

pub async fn queue(
    State(state): Shared,
    _login: ApiLogin,
    Query(filter): Query<view::QueueFilter>,
) -> Response {
    match view::queue_rows(&state, &filter).await {
        Ok(rows) => Json(json!({"messages": rows})).into_response(),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e),
    }
}

#[derive(Debug, Deserialize)]
pub struct MessageQuery {
    /// `?body=1`: the body too (never on lists).
    #[serde(default)]
    body: Option<String>,
}

pub async fn message(
    State(state): Shared,
    _login: ApiLogin,
    Path(id): Path<String>,
    Query(q): Query<MessageQuery>,
) -> Response {
    let Some(id) = QueueId::parse(&id) else {
        return error(StatusCode::NOT_FOUND, format!("{id:?} is not a queue id"));
    };
    let body = q.body.is_some_and(|b| b != "0" && b != "false");
    match state.queue.command(QueueCommand::Show { id, body }).await {
        QueueAnswer::Show { message } => Json(message).into_response(),
        QueueAnswer::Error { message } => error(StatusCode::NOT_FOUND, message),
        _ => error(StatusCode::INTERNAL_SERVER_ERROR, "unexpected answer"),
    }
}

/// hold, release, retry or delete, for a selector.
pub fn command_for(action: &str, select: Selector) -> Option<QueueCommand> {
    Some(match action {
        "hold" => QueueCommand::Hold { select },
        "release" => QueueCommand::Release { select },
        "retry" => QueueCommand::Retry { select },
        "delete" => QueueCommand::Delete { select },
        _ => return None,
    })
}

/// Runs queue commands on each id; the answers' changes in one list.
pub async fn act(state: &AdminState, action: &str, ids: &[QueueId]) -> Result<Response, Response> {
    let mut changed = Vec::new();
    for id in ids {
        let Some(cmd) = command_for(action, Selector::Id(id.clone())) else {
            return Err(error(
                StatusCode::NOT_FOUND,
                format!("no action {action:?} (hold, release, retry, delete)"),
            ));
        };
        match state.queue.command(cmd).await {
            QueueAnswer::Changed { changed: c } => changed.extend(c),
            QueueAnswer::Error { message } => {
                return Err(error(StatusCode::NOT_FOUND, message));
            }
            _ => {}
        }
    }
    Ok(Json(json!({"action": action, "changed": changed})).into_response())
}

pub async fn queue_action(
    State(state): Shared,
    _login: ApiChange,
    Path((id, action)): Path<(String, String)>,
) -> Response {
    let Some(id) = QueueId::parse(&id) else {
        return error(StatusCode::NOT_FOUND, format!("{id:?} is not a queue id"));
    };
    let result = act(&state, &action, &[id]).await;
    match result {
        Ok(r) | Err(r) => r,
    }
}

#[derive(Debug, Deserialize)]
pub struct Selection {
    ids: Vec<String>,
}

/// The same action on several messages: `{"ids": [...]}`.
pub async fn queue_selection(
    State(state): Shared,
    _login: ApiChange,
    Path(action): Path<String>,
    Json(selection): Json<Selection>,
) -> Response {
    let mut ids = Vec::new();
    for raw in selection.ids.iter().take(10_000) {
        match QueueId::parse(raw) {
            Some(id) => ids.push(id),
            None => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("{raw:?} is not a queue id"),
                );
            }
        }
    }
    match act(&state, &action, &ids).await {
        Ok(r) | Err(r) => r,
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct EventQuery {
    pub queue_id: Option<String>,
    pub client: Option<String>,
    /// `refusals=1`: refusals only.
    pub refusals: Option<String>,
    pub limit: Option<usize>,
}

impl EventQuery {
    pub fn filter(&self) -> EventFilter {
        let text = |s: &Option<String>| {
            s.as_deref()
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
        };
        EventFilter {
            queue_id: text(&self.queue_id),
            client: text(&self.client),
            refusals_only: self
                .refusals
                .as_deref()
                .is_some_and(|r| !r.is_empty() && r != "0" && r != "false"),
            guard_only: false,
            limit: self.limit.unwrap_or(200).min(5_000),
        }
    }
}

pub async fn events(
    State(state): Shared,
    _login: ApiLogin,
    Query(q): Query<EventQuery>,
) -> Response {
    Json(json!({"events": view::events(&state, &q.filter())})).into_response()
}

pub async fn audit(State(state): Shared, _login: ApiLogin) -> Response {
    let config = state.current.get().config.clone();
    Json(json!({"findings": view::findings(&config)})).into_response()
}

/// Runs the open-relay battery against each smtp listener from an untrusted
/// local address, streaming one JSON line per test as it is judged, then a
/// summary line.
pub async fn relay_test(State(state): Shared, _login: ApiChange) -> Response {
    let Ok(running) = Arc::clone(&state.relay_test).try_lock_owned() else {
        return error(
            StatusCode::CONFLICT,
            "a relay test is already running; wait for it to finish",
        );
    };
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let st = Arc::clone(&state);
    tokio::spawn(async move {
        let _running = running;
        let ctx = st.current.get();
        let listeners = st.listeners.get();
        let (mut relayed, mut refused, mut errors, mut tested) = (0, 0, 0, 0);
        for (addr, kind) in listeners {
            if kind != crate::config::ListenerKind::Smtp {
                continue;
            }
            let line_tx = tx.clone();
            let on_test = move |t: &crate::diagnostics::relay_test::TestResult| {
                let line = json!({"listener": addr.to_string(), "test": t});
                let _ = line_tx.send(format!("{line}\n"));
            };
            let found =
                crate::diagnostics::self_test::test_listener(&ctx, addr, kind, &st.queue, &on_test)
                    .await;
            match found {
                Some((report, source)) => {
                    tested += 1;
                    relayed += report.relayed;
                    refused += report.refused;
                    errors += report.errors;
                    let _ = tx.send(format!(
                        "{}\n",
                        json!({"listener": addr.to_string(), "source": source.to_string(), "done": true})
                    ));
                }
                None => {
                    let _ = tx.send(format!(
                        "{}\n",
                        json!({"listener": addr.to_string(), "skipped": "no local address outside the trusted networks to test from"})
                    ));
                }
            }
        }
        let verdict = if relayed > 0 {
            "OPEN RELAY: some attempts were relayed"
        } else if tested == 0 {
            "nothing tested"
        } else if errors > 0 {
            "no relay, but some tests could not run"
        } else {
            "closed: every relay attempt was refused"
        };
        let _ = tx.send(format!(
            "{}\n",
            json!({"summary": {"relayed": relayed, "refused": refused, "errors": errors, "listeners": tested, "verdict": verdict}})
        ));
    });
    let stream = tokio_stream::StreamExt::map(
        tokio_stream::wrappers::UnboundedReceiverStream::new(rx),
        Ok::<_, std::convert::Infallible>,
    );
    (
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(stream),
    )
        .into_response()
}

/// `GET /api/bans`: addresses banned after failed logins.
pub async fn bans(State(state): Shared, _login: ApiLogin) -> Response {
    let bans: Vec<crate::control::Ban> = state
        .current
        .get()
        .checks
        .bans()
        .into_iter()
        .map(|(ip, left)| crate::control::Ban::new(ip, left))
        .collect();
    Json(json!({ "bans": bans })).into_response()
}

/// `POST /api/bans/{ip}/lift`: ends a ban (and forgets the failed logins).
pub async fn lift_ban(
    State(state): Shared,
    ApiChange(login): ApiChange,
    Path(ip): Path<String>,
) -> Response {
    let Ok(ip) = ip.parse::<std::net::IpAddr>() else {
        return error(
            StatusCode::NOT_FOUND,
            format!("{ip:?} is not an IP address"),
        );
    };
    let was_banned = state.current.get().checks.lift_ban(ip);
    tracing::warn!(client = %ip, admin = %login.user, was_banned, "ban lifted by an admin");
    Json(json!({"ip": ip, "was_banned": was_banned})).into_response()
}
