//! Durable replacement of small files we keep (users, guard state, message
//! state): the new content goes to a temporary file beside the target, is
//! synced, renamed over the target, and the directory is synced, so that a
//! crash leaves either the old file or the new one, never a mix or nothing.
//!
//! A replaced file keeps its owner, group and mode: an admin's `chown
//! portcullis` survives `portcullis user add` run as root. A new file gets
//! the mode asked for and, when given, an owner (the data directory's).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Who owns a file: numeric user and group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

impl Owner {
    /// The owner of an existing path.
    pub fn of(path: &Path) -> io::Result<Owner> {
        let m = fs::metadata(path)?;
        Ok(Owner {
            uid: m.uid(),
            gid: m.gid(),
        })
    }
}

/// How a file that does not exist yet is created.
#[derive(Debug, Clone, Copy)]
pub struct NewFile {
    pub mode: u32,
    /// Hand a new file to this owner (when we are allowed to: as root).
    pub owner: Option<Owner>,
}

impl NewFile {
    /// Readable and writable by its owner only: for secrets and user lists.
    pub const PRIVATE: NewFile = NewFile {
        mode: 0o600,
        owner: None,
    };

    pub fn owned_by(self, owner: Option<Owner>) -> NewFile {
        NewFile { owner, ..self }
    }
}

/// Replaces `path` with `bytes` durably (see the module doc). An existing
/// file's owner, group and mode are kept; a new one follows `new`.
pub fn replace(path: &Path, bytes: &[u8], new: NewFile) -> io::Result<()> {
    let existing = fs::metadata(path).ok();
    let (mode, owner) = match &existing {
        Some(m) => (
            m.permissions().mode() & 0o7777,
            Some(Owner {
                uid: m.uid(),
                gid: m.gid(),
            }),
        ),
        None => (new.mode, new.owner),
    };
    let tmp = temp_beside(path);
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        // The umask may have taken bits off; the mode asked for is the one kept.
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        if let Some(o) = owner {
            give_to(&f, o)?;
        }
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        sync_parent(path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Changes a file's owner when that changes anything: a process that is
/// not root may keep its own files as they are, but cannot give them away.
fn give_to(f: &File, owner: Owner) -> io::Result<()> {
    let now = f.metadata()?;
    if now.uid() == owner.uid && now.gid() == owner.gid {
        return Ok(());
    }
    match std::os::unix::fs::fchown(f, Some(owner.uid), Some(owner.gid)) {
        Ok(()) => Ok(()),
        // Not root: the file stays ours, as it would with any editor.
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied && now.uid() != 0 => Ok(()),
        Err(e) => Err(e),
    }
}

/// A temporary name in the same directory (so the rename is atomic), unique
/// to this process and this write, so that two writers (two processes, or
/// two threads of one) never share one.
fn temp_beside(path: &Path) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.{}.{n}.tmp", std::process::id()))
}

/// Syncs the directory holding `path`, so that a rename or a new file in it
/// survives a crash.
pub fn sync_parent(path: &Path) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    sync_dir(dir)
}

/// Syncs a directory.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Who this process runs as, in words for an error message:
/// "portcullis (uid 105)".
pub fn running_user() -> String {
    let uid = rustix::process::geteuid().as_raw();
    match user_name(uid) {
        Some(name) => format!("{name} (uid {uid})"),
        None => format!("uid {uid}"),
    }
}

/// The name of `uid` in /etc/passwd, if it has one there.
fn user_name(uid: u32) -> Option<String> {
    let passwd = fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        let id: u32 = fields.nth(1)?.parse().ok()?;
        (id == uid).then(|| name.to_string())
    })
}

/// Whether this process may read (or, with `write`, also write) `path`,
/// asked of the kernel as it would decide for an open: the error says why not.
pub fn may_access(path: &Path, write: bool) -> io::Result<()> {
    use rustix::fs::{Access, access};
    let how = if write {
        Access::READ_OK | Access::WRITE_OK
    } else {
        Access::READ_OK
    };
    access(path, how).map_err(io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_file_gets_the_mode_asked_for_and_the_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        replace(&path, b"one", NewFile::PRIVATE).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"one");
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o600);
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temporary file is left"
        );
    }

    #[test]
    fn a_replaced_file_keeps_its_mode_and_owner() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users");
        fs::write(&path, b"old").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        let before = Owner::of(&path).unwrap();
        replace(&path, b"new", NewFile::PRIVATE).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"new");
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o640, "the existing mode is kept, not PRIVATE's");
        assert_eq!(Owner::of(&path).unwrap(), before);
    }

    #[test]
    fn writers_in_several_threads_each_leave_a_whole_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        std::thread::scope(|s| {
            for t in 0..8u8 {
                let path = &path;
                s.spawn(move || {
                    for _ in 0..20 {
                        replace(path, &[t; 100], NewFile::PRIVATE).unwrap();
                    }
                });
            }
        });
        let last = fs::read(&path).unwrap();
        assert_eq!(last.len(), 100);
        assert!(
            last.iter().all(|&b| b == last[0]),
            "one writer's whole content"
        );
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temporary left"
        );
    }

    #[test]
    fn a_failed_write_leaves_the_old_file_and_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing-dir").join("file");
        assert!(replace(&path, b"x", NewFile::PRIVATE).is_err());
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
