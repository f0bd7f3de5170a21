//! Writing one message. Content is gathered in memory and goes to disk
//! only in `spill` (when 256 KB are waiting) and `prepare`: both do blocking
//! file I/O and are called off the async threads. The file is a pre-made
//! slot when the spool has one at hand (already durably named: syncing the
//! file is enough), else `tmp/ID` (the rename into the queue then needs a
//! directory sync too). `prepare` appends the envelope and trailer and
//! syncs the file; publishing renames it into `queue/`. A writer dropped
//! before that removes its file (or gives back an untouched slot).

use super::{Envelope, Spool, trailer_line};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Content waiting in memory before it must go to disk; bounds memory per message.
const SPILL_AT: usize = 256 * 1024;

pub struct SpoolWriter {
    pending: Vec<u8>,
    file: Option<File>,
    /// Where the content goes: a slot, or `tmp/ID`.
    tmp_path: PathBuf,
    /// The pool the slot came from (None: a file of our own in `tmp/`).
    slots: Option<std::sync::Arc<super::slots::Slots>>,
    final_path: PathBuf,
    queue_dir: PathBuf,
    body_len: u64,
    /// The file at `tmp_path` was opened for this message (it may hold
    /// some of it, even once `file` is taken to be synced).
    opened: bool,
    done: bool,
}

impl SpoolWriter {
    pub(super) fn new(spool: &Spool, id: &str) -> SpoolWriter {
        let slot = spool
            .slots
            .as_ref()
            .and_then(|s| s.take().map(|path| (std::sync::Arc::clone(s), path)));
        let (slots, tmp_path) = match slot {
            Some((pool, path)) => (Some(pool), path),
            None => (None, spool.tmp_dir().join(id)),
        };
        SpoolWriter {
            pending: Vec::new(),
            file: None,
            tmp_path,
            slots,
            final_path: spool.queue_dir().join(id),
            queue_dir: spool.queue_dir(),
            body_len: 0,
            opened: false,
            done: false,
        }
    }

    /// Adds content (in memory; no I/O).
    pub fn write(&mut self, bytes: &[u8]) {
        self.pending.extend_from_slice(bytes);
        self.body_len += bytes.len() as u64;
    }

    pub fn body_len(&self) -> u64 {
        self.body_len
    }

    /// Whether enough is waiting that it should go to disk now (call `spill` off the async threads).
    pub fn needs_spill(&self) -> bool {
        self.pending.len() >= SPILL_AT
    }

    /// Writes what is waiting to the temporary file (blocking I/O).
    pub fn spill(&mut self) -> io::Result<()> {
        self.write_pending()?;
        self.pending.clear();
        Ok(())
    }

    /// The content written so far (blocking I/O when part of it went to
    /// disk already; the archive copies it before the 250).
    pub fn content(&mut self) -> io::Result<Vec<u8>> {
        if self.file.is_none() {
            return Ok(self.pending.clone());
        }
        self.spill()?;
        let mut content = Vec::with_capacity(self.body_len as usize);
        use std::io::Read;
        File::open(&self.tmp_path)?
            .take(self.body_len)
            .read_to_end(&mut content)?;
        Ok(content)
    }

    /// Writes what is waiting, keeping it in memory (blocking I/O).
    fn write_pending(&mut self) -> io::Result<()> {
        if self.file.is_none() {
            let mut options = OpenOptions::new();
            options.write(true);
            if self.slots.is_none() {
                options.create_new(true);
            }
            self.file = Some(options.open(&self.tmp_path)?);
            self.opened = true;
        }
        if let Some(file) = self.file.as_mut() {
            file.write_all(&self.pending)?;
        }
        Ok(())
    }

    /// Makes the message durable on its own (blocking I/O): `prepare`, then publish it alone.
    /// The server batches publications instead (see `Committer`).
    pub fn commit(self, envelope: &Envelope) -> io::Result<()> {
        let prepared = self.prepare(envelope)?;
        let queue_dir = prepared.queue_dir.clone();
        Prepared::publish_batch(vec![prepared], &queue_dir)
            .pop()
            .unwrap_or_else(|| Err(io::Error::other("nothing published")))
    }

    /// The whole file image (content, envelope, trailer) when the content
    /// is all in memory and small enough to keep there (for the journal);
    /// the writer back otherwise. An untouched slot goes back to the pool.
    pub fn into_image(mut self, envelope: &Envelope) -> Result<(Vec<u8>, u64), SpoolWriter> {
        if self.file.is_some() || self.body_len as usize > super::memory::MEMORY_COPY_MAX {
            return Err(self);
        }
        if self.seal(envelope).is_err() {
            return Err(self);
        }
        Ok((std::mem::take(&mut self.pending), self.body_len))
    }

    /// Writes a complete file image (a journaled message moving into the
    /// queue) and syncs it, ready to publish (blocking I/O).
    pub fn prepare_image(mut self, image: &[u8]) -> io::Result<Prepared> {
        self.pending.clear();
        self.pending.extend_from_slice(image);
        let synced = self.sync_file().map(|()| None);
        self.into_prepared(synced)
    }

