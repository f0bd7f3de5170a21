//! The accept journal: append-only files that many messages share, so that
//! accepting a small message costs one disk sync shared with every message
//! accepted meanwhile (group commit), and no file of its own.
//!
//! A small message the server accepts is appended here as one checksummed
//! record holding its whole spool-file image; the writer thread syncs once
//! per batch before the sessions answer 250. Its first delivery pass
//! streams it from memory. Most messages are delivered in that pass and
//! never touch `queue/`: a release record says they are done. One that stays
//! queued (deferred, partly delivered) is first written to `queue/ID` like
//! any other message, then released.
//!
//! After a crash, `recover` writes every message that has a record and no
//! release into `queue/` (durably), then removes the journal. Segments are
//! dropped oldest first, once they and every older one hold nothing live
//! (a release record sits in a segment no older than its message's); when a
//! slow delivery keeps too many alive, the live messages of the oldest are
//! copied into `queue/` ("checkpoint") so the journal stays small.

use super::MemoryCopy;
use super::segment_file::SegmentFile;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const MAGIC: &[u8; 4] = b"PJR1";
/// Magic, kind, id length, payload length, checksum.
const HEADER: usize = 4 + 1 + 1 + 4 + 4;
const KIND_MESSAGE: u8 = 1;
const KIND_RELEASE: u8 = 2;
/// A new segment is started past this size.
const SEGMENT_MAX: u64 = 8 * 1024 * 1024;
/// Segments are written full of zeros (and synced) before use, a little
/// past `SEGMENT_MAX` for the batch that crosses it: appends then overwrite
/// blocks that exist, so a sync writes only the records, never the inode
/// (the file's size does not change), and a full disk cannot fail them.
const SEGMENT_PREALLOCATED: u64 = SEGMENT_MAX + 1024 * 1024;
/// Past this many segments, the oldest one's live messages are checkpointed.
const MAX_SEGMENTS: usize = 8;
/// Requests taken into one write (and one sync) at most.
const MAX_BATCH: usize = 1024;
/// A release record's size, as a rule (queue IDs are 20 digits).
const RELEASE_RECORD: usize = HEADER + 20;
/// How long finished messages' releases wait, at most, to ride along with
/// the next batch of appends instead of costing a write (and a wake-up of
/// the writer thread) of their own.
const RELEASE_RIDE: Duration = Duration::from_millis(1);

type Reply<T> = Box<dyn FnOnce(io::Result<T>) + Send>;

enum Request {
    /// Make this message durable; answered once synced.
    Append {
        id: String,
        copy: Arc<MemoryCopy>,
        reply: Reply<()>,
    },
    /// The message was deleted: answered once the release is synced.
    Release { id: String, reply: Reply<()> },
    /// Releases wait in `Journal::finished` (sent when that list stops
    /// being empty, so that the writer thread looks at it in time).
    Finished,
    /// Their owner wrote these messages into `queue/`: answered, per
    /// message, false when it was released meanwhile (deleted), so that
    /// copy must go.
    Materialized {
        ids: Vec<String>,
        reply: Reply<Vec<bool>>,
    },
}

/// The way to the journal's writer thread.
#[derive(Clone)]
pub struct Journal {
    tx: mpsc::Sender<Request>,
    /// Delivered messages whose releases are not written yet: the writer
    /// takes them with its next batch.
    finished: Arc<Finished>,
}

/// Released IDs waiting for the writer thread.
#[derive(Default)]
struct Finished(Mutex<Vec<String>>);

impl Finished {
    /// Adds one; true when the list was empty (the writer must be told).
    fn push(&self, id: &str) -> bool {
        let mut ids = self.0.lock().unwrap_or_else(|e| e.into_inner());
        ids.push(id.to_string());
        ids.len() == 1
    }

    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Journal")
    }
}

