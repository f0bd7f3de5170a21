//! Users from the Settings page: list the logins of the users file (never
//! their hashes), add one or set a new password, remove one. Each change
//! needs the admin's own password again; a server whose settings are
//! read-only changes no users either. You cannot remove yourself.

use super::AdminState;
use super::access::{ApiChange, ApiLogin, password_again};
use super::api::error;
use super::listener::Peer;
use crate::config::SettingsMode;
use crate::events::Event;
use crate::users::{hash_password, read_users, valid_name, write_users};
use axum::Json;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;

type Shared = State<Arc<AdminState>>;

/// The shortest password the page sets.
const MIN_PASSWORD: usize = 10;

pub async fn list(State(state): Shared, _login: ApiLogin) -> Response {
    let ctx = state.current.get();
    let path = ctx.config.users_file();
    match read_users(&path) {
        Ok(users) => {
            let admins = &ctx.config.admin.users;
            let rows: Vec<_> = users
                .keys()
                .map(|name| json!({"name": name, "admin": admins.contains(name)}))
                .collect();
            Json(json!({"users": rows, "admins": admins, "file": path.display().to_string()}))
                .into_response()
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

#[derive(Debug, Deserialize)]
pub struct SetRequest {
    name: String,
    /// The user's new password.
    new_password: String,
    /// The admin's own password, again.
    password: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct Confirm {
    password: Option<String>,
}

/// Whether the admin may change users now: not read-only, password right.
async fn allowed(state: &AdminState, user: &str, password: Option<String>) -> Result<(), Response> {
    let ctx = state.current.get();
    if ctx.config.admin.settings == SettingsMode::ReadOnly {
        return Err(error(
            StatusCode::FORBIDDEN,
            "[admin] settings = \"read-only\": users are managed elsewhere",
        ));
    }
    if password_again(state, user, password).await {
        Ok(())
    } else {
        Err(error(
            StatusCode::FORBIDDEN,
            "confirm changes to users with your password",
        ))
    }
}

/// Adds a user, or sets a new password for one.
pub async fn set(
    State(state): Shared,
    ConnectInfo(Peer(peer)): ConnectInfo<Peer>,
    ApiChange(login): ApiChange,
    Json(req): Json<SetRequest>,
) -> Response {
    if let Err(r) = allowed(&state, &login.user, req.password).await {
        return r;
    }
    if !valid_name(&req.name) {
        return error(
            StatusCode::BAD_REQUEST,
            format!("{:?}: use letters, digits and . _ @ + - only", req.name),
        );
    }
    if req.new_password.chars().count() < MIN_PASSWORD {
        return error(
            StatusCode::BAD_REQUEST,
            format!("a password needs at least {MIN_PASSWORD} characters"),
        );
    }
    let _one_at_a_time = state.settings_lock.lock().await;
    let ctx = state.current.get();
    let path = ctx.config.users_file();
    let name = req.name.clone();
    let password = req.new_password;
    let written = tokio::task::spawn_blocking(move || {
        let mut users = read_users(&path)?;
        let existed = users.insert(name, hash_password(&password)?).is_some();
        write_users(&path, &users, None).map(|()| existed)
    })
    .await;
    match written {
        Ok(Ok(existed)) => {
            let action = if existed { "password_set" } else { "added" };
            ctx.events.emit(Event::UsersChanged {
                by: login.user,
                client: peer.ip(),
                user: req.name.clone(),
                action,
            });
            Json(json!({"user": req.name, "action": action})).into_response()
        }
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

pub async fn remove(
    State(state): Shared,
    ConnectInfo(Peer(peer)): ConnectInfo<Peer>,
    ApiChange(login): ApiChange,
    Path(name): Path<String>,
    Json(req): Json<Confirm>,
) -> Response {
    if let Err(r) = allowed(&state, &login.user, req.password).await {
        return r;
    }
    if name == login.user {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "you cannot remove yourself: you would lock yourself out of the page",
        );
    }
    let _one_at_a_time = state.settings_lock.lock().await;
    let ctx = state.current.get();
    let path = ctx.config.users_file();
    let mut users = match read_users(&path) {
        Ok(u) => u,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    if users.remove(&name).is_none() {
        return error(StatusCode::NOT_FOUND, format!("no user {name:?}"));
    }
    if let Err(e) = write_users(&path, &users, None) {
        return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
    }
    ctx.events.emit(Event::UsersChanged {
        by: login.user,
        client: peer.ip(),
        user: name.clone(),
        action: "removed",
    });
    Json(json!({"user": name, "action": "removed"})).into_response()
}
