//! The HTML pages: login, dashboard, queue (with one message's page), log,
//! diagnostics and settings. Server-rendered from askama templates compiled
//! into the binary; HTML forms carry the CSRF token as a hidden field.

use super::AdminState;
use super::access::{self, PageLogin, Refusal, login_to_change, session_cookie};
use super::api::EventQuery;
use super::listener::Peer;
use super::view::{self, Dashboard, EventRow, FindingRow, QueueFilter, QueueRow, SettingRow};
use crate::credentials::CheckResult;
use crate::events::Event;
use crate::queue::{MessageDetail, QueueAnswer, QueueCommand};
use crate::spool::QueueId;
use askama::Template;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use std::sync::Arc;
use std::time::Duration;

type Shared = State<Arc<AdminState>>;

/// What every logged-in page's frame needs.
struct Frame {
    user: String,
    csrf: String,
    /// The nav entry to mark.
    page: &'static str,
}

fn frame(login: &super::sessions::Login, page: &'static str) -> Frame {
    Frame {
        user: login.user.clone(),
        csrf: login.csrf.clone(),
        page,
    }
}

fn render(t: &impl Template) -> Response {
    match t.render() {
        Ok(html) => (
            [
                (
                    header::CONTENT_SECURITY_POLICY,
                    "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
                ),
                (header::X_FRAME_OPTIONS, "DENY"),
                (header::CACHE_CONTROL, "no-store"),
            ],
            Html(html),
        )
            .into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("template error: {e}"),
        )
            .into_response(),
    }
}

// ---------------------------------------------------------------- login

#[derive(Template)]
#[template(path = "admin/login.html")]
struct LoginPage {
    error: Option<String>,
    user: String,
}

pub async fn login_form(State(state): Shared, headers: HeaderMap) -> Response {
    if access::login(&state, &headers).is_ok() {
        return Redirect::to("/").into_response();
    }
    render(&LoginPage {
        error: None,
        user: String::new(),
    })
}

fn login_refused(status: StatusCode, user: &str, error: &str) -> Response {
    let mut r = render(&LoginPage {
        error: Some(error.to_string()),
        user: user.to_string(),
    });
    *r.status_mut() = status;
    r
}

/// POST /login with `user` and `password`. Failures count toward the same
/// ban as failed SMTP AUTH from that address, and cost the client time.
pub async fn login(
    State(state): Shared,
    ConnectInfo(Peer(peer)): ConnectInfo<Peer>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !access::same_origin(&state, &headers) {
        return Refusal::Forbidden.page();
    }
    // The form's fields; API clients may send the same as JSON.
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("application/json"));
    let mut user = String::new();
    let mut password = String::new();
    if json {
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        user = v["user"].as_str().unwrap_or_default().trim().to_string();
        password = v["password"].as_str().unwrap_or_default().to_string();
    } else {
        for (k, v) in form_urlencoded::parse(&body) {
            match &*k {
                "user" => user = v.trim().to_string(),
                "password" => password = v.into_owned(),
                _ => {}
            }
        }
    }
    let refused = |status: StatusCode, user: &str, error: &str| {
        if json {
            (status, axum::Json(serde_json::json!({"error": error}))).into_response()
        } else {
            login_refused(status, user, error)
        }
    };
    let ctx = state.current.get();
    let ip = peer.ip();
    let trusted = ctx.trusts(ip);
    if ctx.checks.banned_for(ip, trusted).is_some()
        || (!trusted && ctx.checks.account_locked(&user).is_some())
    {
        return refused(
            StatusCode::FORBIDDEN,
            &user,
            "Too many failed logins from your address; try again later.",
        );
    }
    // Unknown and unlisted names are checked like the others, so that a
    // wrong name takes as long as a wrong password.
    let checked = ctx.credentials.check(&user, password).await;
    let admin = ctx.config.admin.users.contains(&user);
    match checked {
        CheckResult::Valid if admin => {
            let token = state.sessions.create(&user);
            ctx.events.emit(Event::AdminLogin {
                client: ip,
                user: user.clone(),
                succeeded: true,
                failures: 0,
            });
            let cookie = [(header::SET_COOKIE, session_cookie(&token, state.https))];
            if json {
                let login = state
                    .sessions
                    .get(&token, Duration::MAX, Duration::MAX)
                    .map(|l| l.csrf)
                    .unwrap_or_default();
                (
                    cookie,
                    axum::Json(serde_json::json!({"user": user, "csrf": login})),
                )
                    .into_response()
            } else {
                (cookie, Redirect::to("/")).into_response()
            }
        }
        CheckResult::Busy => refused(
            StatusCode::SERVICE_UNAVAILABLE,
            &user,
            "The server is busy checking passwords; try again in a moment.",
        ),
        CheckResult::Unavailable(e) => {
            tracing::error!("admin login: cannot check passwords: {e}");
            refused(
                StatusCode::SERVICE_UNAVAILABLE,
                &user,
                "Passwords cannot be checked right now (see the server log).",
            )
        }
        _ => {
            let failure = ctx.checks.auth_failed(ip, trusted, &user);
            let failures = failure.from_ip.max(failure.from_prefix);
            failure.report(&ctx.events, ip, &user);
            ctx.events.emit(Event::AdminLogin {
                client: ip,
                user: user.clone(),
                succeeded: false,
                failures,
            });
            // Each failure from an address costs it a little more time.
            tokio::time::sleep(Duration::from_millis(250 * failures.min(12))).await;
            refused(
                StatusCode::UNAUTHORIZED,
                &user,
                "Wrong user name or password (or not an admin).",
            )
        }
    }
}

