//! A webhook's durable outbox: notifications appended to segment files
//! (`SEQ.log`, one JSON line each) the moment their event is emitted, and
//! the ids of those the receiver took appended to `SEQ.done`. Appending is a
//! plain write: once it returns the line is the kernel's, so a kill -9 loses
//! nothing; the sender syncs the files about once a second against power
//! loss. At start the logs are read back and whatever is not done is sent
//! again (at least once; receivers de-duplicate by id). A segment whose
//! notifications are all done is deleted; past `max_bytes` the oldest
//! segment is dropped whole, its undelivered notifications counted.

use std::collections::{BTreeMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// One notification as it is kept on disk.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Line {
    id: String,
    kind: String,
    created: i64,
    body: String,
}

/// A notification waiting for its receiver.
#[derive(Debug, Clone)]
pub struct Pending {
    pub id: String,
    pub kind: String,
    pub created: i64,
    pub body: Arc<str>,
    attempts: u32,
    next_try: i64,
    in_flight: bool,
}

impl Pending {}

/// Where a notification sits: its segment and line.
pub type Slot = (u64, u64);

struct Segment {
    bytes: u64,
    lines: u64,
    open: u64,
}

struct Inner {
    segments: BTreeMap<u64, Segment>,
    active: Option<(u64, File)>,
    pending: BTreeMap<Slot, Pending>,
    total_bytes: u64,
    /// Written since the last sync.
    dirty: bool,
    /// A segment file was created since the last sync (the directory too).
    new_file: bool,
}

/// What a bounded outbox gave up when it was full.
pub struct Overflow {
    pub dropped: u64,
}

pub struct Outbox {
    dir: PathBuf,
    max_bytes: u64,
    inner: Mutex<Inner>,
    /// Woken on every append.
    pub wake: tokio::sync::Notify,
}

