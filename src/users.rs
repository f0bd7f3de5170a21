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

/// A hash's scheme and cost, without its salt and digest.
fn cost_of(hash: &str) -> String {
    if is_bcrypt(hash) {
        return hash.get(..7).unwrap_or_default().to_string();
    }
    hash.split('$').take(4).collect::<Vec<_>>().join("$")
}

/// The hash of a random password made like `sample` (same scheme and
/// cost); argon2id with our defaults when `sample` is empty or unreadable.
fn dummy_like(sample: &str) -> String {
    let secret = format!("{:?}", rand::random::<[u8; 16]>());
    if is_bcrypt(sample) {
        let cost = sample
            .get(4..6)
            .and_then(|c| c.parse().ok())
            .unwrap_or(bcrypt::DEFAULT_COST);
        if let Ok(h) = bcrypt::hash(&secret, cost) {
            return h;
        }
    }
    if let Ok(parsed) = PasswordHash::new(sample)
        && let Ok(params) = argon2::Params::try_from(&parsed)
        && let Ok(algorithm) = argon2::Algorithm::try_from(parsed.algorithm)
    {
        let salt_bytes: [u8; 16] = rand::random();
        if let Ok(salt) = SaltString::encode_b64(&salt_bytes) {
            let argon = argon2::Argon2::new(algorithm, argon2::Version::V0x13, params);
            if let Ok(h) = argon.hash_password(secret.as_bytes(), &salt) {
                return h.to_string();
            }
        }
    }
    hash_password(&secret).unwrap_or_default()
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
    /// Counts the times the file was read: what was learnt from an earlier
    /// reading (remembered password checks) is dropped when it changes.
    generation: std::sync::atomic::AtomicU64,
    /// Hashes of random passwords, by scheme and cost ("$2y$05$",
    /// "$argon2id$v=19$m=19456,t=2,p=1"): an unknown name is checked
    /// against one made like the file's own, so that it takes as long.
    dummies: Mutex<std::collections::HashMap<String, String>>,
}

impl UserDb {
    pub fn new(path: PathBuf) -> Self {
        Self {
            path,
            cache: Mutex::new((None, Users::new())),
            generation: std::sync::atomic::AtomicU64::new(0),
            dummies: Mutex::new(std::collections::HashMap::new()),
        }
    }

    /// A hash to check an unknown name's password against: of the scheme
    /// and cost most users of the file have (argon2id as `user add` makes
    /// it when the file is empty), so that a wrong name and a wrong
    /// password take the same time whatever the file holds.
    pub fn dummy_hash(&self) -> String {
        let kind = {
            let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            let mut counts: std::collections::HashMap<String, (usize, String)> =
                std::collections::HashMap::new();
            for hash in cache.1.values() {
                let entry = counts.entry(cost_of(hash)).or_insert((0, hash.clone()));
                entry.0 += 1;
            }
            counts
                .into_iter()
                .max_by(|a, b| a.1.0.cmp(&b.1.0).then_with(|| a.0.cmp(&b.0)))
                .map(|(cost, (_, sample))| (cost, sample))
        };
        let (cost, sample) = kind.unwrap_or_default();
        if let Some(d) = self
            .dummies
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&cost)
        {
            return d.clone();
        }
        let dummy = dummy_like(&sample);
        self.dummies
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(cost, dummy.clone());
        dummy
    }

    /// The stored hash for `name`, reading the file again if it changed.
    pub fn hash_of(&self, name: &str) -> Result<Option<String>, UsersError> {
        let mtime = fs::metadata(&self.path).and_then(|m| m.modified()).ok();
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.0 != mtime || mtime.is_none() {
            let fresh = read_users(&self.path)?;
            if fresh != cache.1 || cache.0.is_none() {
                self.generation
                    .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
            }
            cache.1 = fresh;
            cache.0 = mtime;
        }
        Ok(cache.1.get(name).cloned())
    }

    /// The stored hash for `name` and the generation of the file it came from.
    pub fn hash_and_generation(&self, name: &str) -> Result<(Option<String>, u64), UsersError> {
        let hash = self.hash_of(name)?;
        Ok((
            hash,
            self.generation.load(std::sync::atomic::Ordering::Acquire),
        ))
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
    fn an_unknown_name_is_checked_against_a_hash_like_the_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users");
        let mut users = Users::new();
        users.insert(
            "a".into(),
            bcrypt::hash("x", 5).unwrap().replacen("$2b$", "$2y$", 1),
        );
        users.insert("b".into(), bcrypt::hash("y", 5).unwrap());
        write_users(&path, &users, None).unwrap();
        let db = UserDb::new(path.clone());
        assert!(db.hash_of("nobody").unwrap().is_none());
        let dummy = db.dummy_hash();
        assert!(
            is_bcrypt(&dummy) && dummy.get(3..7) == Some("$05$"),
            "{dummy}"
        );
        assert_eq!(db.dummy_hash(), dummy, "made once");
        let empty = UserDb::new(dir.path().join("none"));
        let _ = empty.hash_of("x");
        assert!(empty.dummy_hash().starts_with("$argon2id$"));
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
