//! One profile's tokens on disk: `data_dir/oauth/NAME.json`, mode 0600,
//! replaced atomically and synced (src/fsio.rs), so that a crash during a
//! refresh leaves the old tokens or the new ones, never a torn file.

use serde::{Deserialize, Serialize};
use std::io;
use std::path::Path;

#[derive(Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct TokenFile {
    /// The profile these tokens belong to.
    pub profile: String,
    pub access_token: Option<String>,
    /// When the access token stops working (Unix seconds).
    pub expires_at: Option<i64>,
    pub refresh_token: Option<String>,
    /// When a token was last obtained (Unix seconds).
    pub last_refresh: Option<i64>,
    /// Why the last refresh failed, in words (never a secret).
    pub error: Option<String>,
}

/// Tokens are secrets: their values never reach a log line through Debug.
impl std::fmt::Debug for TokenFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenFile")
            .field("profile", &self.profile)
            .field("access_token", &self.access_token.as_ref().map(|_| "****"))
            .field("expires_at", &self.expires_at)
            .field(
                "refresh_token",
                &self.refresh_token.as_ref().map(|_| "****"),
            )
            .field("last_refresh", &self.last_refresh)
            .field("error", &self.error)
            .finish()
    }
}

impl TokenFile {
    /// The access token, when it still has `margin` seconds to live at `now`.
    pub fn usable_token(&self, now: i64, margin: i64) -> Option<&str> {
        let token = self.access_token.as_deref()?;
        match self.expires_at {
            Some(t) if t - margin > now => Some(token),
            _ => None,
        }
    }
}

/// Reads the tokens of a profile; None when nobody has stored any.
pub fn load(path: &Path) -> io::Result<Option<TokenFile>> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} is not a token file: {e}", path.display()),
            )
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Writes the tokens durably, readable by their owner only. A new file
/// (and the directory) goes to the data directory's owner, so that tokens
/// stored by `portcullis oauth login` run as root are the service's to read.
pub fn save(path: &Path, tokens: &TokenFile) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let data_dir_owner = dir.parent().and_then(|d| crate::fsio::Owner::of(d).ok());
    if !dir.exists() {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        if let Some(owner) = data_dir_owner {
            // Only root may give a directory away; anyone else owns it already.
            let _ = std::os::unix::fs::chown(dir, Some(owner.uid), Some(owner.gid));
        }
        crate::fsio::sync_parent(dir)?;
    }
    let bytes = serde_json::to_vec_pretty(tokens).map_err(io::Error::other)?;
    crate::fsio::replace(
        path,
        &bytes,
        crate::fsio::NewFile::PRIVATE.owned_by(data_dir_owner),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn saved_private_and_read_back_and_debug_hides_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("oauth").join("m365.json");
        let t = TokenFile {
            profile: "m365".into(),
            access_token: Some("at-secret".into()),
            expires_at: Some(2_000_000_000),
            refresh_token: Some("rt-secret".into()),
            last_refresh: Some(1),
            error: None,
        };
        save(&path, &t).unwrap();
        assert_eq!(load(&path).unwrap(), Some(t.clone()));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let shown = format!("{t:?}");
        assert!(!shown.contains("secret"), "{shown}");
        assert_eq!(t.usable_token(2_000_000_000 - 100, 60), Some("at-secret"));
        assert_eq!(t.usable_token(2_000_000_000 - 30, 60), None);
        assert_eq!(load(&dir.path().join("none.json")).unwrap(), None);
    }
}