impl Outbox {
    /// Opens (creating) the outbox in `dir`, taking back what an earlier run left.
    pub fn open(dir: &Path, max_bytes: u64) -> io::Result<Outbox> {
        std::fs::create_dir_all(dir)?;
        let mut inner = Inner {
            segments: BTreeMap::new(),
            active: None,
            pending: BTreeMap::new(),
            total_bytes: 0,
            dirty: false,
            new_file: false,
        };
        let mut seqs: Vec<u64> = std::fs::read_dir(dir)?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                name.strip_suffix(".log")?.parse().ok()
            })
            .collect();
        seqs.sort_unstable();
        let last = seqs.last().copied();
        for seq in seqs {
            let done = read_done(&dir.join(format!("{seq}.done")));
            let log = dir.join(format!("{seq}.log"));
            let bytes = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
            let mut segment = Segment {
                bytes,
                lines: 0,
                open: 0,
            };
            for (n, line) in read_lines(&log).into_iter().enumerate() {
                segment.lines = n as u64 + 1;
                // A line torn by a power cut does not parse: it was never
                // sent, and its event cannot be had back.
                let Some(line) = line else { continue };
                if done.contains(&line.id) {
                    continue;
                }
                segment.open += 1;
                inner.pending.insert(
                    (seq, n as u64),
                    Pending {
                        id: line.id,
                        kind: line.kind,
                        created: line.created,
                        body: line.body.into(),
                        attempts: 0,
                        next_try: 0,
                        in_flight: false,
                    },
                );
            }
            if segment.open == 0 && Some(seq) != last {
                remove_segment(dir, seq);
                continue;
            }
            inner.total_bytes += segment.bytes;
            inner.segments.insert(seq, segment);
        }
        Ok(Outbox {
            dir: dir.to_path_buf(),
            max_bytes,
            inner: Mutex::new(inner),
            wake: tokio::sync::Notify::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A segment grows to an eighth of the bound, so dropping the oldest
    /// when full gives up at most that share.
    fn segment_limit(&self) -> u64 {
        (self.max_bytes / 8).max(16 * 1024)
    }

    /// Keeps a notification durably (as far as a kill -9 goes) and wakes
    /// the sender. Returns what had to be dropped to stay within the bound.
    pub fn append(
        &self,
        id: &str,
        kind: &str,
        created: i64,
        body: &str,
    ) -> io::Result<Option<Overflow>> {
        let mut line = serde_json::to_vec(&Line {
            id: id.to_string(),
            kind: kind.to_string(),
            created,
            body: body.to_string(),
        })
        .map_err(io::Error::other)?;
        line.push(b'\n');
        let limit = self.segment_limit();
        let mut inner = self.lock();
        let rotate = match &inner.active {
            None => true,
            Some((seq, _)) => inner.segments.get(seq).is_none_or(|s| s.bytes >= limit),
        };
        if rotate {
            let seq = inner.segments.keys().next_back().map_or(1, |s| s + 1);
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.dir.join(format!("{seq}.log")))?;
            inner.segments.insert(
                seq,
                Segment {
                    bytes: 0,
                    lines: 0,
                    open: 0,
                },
            );
            inner.active = Some((seq, file));
            inner.new_file = true;
        }
        let Some((seq, file)) = inner.active.as_mut() else {
            return Err(io::Error::other("no outbox segment"));
        };
        let seq = *seq;
        file.write_all(&line)?;
        inner.dirty = true;
        inner.total_bytes += line.len() as u64;
        let n = {
            let segment = inner
                .segments
                .get_mut(&seq)
                .expect("the active segment is listed");
            segment.bytes += line.len() as u64;
            segment.open += 1;
            segment.lines += 1;
            segment.lines - 1
        };
        inner.pending.insert(
            (seq, n),
            Pending {
                id: id.to_string(),
                kind: kind.to_string(),
                created,
                body: body.into(),
                attempts: 0,
                next_try: 0,
                in_flight: false,
            },
        );
        let overflow = self.shed(&mut inner);
        drop(inner);
        self.wake.notify_one();
        Ok(overflow)
    }

    /// Drops the oldest segments while the outbox is over its bound.
    fn shed(&self, inner: &mut Inner) -> Option<Overflow> {
        let mut dropped = 0;
        while inner.total_bytes > self.max_bytes && inner.segments.len() > 1 {
            let Some((&seq, _)) = inner.segments.iter().next() else {
                break;
            };
            let segment = inner.segments.remove(&seq).expect("just seen");
            inner.total_bytes -= segment.bytes;
            let gone: Vec<Slot> = inner
                .pending
                .range((seq, 0)..(seq + 1, 0))
                .map(|(k, _)| *k)
                .collect();
            dropped += gone.len() as u64;
            for k in gone {
                inner.pending.remove(&k);
            }
            remove_segment(&self.dir, seq);
        }
        (dropped > 0).then_some(Overflow { dropped })
    }

    /// Up to `max` notifications due at `now`, oldest first, marked in
    /// flight; and when the next one not yet due is.
    pub fn take_due(&self, now: i64, max: usize) -> (Vec<(Slot, Pending)>, Option<i64>) {
        let mut inner = self.lock();
        let mut out = Vec::new();
        let mut next = None::<i64>;
        for (slot, p) in inner.pending.iter_mut() {
            if p.in_flight {
                continue;
            }
            if p.next_try <= now {
                if out.len() < max {
                    p.in_flight = true;
                    out.push((*slot, p.clone()));
                    continue;
                }
                next = Some(now);
                break;
            }
            next = Some(next.map_or(p.next_try, |n| n.min(p.next_try)));
        }
        (out, next)
    }

    /// The receiver took it: recorded, and its segment removed once all are.
    pub fn done(&self, slot: Slot) -> io::Result<()> {
        let mut inner = self.lock();
        let Some(p) = inner.pending.remove(&slot) else {
            return Ok(()); // dropped meanwhile
        };
        self.close_one(&mut inner, slot.0, &p.id)
    }

    fn close_one(&self, inner: &mut Inner, seq: u64, id: &str) -> io::Result<()> {
        let active = inner.active.as_ref().map(|(s, _)| *s);
        let Some(segment) = inner.segments.get_mut(&seq) else {
            return Ok(());
        };
        segment.open = segment.open.saturating_sub(1);
        if segment.open == 0 && Some(seq) != active {
            let bytes = segment.bytes;
            inner.segments.remove(&seq);
            inner.total_bytes -= bytes;
            remove_segment(&self.dir, seq);
            return Ok(());
        }
        let mut done = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{seq}.done")))?;
        done.write_all(format!("{id}\n").as_bytes())
    }

    /// The receiver did not take it: tried again at `retry_at`, or given
    /// up (true) when it is older than `give_up_before`.
    pub fn failed(&self, slot: Slot, retry_at: i64, give_up_before: i64) -> io::Result<bool> {
        let mut inner = self.lock();
        let Some(p) = inner.pending.get_mut(&slot) else {
            return Ok(false);
        };
        p.attempts += 1;
        p.in_flight = false;
        if p.created < give_up_before {
            let id = p.id.clone();
            inner.pending.remove(&slot);
            self.close_one(&mut inner, slot.0, &id)?;
            return Ok(true);
        }
        p.next_try = retry_at;
        Ok(false)
    }

    /// Back to waiting without counting an attempt (the sender stopped).
    pub fn release(&self, slot: Slot) {
        if let Some(p) = self.lock().pending.get_mut(&slot) {
            p.in_flight = false;
        }
    }

    /// Syncs what was appended since the last sync (power-loss safety).
    pub fn sync(&self) -> io::Result<()> {
        let (file, new_file) = {
            let mut inner = self.lock();
            if !inner.dirty {
                return Ok(());
            }
            inner.dirty = false;
            let new_file = std::mem::take(&mut inner.new_file);
            let file = match &inner.active {
                Some((_, f)) => Some(f.try_clone()?),
                None => None,
            };
            (file, new_file)
        };
        if let Some(f) = file {
            f.sync_data()?;
        }
        if new_file {
            crate::fsio::sync_dir(&self.dir)?;
        }
        Ok(())
    }

    /// Failed attempts of a notification so far.
    pub fn attempts_of(&self, slot: Slot) -> u32 {
        self.lock().pending.get(&slot).map_or(0, |p| p.attempts)
    }

    pub fn pending(&self) -> usize {
        self.lock().pending.len()
    }

    pub fn bytes(&self) -> u64 {
        self.lock().total_bytes
    }
}