impl Journal {
    /// Starts the writer thread on a fresh segment. Call only while holding
    /// the data-dir lock, once `recover` has emptied the journal.
    pub fn start(root: &Path) -> io::Result<Journal> {
        if !segment_files(root)?.is_empty() {
            return Err(io::Error::other(format!(
                "{}: the spool journal holds segments not yet recovered",
                root.join("journal").display()
            )));
        }
        let dir = root.join("journal");
        fs::create_dir_all(&dir)?;
        let mut writer = Writer {
            spool: super::Spool::open_existing(root)?,
            segment: 0,
            file: None,
            size: 0,
            next: None,
            segments: BTreeMap::new(),
            live: HashMap::new(),
            on_disk: HashSet::new(),
            dir,
        };
        writer.rotate()?;
        let (tx, rx) = mpsc::channel();
        let finished = Arc::new(Finished::default());
        let releases = Arc::clone(&finished);
        std::thread::Builder::new()
            .name("spool-journal".into())
            .spawn(move || writer.run(rx, &releases))?;
        Ok(Journal { tx, finished })
    }

    /// Makes the message durable; returns once its record is synced.
    pub async fn append(&self, id: &str, copy: Arc<MemoryCopy>) -> io::Result<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.send(Request::Append {
            id: id.to_string(),
            copy,
            reply: Box::new(move |r| {
                let _ = tx.send(r);
            }),
        })?;
        rx.await.unwrap_or_else(|_| Err(stopped()))
    }

    /// The message is done with; nothing waits for the disk (a crash that
    /// loses the release only brings the message back for a duplicate).
    /// Written with the next batch, within `RELEASE_RIDE`.
    pub fn release(&self, id: &str) {
        if self.finished.push(id) {
            let _ = self.send(Request::Finished);
        }
    }

    /// The message was deleted: returns once that is durable (blocking).
    pub fn release_durably(&self, id: &str) -> io::Result<()> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.send(Request::Release {
            id: id.to_string(),
            reply: Box::new(move |r| {
                let _ = tx.send(r);
            }),
        })?;
        rx.recv().unwrap_or_else(|_| Err(stopped()))
    }

    /// The messages now have their own files in `queue/`; per message,
    /// false when it was released meanwhile (blocking).
    pub fn materialized(&self, ids: Vec<String>) -> io::Result<Vec<bool>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let (tx, rx) = mpsc::sync_channel(1);
        self.send(Request::Materialized {
            ids,
            reply: Box::new(move |r| {
                let _ = tx.send(r);
            }),
        })?;
        rx.recv().unwrap_or_else(|_| Err(stopped()))
    }

    fn send(&self, request: Request) -> io::Result<()> {
        self.tx.send(request).map_err(|_| stopped())
    }
}

fn stopped() -> io::Error {
    io::Error::other("spool journal stopped")
}

/// Adds the requests already waiting to `batch`, up to `MAX_BATCH`.
fn take_waiting(rx: &mpsc::Receiver<Request>, batch: &mut Vec<Request>) {
    while batch.len() < MAX_BATCH {
        match rx.try_recv() {
            Ok(r) => batch.push(r),
            Err(_) => break,
        }
    }
}

/// Where a live message's image is, for a checkpoint.
struct Location {
    segment: u64,
    offset: u64,
    len: usize,
}

