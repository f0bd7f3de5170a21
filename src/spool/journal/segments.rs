//! The journal's segment files on disk: their names, their preparation
//! (zero-filled and synced before use) and listing them oldest first.

use super::SEGMENT_PREALLOCATED;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Writes a new segment full of zeros and makes it and its name durable.
/// A prepared segment holds no record: recovery finds nothing in it.
pub(super) fn prepare_segment(path: &Path, dir: &Path) -> io::Result<File> {
    if !room_to_preallocate(dir) {
        return Err(io::Error::new(
            io::ErrorKind::StorageFull,
            "little free space: not preallocated",
        ));
    }
    let prepared = (|| {
        let mut file = OpenOptions::new().write(true).create_new(true).open(path)?;
        let zeros = vec![0u8; 1024 * 1024];
        let mut left = SEGMENT_PREALLOCATED;
        while left > 0 {
            let n = left.min(zeros.len() as u64) as usize;
            file.write_all(&zeros[..n])?;
            left -= n as u64;
        }
        file.sync_all()?;
        crate::fsio::sync_dir(dir)?;
        Ok(file)
    })();
    if prepared.is_err() {
        let _ = fs::remove_file(path);
    }
    prepared
}

/// Whether the disk has room to spare for a zero-filled segment: filling
/// one on a nearly full disk would take its last space for a moment, and
/// sessions would be refused meanwhile.
fn room_to_preallocate(dir: &Path) -> bool {
    let Ok(st) = rustix::fs::statvfs(dir) else {
        return false;
    };
    let free = st.f_bavail.saturating_mul(st.f_frsize);
    free >= 4 * SEGMENT_PREALLOCATED
}

pub(super) fn segment_path(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("{n:016x}.journal"))
}

/// The segment files under `root/journal`, oldest first.
pub(super) fn segment_files(root: &Path) -> io::Result<Vec<PathBuf>> {
    let dir = root.join("journal");
    if !dir.is_dir() {
        return Ok(Vec::new());
    }
    let mut paths: Vec<PathBuf> = fs::read_dir(&dir)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "journal"))
        .collect();
    paths.sort();
    Ok(paths)
}
