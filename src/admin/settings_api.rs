//! The Settings page's JSON routes: read the file with its findings,
//! check or preview a candidate, save it (whole, or as structured edits),
//! the change log, and restoring an earlier version. Every save goes the
//! same way: version check, password again for risky sections, the
//! review, write with backups, reload — and the old file put back when the
//! reload fails.

use super::AdminState;
use super::access::{ApiChange, ApiLogin, password_again};
use super::api::error;
use super::listener::Peer;
use crate::config::SettingsMode;
use crate::diagnostics::audit::Machine;
use crate::events::Event;
use crate::settings::{ConfigFile, edit, file, preview, review};
use axum::Json;
use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;

type Shared = State<Arc<AdminState>>;

/// Sections whose change needs the admin's password again.
const RISKY: &[&str] = &["network", "access", "auth", "admin", "relay", "listener"];

/// The file, or why the page cannot edit it.
fn editable(state: &AdminState) -> Result<ConfigFile, (StatusCode, String)> {
    let ctx = state.current.get();
    let Some(path) = &state.config_path else {
        return Err((
            StatusCode::FORBIDDEN,
            "the server runs on its embedded default configuration: there is no file to edit (start it with --config FILE)".into(),
        ));
    };
    if ctx.config.admin.settings == SettingsMode::ReadOnly {
        return Err((
            StatusCode::FORBIDDEN,
            "[admin] settings = \"read-only\": this file is managed elsewhere; change it there"
                .into(),
        ));
    }
    Ok(ConfigFile::new(path, &ctx.config.server.data_dir))
}

pub async fn get_settings(State(state): Shared, _login: ApiLogin) -> Response {
    let ctx = state.current.get();
    let config = ctx.config.clone();
    let findings = crate::diagnostics::audit::audit(&config, &Machine::read());
    let rows = super::view::settings(&config);
    let (toml, version) = match &state.config_path {
        Some(path) => match ConfigFile::new(path, &config.server.data_dir).read() {
            Ok(read) => read,
            Err(e) => {
                return error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("{}: {e}", path.display()),
                );
            }
        },
        None => {
            let text = crate::config::EMBEDDED_DEFAULT.to_string();
            let version = file::version_of(text.as_bytes());
            (text, version)
        }
    };
    let (editable, reason) = match editable(&state) {
        Ok(_) => (true, None),
        Err((_, why)) => (false, Some(why)),
    };
    Json(json!({
        "version": version,
        "toml": toml,
        "findings": findings,
        "editable": editable,
        "reason": reason,
        "path": state.config_path.as_ref().map(|p| p.display().to_string()),
        "settings": rows,
        // What the page's section forms start from (no secrets live here).
        "values": {
            "access": config.access,
            "relay": config.relay,
            "checks": config.checks,
            "limits": config.limits,
        },
    }))
    .into_response()
}

#[derive(Debug, Deserialize)]
pub struct Candidate {
    toml: String,
}

/// Reviews a candidate without saving: `{"ok", "findings", "refusals"}`.
pub async fn check(
    State(state): Shared,
    ApiLogin(login): ApiLogin,
    Json(c): Json<Candidate>,
) -> Response {
    let ctx = state.current.get();
    let machine = Machine::read();
    let r = review(&c.toml, &ctx.config, &login.user, &machine);
    Json(json!({"ok": r.ok(), "findings": r.findings, "refusals": r.refusals})).into_response()
}

#[derive(Debug, Deserialize)]
pub struct PreviewRequest {
    toml: String,
    /// Addresses to explain besides the samples.
    #[serde(default)]
    ips: Vec<std::net::IpAddr>,
}