pub async fn logout(State(state): Shared, headers: HeaderMap, body: Bytes) -> Response {
    let csrf = form_field(&body, "csrf");
    if let Err(r) = login_to_change(&state, &headers, csrf.as_deref()) {
        return r.page();
    }
    if let Some(token) = access::session_token(&headers) {
        state.sessions.remove(&token);
    }
    (
        [(header::SET_COOKIE, session_cookie("", state.https))],
        Redirect::to("/login"),
    )
        .into_response()
}

fn form_field(body: &[u8], name: &str) -> Option<String> {
    form_urlencoded::parse(body)
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

// ------------------------------------------------------------ dashboard

/// One bar of the dashboard's chart.
struct Bar {
    x: usize,
    received: u64,
    refused: u64,
    received_y: u64,
    received_h: u64,
    refused_y: u64,
    refused_h: u64,
    label: String,
}

const CHART_HEIGHT: u64 = 80;

fn bars(d: &Dashboard) -> Vec<Bar> {
    let peak = d
        .hourly
        .iter()
        .map(|a| a.received.max(a.refused))
        .max()
        .unwrap_or(0)
        .max(1);
    let scale = |n: u64| (n * CHART_HEIGHT).div_ceil(peak);
    let now = crate::clock::unix_now();
    d.hourly
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let hours_ago = d.hourly.len() - 1 - i;
            let (rh, fh) = (scale(a.received), scale(a.refused));
            Bar {
                x: i * 12,
                received: a.received,
                refused: a.refused,
                received_y: CHART_HEIGHT - rh,
                received_h: rh,
                refused_y: CHART_HEIGHT - fh,
                refused_h: fh,
                label: view::clock(now - hours_ago as i64 * 3600)[11..13].to_string(),
            }
        })
        .collect()
}

#[derive(Template)]
#[template(path = "admin/dashboard.html")]
struct DashboardPage {
    frame: Frame,
    d: Dashboard,
    bars: Vec<Bar>,
}

pub async fn dashboard(State(state): Shared, PageLogin(login): PageLogin) -> Response {
    let d = view::dashboard(&state).await;
    render(&DashboardPage {
        frame: frame(&login, "dashboard"),
        bars: bars(&d),
        d,
    })
}

// ---------------------------------------------------------------- queue

/// A queue row with what the template shows.
struct Row {
    r: QueueRow,
    received: String,
    age: String,
    next: String,
}

#[derive(Template)]
#[template(path = "admin/queue.html")]
struct QueuePage {
    frame: Frame,
    rows: Vec<Row>,
    /// Several nodes share the queue: each row names its holder.
    cluster: bool,
    filter_sender: String,
    filter_domain: String,
    filter_state: String,
    error: Option<String>,
    notice: Option<String>,
}

#[derive(Debug, Default, serde::Deserialize)]
pub struct QueuePageQuery {
    #[serde(flatten)]
    filter: QueueFilter,
    /// What the last action did (after its redirect).
    done: Option<String>,
}

