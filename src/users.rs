//! The users file: htpasswd-style `name:hash` lines. New hashes are argon2id;
//! bcrypt hashes (`$2y$…`, as `htpasswd -B` writes them) are accepted too.
//! The server re-reads the file when it changes, so `user add` takes effect at once.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

#[derive(Debug, thiserror::Error)]
pub enum UsersError {
    #[error("cannot read users file {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("cannot write users file {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("{path}:{line}: {reason}")]
    Syntax {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error("invalid user name {0:?}: use letters, digits and . _ @ + - only")]
    BadName(String),
    #[error("no user {0:?}")]
    NoSuchUser(String),
    #[error("cannot hash password: {0}")]
    Hash(String),
}

/// Parsed users: name → hash.
pub type Users = BTreeMap<String, String>;

pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 256
        && name
            .chars()
            .all(|c| c.is_alphanumeric() || "._@+-".contains(c))
}

pub fn read_users(path: &Path) -> Result<Users, UsersError> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Users::new()),
        Err(source) => {
            return Err(UsersError::Read {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    let mut users = Users::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let syntax = |reason: &str| UsersError::Syntax {
            path: path.to_path_buf(),
            line: i + 1,
            reason: reason.to_string(),
        };
        let (name, hash) = line
            .split_once(':')
            .ok_or_else(|| syntax("expected name:hash"))?;
        if !valid_name(name) {
            return Err(syntax("invalid user name"));
        }
        if !(hash.starts_with("$argon2") || is_bcrypt(hash)) {
            return Err(syntax(
                "hash must be argon2 ($argon2id$…) or bcrypt ($2y$…)",
            ));
        }
        users.insert(name.to_string(), hash.to_string());
    }
    Ok(users)
}

/// Replaces the users file durably. An existing file keeps its owner, group
/// and mode (the service must still read it after `user add` as root); a new
/// one is readable by its owner only and handed to `new_owner` when given.
pub fn write_users(
    path: &Path,
    users: &Users,
    new_owner: Option<crate::fsio::Owner>,
) -> Result<(), UsersError> {
    let werr = |source| UsersError::Write {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(werr)?;
    }
    let mut text = String::from(
        "# Portcullis users: name:hash (argon2id or bcrypt). Edit with `portcullis user`.\n",
    );
    for (name, hash) in users {
        text.push_str(&format!("{name}:{hash}\n"));
    }
    let new = crate::fsio::NewFile::PRIVATE.owned_by(new_owner);
    crate::fsio::replace(path, text.as_bytes(), new).map_err(werr)
}

pub fn hash_password(password: &str) -> Result<String, UsersError> {
    let salt_bytes: [u8; 16] = rand::random();
    let salt = SaltString::encode_b64(&salt_bytes).map_err(|e| UsersError::Hash(e.to_string()))?;
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| UsersError::Hash(e.to_string()))
}

fn is_bcrypt(hash: &str) -> bool {
    ["$2a$", "$2b$", "$2y$", "$2x$"]
        .iter()
        .any(|p| hash.starts_with(p))
}

/// Checks a password against a stored hash. Slow on purpose: call off the async threads.
pub fn verify_password(password: &str, hash: &str) -> bool {
    if is_bcrypt(hash) {
        return bcrypt::verify(password, hash).unwrap_or(false);
    }
    match PasswordHash::new(hash) {
        Ok(parsed) => argon2::Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok(),
        Err(_) => false,
    }
}

/// The server's view of the users file, re-read whenever its modification time changes.
#[derive(Debug)]
pub struct UserDb {
    path: PathBuf,
    cache: Mutex<(Option<SystemTime>, Users)>,
}

impl UserDb {
    pub fn new(path: PathBuf) -> Self {
        Self {
            path,
            cache: Mutex::new((None, Users::new())),
        }
    }

    /// The stored hash for `name`, reading the file again if it changed.
    pub fn hash_of(&self, name: &str) -> Result<Option<String>, UsersError> {
        let mtime = fs::metadata(&self.path).and_then(|m| m.modified()).ok();
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.0 != mtime || mtime.is_none() {
            cache.1 = read_users(&self.path)?;
            cache.0 = mtime;
        }
        Ok(cache.1.get(name).cloned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argon2_and_bcrypt_verify() {
        let h = hash_password("s3cret").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password("s3cret", &h));
        assert!(!verify_password("wrong", &h));
        let b = bcrypt::hash("pw", 4).unwrap().replacen("$2b$", "$2y$", 1);
        assert!(verify_password("pw", &b));
        assert!(!verify_password("nope", &b));
        assert!(!verify_password("pw", "garbage"));
    }

    #[test]
    fn file_round_trip_and_reload() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users");
        let mut users = Users::new();
        users.insert("alice".into(), hash_password("a").unwrap());
        write_users(&path, &users, None).unwrap();
        let db = UserDb::new(path.clone());
        assert!(db.hash_of("alice").unwrap().is_some());
        assert!(db.hash_of("bob").unwrap().is_none());
        std::thread::sleep(std::time::Duration::from_millis(20));
        users.insert("bob".into(), hash_password("b").unwrap());
        write_users(&path, &users, None).unwrap();
        assert!(db.hash_of("bob").unwrap().is_some());
        fs::write(&path, "bad line\n").unwrap();
        assert!(matches!(
            read_users(&path),
            Err(UsersError::Syntax { line: 1, .. })
        ));
    }
}