/// `explain` for sample clients under the running config and the candidate.
pub async fn preview(
    State(state): Shared,
    ApiLogin(login): ApiLogin,
    Json(p): Json<PreviewRequest>,
) -> Response {
    let ctx = state.current.get();
    let machine = Machine::read();
    let r = review(&p.toml, &ctx.config, &login.user, &machine);
    let Some(after) = r.config else {
        return (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({"findings": r.findings})),
        )
            .into_response();
    };
    let rows = preview::preview(
        &ctx.config,
        &after,
        &machine.gateways,
        Some(&login.user),
        &p.ips,
    );
    Json(json!({"rows": rows, "ok": r.refusals.is_empty(), "refusals": r.refusals})).into_response()
}

#[derive(Debug, Deserialize)]
pub struct SaveRequest {
    version: String,
    toml: String,
    #[serde(default)]
    password: Option<String>,
}

pub async fn save(
    State(state): Shared,
    ConnectInfo(Peer(peer)): ConnectInfo<Peer>,
    ApiChange(login): ApiChange,
    Json(req): Json<SaveRequest>,
) -> Response {
    let who = Who {
        user: login.user,
        client: peer.ip(),
        password: req.password,
    };
    store(&state, &who, &req.version, Change::Text(req.toml), None).await
}

#[derive(Debug, Deserialize)]
pub struct ApplyRequest {
    /// The text to edit (the page's editor), else the file as it is.
    #[serde(default)]
    toml: Option<String>,
    edits: Vec<edit::Edit>,
}

/// Structured edits applied to a text without saving: the page's form
/// editors turn into the file text shown, checked and previewed.
pub async fn apply(
    State(state): Shared,
    _login: ApiLogin,
    Json(req): Json<ApplyRequest>,
) -> Response {
    let text = match req.toml {
        Some(t) => t,
        None => match &state.config_path {
            Some(path) => std::fs::read_to_string(path).unwrap_or_default(),
            None => crate::config::EMBEDDED_DEFAULT.to_string(),
        },
    };
    match edit::apply(&text, &req.edits) {
        Ok(toml) => Json(json!({"toml": toml})).into_response(),
        Err(e) => error(StatusCode::BAD_REQUEST, e),
    }
}

#[derive(Debug, Deserialize)]
pub struct EditRequest {
    version: String,
    edits: Vec<edit::Edit>,
    #[serde(default)]
    password: Option<String>,
}

/// Structured edits of the current file (comments and layout kept).
pub async fn edit(
    State(state): Shared,
    ConnectInfo(Peer(peer)): ConnectInfo<Peer>,
    ApiChange(login): ApiChange,
    Json(req): Json<EditRequest>,
) -> Response {
    let who = Who {
        user: login.user,
        client: peer.ip(),
        password: req.password,
    };
    store(&state, &who, &req.version, Change::Edits(req.edits), None).await
}

#[derive(Debug, Deserialize)]
pub struct RestoreRequest {
    /// The version the admin looked at (the file now).
    version: String,
    /// The earlier version to put back.
    restore: String,
    #[serde(default)]
    password: Option<String>,
}

/// Puts an earlier version back, through the same checks as any change.
pub async fn restore(
    State(state): Shared,
    ConnectInfo(Peer(peer)): ConnectInfo<Peer>,
    ApiChange(login): ApiChange,
    Json(req): Json<RestoreRequest>,
) -> Response {
    let file = match editable(&state) {
        Ok(f) => f,
        Err((status, why)) => return error(status, why),
    };
    let Some(text) = file.version(&req.restore) else {
        return error(
            StatusCode::NOT_FOUND,
            format!("no kept version {:?}", req.restore),
        );
    };
    let who = Who {
        user: login.user,
        client: peer.ip(),
        password: req.password,
    };
    store(
        &state,
        &who,
        &req.version,
        Change::Text(text),
        Some(req.restore),
    )
    .await
}

pub async fn history(State(state): Shared, _login: ApiLogin) -> Response {
    let ctx = state.current.get();
    let changes = match &state.config_path {
        Some(path) => {
            let mut all = ConfigFile::new(path, &ctx.config.server.data_dir).history();
            all.reverse();
            all
        }
        None => Vec::new(),
    };
    Json(json!({"changes": changes})).into_response()
}

