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
//!
//! Its parts: `codec` (the record format), `writer` (the thread that alone
//! writes segments), `segments` (the files) and `recovery` (reading back).

mod recovery;
mod segments;
mod writer;

pub mod codec;
pub use recovery::{recover, unreleased};

use super::MemoryCopy;
use std::fs;
use std::io;
use std::path::Path;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use writer::Writer;

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
        if !segments::segment_files(root)?.is_empty() {
            return Err(io::Error::other(format!(
                "{}: the spool journal holds segments not yet recovered",
                root.join("journal").display()
            )));
        }
        let dir = root.join("journal");
        fs::create_dir_all(&dir)?;
        let mut writer = Writer::new(crate::spool::Spool::open_existing(root)?, dir);
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

pub(super) fn stopped() -> io::Error {
    io::Error::other("spool journal stopped")
}

#[cfg(test)]
mod tests {
    use super::codec::{KIND_MESSAGE, KIND_RELEASE, Record, decode, encode};
    use super::segments::segment_path;
    use super::*;
    use crate::spool::{Envelope, QueueId, Spool};

    /// What a session hands the journal: the writer's image of a small message.
    fn image(spool: &Spool, id: &str, text: &str) -> Arc<MemoryCopy> {
        let mut w = spool.begin_named(id);
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