/// The writer thread's state: it alone touches the journal files.
struct Writer {
    dir: PathBuf,
    /// Where checkpointed messages go (its plain file path: no slots).
    spool: super::Spool,
    segment: u64,
    file: Option<SegmentFile>,
    size: u64,
    /// The next segment, being zero-filled by a helper thread meanwhile.
    next: Option<(u64, std::thread::JoinHandle<io::Result<File>>)>,
    /// Every segment file there is, with how many live messages it holds.
    segments: BTreeMap<u64, usize>,
    /// Messages whose only copy on disk is their record here.
    live: HashMap<String, Location>,
    /// Messages a checkpoint wrote into `queue/` whose owner has not said
    /// yet what became of them.
    on_disk: HashSet<String>,
}

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<Request>, finished: &Finished) {
        while let Ok(first) = rx.recv() {
            let mut batch = vec![first];
            take_waiting(&rx, &mut batch);
            if batch.iter().all(|r| matches!(r, Request::Finished)) {
                // Only releases: give the next appends a moment to come.
                if let Ok(r) = rx.recv_timeout(RELEASE_RIDE) {
                    batch.push(r);
                    take_waiting(&rx, &mut batch);
                }
            }
            // Taken after the requests: a release made before one of them
            // is seen with it (a `Materialized` must know it was released).
            self.handle(finished.take(), batch);
            if self.size >= SEGMENT_MAX
                && let Err(e) = self.rotate()
            {
                tracing::warn!(dir = %self.dir.display(), "cannot start a new journal segment: {e}");
            }
            if self.segments.len() > MAX_SEGMENTS {
                self.checkpoint_oldest();
            }
            self.drop_dead_segments();
        }
        // Every sender is gone (shutdown): the last releases still count.
        let releases = finished.take();
        if !releases.is_empty() {
            self.handle(releases, Vec::new());
        }
    }

    fn handle(&mut self, releases: Vec<String>, batch: Vec<Request>) {
        // Sized once: growing it record by record cost a reallocation each.
        let appends: usize = batch
            .iter()
            .map(|r| match r {
                Request::Append { id, copy, .. } => HEADER + id.len() + copy.image().len(),
                _ => RELEASE_RECORD,
            })
            .sum();
        let mut buf = Vec::with_capacity(appends + releases.len() * RELEASE_RECORD);
        let mut appended = Vec::new();
        let mut synced_replies: Vec<Reply<()>> = Vec::new();
        let mut answers = Vec::new();
        let mut sync = false;
        for id in &releases {
            self.forget(id, &mut buf, true);
        }
        for request in batch {
            match request {
                Request::Append { id, copy, reply } => {
                    let offset = self.size + (buf.len() + HEADER + id.len()) as u64;
                    encode(&mut buf, KIND_MESSAGE, &id, copy.image());
                    appended.push((id, offset, copy.image().len(), reply));
                    sync = true;
                }
                Request::Release { id, reply } => {
                    self.forget(&id, &mut buf, true);
                    synced_replies.push(reply);
                    sync = true;
                }
                Request::Finished => {}
                Request::Materialized { ids, reply } => {
                    let known = ids
                        .iter()
                        .map(|id| {
                            let known = self.live.contains_key(id) || self.on_disk.contains(id);
                            self.forget(id, &mut buf, false);
                            known
                        })
                        .collect();
                    answers.push((reply, known));
                }
            }
        }
        if !buf.is_empty() || sync {
            self.write_batch(&buf, sync, appended, synced_replies);
        }
        // After the write: once told, its owner may take the release as made.
        // (Had the write failed, a crash would at worst bring one back.)
        for (reply, known) in answers {
            reply(Ok(known));
        }
    }

    /// Writes one batch and answers the appends and durable releases in it.
    fn write_batch(
        &mut self,
        buf: &[u8],
        sync: bool,
        appended: Vec<(String, u64, usize, Reply<()>)>,
        synced_replies: Vec<Reply<()>>,
    ) {
        match self.write(buf, sync) {
            Ok(()) => {
                for (id, offset, len, reply) in appended {
                    *self.segments.entry(self.segment).or_default() += 1;
                    let segment = self.segment;
                    self.live.insert(
                        id,
                        Location {
                            segment,
                            offset,
                            len,
                        },
                    );
                    reply(Ok(()));
                }
                for reply in synced_replies {
                    reply(Ok(()));
                }
            }
            Err(e) => {
                tracing::error!(dir = %self.dir.display(), "cannot write the spool journal: {e}");
                for (_, _, _, reply) in appended {
                    reply(Err(io::Error::new(e.kind(), e.to_string())));
                }
                for reply in synced_replies {
                    reply(Err(io::Error::new(e.kind(), e.to_string())));
                }
            }
        }
    }

    /// Appends `buf` (and syncs when asked). On failure the bytes written
    /// are zeroed again, or the segment is left for a new one, so that no
    /// record ever follows a torn one, nor counts when its append failed.
    fn write(&mut self, buf: &[u8], sync: bool) -> io::Result<()> {
        if self.file.is_none() {
            // A segment was given up (a failed write) and no new one could be
            // started then (a full disk, say): try again now.
            self.rotate()?;
        }
        let file = self.file.as_mut().ok_or_else(stopped)?;
        let result = file.append(self.size, buf, sync);
        if result.is_ok() {
            self.size += buf.len() as u64;
        } else if file.broken {
            // The next write starts a new segment.
            self.file = None;
        }
        result
    }

    /// What becomes of a message that is no longer journal-only: its record
    /// is released (`record` false: the caller's copy in `queue/` stands),
    /// or a checkpoint's copy in `queue/` is removed when it was finished.
    fn forget(&mut self, id: &str, buf: &mut Vec<u8>, finished: bool) {
        if let Some(location) = self.live.remove(id) {
            if let Some(count) = self.segments.get_mut(&location.segment) {
                *count = count.saturating_sub(1);
            }
            encode(buf, KIND_RELEASE, id, &[]);
        } else if self.on_disk.remove(id) && finished {
            let _ = fs::remove_file(self.spool.queue_dir().join(id));
        }
    }

    /// Starts the next segment (prepared meanwhile, as a rule) and has the
    /// one after it prepared.
    fn rotate(&mut self) -> io::Result<()> {
        let number = self.segments.keys().next_back().map_or(1, |last| last + 1);
        let path = segment_path(&self.dir, number);
        let prepared = match self.next.take() {
            Some((n, preparing)) if n == number => preparing
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("segment preparation panicked"))),
            // The first segment (or a preparation that never started).
            _ => prepare_segment(&path, &self.dir),
        };
        let file = match prepared {
            Ok(file) => file,
            Err(e) => {
                tracing::warn!(dir = %self.dir.display(), "cannot prepare a journal segment ({e}): appending to a growing one");
                let file = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&path)?;
                super::writer::sync_dir(&self.dir)?;
                file
            }
        };
        self.segments.insert(number, 0);
        self.segment = number;
        self.file = Some(SegmentFile::new(&path, file));
        self.size = 0;
        let (next, dir) = (segment_path(&self.dir, number + 1), self.dir.clone());
        self.next = std::thread::Builder::new()
            .name("spool-journal-prep".into())
            .spawn(move || prepare_segment(&next, &dir))
            .ok()
            .map(|preparing| (number + 1, preparing));
        Ok(())
    }

    /// Removes segments from the oldest while neither they nor any older
    /// one hold a live message.
    fn drop_dead_segments(&mut self) {
        while let Some((&oldest, &live)) = self.segments.first_key_value() {
            if oldest == self.segment || live > 0 {
                return;
            }
            if fs::remove_file(segment_path(&self.dir, oldest)).is_err() {
                return;
            }
            self.segments.remove(&oldest);
        }
    }

    /// Copies the live messages of the oldest segment into `queue/`, so
    /// that a message whose delivery is slow does not keep every newer
    /// segment alive.
    fn checkpoint_oldest(&mut self) {
        let Some((&oldest, _)) = self.segments.first_key_value() else {
            return;
        };
        if oldest == self.segment {
            return;
        }
        let ids: Vec<String> = self
            .live
            .iter()
            .filter(|(_, l)| l.segment == oldest)
            .map(|(id, _)| id.clone())
            .collect();
        let Ok(file) = File::open(segment_path(&self.dir, oldest)) else {
            return;
        };
        let mut buf = Vec::new();
        for id in ids {
            let Some(location) = self.live.get(&id) else {
                continue;
            };
            let mut image = vec![0; location.len];
            let copied = file
                .read_exact_at(&mut image, location.offset)
                .map_err(super::SpoolError::from)
                .and_then(|()| {
                    let written = self.spool.write_images(&[(id.as_str(), &image)]);
                    written.into_iter().next().unwrap_or(Ok(()))
                });
            match copied {
                Ok(()) => {
                    self.forget(&id, &mut buf, false);
                    self.on_disk.insert(id);
                }
                Err(e) => {
                    tracing::warn!(queue_id = %id, "cannot checkpoint a journaled message: {e}");
                    return;
                }
            }
        }
        if let Err(e) = self.write(&buf, false) {
            tracing::warn!("cannot record a journal checkpoint: {e}");
        }
    }
}

