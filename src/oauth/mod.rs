//! OAuth2 for smart-host profiles (RFC 6749): tokens fetched with the
//! client-credentials or refresh-token grant, users signed in with the
//! device-code flow (RFC 8628), kept per profile in the data directory,
//! refreshed before they expire, and never written to logs or events.

pub mod endpoint;
pub mod store;
pub mod tokens;

pub use tokens::{TokenError, Tokens};

use crate::clock::unix_now;

/// The sign-in state of one profile, from its token file.
pub fn sign_in_state(
    config: &crate::config::Config,
    p: &crate::config::Profile,
) -> std::io::Result<SignInState> {
    let grant = p.oauth.as_ref().map(|o| o.grant);
    let file = store::load(&config.oauth_token_file(&p.name))?;
    let now = unix_now();
    let logged_in = file.as_ref().is_some_and(|f| match grant {
        Some(crate::config::OAuthGrant::RefreshToken) => f.refresh_token.is_some(),
        _ => f.usable_token(now, 0).is_some(),
    });
    Ok(SignInState {
        logged_in,
        expires: file.as_ref().and_then(|f| f.expires_at),
        last_refresh: file.as_ref().and_then(|f| f.last_refresh),
        error: file.and_then(|f| f.error),
    })
}

/// What `oauth status` and `doctor` say of a profile's tokens.
pub struct SignInState {
    pub logged_in: bool,
    pub expires: Option<i64>,
    pub last_refresh: Option<i64>,
    pub error: Option<String>,
}
