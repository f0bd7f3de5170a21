//! The archive directory: one `.eml` per accepted message in
//! `DIR/YYYY-MM-DD/QUEUEID.eml` (our Received: header first, as queued),
//! written to a temporary file, synced, renamed and the directory synced
//! before the 250 — so an accepted message is always archived — and removed
//! after `retention_days`.

use std::io;
use std::path::{Path, PathBuf};

/// Where a message accepted now is archived.
pub fn path_for(dir: &Path, queue_id: &str, now: chrono::DateTime<chrono::Utc>) -> PathBuf {
    dir.join(now.format("%Y-%m-%d").to_string())
        .join(format!("{queue_id}.eml"))
}

/// Writes `content` durably at `path` (blocking I/O).
pub fn write(path: &Path, content: &[u8]) -> io::Result<()> {
    if let Some(day) = path.parent()
        && !day.exists()
    {
        std::fs::create_dir_all(day)?;
        crate::fsio::sync_parent(day)?;
    }
    crate::fsio::replace(
        path,
        content,
        crate::fsio::NewFile {
            mode: 0o640,
            owner: None,
        },
    )
}

/// Removes day directories older than `days` (blocking I/O). Returns how
/// many messages went.
pub fn prune(dir: &Path, days: u32, now: chrono::DateTime<chrono::Utc>) -> io::Result<usize> {
    let oldest_kept = (now - chrono::Duration::days(i64::from(days)))
        .format("%Y-%m-%d")
        .to_string();
    let mut removed = 0;
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        // Only our own day directories: YYYY-MM-DD.
        let ours = name.len() == 10 && chrono::NaiveDate::parse_from_str(&name, "%Y-%m-%d").is_ok();
        if ours && name < oldest_kept && entry.path().is_dir() {
            removed += std::fs::read_dir(entry.path())?.count();
            std::fs::remove_dir_all(entry.path())?;
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_by_day_and_pruned_after_retention() {
        let dir = tempfile::tempdir().unwrap();
        let jan1 = chrono::DateTime::parse_from_rfc3339("2026-01-01T10:00:00Z")
            .unwrap()
            .to_utc();
        let p = path_for(dir.path(), "ABC", jan1);
        write(&p, b"Subject: x\r\n\r\nbody\r\n").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"Subject: x\r\n\r\nbody\r\n");
        assert!(p.ends_with("2026-01-01/ABC.eml"));
        std::fs::create_dir(dir.path().join("keep-me")).unwrap();
        assert_eq!(
            prune(dir.path(), 30, jan1 + chrono::Duration::days(10)).unwrap(),
            0
        );
        assert_eq!(
            prune(dir.path(), 30, jan1 + chrono::Duration::days(31)).unwrap(),
            1
        );
        assert!(!p.exists());
        assert!(dir.path().join("keep-me").exists(), "not ours: left alone");
    }
}