/// Writes a new segment full of zeros and makes it and its name durable.
/// A prepared segment holds no record: recovery finds nothing in it.
fn prepare_segment(path: &Path, dir: &Path) -> io::Result<File> {
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
        super::writer::sync_dir(dir)?;
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
    use std::os::unix::ffi::OsStrExt;
    let Ok(path) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: statvfs only writes into the struct it is given; `path` is
    // NUL-terminated and outlives the call.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
        return false;
    }
    let free = (st.f_bavail as u64).saturating_mul(st.f_frsize as u64);
    free >= 4 * SEGMENT_PREALLOCATED
}

fn segment_path(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("{n:016x}.journal"))
}

fn encode(buf: &mut Vec<u8>, kind: u8, id: &str, payload: &[u8]) {
    let id = &id.as_bytes()[..id.len().min(255)];
    let mut head = [0u8; 6];
    head[0] = kind;
    head[1] = id.len() as u8;
    head[2..6].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    let mut crc = crc32fast::Hasher::new();
    crc.update(&head);
    crc.update(id);
    crc.update(payload);
    buf.extend_from_slice(MAGIC);
    buf.extend_from_slice(&head);
    buf.extend_from_slice(&crc.finalize().to_le_bytes());
    buf.extend_from_slice(id);
    buf.extend_from_slice(payload);
}

