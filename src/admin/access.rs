//! Who may do what: reading needs a login; changing anything needs a login,
//! its CSRF token (the `X-CSRF-Token` header, or a `csrf` form field on the
//! HTML forms) and, when the browser names one, an Origin matching this site.

use super::AdminState;
use super::sessions::{Login, same_token, token_from_cookies};
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use std::sync::Arc;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No valid login: 401 for the API, the login form for pages.
    NoSession,
    /// Logged in, but the request could be forged: 403.
    Forbidden,
}

impl Refusal {
    pub fn api(self) -> Response {
        match self {
            Refusal::NoSession => (
                StatusCode::UNAUTHORIZED,
                axum::Json(serde_json::json!({"error": "log in first (POST /login)"})),
            )
                .into_response(),
            Refusal::Forbidden => (
                StatusCode::FORBIDDEN,
                axum::Json(serde_json::json!({
                    "error": "a change needs the session's CSRF token in X-CSRF-Token (see GET /api/session), from this site's own pages"
                })),
            )
                .into_response(),
        }
    }

    pub fn page(self) -> Response {
        match self {
            Refusal::NoSession => Redirect::to("/login").into_response(),
            Refusal::Forbidden => (
                StatusCode::FORBIDDEN,
                "Forbidden: the request did not carry this session's CSRF token. Reload the page and try again.",
            )
                .into_response(),
        }
    }
}

/// The session token from the request's cookies.
pub fn session_token(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|c| token_from_cookies(c).map(str::to_string))
}

/// The login behind the request, if any.
pub fn login(state: &AdminState, headers: &HeaderMap) -> Result<Login, Refusal> {
    let token = session_token(headers).ok_or(Refusal::NoSession)?;
    let config = &state.current.get().config.admin;
    let login = state
        .sessions
        .get(
            &token,
            config.session_idle.get(),
            config.session_lifetime.get(),
        )
        .ok_or(Refusal::NoSession)?;
    // An admin removed from admin.users (and reloaded) is out at once.
    if !config.users.contains(&login.user) {
        state.sessions.remove(&token);
        return Err(Refusal::NoSession);
    }
    Ok(login)
}

/// The login, for a request that changes something. `form_csrf`: the token
/// an HTML form carried, when the request is one.
pub fn login_to_change(
    state: &AdminState,
    headers: &HeaderMap,
    form_csrf: Option<&str>,
) -> Result<Login, Refusal> {
    let login = login(state, headers)?;
    let sent = headers
        .get("x-csrf-token")
        .and_then(|v| v.to_str().ok())
        .or(form_csrf);
    if !sent.is_some_and(|t| same_token(t, &login.csrf)) || !same_origin(state, headers) {
        return Err(Refusal::Forbidden);
    }
    Ok(login)
}

/// No Origin (not a browser, or an old one), or the one of this site.
pub fn same_origin(state: &AdminState, headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let Some(host) = headers.get(header::HOST).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let scheme = if state.https { "https" } else { "http" };
    origin.eq_ignore_ascii_case(&format!("{scheme}://{host}"))
}

/// The Set-Cookie value for a new login (or, with an empty token, a logout).
/// Whether `password` is `user`'s own, given again to confirm a risky change
/// (checked like a login, within the same password-check budget).
pub async fn password_again(state: &AdminState, user: &str, password: Option<String>) -> bool {
    match password {
        Some(p) => matches!(
            state.current.get().credentials.check(user, p).await,
            crate::credentials::CheckResult::Valid
        ),
        None => false,
    }
}

pub fn session_cookie(token: &str, https: bool) -> String {
    let secure = if https { "; Secure" } else { "" };
    let max_age = if token.is_empty() { "; Max-Age=0" } else { "" };
    format!(
        "{}={token}; Path=/; HttpOnly; SameSite=Strict{secure}{max_age}",
        super::sessions::COOKIE
    )
}

/// The login of a JSON API request that only reads: without one the
/// handler never runs and the client gets 401.
pub struct ApiLogin(pub Login);

/// A JSON API request allowed to change something: a login, its CSRF token
/// in `X-CSRF-Token` and a matching Origin (else 401 or 403).
pub struct ApiChange(pub Login);

/// The login of an HTML page request: without one, a redirect to the login form.
pub struct PageLogin(pub Login);

impl FromRequestParts<Arc<AdminState>> for ApiLogin {
    type Rejection = Response;
    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AdminState>,
    ) -> Result<Self, Response> {
        login(state, &parts.headers)
            .map(ApiLogin)
            .map_err(Refusal::api)
    }
}

impl FromRequestParts<Arc<AdminState>> for ApiChange {
    type Rejection = Response;
    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AdminState>,
    ) -> Result<Self, Response> {
        login_to_change(state, &parts.headers, None)
            .map(ApiChange)
            .map_err(Refusal::api)
    }
}

impl FromRequestParts<Arc<AdminState>> for PageLogin {
    type Rejection = Response;
    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AdminState>,
    ) -> Result<Self, Response> {
        login(state, &parts.headers)
            .map(PageLogin)
            .map_err(Refusal::page)
    }
}
