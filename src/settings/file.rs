//! The configuration file as the Settings page sees it: its text and a
//! version (a digest of its bytes, so a concurrent change is noticed), the
//! previous versions kept as `FILE.1` … `FILE.5`, and the change log with
//! a snapshot of every saved version in `data_dir/settings/`.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Previous versions kept beside the file.
const BACKUPS: usize = 5;
/// Versions kept in `data_dir/settings/versions` for restore.
const SNAPSHOTS: usize = 30;

/// The version of a file's content: its SHA-256, shortened.
pub fn version_of(bytes: &[u8]) -> String {
    Sha256::digest(bytes)[..12]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// One saved change.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Change {
    pub id: u64,
    /// Unix seconds.
    pub at: i64,
    pub user: String,
    pub before: String,
    pub after: String,
    /// Unified diff of the file.
    pub diff: String,
    /// The version this change put back, when it was a restore.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restored: Option<String>,
}

pub struct ConfigFile {
    pub path: PathBuf,
    dir: PathBuf,
}

/// A unified diff of two texts, with `old` and `new` named.
pub fn diff(old: &str, new: &str, old_name: &str, new_name: &str) -> String {
    similar::TextDiff::from_lines(old, new)
        .unified_diff()
        .context_radius(2)
        .header(old_name, new_name)
        .to_string()
}

impl ConfigFile {
    pub fn new(path: &Path, data_dir: &Path) -> ConfigFile {
        ConfigFile {
            path: path.to_path_buf(),
            dir: data_dir.join("settings"),
        }
    }

    /// The text and its version.
    pub fn read(&self) -> io::Result<(String, String)> {
        let bytes = std::fs::read(&self.path)?;
        let version = version_of(&bytes);
        let text = String::from_utf8(bytes)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "not UTF-8"))?;
        Ok((text, version))
    }

    fn backup(&self, n: usize) -> PathBuf {
        let mut name = self.path.as_os_str().to_owned();
        name.push(format!(".{n}"));
        PathBuf::from(name)
    }

    /// Replaces the file with `new`, keeping `old` as `FILE.1` (and the
    /// older ones shifted up to `FILE.5`). Synced; owner and mode kept.
    pub fn replace(&self, old: &str, new: &str) -> io::Result<()> {
        for n in (1..BACKUPS).rev() {
            let from = self.backup(n);
            if from.exists() {
                std::fs::rename(&from, self.backup(n + 1))?;
            }
        }
        crate::fsio::replace(
            &self.backup(1),
            old.as_bytes(),
            crate::fsio::NewFile::PRIVATE,
        )?;
        self.put_back(new)
    }

    /// Writes `text` as the file (a restore after a failed reload).
    pub fn put_back(&self, text: &str) -> io::Result<()> {
        let new = crate::fsio::NewFile {
            mode: 0o640,
            owner: None,
        };
        crate::fsio::replace(&self.path, text.as_bytes(), new)
    }

    fn versions(&self) -> PathBuf {
        self.dir.join("versions")
    }

    /// Keeps `text` for a later restore by its version.
    pub fn snapshot(&self, text: &str) -> io::Result<String> {
        let version = version_of(text.as_bytes());
        std::fs::create_dir_all(self.versions())?;
        let path = self.versions().join(format!("{version}.toml"));
        if !path.exists() {
            crate::fsio::replace(&path, text.as_bytes(), crate::fsio::NewFile::PRIVATE)?;
        }
        // The oldest snapshots go.
        let mut all: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(self.versions())?
            .filter_map(|e| e.ok())
            .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
            .collect();
        if all.len() > SNAPSHOTS {
            all.sort();
            for (_, p) in &all[..all.len() - SNAPSHOTS] {
                let _ = std::fs::remove_file(p);
            }
        }
        Ok(version)
    }

    /// A kept version's text.
    pub fn version(&self, version: &str) -> Option<String> {
        if !version.chars().all(|c| c.is_ascii_hexdigit()) || version.is_empty() {
            return None;
        }
        std::fs::read_to_string(self.versions().join(format!("{version}.toml"))).ok()
    }

    fn log(&self) -> PathBuf {
        self.dir.join("history.jsonl")
    }

    /// Appends a change to the log (synced: it is the record of who did what).
    pub fn record(
        &self,
        user: &str,
        old: &str,
        new: &str,
        restored: Option<String>,
    ) -> io::Result<Change> {
        std::fs::create_dir_all(&self.dir)?;
        self.snapshot(old)?;
        self.snapshot(new)?;
        let change = Change {
            id: self.history().last().map_or(1, |c| c.id + 1),
            at: crate::clock::unix_now(),
            user: user.to_string(),
            before: version_of(old.as_bytes()),
            after: version_of(new.as_bytes()),
            diff: diff(old, new, "before", "after"),
            restored,
        };
        let mut line = serde_json::to_vec(&change).map_err(io::Error::other)?;
        line.push(b'\n');
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log())?;
        f.write_all(&line)?;
        f.sync_data()?;
        Ok(change)
    }

    /// Every change, oldest first.
    pub fn history(&self) -> Vec<Change> {
        std::fs::read_to_string(self.log())
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replacement_keeps_five_versions_back_and_logs_the_diff() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("portcullis.toml");
        std::fs::write(&path, "# v0\n").unwrap();
        let file = ConfigFile::new(&path, &dir.path().join("data"));
        for i in 1..=7 {
            let (old, _) = file.read().unwrap();
            let new = format!("# v{i}\n");
            file.replace(&old, &new).unwrap();
            file.record("alice", &old, &new, None).unwrap();
        }
        assert_eq!(file.read().unwrap().0, "# v7\n");
        assert_eq!(std::fs::read_to_string(file.backup(1)).unwrap(), "# v6\n");
        assert_eq!(std::fs::read_to_string(file.backup(5)).unwrap(), "# v2\n");
        assert!(!file.backup(6).exists());
        let history = file.history();
        assert_eq!(history.len(), 7);
        assert_eq!(history[6].id, 7);
        assert!(
            history[6].diff.contains("-# v6\n+# v7\n"),
            "{}",
            history[6].diff
        );
        assert_eq!(file.version(&history[0].before).as_deref(), Some("# v0\n"));
        assert_eq!(file.version("../../etc/passwd"), None);
    }
}