fn remove_segment(dir: &Path, seq: u64) {
    let _ = std::fs::remove_file(dir.join(format!("{seq}.log")));
    let _ = std::fs::remove_file(dir.join(format!("{seq}.done")));
}

fn read_lines(path: &Path) -> Vec<Option<Line>> {
    let Ok(f) = File::open(path) else {
        return Vec::new();
    };
    BufReader::new(f)
        .split(b'\n')
        .map(|l| l.ok().and_then(|l| serde_json::from_slice(&l).ok()))
        .collect()
}

fn read_done(path: &Path) -> HashSet<String> {
    let Ok(f) = File::open(path) else {
        return HashSet::new();
    };
    BufReader::new(f)
        .lines()
        .map_while(Result::ok)
        .filter(|l| !l.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(o: &Outbox, now: i64) -> Vec<String> {
        o.take_due(now, 1000)
            .0
            .into_iter()
            .map(|(_, p)| p.id)
            .collect()
    }

    #[test]
    fn what_was_not_done_comes_back_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let o = Outbox::open(dir.path(), 1 << 20).unwrap();
        for i in 0..5 {
            o.append(&format!("n{i}"), "delivered", 100, "{}").unwrap();
        }
        let taken = o.take_due(100, 2).0;
        assert_eq!(taken.len(), 2);
        o.done(taken[0].0).unwrap();
        o.release(taken[1].0);
        drop(o); // as a kill -9 would: nothing flushed or synced on purpose
        let again = Outbox::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(ids(&again, 100), ["n1", "n2", "n3", "n4"]);
    }

    #[test]
    fn a_failure_waits_and_old_ones_are_given_up() {
        let dir = tempfile::tempdir().unwrap();
        let o = Outbox::open(dir.path(), 1 << 20).unwrap();
        o.append("a", "alert", 100, "{}").unwrap();
        o.append("b", "alert", 5000, "{}").unwrap();
        let taken = o.take_due(6000, 10).0;
        assert!(
            o.failed(taken[0].0, 6010, 1000).unwrap(),
            "older than the cut: given up"
        );
        assert!(!o.failed(taken[1].0, 6010, 1000).unwrap());
        let (now, next) = o.take_due(6000, 10);
        assert!(now.is_empty());
        assert_eq!(next, Some(6010));
        assert_eq!(ids(&o, 6010), ["b"]);
        assert_eq!(o.pending(), 1);
    }

    #[test]
    fn a_full_outbox_drops_the_oldest_and_stays_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let max = 64 * 1024;
        let o = Outbox::open(dir.path(), max).unwrap();
        let body = "x".repeat(200);
        let mut dropped = 0;
        for i in 0..5000 {
            if let Some(over) = o.append(&format!("n{i}"), "delivered", 1, &body).unwrap() {
                dropped += over.dropped;
            }
        }
        assert!(o.bytes() <= max, "{} bytes", o.bytes());
        assert!(dropped > 4000, "{dropped}");
        assert_eq!(o.pending() as u64 + dropped, 5000);
        let on_disk: u64 = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum();
        assert!(on_disk <= max, "{on_disk}");
        // The newest are the ones kept.
        let kept = ids(&o, 1);
        assert_eq!(kept.last().unwrap(), "n4999");
    }

    #[test]
    fn finished_segments_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let o = Outbox::open(dir.path(), 64 * 1024).unwrap();
        let body = "y".repeat(1000);
        for i in 0..40 {
            o.append(&format!("n{i}"), "delivered", 1, &body).unwrap();
        }
        for (slot, _) in o.take_due(1, 1000).0 {
            o.done(slot).unwrap();
        }
        assert_eq!(o.pending(), 0);
        let files = std::fs::read_dir(dir.path()).unwrap().count();
        assert!(files <= 2, "only the active segment is left: {files}");
        drop(o);
        assert_eq!(
            ids(&Outbox::open(dir.path(), 64 * 1024).unwrap(), 1).len(),
            0
        );
    }
}
