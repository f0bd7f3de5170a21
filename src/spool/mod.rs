//! The durable spool: where an accepted message lives from its 250 to its
//! last delivery result. Every message ends up, if it stays queued, as one
//! file in `queue/ID`: the message bytes, then the envelope as JSON, then a
//! trailer line that gives both lengths (a file whose trailer does not match
//! its size is torn and never taken for a message). Its delivery state per
//! recipient lives beside it in `state/ID.json`, replaced atomically.
//!
//! Before the 250 a message is made durable in one of three ways, the
//! first that applies:
//! 1. **The accept journal** (`journal/`), for a message small enough to
//!    keep in memory (`memory.rs`'s bound) that the queue manager will
//!    deliver at once (not held): appended as one checksummed record and
//!    synced together with every message accepted meanwhile (group commit).
//!    It gets a file in `queue/` only if it outlives its first delivery
//!    pass; after a crash, recovery writes every unreleased record there.
//! 2. **A slot** (`slots.rs`), for any other message when the server has one
//!    ready: a pre-made file whose name is already durable, so only the
//!    file itself is synced; it is renamed into `queue/` afterwards, and a
//!    rename lost to a crash is redone at the next start.
//! 3. **tmp + rename** (`writer.rs`, through the committer), when no slot is
//!    at hand (and for the CLI and tests): written in `tmp/`, synced,
//!    renamed into `queue/`, the directory synced once per batch.
//!
//! Ids are `QueueId`s throughout the public API: a string read from
//! elsewhere is checked (`QueueId::parse`) before it names a file.

mod accept;
mod committer;
mod envelope;
pub mod journal;
mod memory;
mod queue_id;
mod segment_file;
mod slots;
mod state;
mod writer;

pub use committer::Committer;
pub use envelope::{ContentInfo, Envelope, EnvelopeRecipient, Origin};
pub use journal::Journal;
pub use memory::MemoryCopy;
pub use queue_id::{QueueId, set_node};
pub use state::{MessageState, RecipientState, RecipientStatus};
pub use writer::{Prepared, SpoolWriter};

use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

const TRAILER_TAG: &str = "#PORTCULLIS-SPOOL v1";

#[derive(Clone)]
pub struct Spool {
    root: PathBuf,
    /// Pre-made files for new messages (the server's; None for the CLI and tests).
    slots: Option<std::sync::Arc<slots::Slots>>,
    /// Where small new messages are made durable together (the server's).
    journal: Option<Journal>,
    /// Publishes new message files in batches (the server's; without it,
    /// each is published on its own).
    committer: Option<Committer>,
}

impl std::fmt::Debug for Spool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spool").field("root", &self.root).finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("no message {0} in the queue")]
    NotFound(String),
    #[error("message file {0} is torn or not a spool file")]
    Torn(PathBuf),
    #[error("bad envelope in {path}: {reason}")]
    BadEnvelope { path: PathBuf, reason: String },
    #[error("spool I/O error: {0}")]
    Io(#[from] io::Error),
}

/// A message as listed: its envelope, its state and where its content is.
#[derive(Debug, Clone)]
pub struct QueuedMessage {
    pub envelope: Envelope,
    pub state: MessageState,
    pub path: PathBuf,
    /// Length of the message content at the start of the file.
    pub body_len: u64,
    /// The content in memory, for a message this process just spooled.
    pub memory: Option<std::sync::Arc<MemoryCopy>>,
    /// Durable only in the journal so far: no file in `queue/` yet.
    pub journaled: bool,
}

impl Spool {
    /// Opens (creating when needed) the spool under `data_dir`.
    pub fn open(data_dir: &Path) -> io::Result<Spool> {
        let root = data_dir.to_path_buf();
        for dir in ["queue", "tmp", "state", "slots"] {
            fs::create_dir_all(root.join(dir))?;
        }
        Ok(Spool {
            root,
            slots: None,
            journal: None,
            committer: None,
        })
    }

    /// Writes new messages into pre-made files (one disk sync per message
    /// instead of two); starts the thread that makes them. For the server,
    /// after `recover_slots`.
    pub fn with_slots(mut self) -> io::Result<Spool> {
        self.slots = Some(slots::Slots::start(self.slots_dir(), self.queue_dir())?);
        Ok(self)
    }

    /// Makes small new messages durable in the shared journal (one sync for
    /// all accepted at once). For the server, while holding the data-dir
    /// lock, after `recover_journal`.
    pub fn with_journal(mut self) -> io::Result<Spool> {
        self.journal = Some(Journal::start(&self.root)?);
        Ok(self)
    }