pub async fn queue(
    State(state): Shared,
    PageLogin(login): PageLogin,
    Query(q): Query<QueuePageQuery>,
) -> Response {
    let now = crate::clock::unix_now();
    let (rows, error) = match view::queue_rows(&state, &q.filter).await {
        Ok(rows) => (rows, None),
        Err(e) => (Vec::new(), Some(e)),
    };
    let rows = rows
        .into_iter()
        .map(|r| Row {
            received: view::clock(r.summary.received_at),
            age: view::age(now - r.summary.received_at),
            next: view::next_try(r.summary.next_attempt, now),
            r,
        })
        .collect();
    let text = |s: &Option<String>| s.clone().unwrap_or_default();
    render(&QueuePage {
        frame: frame(&login, "queue"),
        rows,
        cluster: state.current.get().config.cluster.is_some(),
        filter_sender: text(&q.filter.sender),
        filter_domain: text(&q.filter.domain),
        filter_state: text(&q.filter.state),
        error,
        notice: q.done,
    })
}

/// The queue page's form: `action` (hold, release, retry, delete) on the
/// checked `id`s, or `one` = "ACTION ID" from a row's own button.
pub async fn queue_action(State(state): Shared, headers: HeaderMap, body: Bytes) -> Response {
    let csrf = form_field(&body, "csrf");
    if let Err(r) = login_to_change(&state, &headers, csrf.as_deref()) {
        return r.page();
    }
    let mut action = None;
    let mut ids = Vec::new();
    for (k, v) in form_urlencoded::parse(&body) {
        match &*k {
            "action" => action = Some(v.into_owned()),
            "id" => ids.extend(QueueId::parse(&v)),
            "one" => {
                if let Some((a, id)) = v.split_once(' ') {
                    action = Some(a.to_string());
                    ids = QueueId::parse(id).into_iter().collect();
                    break;
                }
            }
            _ => {}
        }
    }
    let Some(action) = action else {
        return (StatusCode::BAD_REQUEST, "no action").into_response();
    };
    let done = match super::api::act(&state, &action, &ids).await {
        Ok(_) => format!("{action}: {} message(s)", ids.len()),
        Err(_) => format!("{action} failed"),
    };
    let back = format!(
        "/queue?done={}",
        form_urlencoded::byte_serialize(done.as_bytes()).collect::<String>()
    );
    Redirect::to(&back).into_response()
}

