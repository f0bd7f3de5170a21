//! File descriptors: the soft limit raised to the hard one at start, and
//! one descriptor held in reserve so that when the process runs out, the
//! listeners can still accept a pending connection and close it at once
//! instead of leaving every client (the office's too) unanswered in the
//! backlog while the accept loop waits.

use std::fs::File;
use std::sync::Mutex;
use tokio::net::TcpListener;

static SPARE: Mutex<Option<File>> = Mutex::new(None);

/// Raises the soft limit on open files to the hard limit; returns the limit
/// now in force (None when it cannot be read).
pub fn raise_limit() -> Option<u64> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if let (Some(cur), Some(max)) = (limit.current, limit.maximum)
        && cur < max
    {
        limit.current = Some(max);
        if setrlimit(Resource::Nofile, limit).is_err() {
            limit.current = Some(cur);
        }
    }
    limit.current
}

/// Sets the reserve descriptor aside (at start, and again after each use).
pub fn keep_reserve() {
    let mut spare = SPARE.lock().unwrap_or_else(|p| p.into_inner());
    if spare.is_none() {
        *spare = File::open("/dev/null").ok();
    }
}

/// Whether an accept error means the process (or system) is out of descriptors.
pub fn exhausted(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(code) if code == rustix::io::Errno::MFILE.raw_os_error() || code == rustix::io::Errno::NFILE.raw_os_error())
}

/// Out of descriptors: frees the reserve, accepts one pending connection and
/// closes it at once (the client sees a closed connection rather than a
/// hang), then sets the reserve aside again. Whether one was shed.
pub async fn shed_one(listener: &TcpListener) -> bool {
    let freed = SPARE.lock().unwrap_or_else(|p| p.into_inner()).take();
    drop(freed);
    let shed = matches!(
        tokio::time::timeout(std::time::Duration::from_millis(5), listener.accept()).await,
        Ok(Ok(_))
    );
    keep_reserve();
    shed
}