    pub fn journal(&self) -> Option<&Journal> {
        self.journal.as_ref()
    }

    /// Writes the messages a crash left in the journal only into the queue.
    /// Call only while holding the data-dir lock, before reading the queue.
    pub fn recover_journal(&self) -> Result<usize, SpoolError> {
        journal::recover(&self.root)
    }

    /// Gives journaled messages their own files in `queue/` (before their
    /// state is first written): each written and synced, the renames made
    /// durable together. Per message, false when it was deleted meanwhile
    /// (blocking I/O).
    pub fn materialize(
        &self,
        messages: &[(&QueueId, &MemoryCopy)],
    ) -> Vec<Result<bool, SpoolError>> {
        let images: Vec<(&str, &[u8])> = messages
            .iter()
            .map(|(id, copy)| (id.as_str(), copy.image()))
            .collect();
        self.materialize_images(&images)
    }

    /// `materialize` from the file images themselves.
    fn materialize_images(&self, images: &[(&str, &[u8])]) -> Vec<Result<bool, SpoolError>> {
        let Some(journal) = &self.journal else {
            return images
                .iter()
                .map(|_| Err(io::Error::other("no spool journal").into()))
                .collect();
        };
        let mut results: Vec<Result<bool, SpoolError>> = Vec::with_capacity(images.len());
        let mut confirm = Vec::new();
        for (i, written) in self.write_images(images).into_iter().enumerate() {
            if written.is_ok() {
                confirm.push(i);
            }
            results.push(written.map(|()| true));
        }
        let ids: Vec<String> = confirm.iter().map(|&i| images[i].0.to_string()).collect();
        match journal.materialized(ids) {
            Ok(kept) => {
                for (i, kept) in confirm.into_iter().zip(kept) {
                    if !kept {
                        // Deleted meanwhile: the copy just written must go too.
                        let _ = fs::remove_file(self.queue_dir().join(images[i].0));
                        results[i] = Ok(false);
                    }
                }
            }
            Err(e) => {
                for i in confirm {
                    results[i] = Err(io::Error::new(e.kind(), e.to_string()).into());
                }
            }
        }
        results
    }

    /// Writes whole file images (content, envelope, trailer) into `queue/`:
    /// each written and synced, the renames made durable together. One
    /// result per image, in order (blocking I/O).
    pub(crate) fn write_images(&self, images: &[(&str, &[u8])]) -> Vec<Result<(), SpoolError>> {
        let mut results: Vec<Result<(), SpoolError>> = images.iter().map(|_| Ok(())).collect();
        let mut prepared = Vec::new();
        let mut waiting = Vec::new();
        for (i, (id, image)) in images.iter().enumerate() {
            let written = self
                .message_path(id)
                .and_then(|_| Ok(self.begin_named(id).prepare_image(image)?));
            match written {
                Ok(p) => {
                    prepared.push(p);
                    waiting.push(i);
                }
                Err(e) => results[i] = Err(e),
            }
        }
        let published = Prepared::publish_batch(prepared, &self.queue_dir());
        for (i, r) in waiting.into_iter().zip(published) {
            if let Err(e) = r {
                results[i] = Err(e.into());
            }
        }
        results
    }

    /// One journaled message into `queue/`, from its file image.
    fn materialize_image(&self, id: &str, image: &[u8]) -> Result<bool, SpoolError> {
        self.materialize_images(&[(id, image)])
            .pop()
            .unwrap_or_else(|| Err(io::Error::other("nothing materialized").into()))
    }

    /// A journaled message is done with: nothing on disk but its record.
    pub fn release_journaled(&self, id: &QueueId) {
        if let Some(journal) = &self.journal {
            journal.release(id);
        }
    }

    /// Moves complete messages a crash left in `slots/` into the queue.
    /// Call only while holding the data-dir lock, before reading the queue.
    pub fn recover_slots(&self) -> io::Result<slots::Recovery> {
        slots::recover(&self.slots_dir(), &self.queue_dir())
    }

    pub(crate) fn slots_dir(&self) -> PathBuf {
        self.root.join("slots")
    }

