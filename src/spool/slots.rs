//! Pre-made spool files ("slots"), so that accepting a message costs one
//! disk sync instead of two.
//!
//! A message written to a new file needs the file's data synced *and* the
//! directory entry that names it (a second, separate sync) before the 250.
//! A slot is an empty file in `slots/` whose directory entry was made
//! durable beforehand, in the background, one directory sync for a whole
//! batch of slots. A session writes its message into a slot and syncs only
//! the file: the message is then durable under the slot's name. Publishing
//! renames the slot to `queue/ID` without waiting for the disk; if a crash
//! loses that rename, `recover` finds the complete message still in
//! `slots/` at the next start (its trailer proves it whole, its envelope
//! names its queue ID) and moves it into the queue. A slot holding a torn
//! message (a crash before its sync, so never acknowledged) is removed.
//!
//! A delivered message's file is not deleted but recycled: renamed back
//! into `slots/` and emptied, then offered again after the next directory
//! sync. Creating and deleting a file per message costs the filesystem far
//! more CPU than reusing one (ext4 searches its inode tables for an inode
//! not recently freed on every create).

use super::writer::sync_dir;
use std::fs::{self, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::Duration;

/// Refill when fewer than this many slots are left.
const LOW_WATER: usize = 32;
/// Slots made per refill (one directory sync for all of them).
const BATCH: usize = 128;
/// Spent files kept for reuse at most (beyond this they are deleted), so a
/// burst does not leave the directory full of empty files for good.
const MAX_POOL: usize = 1024;

pub struct Slots {
    dir: PathBuf,
    /// Where spent files come from (synced with `dir` when they are reused).
    queue_dir: PathBuf,
    free: Mutex<Vec<PathBuf>>,
    /// Emptied files renamed into `dir`, usable after the next directory sync.
    recycled: Mutex<Vec<PathBuf>>,
    /// Wakes the refill thread.
    low: Condvar,
}

impl Slots {
    /// Takes the empty slots already in `dir` and starts the refill thread.
    pub fn start(dir: PathBuf, queue_dir: PathBuf) -> io::Result<Arc<Slots>> {
        fs::create_dir_all(&dir)?;
        let mut free = Vec::new();
        for entry in fs::read_dir(&dir)? {
            let entry = entry?;
            if entry.metadata()?.len() == 0 {
                free.push(entry.path());
            }
        }
        let slots = Arc::new(Slots {
            dir,
            queue_dir,
            free: Mutex::new(free),
            recycled: Mutex::new(Vec::new()),
            low: Condvar::new(),
        });
        let weak = Arc::downgrade(&slots);
        std::thread::Builder::new()
            .name("spool-slots".into())
            .spawn(move || refill(weak))?;
        Ok(slots)
    }

    /// An empty, durably named file to write a message into; None when the
    /// refill has not kept up (the caller then writes a new file instead).
    pub fn take(&self) -> Option<PathBuf> {
        let mut free = lock(&self.free);
        let slot = free.pop();
        if free.len() < LOW_WATER {
            self.low.notify_one();
        }
        slot
    }

    /// Gives back a slot that was taken but never written to.
    pub fn give_back(&self, slot: PathBuf) {
        lock(&self.free).push(slot);
    }

    /// Takes a finished message's file for reuse instead of deleting it.
    /// Renamed first and emptied after: a crash in between leaves a whole
    /// message in `slots/`, which recovery puts back (a duplicate delivery
    /// at worst, as with a delete not yet durable), never an empty file in
    /// the queue.
    pub fn recycle(&self, spent: &Path) -> io::Result<()> {
        let pooled = lock(&self.free).len() + lock(&self.recycled).len();
        if pooled >= MAX_POOL {
            return fs::remove_file(spent);
        }
        let slot = self.dir.join(new_name());
        fs::rename(spent, &slot)?;
        OpenOptions::new().write(true).open(&slot)?.set_len(0)?;
        lock(&self.recycled).push(slot);
        Ok(())
    }

    fn make_batch(&self) -> io::Result<()> {
        let reused = std::mem::take(&mut *lock(&self.recycled));
        // Enough spent files at hand: no new ones (each create is costly).
        let new = if reused.len() >= LOW_WATER {
            0
        } else {
            BATCH - reused.len()
        };
        let mut made = Vec::with_capacity(new + reused.len());
        for _ in 0..new {
            let path = self.dir.join(new_name());
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)?;
            made.push(path);
        }
        // One sync makes every new name durable (and the empty inodes with
        // them). Reused files also left the queue: sync that side too, so no
        // filesystem can keep both names.
        sync_dir(&self.dir)?;
        if !reused.is_empty() {
            sync_dir(&self.queue_dir)?;
        }
        made.extend(reused);
        lock(&self.free).extend(made);
        Ok(())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn new_name() -> String {
    format!(
        "{:016x}{:016x}",
        rand::random::<u64>(),
        rand::random::<u64>()
    )
}

/// Keeps the pool above its low-water mark until the pool is dropped.
fn refill(slots: Weak<Slots>) {
    loop {
        let Some(s) = slots.upgrade() else {
            return;
        };
        let wanted = {
            let free = lock(&s.free);
            let (free, _) = s
                .low
                .wait_timeout_while(free, Duration::from_secs(1), |f| f.len() >= LOW_WATER)
                .unwrap_or_else(|p| p.into_inner());
            free.len() < LOW_WATER
        };
        if wanted && let Err(e) = s.make_batch() {
            tracing::warn!(dir = %s.dir.display(), "cannot prepare spool files: {e}");
            drop(s);
            std::thread::sleep(Duration::from_secs(5));
        }
    }
}

/// Moves complete messages left in `slots/` by a crash into the queue and
/// removes torn ones; empty slots stay. Call only while holding the
/// data-dir lock, before the queue is read.
pub fn recover(slots_dir: &Path, queue_dir: &Path) -> io::Result<Recovery> {
    let mut found = Recovery::default();
    if !slots_dir.is_dir() {
        return Ok(found);
    }
    let mut recovered = 0;
    for entry in fs::read_dir(slots_dir)? {
        let entry = entry?;
        let path = entry.path();
        if entry.metadata()?.len() == 0 {
            continue;
        }
        let whole = fs::File::open(&path)
            .map_err(super::SpoolError::from)
            .and_then(|mut f| super::read_envelope(&mut f, &path));
        match whole {
            Ok((envelope, _)) if super::queue_id::is_valid(&envelope.id) => {
                let target = queue_dir.join(&envelope.id);
                if target.exists() {
                    // The rename did happen; this is a stale second name.
                    fs::remove_file(&path)?;
                } else {
                    fs::rename(&path, &target)?;
                    recovered += 1;
                }
            }
            _ => {
                fs::remove_file(&path)?;
                found.torn += 1;
            }
        }
    }
    if recovered > 0 {
        sync_dir(queue_dir)?;
    }
    sync_dir(slots_dir)?;
    found.recovered = recovered;
    Ok(found)
}

/// What `recover` did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Recovery {
    /// Complete messages moved into the queue.
    pub recovered: usize,
    /// Unfinished (never acknowledged) messages removed.
    pub torn: usize,
}

#[cfg(test)]
mod tests {
    use crate::spool::{Envelope, QueueId, Spool};

    #[test]
    fn a_message_synced_in_a_slot_survives_a_lost_rename() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap().with_slots().unwrap();
        wait_for_slots(&spool);
        let id = QueueId::new();
        let mut w = spool.begin(&id);
        w.write(b"Subject: kept\r\n\r\nbody\r\n");
        let prepared = w
            .prepare(&Envelope::for_test(&id, "a@x.test", &["b@y.test"]))
            .unwrap();
        // A crash between the sync and the rename: the message is only in slots/.
        std::mem::forget(prepared);
        assert!(spool.load(&id).is_err());
        // A torn slot (a crash mid-write) and an empty one beside it.
        let torn = spool.slots_dir().join("torn");
        std::fs::write(&torn, b"Subject: half").unwrap();
        let offline = Spool::open_existing(dir.path()).unwrap();
        let found = offline.recover_slots().unwrap();
        assert_eq!((found.recovered, found.torn), (1, 1));
        let m = offline.load(&id).expect("recovered into the queue");
        assert_eq!(m.envelope.recipients[0].address, "b@y.test");
        assert!(!torn.exists(), "a torn slot is removed");
        assert!(
            std::fs::read_dir(spool.slots_dir()).unwrap().all(|e| e
                .unwrap()
                .metadata()
                .unwrap()
                .len()
                == 0),
            "only empty slots remain"
        );
    }

    /// Until the first batch of slots is ready to take (bounded).
    fn wait_for_slots(spool: &Spool) {
        let pool = spool.slots.as_ref().unwrap();
        for _ in 0..500 {
            if let Some(slot) = pool.take() {
                pool.give_back(slot);
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("no slot was made within 5 s");
    }

    #[test]
    fn a_finished_message_file_is_emptied_and_reused() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap().with_slots().unwrap();
        let id = QueueId::new();
        let mut w = spool.begin(&id);
        w.write(b"Subject: done\r\n\r\nbody\r\n");
        w.commit(&Envelope::for_test(&id, "a@x.test", &["b@y.test"]))
            .unwrap();
        let inode = std::fs::metadata(spool.queue_dir().join(id.as_str()))
            .unwrap()
            .ino();
        spool.remove_finished(&id).unwrap();
        assert!(spool.load(&id).is_err(), "gone from the queue");
        let reused: Vec<_> = std::fs::read_dir(spool.slots_dir())
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap())
            .filter(|m| m.ino() == inode)
            .collect();
        assert_eq!(reused.len(), 1, "the same file waits in slots/");
        assert_eq!(reused[0].len(), 0, "emptied");
        // A crash now finds nothing to recover: the spent message is not resent.
        let found = Spool::open_existing(dir.path())
            .unwrap()
            .recover_slots()
            .unwrap();
        assert_eq!((found.recovered, found.torn), (0, 0));
    }

    #[test]
    fn an_untouched_slot_goes_back_to_the_pool() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap().with_slots().unwrap();
        wait_for_slots(&spool);
        let before = std::fs::read_dir(spool.slots_dir()).unwrap().count();
        let id = QueueId::new();
        drop(spool.begin(&id)); // refused before any content
        let after = std::fs::read_dir(spool.slots_dir()).unwrap().count();
        assert_eq!(before, after, "no slot file lost or leaked");
        assert!(spool.slots.as_ref().unwrap().take().is_some());
    }

    /// Writers racing for slots — some dropped early, some after a spill,
    /// some prepared and never published — never share one: every published
    /// message reads back as its own.
    #[test]
    fn racing_writers_never_share_a_slot() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap().with_slots().unwrap();
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let spool = spool.clone();
                std::thread::spawn(move || {
                    for i in 0..400u32 {
                        let id = QueueId::new();
                        let token = format!("tok-{t}-{i}");
                        let mut w = spool.begin(&id);
                        w.write(format!("X-Token: {token}\r\n\r\n").as_bytes());
                        let env = Envelope::for_test(&id, "a@x.test", &["b@y.test"]);
                        match i % 5 {
                            0 => continue, // refused before any I/O
                            1 => {
                                w.write(&[b'a'; 300 * 1024]);
                                w.spill().unwrap();
                                continue; // refused after a spill
                            }
                            2 => {
                                drop(w.prepare(&env).unwrap()); // never published
                                continue;
                            }
                            _ => {}
                        }
                        w.commit(&env).unwrap();
                        let body = spool.read_body(&id).unwrap();
                        assert!(body.starts_with(format!("X-Token: {token}\r\n").as_bytes()));
                        assert_eq!(spool.load(&id).unwrap().envelope.id, id.to_string());
                        if i % 5 == 3 {
                            // Delivered: its file becomes a slot for later writers.
                            spool.remove_finished(&id).unwrap();
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let leftovers = std::fs::read_dir(spool.slots_dir())
            .unwrap()
            .filter(|e| e.as_ref().unwrap().metadata().unwrap().len() > 0)
            .count();
        assert_eq!(
            leftovers, 0,
            "no slot keeps content once its writer is done"
        );
    }
}
