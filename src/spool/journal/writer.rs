//! The journal's writer thread: it alone touches the segment files. It
//! takes requests in batches (one write and one sync each), rotates and
//! drops segments, and checkpoints the oldest one's live messages.

use super::codec::{HEADER, KIND_MESSAGE, KIND_RELEASE, RELEASE_RECORD, encode};
use super::segments::{prepare_segment, segment_path};
use super::{
    Finished, MAX_BATCH, MAX_SEGMENTS, RELEASE_RIDE, Reply, Request, SEGMENT_MAX, stopped,
};
use crate::spool::segment_file::SegmentFile;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::mpsc;

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
pub(super) struct Writer {
    dir: PathBuf,
    /// Where checkpointed messages go (its plain file path: no slots).
    spool: crate::spool::Spool,
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
    /// A writer for the segments in `dir`, checkpointing into `spool`;
    /// it has no segment until the first `rotate`.
    pub(super) fn new(spool: crate::spool::Spool, dir: PathBuf) -> Writer {
        Writer {
            spool,
            segment: 0,
            file: None,
            size: 0,
            next: None,
            segments: BTreeMap::new(),
            live: HashMap::new(),
            on_disk: HashSet::new(),
            dir,
        }
    }

    pub(super) fn run(mut self, rx: mpsc::Receiver<Request>, finished: &Finished) {
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
    pub(super) fn rotate(&mut self) -> io::Result<()> {
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
                crate::fsio::sync_dir(&self.dir)?;
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
                .map_err(crate::spool::SpoolError::from)
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
