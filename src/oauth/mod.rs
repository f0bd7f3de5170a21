//! OAuth2 for smart-host profiles (RFC 6749): tokens fetched with the
//! client-credentials or refresh-token grant, users signed in with the
//! device-code flow (RFC 8628), kept per profile in the data directory,
//! refreshed before they expire, and never written to logs or events.

pub mod endpoint;
pub mod store;
pub mod tokens;

pub use tokens::{TokenError, Tokens};

/// Seconds since the Unix epoch.
pub(crate) fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}