    /// Opens an existing spool without creating anything (for the CLI).
    pub fn open_existing(data_dir: &Path) -> io::Result<Spool> {
        if !data_dir.join("queue").is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "{} holds no spool (no queue/ directory)",
                    data_dir.display()
                ),
            ));
        }
        Ok(Spool {
            root: data_dir.to_path_buf(),
            slots: None,
            journal: None,
            committer: None,
        })
    }

    /// Starts the group-commit task for this spool (needs a Tokio runtime).
    /// The same spool, publishing new message files through a committer
    /// task (one directory sync per batch; needs a Tokio runtime).
    pub fn with_committer(mut self) -> Spool {
        self.committer = Some(Committer::start(self.queue_dir()));
        self
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub(crate) fn queue_dir(&self) -> PathBuf {
        self.root.join("queue")
    }
    pub(crate) fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }
    pub(crate) fn state_dir(&self) -> PathBuf {
        self.root.join("state")
    }

    fn message_path(&self, id: &str) -> Result<PathBuf, SpoolError> {
        if !queue_id::is_valid(id) {
            return Err(SpoolError::NotFound(id.to_string()));
        }
        Ok(self.queue_dir().join(id))
    }

    fn state_path(&self, id: &str) -> PathBuf {
        self.state_dir().join(format!("{id}.json"))
    }

    /// Starts a new message (in memory until it spills or commits).
    pub fn begin(&self, id: &QueueId) -> SpoolWriter {
        SpoolWriter::new(self, id)
    }

    /// `begin` for an id read back from the journal (checked by `message_path`).
    fn begin_named(&self, id: &str) -> SpoolWriter {
        SpoolWriter::new(self, id)
    }

    /// Removes leftovers of writes that never completed (from a crash).
    pub fn clean_tmp(&self) -> io::Result<usize> {
        let mut n = 0;
        for entry in fs::read_dir(self.tmp_dir())? {
            let entry = entry?;
            if fs::remove_file(entry.path()).is_ok() {
                n += 1;
            }
        }
        Ok(n)
    }

    /// All queue IDs, oldest first (IDs sort by time): the files in
    /// `queue/` and the messages so far only in the journal.
    pub fn ids(&self) -> io::Result<Vec<QueueId>> {
        let mut ids: Vec<QueueId> = fs::read_dir(self.queue_dir())?
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str().and_then(QueueId::parse))
            .chain(
                journal::unreleased(&self.root)?
                    .iter()
                    .filter_map(|(id, _)| QueueId::parse(id)),
            )
            .collect();
        ids.sort();
        ids.dedup();
        Ok(ids)
    }

    /// A message only in the journal so far: its envelope, content length
    /// and whole file image (read from the journal, which may be growing).
    fn read_journaled(&self, id: &str) -> Result<(Envelope, u64, Vec<u8>), SpoolError> {
        let image = journal::unreleased(&self.root)?
            .into_iter()
            .find(|(found, _)| found == id)
            .map(|(_, image)| image)
            .ok_or_else(|| SpoolError::NotFound(id.to_string()))?;
        let (envelope, body_len) = read_message_bytes(&image)?;
        Ok((envelope, body_len, image))
    }

    /// Removes state files whose message is gone (a delete that raced with an
    /// attempt recording its results). Call only while holding the data-dir lock.
    pub fn remove_orphan_states(&self) -> io::Result<usize> {
        let mut removed = 0;
        for entry in fs::read_dir(self.state_dir())? {
            let path = entry?.path();
            let id = path
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or_default();
            if queue_id::is_valid(id) && !self.queue_dir().join(id).exists() {
                fs::remove_file(&path)?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Reads one message's envelope and state.
    pub fn load(&self, id: &QueueId) -> Result<QueuedMessage, SpoolError> {
        self.load_with_image(id).map(|(msg, _)| msg)
    }

    /// `load`, with the file image of a message found only in the journal.
    fn load_with_image(&self, id: &str) -> Result<(QueuedMessage, Option<Vec<u8>>), SpoolError> {
        let path = self.message_path(id)?;
        let (envelope, body_len, image) = match File::open(&path) {
            Ok(mut file) => {
                let (envelope, body_len) = read_envelope(&mut file, &path)?;
                (envelope, body_len, None)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let (envelope, body_len, image) = self.read_journaled(id)?;
                (envelope, body_len, Some(image))
            }
            Err(e) => return Err(e.into()),
        };
        let state = self
            .read_state(id)?
            .unwrap_or_else(|| MessageState::initial(&envelope));
        let msg = QueuedMessage {
            envelope,
            state,
            path,
            body_len,
            memory: None,
            journaled: image.is_some(),
        };
        Ok((msg, image))
    }

    /// `load` for the queue manager, which delivers and moves a journal-only
    /// message from its copy in memory and so must never hold one without
    /// it: the copy is taken from the journal record, or when memory is
    /// short the message gets its own file at once. (Only the queue manager
    /// may move a journaled message: a reader must use `load`.)
    pub fn load_owned(&self, id: &QueueId) -> Result<QueuedMessage, SpoolError> {
        let (mut msg, image) = self.load_with_image(id)?;
        let Some(image) = image else {
            return Ok(msg);
        };
        match MemoryCopy::keep_image(image, msg.body_len) {
            Ok(copy) => msg.memory = Some(copy),
            Err(image) => {
                if !self.materialize_image(id, &image)? {
                    return Err(SpoolError::NotFound(id.to_string()));
                }
                msg.journaled = false;
            }
        }
        Ok(msg)
    }

    /// A message this process has just published, as `load` would read it
    /// (no state yet), without reading the file back.
    pub fn just_queued(
        &self,
        envelope: Envelope,
        body_len: u64,
        memory: Option<std::sync::Arc<MemoryCopy>>,
        journaled: bool,
    ) -> QueuedMessage {
        QueuedMessage {
            state: MessageState::initial(&envelope),
            path: self.queue_dir().join(&envelope.id),
            envelope,
            body_len,
            memory,
            journaled,
        }
    }

    /// The message content (what follows DATA, with our Received: header first).
    pub fn read_body(&self, id: &QueueId) -> Result<Vec<u8>, SpoolError> {
        let msg = self.load(id)?;
        if msg.journaled {
            let (_, body_len, mut image) = self.read_journaled(id)?;
            image.truncate(body_len as usize);
            return Ok(image);
        }
        let mut file = File::open(&msg.path)?;
        let mut body = vec![0u8; msg.body_len as usize];
        file.read_exact(&mut body)?;
        Ok(body)
    }

    /// Whether the message is held, from its state file alone (cheap: no envelope).
    pub fn is_held(&self, id: &QueueId) -> bool {
        matches!(self.read_state(id), Ok(Some(state)) if state.held)
    }

    /// The recorded delivery state. A state file a crash left unreadable counts
    /// as absent: every recipient is then queued again (a duplicate at worst, never a loss).
    fn read_state(&self, id: &str) -> Result<Option<MessageState>, SpoolError> {
        let path = self.state_path(id);
        match fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice(&bytes) {
                Ok(state) => Ok(Some(state)),
                Err(e) => {
                    tracing::warn!(queue_id = %id, error = %e, "unreadable state file ignored; all recipients will be retried");
                    Ok(None)
                }
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Replaces a message's delivery state durably (tmp, fsync, rename, fsync dir):
    /// for changes a crash must not undo (hold, release, results before a bounce).
    pub fn write_state(&self, id: &QueueId, state: &MessageState) -> Result<(), SpoolError> {
        self.replace_state(id, state, true)
    }

    /// Replaces a message's delivery state atomically but without fsync: for
    /// deferrals, where losing the update to a crash only means an earlier retry.
    pub fn write_state_quick(&self, id: &QueueId, state: &MessageState) -> Result<(), SpoolError> {
        self.replace_state(id, state, false)
    }

    fn replace_state(
        &self,
        id: &str,
        state: &MessageState,
        durable: bool,
    ) -> Result<(), SpoolError> {
        if !self.message_path(id)?.exists() {
            // Deleted meanwhile (queue delete): do not leave a stray state file.
            return Err(SpoolError::NotFound(id.to_string()));
        }
        let json = serde_json::to_vec_pretty(state).map_err(io::Error::other)?;
        let tmp = self.tmp_dir().join(format!("{id}.state"));
        if durable {
            writer::write_durably(&tmp, &json)?;
        } else {
            fs::write(&tmp, &json)?;
        }
        fs::rename(&tmp, self.state_path(id))?;
        if durable {
            writer::sync_dir(&self.state_dir())?;
        }
        Ok(())
    }

    /// Deletes a message and its state, durably (for `queue delete`). The
    /// message file goes first, so a crash in between leaves only a stale
    /// state file, which is ignored.
    pub fn delete(&self, id: &QueueId) -> Result<(), SpoolError> {
        self.remove(id, true)
    }

    /// Removes a message that is done with, without waiting for the disk: a
    /// crash right after can only bring it back for a duplicate delivery.
    pub fn remove_finished(&self, id: &QueueId) -> Result<(), SpoolError> {
        self.remove(id, false)
    }

    fn remove(&self, id: &str, durable: bool) -> Result<(), SpoolError> {
        let path = self.message_path(id)?;
        if durable && let Some(journal) = &self.journal {
            // It may be journal-only (or have a copy there): a deleted
            // message must not come back at the next start.
            journal.release_durably(id)?;
        }
        let removed = match &self.slots {
            // A finished message's file becomes a slot for a new one.
            Some(slots) if !durable => slots.recycle(&path),
            _ => fs::remove_file(&path),
        };
        removed.map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => SpoolError::NotFound(id.to_string()),
            _ => SpoolError::Io(e),
        })?;
        if durable {
            writer::sync_dir(&self.queue_dir())?;
            // The message may have come from a slot by a rename not yet
            // durable: make sure the slot's name is gone too.
            if self.slots_dir().is_dir() {
                writer::sync_dir(&self.slots_dir())?;
            }
        }
        match fs::remove_file(self.state_path(id)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e.into()),
            _ => {}
        }
        Ok(())
    }
}

/// Runs blocking spool work off the async threads. A task that panicked
/// comes back as an I/O error, so callers handle one error type.
pub async fn off_thread<T, E>(
    work: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<T, SpoolError>
where
    T: Send + 'static,
    E: Into<SpoolError> + Send + 'static,
{
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result.map_err(Into::into),
        Err(e) => Err(SpoolError::Io(io::Error::other(e.to_string()))),
    }
}

/// Takes the data directory's lock, which keeps a second server (or the CLI
/// acting on the files) from sharing this spool. `None` when someone holds it;
/// the lock lasts as long as the returned file stays open.
pub fn lock_data_dir(dir: &Path) -> io::Result<Option<File>> {
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("lock"))?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(fs::TryLockError::WouldBlock) => Ok(None),
        Err(fs::TryLockError::Error(e)) => Err(e),
    }
}