    /// Writes everything with the envelope and trailer and fdatasyncs the file
    /// (blocking I/O). The message is not in the queue until it is published.
    pub fn prepare(mut self, envelope: &Envelope) -> io::Result<Prepared> {
        let synced = self.write_and_sync(envelope);
        self.into_prepared(synced)
    }

    /// Ends the writer: its synced file ready to publish, or the error (and
    /// the file removed).
    fn into_prepared(mut self, synced: io::Result<Option<Vec<u8>>>) -> io::Result<Prepared> {
        self.done = true;
        match synced {
            Ok(content) => Ok(Prepared {
                content,
                tmp_path: self.tmp_path.clone(),
                final_path: self.final_path.clone(),
                queue_dir: self.queue_dir.clone(),
                published: false,
                named_durably: self.slots.is_some(),
            }),
            Err(e) => {
                self.discard();
                Err(e)
            }
        }
    }

    /// Appends the envelope and the trailer after the content (in memory).
    fn seal(&mut self, envelope: &Envelope) -> io::Result<()> {
        let env = serde_json::to_vec(envelope).map_err(io::Error::other)?;
        self.pending.extend_from_slice(&env);
        self.pending
            .extend_from_slice(trailer_line(self.body_len, env.len() as u64).as_bytes());
        Ok(())
    }

    /// Writes what is waiting and fdatasyncs the file: the content and the
    /// size needed to read it, without mtime churn.
    fn sync_file(&mut self) -> io::Result<()> {
        self.write_pending()?;
        self.file
            .take()
            .ok_or_else(|| io::Error::other("spool file missing"))?
            .sync_data()
    }

    /// Returns the content when it was all in memory and small (see `MemoryCopy`).
    fn write_and_sync(&mut self, envelope: &Envelope) -> io::Result<Option<Vec<u8>>> {
        let whole_in_memory = self.file.is_none();
        self.seal(envelope)?;
        self.sync_file()?;
        let mut content = std::mem::take(&mut self.pending);
        if whole_in_memory && self.body_len as usize <= super::memory::MEMORY_COPY_MAX {
            content.truncate(self.body_len as usize);
            Ok(Some(content))
        } else {
            Ok(None)
        }
    }

    fn discard(&mut self) {
        self.file = None;
        if self.opened {
            // Part of a message may be in it: never handed out again as empty.
            let _ = fs::remove_file(&self.tmp_path);
        } else if let Some(slots) = self.slots.take() {
            // Never written to: still an empty slot.
            slots.give_back(std::mem::take(&mut self.tmp_path));
        }
    }
}

impl Drop for SpoolWriter {
    fn drop(&mut self) {
        if !self.done {
            self.discard();
        }
    }
}

/// A message written and synced in `tmp/`, waiting to be renamed into the queue.
/// Dropped unpublished, its file is removed.
pub struct Prepared {
    /// The content, when small and all in memory (for `MemoryCopy`).
    content: Option<Vec<u8>>,
    tmp_path: PathBuf,
    final_path: PathBuf,
    queue_dir: PathBuf,
    published: bool,
    /// Written into a slot: durable already, the rename needs no directory sync.
    named_durably: bool,
}

impl Prepared {
    /// The content as written, when it was small and all in memory.
    pub fn take_content(&mut self) -> Option<Vec<u8>> {
        self.content.take()
    }

    /// A message in a slot is durable under its own name already: its
    /// rename has no directory sync to share, so it is done at once, here,
    /// saving the trip through the committer. Hands back one that needs
    /// the group commit (blocking I/O).
    pub fn publish_if_durable(self) -> io::Result<Option<Prepared>> {
        if !self.named_durably {
            return Ok(Some(self));
        }
        let dir = self.queue_dir.clone();
        Prepared::publish_batch(vec![self], &dir)
            .pop()
            .unwrap_or(Ok(()))?;
        Ok(None)
    }

    /// Renames each into `queue/`, then makes all the renames durable with one
    /// directory fsync (blocking I/O). One result per message, in order.
    pub fn publish_batch(mut batch: Vec<Prepared>, queue_dir: &Path) -> Vec<io::Result<()>> {
        let mut results: Vec<io::Result<()>> = batch
            .iter()
            .map(|p| fs::rename(&p.tmp_path, &p.final_path))
            .collect();
        let needs_sync = batch
            .iter()
            .zip(&results)
            .any(|(p, r)| r.is_ok() && !p.named_durably);
        if needs_sync && let Err(e) = sync_dir(queue_dir) {
            // Not durable: undo what we can; the senders get a 4xx and keep their mail.
            for (p, r) in batch.iter().zip(results.iter_mut()) {
                if r.is_ok() {
                    let _ = fs::remove_file(&p.final_path);
                    *r = Err(io::Error::new(e.kind(), e.to_string()));
                }
            }
        }
        for (p, r) in batch.iter_mut().zip(&results) {
            p.published = r.is_ok();
        }
        results
    }
}

impl Drop for Prepared {
    fn drop(&mut self) {
        if !self.published {
            let _ = fs::remove_file(&self.tmp_path);
        }
    }
}

/// Writes a whole small file and fsyncs it.
pub(super) fn write_durably(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut f = File::create(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// fsyncs a directory so that a rename or unlink in it survives a crash.
pub(super) fn sync_dir(dir: &Path) -> io::Result<()> {
    crate::fsio::sync_dir(dir)
}