#[derive(Template)]
#[template(path = "admin/message.html")]
struct MessagePage {
    frame: Frame,
    id: String,
    m: MessageDetail,
    received: String,
    /// The message's state word (held, delivering, deferred, queued, failed).
    state: &'static str,
    /// Each recipient, its state word, its next try in words and where it goes.
    recipients: Vec<(crate::spool::RecipientState, &'static str, String, String)>,
}

#[derive(Debug, Default, serde::Deserialize)]
pub struct MessagePageQuery {
    body: Option<String>,
}

pub async fn message(
    State(state): Shared,
    PageLogin(login): PageLogin,
    Path(id): Path<String>,
    Query(q): Query<MessagePageQuery>,
) -> Response {
    let Some(qid) = QueueId::parse(&id) else {
        return (StatusCode::NOT_FOUND, "not a queue id").into_response();
    };
    let body = q.body.is_some();
    match state
        .queue
        .command(QueueCommand::Show { id: qid, body })
        .await
    {
        QueueAnswer::Show { message } => {
            let now = crate::clock::unix_now();
            let config = state.current.get().config.clone();
            let facts = crate::queue::route_facts(&message.envelope);
            let recipients = message
                .state
                .recipients
                .iter()
                .map(|r| {
                    let word = crate::queue::recipient_state(r);
                    let (via, _) =
                        crate::delivery::route::next_hop_words(&r.address, &facts, &config);
                    (r.clone(), word, view::next_try(r.next_attempt, now), via)
                })
                .collect();
            render(&MessagePage {
                frame: frame(&login, "queue"),
                received: view::clock(message.envelope.received_at),
                state: message.state_word(),
                id,
                recipients,
                m: *message,
            })
        }
        _ => (StatusCode::NOT_FOUND, "no such message in the queue").into_response(),
    }
}

// ------------------------------------------------------------------ log

#[derive(Template)]
#[template(path = "admin/log.html")]
struct LogPage {
    frame: Frame,
    events: Vec<EventRow>,
    queue_id: String,
    client: String,
    refusals: bool,
}

pub async fn log(
    State(state): Shared,
    PageLogin(login): PageLogin,
    Query(q): Query<EventQuery>,
) -> Response {
    let filter = q.filter();
    render(&LogPage {
        frame: frame(&login, "log"),
        events: view::events(&state, &filter),
        queue_id: filter.queue_id.unwrap_or_default(),
        client: filter.client.unwrap_or_default(),
        refusals: filter.refusals_only,
    })
}

// ---------------------------------------------------------- diagnostics

#[derive(Template)]
#[template(path = "admin/diagnostics.html")]
struct DiagnosticsPage {
    frame: Frame,
    findings: Vec<FindingRow>,
    listeners: Vec<String>,
    /// Banned addresses and, in words, the time each ban has left.
    bans: Vec<(String, String)>,
    done: Option<String>,
}

#[derive(Debug, Default, serde::Deserialize)]
pub struct DoneNote {
    done: Option<String>,
}

pub async fn diagnostics(
    State(state): Shared,
    PageLogin(login): PageLogin,
    Query(note): Query<DoneNote>,
) -> Response {
    let ctx = state.current.get();
    let config = ctx.config.clone();
    let bans = ctx
        .checks
        .bans()
        .into_iter()
        .map(|(ip, left)| {
            let ban = crate::control::Ban::new(ip, left);
            let left = std::time::Duration::from_secs(ban.seconds_left);
            (ip.to_string(), humantime::format_duration(left).to_string())
        })
        .collect();
    let listeners = state
        .listeners
        .of_kind(crate::config::ListenerKind::Smtp)
        .iter()
        .map(|a| a.to_string())
        .collect();
    render(&DiagnosticsPage {
        frame: frame(&login, "diagnostics"),
        findings: view::findings(&config),
        listeners,
        bans,
        done: note.done,
    })
}

/// The diagnostics page's form: lift the ban of `ip`.
pub async fn lift_ban(State(state): Shared, headers: HeaderMap, body: Bytes) -> Response {
    let csrf = form_field(&body, "csrf");
    let login = match login_to_change(&state, &headers, csrf.as_deref()) {
        Ok(l) => l,
        Err(r) => return r.page(),
    };
    let Some(ip) = form_field(&body, "ip").and_then(|ip| ip.parse::<std::net::IpAddr>().ok())
    else {
        return (StatusCode::BAD_REQUEST, "no address").into_response();
    };
    let was_banned = state.current.get().checks.lift_ban(ip);
    tracing::warn!(client = %ip, admin = %login.user, was_banned, "ban lifted by an admin");
    let done = if was_banned {
        format!("{ip}: ban lifted")
    } else {
        format!("{ip} was not banned")
    };
    let back = format!(
        "/diagnostics?done={}",
        form_urlencoded::byte_serialize(done.as_bytes()).collect::<String>()
    );
    Redirect::to(&back).into_response()
}

// ------------------------------------------------------------- settings

#[derive(Template)]
#[template(path = "admin/settings.html")]
struct SettingsPage {
    frame: Frame,
    rows: Vec<SettingRow>,
    /// Whether the page may change the file, and why not.
    editable: bool,
    reason: String,
    /// The relay rules as the form shows them.
    networks: Vec<NetworkRow>,
}

/// One `[[network]]` in the relay-rules form.
struct NetworkRow {
    range: String,
    auth: &'static str,
    exclude: String,
}

pub async fn settings(State(state): Shared, PageLogin(login): PageLogin) -> Response {
    let ctx = state.current.get();
    let config = ctx.config.clone();
    let reason = if state.config_path.is_none() {
        "The server runs on its embedded default configuration: start it with --config FILE to edit settings here.".to_string()
    } else if config.admin.settings == crate::config::SettingsMode::ReadOnly {
        "This file is marked [admin] settings = \"read-only\": it is managed elsewhere.".to_string()
    } else {
        String::new()
    };
    let networks = config
        .network
        .iter()
        .map(|n| NetworkRow {
            range: n.range.to_string(),
            auth: match n.auth {
                crate::config::NetworkAuth::None => "none",
                crate::config::NetworkAuth::Required => "required",
                crate::config::NetworkAuth::Deny => "deny",
            },
            exclude: n
                .exclude
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join(", "),
        })
        .collect();
    render(&SettingsPage {
        frame: frame(&login, "settings"),
        rows: view::settings(&config),
        editable: reason.is_empty(),
        reason,
        networks,
    })
}

pub async fn settings_script() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=3600"),
        ],
        include_str!("static/settings.js"),
    )
        .into_response()
}

// --------------------------------------------------------------- assets

pub async fn stylesheet() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=3600"),
        ],
        include_str!("static/style.css"),
    )
        .into_response()
}

/// The page's icon (browsers ask for /favicon.ico whatever the page says).
pub async fn favicon() -> Response {
    (
        [
            (header::CONTENT_TYPE, "image/svg+xml"),
            (header::CACHE_CONTROL, "max-age=86400"),
        ],
        include_str!("static/favicon.svg"),
    )
        .into_response()
}

pub async fn script() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=3600"),
        ],
        include_str!("static/app.js"),
    )
        .into_response()
}