/// Reads and checks the trailer, then the envelope. Returns the body length.
fn read_envelope(file: &mut File, path: &Path) -> Result<(Envelope, u64), SpoolError> {
    let size = file.metadata()?.len();
    read_envelope_from(file, size, path)
}

/// Reads a whole message file held in memory: its envelope and content
/// length, or why it is not a message. (What the fuzzer feeds hostile files to.)
pub fn read_message_bytes(bytes: &[u8]) -> Result<(Envelope, u64), SpoolError> {
    let mut cursor = std::io::Cursor::new(bytes);
    read_envelope_from(&mut cursor, bytes.len() as u64, Path::new("(memory)"))
}

fn read_envelope_from<R: Read + Seek>(
    file: &mut R,
    size: u64,
    path: &Path,
) -> Result<(Envelope, u64), SpoolError> {
    let torn = || SpoolError::Torn(path.to_path_buf());
    let tail_len = size.min(128);
    file.seek(SeekFrom::Start(size - tail_len))?;
    let mut tail = vec![0u8; tail_len as usize];
    file.read_exact(&mut tail)?;
    if tail.last() != Some(&b'\n') {
        return Err(torn());
    }
    let line_start = tail[..tail.len() - 1]
        .iter()
        .rposition(|&b| b == b'\n')
        .map(|p| p + 1)
        .ok_or_else(torn)?;
    let trailer = std::str::from_utf8(&tail[line_start..tail.len() - 1]).map_err(|_| torn())?;
    let rest = trailer.strip_prefix(TRAILER_TAG).ok_or_else(torn)?;
    let mut nums = rest.split_whitespace().filter_map(|f| f.split_once('='));
    let body_len: u64 = nums
        .next()
        .filter(|(k, _)| *k == "body")
        .and_then(|(_, v)| v.parse().ok())
        .ok_or_else(torn)?;
    let env_len: u64 = nums
        .next()
        .filter(|(k, _)| *k == "envelope")
        .and_then(|(_, v)| v.parse().ok())
        .ok_or_else(torn)?;
    // The trailer is "\n" + its line; line_start is just past that "\n".
    let trailer_total = (tail.len() - line_start) as u64 + 1;
    if body_len
        .checked_add(env_len)
        .and_then(|n| n.checked_add(trailer_total))
        != Some(size)
    {
        return Err(torn());
    }
    file.seek(SeekFrom::Start(body_len))?;
    let mut env = vec![0u8; env_len as usize];
    file.read_exact(&mut env)?;
    let envelope = serde_json::from_slice(&env).map_err(|e| SpoolError::BadEnvelope {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    Ok((envelope, body_len))
}

pub(crate) fn trailer_line(body_len: u64, env_len: u64) -> String {
    format!("\n{TRAILER_TAG} body={body_len} envelope={env_len}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(id: &str) -> Envelope {
        Envelope::for_test(
            id,
            "sender@example.org",
            &["a@example.net", "b@example.com"],
        )
    }

    #[test]
    fn write_commit_load_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let id = QueueId::new();
        let mut w = spool.begin(&id);
        w.write(b"Subject: hi\r\n\r\nbody\r\n");
        w.commit(&envelope(&id)).unwrap();
        assert_eq!(spool.ids().unwrap(), vec![id.clone()]);
        let m = spool.load(&id).unwrap();
        assert_eq!(m.envelope.recipients.len(), 2);
        assert_eq!(m.state.recipients.len(), 2);
        assert_eq!(
            spool.read_body(&id).unwrap(),
            b"Subject: hi\r\n\r\nbody\r\n"
        );
    }

    #[test]
    fn torn_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let id = QueueId::new();
        let mut w = spool.begin(&id);
        w.write(b"hello\r\n");
        w.commit(&envelope(&id)).unwrap();
        let path = spool.queue_dir().join(&id);
        let full = fs::read(&path).unwrap();
        for cut in [1, 10, full.len() / 2, full.len() - 1] {
            fs::write(&path, &full[..cut]).unwrap();
            assert!(
                matches!(spool.load(&id), Err(SpoolError::Torn(_))),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn aborted_write_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let id = QueueId::new();
        let mut w = spool.begin(&id);
        w.write(&vec![b'x'; 300 * 1024]);
        assert!(w.needs_spill());
        w.spill().unwrap();
        assert_eq!(fs::read_dir(spool.tmp_dir()).unwrap().count(), 1);
        drop(w);
        assert!(spool.ids().unwrap().is_empty());
        assert_eq!(fs::read_dir(spool.tmp_dir()).unwrap().count(), 0);
    }

    #[test]
    fn a_small_message_hands_back_its_content_a_spilled_one_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let id = QueueId::new();
        let mut w = spool.begin(&id);
        w.write(b"Subject: a\r\n\r\n");
        w.write(b"body\r\n");
        let mut prepared = w.prepare(&envelope(&id)).unwrap();
        let content = prepared.take_content().expect("small and in memory");
        assert_eq!(content, b"Subject: a\r\n\r\nbody\r\n");
        let queue_dir = spool.queue_dir();
        Prepared::publish_batch(vec![prepared], &queue_dir)
            .pop()
            .unwrap()
            .unwrap();
        // The copy is exactly what the file holds as content.
        assert_eq!(spool.read_body(&id).unwrap(), content);

        let big = QueueId::new();
        let mut w = spool.begin(&big);
        w.write(&vec![b'x'; 300 * 1024]);
        w.spill().unwrap();
        w.write(b"\r\n");
        let mut prepared = w.prepare(&envelope(&big)).unwrap();
        assert!(
            prepared.take_content().is_none(),
            "part of it is only on disk"
        );
    }

    #[test]
    fn state_survives_and_delete_removes_both() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let id = QueueId::new();
        let mut w = spool.begin(&id);
        w.write(b"x\r\n");
        w.commit(&envelope(&id)).unwrap();
        let mut st = spool.load(&id).unwrap().state;
        st.held = true;
        spool.write_state(&id, &st).unwrap();
        assert!(spool.load(&id).unwrap().state.held);
        st.recipients[0].attempts = 3;
        spool.write_state_quick(&id, &st).unwrap();
        assert_eq!(spool.load(&id).unwrap().state.recipients[0].attempts, 3);
        // A state file torn by a crash is ignored: the message is intact, all recipients queued.
        fs::write(spool.state_path(&id), b"{\"held\": tr").unwrap();
        assert_eq!(spool.load(&id).unwrap().state.recipients[0].attempts, 0);
        spool.delete(&id).unwrap();
        assert!(matches!(spool.load(&id), Err(SpoolError::NotFound(_))));
        // Only a QueueId names a message; a path read from elsewhere is refused.
        assert!(matches!(
            spool.message_path("../etc/passwd"),
            Err(SpoolError::NotFound(_))
        ));
    }
}