/// One record read back.
#[derive(Debug, PartialEq, Eq)]
enum Record<'a> {
    Message { id: &'a str, image: &'a [u8] },
    Release { id: &'a str },
}

/// The whole records at the start of `bytes`, up to the first torn or
/// foreign one (a crash mid-write leaves at most the tail torn).
fn decode(bytes: &[u8]) -> Vec<Record<'_>> {
    let mut records = Vec::new();
    let mut at = 0;
    while bytes.len() - at >= HEADER {
        let h = &bytes[at..at + HEADER];
        if &h[..4] != MAGIC {
            break;
        }
        let (kind, id_len) = (h[4], h[5] as usize);
        let len = u32::from_le_bytes([h[6], h[7], h[8], h[9]]) as usize;
        let crc = u32::from_le_bytes([h[10], h[11], h[12], h[13]]);
        let Some(end) = (at + HEADER)
            .checked_add(id_len)
            .and_then(|n| n.checked_add(len))
        else {
            break;
        };
        if end > bytes.len() {
            break;
        }
        let id = &bytes[at + HEADER..at + HEADER + id_len];
        let payload = &bytes[at + HEADER + id_len..end];
        let mut check = crc32fast::Hasher::new();
        check.update(&h[4..10]);
        check.update(id);
        check.update(payload);
        let Ok(id) = std::str::from_utf8(id) else {
            break;
        };
        if check.finalize() != crc {
            break;
        }
        match kind {
            KIND_MESSAGE => records.push(Record::Message { id, image: payload }),
            KIND_RELEASE => records.push(Record::Release { id }),
            _ => break,
        }
        at = end;
    }
    records
}

