//! The running server's tokens: one slot per profile, loaded from its file,
//! refreshed under the slot's lock (one refresh at a time per profile, the
//! others wait for its result), saved after every refresh, and reloaded
//! when `portcullis oauth login` replaced the file meanwhile.

use super::endpoint::{self, EndpointError};
use super::store::{self, TokenFile};
use crate::clock::unix_now;
use crate::config::Profile;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;
use tracing::{error, info};

/// A token is not used in its last minute: a message may take that long.
const USE_MARGIN: i64 = 60;
/// The background refresh renews tokens this long before they expire.
pub const REFRESH_AHEAD: i64 = 300;

/// Why a profile has no token to use, in words for the log, the dashboard
/// and `doctor` (never a secret).
#[derive(Debug, Clone)]
pub struct TokenError {
    pub message: String,
    /// Someone must act (sign in again, fix the secret or the app
    /// registration); retrying alone will not help.
    pub needs_action: bool,
}

impl std::fmt::Display for TokenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

#[derive(Default)]
struct Slot {
    file: Option<TokenFile>,
    /// The file's modification time when it was read (None: not read yet).
    read_at: Option<SystemTime>,
    /// An access token the next hop refused: never handed out again.
    refused: Option<String>,
    /// The HTTPS client, made for this version of the profile.
    http: Option<(Profile, reqwest::Client)>,
}

pub struct Tokens {
    slots: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Slot>>>>,
    /// Token endpoints' names are looked up through `[dns]`.
    resolver: crate::dns::Resolver,
}

impl Tokens {
    pub fn new(resolver: crate::dns::Resolver) -> Tokens {
        Tokens {
            slots: Mutex::default(),
            resolver,
        }
    }

    fn slot(&self, name: &str) -> Arc<tokio::sync::Mutex<Slot>> {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        Arc::clone(slots.entry(name.to_string()).or_default())
    }

    /// An access token for `profile` (whose tokens live at `path`): the
    /// one kept while it has time left, else a fresh one.
    pub async fn access_token(&self, profile: &Profile, path: &Path) -> Result<String, TokenError> {
        let slot = self.slot(&profile.name);
        let mut s = slot.lock().await;
        reload_if_changed(&mut s, path).await;
        if let Some(t) = s
            .file
            .as_ref()
            .and_then(|f| f.usable_token(unix_now(), USE_MARGIN))
            && s.refused.as_deref() != Some(t)
        {
            return Ok(t.to_string());
        }
        refresh(&mut s, profile, path, &self.resolver).await
    }

    /// The next hop refused `token`: the next `access_token` fetches another.
    pub async fn refused(&self, profile: &Profile, token: &str) {
        let slot = self.slot(&profile.name);
        slot.lock().await.refused = Some(token.to_string());
    }

    /// Renews the tokens of `profiles` that expire within REFRESH_AHEAD
    /// seconds (only profiles that have had a token: an idle profile's
    /// endpoint is not asked for nothing). Failures are logged and kept in
    /// the token file for `oauth status`; mail finds them on its own.
    pub async fn refresh_due(&self, profiles: &[(Profile, PathBuf)]) {
        for (profile, path) in profiles {
            let slot = self.slot(&profile.name);
            let mut s = slot.lock().await;
            reload_if_changed(&mut s, path).await;
            let due = s.file.as_ref().is_some_and(|f| {
                f.access_token.is_some() && f.expires_at.unwrap_or(0) - REFRESH_AHEAD <= unix_now()
            });
            if due {
                match refresh(&mut s, profile, path, &self.resolver).await {
                    Ok(_) => {
                        info!(profile = %profile.name, "OAuth2 token renewed ahead of its expiry")
                    }
                    Err(e) => {
                        error!(profile = %profile.name, error = %e, "OAuth2 token could not be renewed; mail through this profile waits")
                    }
                }
            }
        }
    }
}

/// Reads the token file when it changed since it was last read (a sign-in
/// by `portcullis oauth login`, or the first use).
async fn reload_if_changed(s: &mut Slot, path: &Path) {
    let modified = tokio::fs::metadata(path)
        .await
        .and_then(|m| m.modified())
        .ok();
    if modified.is_some() && modified == s.read_at {
        return;
    }
    let owned = path.to_path_buf();
    match tokio::task::spawn_blocking(move || store::load(&owned)).await {
        Ok(Ok(file)) => {
            s.file = file;
            s.read_at = modified;
        }
        Ok(Err(e)) => error!(file = %path.display(), error = %e, "cannot read OAuth2 tokens"),
        Err(_) => {}
    }
}

async fn refresh(
    s: &mut Slot,
    profile: &Profile,
    path: &Path,
    resolver: &crate::dns::Resolver,
) -> Result<String, TokenError> {
    let http = match &s.http {
        Some((p, client)) if p == profile => client.clone(),
        _ => {
            let client =
                endpoint::http_client(profile, resolver).map_err(|message| TokenError {
                    message,
                    needs_action: true,
                })?;
            s.http = Some((profile.clone(), client.clone()));
            client
        }
    };
    let mut file = s.file.clone().unwrap_or_else(|| TokenFile {
        profile: profile.name.clone(),
        ..TokenFile::default()
    });
    let result = endpoint::fetch(profile, &http, file.refresh_token.as_deref()).await;
    let now = unix_now();
    let outcome = match result {
        Ok(g) => {
            file.access_token = Some(g.access_token.clone());
            file.expires_at = Some(now + g.expires_in as i64);
            if g.refresh_token.is_some() {
                file.refresh_token = g.refresh_token;
            }
            file.last_refresh = Some(now);
            file.error = None;
            s.refused = None;
            Ok(g.access_token)
        }
        Err(EndpointError { message, refused }) => {
            file.error = Some(message.clone());
            Err(TokenError {
                message,
                needs_action: refused,
            })
        }
    };
    let owned = path.to_path_buf();
    let to_save = file.clone();
    match tokio::task::spawn_blocking(move || store::save(&owned, &to_save)).await {
        Ok(Ok(())) => {
            s.read_at = tokio::fs::metadata(path)
                .await
                .and_then(|m| m.modified())
                .ok();
        }
        Ok(Err(e)) => {
            error!(file = %path.display(), error = %e, "cannot save OAuth2 tokens (the new token is used, but a restart will fetch another)")
        }
        Err(_) => {}
    }
    s.file = Some(file);
    outcome
}