struct Who {
    user: String,
    client: std::net::IpAddr,
    password: Option<String>,
}

enum Change {
    Text(String),
    Edits(Vec<edit::Edit>),
}

/// Whether any risky section differs between two texts.
fn touches_risky(old: &str, new: &str) -> bool {
    let (Ok(a), Ok(b)) = (
        toml::from_str::<toml::Table>(old),
        toml::from_str::<toml::Table>(new),
    ) else {
        return true;
    };
    RISKY.iter().any(|k| a.get(*k) != b.get(*k))
}

/// The one way a change is saved.
async fn store(
    state: &AdminState,
    who: &Who,
    expected: &str,
    change: Change,
    restored: Option<String>,
) -> Response {
    let file = match editable(state) {
        Ok(f) => f,
        Err((status, why)) => return error(status, why),
    };
    let _one_at_a_time = state.settings_lock.lock().await;
    let (old, version) = match file.read() {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("{}: {e}", file.path.display()),
            );
        }
    };
    let new = match change {
        Change::Text(t) => t,
        Change::Edits(edits) => match edit::apply(&old, &edits) {
            Ok(t) => t,
            Err(e) => return error(StatusCode::BAD_REQUEST, e),
        },
    };
    if version != expected {
        return (
            StatusCode::CONFLICT,
            Json(json!({
                "error": "the file changed since you loaded it (another admin, or an edit on the server); look at the difference and load it again",
                "version": version,
                "diff": file::diff(&old, &new, "the file now", "your version"),
            })),
        )
            .into_response();
    }
    if old == new {
        return Json(json!({"saved": false, "version": version, "message": "nothing changed"}))
            .into_response();
    }
    let ctx = state.current.get();
    if touches_risky(&old, &new) && !password_again(state, &who.user, who.password.clone()).await {
        return error(
            StatusCode::FORBIDDEN,
            "this change touches relay rules, the connection filter, logins or the admin page: confirm it with your password",
        );
    }
    let machine = Machine::read();
    let r = review(&new, &ctx.config, &who.user, &machine);
    if !r.ok() {
        return (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({"error": "refused", "findings": r.refusals, "all_findings": r.findings})),
        )
            .into_response();
    }
    if let Err(e) = file.replace(&old, &new) {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot write {}: {e}", file.path.display()),
        );
    }
    let reloaded = match &state.reload {
        Some(handle) => handle.reload().await,
        None => Err("the server cannot reload from here".into()),
    };
    let detail = match reloaded {
        Ok(detail) => detail,
        Err(why) => {
            // The running server still has the old configuration: the file goes back to it.
            let put_back = file.put_back(&old);
            let message = match put_back {
                Ok(()) => format!("the reload failed: {why}; the previous file was put back"),
                Err(e) => format!(
                    "the reload failed: {why}; putting the previous file back failed too: {e}"
                ),
            };
            return (
                StatusCode::UNPROCESSABLE_ENTITY,
                Json(json!({
                    "error": message,
                    "findings": [{"severity": "risk", "key": "reload", "message": why, "fix": "correct the setting the message names"}],
                })),
            )
                .into_response();
        }
    };
    let logged = file.record(&who.user, &old, &new, restored.clone());
    let new_version = file::version_of(new.as_bytes());
    let change_id = match &logged {
        Ok(c) => c.id,
        Err(e) => {
            tracing::error!(error = %e, "cannot write the settings change log");
            0
        }
    };
    ctx.events.emit(Event::SettingsChanged {
        user: who.user.clone(),
        client: who.client,
        before: version,
        after: new_version.clone(),
        change: change_id,
        restored,
    });
    Json(json!({
        "saved": true,
        "version": new_version,
        "reload": detail,
        "change": change_id,
        "findings": r.findings,
    }))
    .into_response()
}