/// The segment files under `root/journal`, oldest first.
fn segment_files(root: &Path) -> io::Result<Vec<PathBuf>> {
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

/// The messages the journal under `root` holds and has not released, in
/// the order they were accepted, as (queue ID, file image). Reads only: a
/// server may be appending meanwhile (its unfinished tail is not read).
pub fn unreleased(root: &Path) -> io::Result<Vec<(String, Vec<u8>)>> {
    let contents: Vec<Vec<u8>> = segment_files(root)?
        .iter()
        .map(fs::read)
        .collect::<io::Result<_>>()?;
    let mut order = Vec::new();
    let mut pending: HashMap<&str, &[u8]> = HashMap::new();
    for bytes in &contents {
        for record in decode(bytes) {
            match record {
                Record::Message { id, image } => {
                    if pending.insert(id, image).is_none() {
                        order.push(id);
                    }
                }
                Record::Release { id } => {
                    pending.remove(id);
                }
            }
        }
    }
    Ok(order
        .into_iter()
        .filter_map(|id| {
            pending
                .get(id)
                .map(|image| (id.to_string(), image.to_vec()))
        })
        .collect())
}

/// Writes every message the journal under `root` holds and has not
/// released into `queue/` (durably), then removes the journal. Returns how
/// many it wrote. Call only while holding the data-dir lock.
pub fn recover(root: &Path) -> Result<usize, super::SpoolError> {
    let paths = segment_files(root)?;
    if paths.is_empty() {
        return Ok(0);
    }
    let queue_dir = root.join("queue");
    let pending = unreleased(root)?;
    let mut to_write = Vec::new();
    for (id, image) in &pending {
        let whole = super::read_message_bytes(image)
            .is_ok_and(|(envelope, _)| envelope.id == *id && super::queue_id::is_valid(id));
        if !whole {
            tracing::warn!(queue_id = %id, "journal record with a damaged message skipped");
            continue;
        }
        let path = queue_dir.join(id);
        let already = File::open(&path)
            .map_err(super::SpoolError::from)
            .and_then(|mut f| super::read_envelope(&mut f, &path))
            .is_ok();
        if !already {
            to_write.push((id.as_str(), image.as_slice()));
        }
    }
    let spool = super::Spool::open_existing(root)?;
    for written in spool.write_images(&to_write) {
        written?;
    }
    for path in &paths {
        fs::remove_file(path)?;
    }
    super::writer::sync_dir(&root.join("journal"))?;
    Ok(to_write.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::{Envelope, QueueId, Spool};

    /// What a session hands the journal: the writer's image of a small message.
    fn image(spool: &Spool, id: &str, text: &str) -> Arc<MemoryCopy> {
        let mut w = spool.begin(id);
        w.write(format!("Subject: {text}\r\n\r\n{text}\r\n").as_bytes());
        let Ok((image, body_len)) =
            w.into_image(&Envelope::for_test(id, "a@x.test", &["b@y.test"]))
        else {
            panic!("a small message is kept whole in memory");
        };
        MemoryCopy::keep_image(image, body_len).expect("within the memory budget")
    }

    /// A spool with a running journal, and a runtime to wait for appends on.
    fn journal_at_work() -> (tempfile::TempDir, Spool, Journal, tokio::runtime::Runtime) {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let journal = Journal::start(dir.path()).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        (dir, spool, journal, rt)
    }

    fn segments(root: &Path) -> usize {
        fs::read_dir(root.join("journal")).unwrap().count()
    }

    #[test]
    fn records_read_back_and_a_torn_tail_is_ignored() {
        let mut buf = Vec::new();
        encode(&mut buf, KIND_MESSAGE, "A1", b"image one");
        encode(&mut buf, KIND_RELEASE, "A1", b"");
        encode(&mut buf, KIND_MESSAGE, "B2", b"image two");
        let whole = decode(&buf);
        assert_eq!(
            whole,
            vec![
                Record::Message {
                    id: "A1",
                    image: b"image one"
                },
                Record::Release { id: "A1" },
                Record::Message {
                    id: "B2",
                    image: b"image two"
                },
            ]
        );
        for cut in 1..buf.len() {
            let read = decode(&buf[..cut]);
            assert!(read.len() < 3, "cut at {cut}");
            assert_eq!(
                read[..],
                whole[..read.len()],
                "only whole records, cut at {cut}"
            );
        }
        // A flipped byte in a payload ends the read there.
        let mut bad = buf.clone();
        let at = buf.len() - 3;
        bad[at] ^= 0x40;
        assert_eq!(decode(&bad).len(), 2);
    }

    #[test]
    fn an_unreleased_message_is_recovered_into_the_queue_and_a_released_one_is_not() {
        let (dir, spool, journal, rt) = journal_at_work();
        let (kept, done) = (QueueId::new(), QueueId::new());
        rt.block_on(journal.append(&kept, image(&spool, &kept, "kept")))
            .unwrap();
        rt.block_on(journal.append(&done, image(&spool, &done, "done")))
            .unwrap();
        journal.release(&done);
        // A barrier: a durable release of an unknown ID waits behind the first.
        journal.release_durably("none").unwrap();
        let files = || fs::read_dir(dir.path().join("queue")).unwrap().count();
        assert_eq!(files(), 0, "journal-only so far");
        // Readers already see it (and only it) in the spool.
        assert_eq!(spool.ids().unwrap(), vec![kept.clone()]);
        assert_eq!(
            spool.read_body(&kept).unwrap(),
            b"Subject: kept\r\n\r\nkept\r\n"
        );
        assert!(spool.load(&done).is_err(), "a released one is gone");
        // A crash: the thread is simply abandoned; the next start recovers.
        let recovered = recover(dir.path()).unwrap();
        assert_eq!(recovered, 1);
        assert_eq!(files(), 1, "written into the queue");
        assert_eq!(spool.ids().unwrap(), vec![kept.clone()]);
        assert_eq!(
            spool.read_body(&kept).unwrap(),
            b"Subject: kept\r\n\r\nkept\r\n"
        );
        assert_eq!(
            segments(dir.path()),
            0,
            "the journal is gone once recovered"
        );
        assert_eq!(recover(dir.path()).unwrap(), 0, "nothing twice");
    }

    /// Releases wait for the next batch, but never long: with no append
    /// coming, they are written on their own within `RELEASE_RIDE` (a kill
    /// -9 after that must not bring a delivered message back).
    #[test]
    fn releases_are_written_soon_even_with_no_append_to_ride_along() {
        let (dir, spool, journal, rt) = journal_at_work();
        let ids: Vec<QueueId> = (0..3).map(|_| QueueId::new()).collect();
        for id in &ids {
            rt.block_on(journal.append(id, image(&spool, id, "x")))
                .unwrap();
        }
        journal.release(&ids[0]);
        journal.release(&ids[1]);
        let on_disk = || -> Vec<String> {
            unreleased(dir.path())
                .unwrap()
                .into_iter()
                .map(|(id, _)| id)
                .collect()
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while on_disk().len() > 1 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
        assert_eq!(on_disk(), vec![ids[2].to_string()]);
        // And a crash now recovers only the one never released.
        assert_eq!(recover(dir.path()).unwrap(), 1);
        assert_eq!(spool.ids().unwrap(), vec![ids[2].clone()]);
    }

    #[test]
    fn a_materialized_message_is_not_written_again_and_a_deleted_one_says_so() {
        let (dir, spool, journal, rt) = journal_at_work();
        let (stays, deleted) = (QueueId::new(), QueueId::new());
        for id in [&stays, &deleted] {
            rt.block_on(journal.append(id, image(&spool, id, "x")))
                .unwrap();
        }
        journal.release_durably(&deleted).unwrap();
        assert_eq!(
            journal
                .materialized(vec![deleted.to_string(), stays.to_string()])
                .unwrap(),
            vec![false, true],
            "the deleted one says so"
        );
        assert_eq!(recover(dir.path()).unwrap(), 0);
        assert!(spool.ids().unwrap().is_empty());
    }

    #[test]
    fn appends_overwrite_a_preallocated_segment_and_recovery_stops_at_its_zeros() {
        let (dir, spool, journal, rt) = journal_at_work();
        let first = segment_path(&dir.path().join("journal"), 1);
        assert_eq!(fs::metadata(&first).unwrap().len(), SEGMENT_PREALLOCATED);
        let id = QueueId::new();
        rt.block_on(journal.append(&id, image(&spool, &id, "kept")))
            .unwrap();
        assert_eq!(
            fs::metadata(&first).unwrap().len(),
            SEGMENT_PREALLOCATED,
            "the append did not grow the file"
        );
        let found = unreleased(dir.path()).unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].0, id.to_string());
        drop(journal);
        assert_eq!(recover(dir.path()).unwrap(), 1);
        assert_eq!(spool.ids().unwrap(), vec![id]);
    }

    #[test]
    fn segments_are_dropped_oldest_first_and_a_slow_message_is_checkpointed() {
        let (dir, spool, journal, rt) = journal_at_work();
        let slow = QueueId::new();
        rt.block_on(journal.append(&slow, image(&spool, &slow, "slow")))
            .unwrap();
        // Enough delivered mail to fill many segments.
        let big = "y".repeat(100 * 1024);
        for _ in 0..(MAX_SEGMENTS as u64 + 4) * SEGMENT_MAX / (200 * 1024) {
            let id = QueueId::new();
            rt.block_on(journal.append(&id, image(&spool, &id, &big)))
                .unwrap();
            journal.release(&id);
        }
        journal.release_durably("none").unwrap();
        // The live ones, the current one and the one prepared next.
        assert!(segments(dir.path()) <= MAX_SEGMENTS + 2);
        assert_eq!(
            spool.ids().unwrap(),
            vec![slow.clone()],
            "checkpointed into the queue"
        );
        // Its owner then finds it on disk and, once delivered, releases it.
        assert_eq!(
            journal.materialized(vec![slow.to_string()]).unwrap(),
            vec![true]
        );
        journal.release(&slow);
        journal.release_durably("none").unwrap();
        assert_eq!(recover(dir.path()).unwrap(), 0);
    }
}
