//! SMTP transcripts (`[log] transcript = "DIR"`): every line of every
//! conversation — clients talking to us, and us talking to next hops — in
//! one file per day (`transcript-YYYY-MM-DD.log`, UTC), kept
//! `transcript_days` days. Message content is not written, only the
//! commands and replies around it; AUTH secrets are masked (the argument of
//! `AUTH <mech> <initial response>` and every line answering a 334 challenge).
//!
//! Sessions never wait for the disk: lines go through a bounded channel to
//! one writer thread; when it falls behind, lines are dropped and counted.
//! The writer keeps to a budget, so that no client can fill the disk with
//! pipelined junk: bytes per day, bytes per client address per day, and a
//! floor of free space left for the spool. Past one, lines are dropped,
//! counted, and the file says so once.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};

/// Lines waiting for the writer before new ones are dropped.
const BACKLOG: usize = 20_000;
/// Longest line written (an overlong command is cut, with a mark).
const MAX_LINE: usize = 1_000;
const MASK: &str = "****";

/// How much the transcripts may write (see the module doc).
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    pub per_day: u64,
    pub per_client: u64,
    pub min_free_disk: u64,
}

impl Budget {
    pub fn from_config(log: &crate::config::LogConfig) -> Budget {
        Budget {
            per_day: log.transcript_max_bytes_per_day,
            per_client: log.transcript_max_bytes_per_client,
            min_free_disk: log.transcript_min_free_disk,
        }
    }
}

/// One line for the writer, with the client it concerns (None for our own
/// outbound conversations).
struct Line {
    client: Option<std::net::IpAddr>,
    text: String,
}

pub struct Transcripts {
    tx: SyncSender<Line>,
    dropped: Arc<AtomicU64>,
    next_id: AtomicU64,
}

impl Transcripts {
    /// Creates `dir` if needed and starts the writer thread.
    pub fn start(dir: &Path, days: u32, budget: Budget) -> std::io::Result<Arc<Transcripts>> {
        std::fs::create_dir_all(dir)?;
        // Probe now, so that a directory we cannot write is a start-up error.
        let probe = dir.join(".portcullis-write-test");
        std::fs::write(&probe, b"")?;
        let _ = std::fs::remove_file(&probe);
        let (tx, rx) = sync_channel(BACKLOG);
        let dropped = Arc::new(AtomicU64::new(0));
        let writer = Writer {
            dir: dir.to_path_buf(),
            days: days.max(1),
            dropped: Arc::clone(&dropped),
            current: None,
            budget,
            spent: Spent::default(),
        };
        std::thread::Builder::new()
            .name("transcripts".into())
            .spawn(move || writer.run(rx))?;
        Ok(Arc::new(Transcripts {
            tx,
            dropped,
            next_id: AtomicU64::new(1),
        }))
    }

    /// The transcripts `[log]` asks for: none, or a writer on its directory
    /// (one that cannot be written is an error naming the key).
    pub fn from_config(log: &crate::config::LogConfig) -> Result<Option<Arc<Transcripts>>, String> {
        let Some(dir) = &log.transcript else {
            return Ok(None);
        };
        Transcripts::start(dir, log.transcript_days, Budget::from_config(log))
            .map(Some)
            .map_err(|e| {
                format!(
                    "log.transcript = {}: cannot write there: {e}",
                    dir.display()
                )
            })
    }

    /// A recorder for one conversation. `tag` says which ("in 127.0.0.2",
    /// "out 192.0.2.7:25"); a number is added so lines of concurrent
    /// conversations can be told apart.
    /// A recorder whose lines carry `tag` as it is (a session names itself).
    pub fn recorder_tagged(self: &Arc<Self>, tag: &str, client: std::net::IpAddr) -> Recorder {
        Recorder {
            sink: Arc::clone(self),
            client: Some(client),
            tag: tag.to_string(),
            masking: false,
            after_auth: false,
        }
    }

    pub fn recorder(self: &Arc<Self>, tag: &str) -> Recorder {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        Recorder {
            sink: Arc::clone(self),
            client: None,
            tag: format!("{tag} #{n}"),
            masking: false,
            after_auth: false,
        }
    }

    fn push(&self, line: Line) {
        match self.tx.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Records one conversation. "C:" lines are the client's (for outbound
/// deliveries, ours), "S:" lines the server's.
pub struct Recorder {
    sink: Arc<Transcripts>,
    /// The client address whose budget these lines count against.
    client: Option<std::net::IpAddr>,
    tag: String,
    /// The server just sent a 334 challenge: the client's next line is a secret.
    masking: bool,
    /// An AUTH command was the last verb: every line until the next known
    /// verb may be a credential (a client goes on sending its base64 lines
    /// after a refused or cancelled AUTH), so none is written.
    after_auth: bool,
}

impl crate::smtp::stream::Record for Recorder {
    fn client(&mut self, line: &[u8]) {
        Recorder::client(self, line);
    }
    fn server(&mut self, reply: &str) {
        Recorder::server(self, reply);
    }
    fn note(&mut self, what: &str) {
        Recorder::note(self, what);
    }
}

impl Recorder {
    pub fn client(&mut self, line: &[u8]) {
        let text = String::from_utf8_lossy(line);
        let text = text.trim_end_matches(['\r', '\n']);
        let verb = crate::smtp::command::verb_name(text);
        let challenged = std::mem::take(&mut self.masking);
        let shown = if verb == "AUTH" {
            self.after_auth = true;
            mask_auth(text)
        } else if challenged || (self.after_auth && verb == "(unknown)") {
            MASK.to_string()
        } else {
            self.after_auth = false;
            text.to_string()
        };
        self.write("C:", &shown);
    }

    /// A reply, possibly several lines (as sent on the wire).
    pub fn server(&mut self, reply: &str) {
        for line in reply.split("\r\n").filter(|l| !l.is_empty()) {
            self.masking = line.starts_with("334");
            self.write("S:", line);
        }
    }

    /// Something that is not a line of the conversation (TLS started, data sent).
    pub fn note(&mut self, what: &str) {
        self.write("--", what);
    }

    fn write(&self, side: &str, text: &str) {
        let mut text: String = text
            .chars()
            .map(|c| if c.is_control() { '?' } else { c })
            .collect();
        if text.len() > MAX_LINE {
            let mut cut = MAX_LINE;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text.truncate(cut);
            text.push_str(" [cut]");
        }
        let now = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.3fZ");
        self.sink.push(Line {
            client: self.client,
            text: format!("{now} {} {side} {text}\n", self.tag),
        });
    }
}

/// `AUTH PLAIN <secret>` → `AUTH PLAIN ****`; other lines unchanged.
fn mask_auth(line: &str) -> String {
    let mut words = line.splitn(3, ' ');
    match (words.next(), words.next(), words.next()) {
        (Some(verb), Some(mech), Some(_)) if verb.eq_ignore_ascii_case("AUTH") => {
            format!("{verb} {mech} {MASK}")
        }
        _ => line.to_string(),
    }
}

struct Writer {
    dir: PathBuf,
    days: u32,
    dropped: Arc<AtomicU64>,
    /// The day's date and its open file.
    current: Option<(String, std::io::BufWriter<std::fs::File>)>,
    budget: Budget,
    spent: Spent,
}

/// What today's transcript has cost, and what was refused for its budget.
#[derive(Default)]
struct Spent {
    day: String,
    bytes: u64,
    by_client: std::collections::HashMap<std::net::IpAddr, u64>,
    /// Lines dropped today for a budget (said in the next day's file).
    over_budget: u64,
    /// Clients already noted as over their budget today.
    noted: std::collections::HashSet<std::net::IpAddr>,
    day_noted: bool,
    /// Free space was last looked at when this many bytes had been written.
    disk_checked_at: Option<u64>,
    disk_low: bool,
}

/// Clients whose bytes are counted one by one; past that many in a day,
/// the others share one count (the day's budget still holds).
const TRACKED_CLIENTS: usize = 100_000;
/// Free space is looked at again after this many bytes written.
const DISK_CHECK_EVERY: u64 = 1 << 20;

impl Spent {
    /// Whether a line of `size` bytes from `client` may be written; if so it
    /// is counted. If not, what to note in the file (once per cause a day).
    fn judge(
        &mut self,
        budget: &Budget,
        client: Option<std::net::IpAddr>,
        size: u64,
    ) -> Result<(), Option<String>> {
        let client_spent = client.map(|ip| self.by_client.get(&ip).copied().unwrap_or(0));
        let refused = if self.disk_low {
            Some((None, "the disk is nearly full: transcripts pause to leave room for the spool (log.transcript_min_free_disk)".to_string()))
        } else if self.bytes + size > budget.per_day {
            Some((None, "today's transcript budget is spent (log.transcript_max_bytes_per_day): further lines are dropped".to_string()))
        } else if let (Some(ip), Some(spent)) = (client, client_spent)
            && spent + size > budget.per_client
        {
            Some((
                Some(ip),
                format!(
                    "{ip} spent its transcript budget for today (log.transcript_max_bytes_per_client): its further lines are dropped"
                ),
            ))
        } else {
            None
        };
        if let Some((who, note)) = refused {
            self.over_budget += 1;
            let first = match who {
                Some(ip) => self.noted.insert(ip),
                None => !std::mem::replace(&mut self.day_noted, true),
            };
            return Err(first.then_some(note));
        }
        self.bytes += size;
        if let Some(ip) = client {
            if let Some(n) = self.by_client.get_mut(&ip) {
                *n += size;
            } else if self.by_client.len() < TRACKED_CLIENTS {
                self.by_client.insert(ip, size);
            }
        }
        Ok(())
    }
}

impl Writer {
    fn run(mut self, rx: Receiver<Line>) {
        while let Ok(line) = rx.recv() {
            self.take(line);
            // Write what else is waiting, then flush once.
            while let Ok(line) = rx.try_recv() {
                self.take(line);
            }
            let dropped = self.dropped.swap(0, Ordering::Relaxed);
            if dropped > 0 {
                self.write(&format!(
                    "{} -- transcript writer fell behind: {dropped} line(s) dropped\n",
                    stamp()
                ));
            }
            if let Some((_, f)) = &mut self.current
                && let Err(e) = f.flush()
            {
                tracing::warn!("transcript: cannot write: {e}");
            }
        }
    }

    /// Writes `line` if the budget allows; otherwise counts it and, once per
    /// client or day, says so in the file.
    fn take(&mut self, line: Line) {
        let day = line.text.get(..10).unwrap_or("unknown").to_string();
        if self.spent.day != day {
            let before = std::mem::replace(
                &mut self.spent,
                Spent {
                    day,
                    ..Spent::default()
                },
            );
            if before.over_budget > 0 {
                let text = format!(
                    "{} -- {} line(s) of {} were dropped for the transcript budget\n",
                    stamp(),
                    before.over_budget,
                    before.day
                );
                self.write(&text);
            }
        }
        let size = line.text.len() as u64;
        self.check_disk();
        match self.spent.judge(&self.budget, line.client, size) {
            Ok(()) => self.write(&line.text),
            Err(Some(note)) => {
                let text = format!("{} -- {note}\n", stamp());
                self.write(&text);
            }
            Err(None) => {}
        }
    }

    /// Looks at the free space now and then (every `DISK_CHECK_EVERY` bytes).
    fn check_disk(&mut self) {
        let s = &mut self.spent;
        if s.disk_checked_at
            .is_some_and(|at| s.bytes < at + DISK_CHECK_EVERY)
        {
            return;
        }
        s.disk_checked_at = Some(s.bytes);
        if let Ok(fs) = rustix::fs::statvfs(&self.dir) {
            let free = fs.f_bavail.saturating_mul(fs.f_frsize);
            s.disk_low = free < self.budget.min_free_disk;
        }
    }

    fn write(&mut self, line: &str) {
        let day = line.get(..10).unwrap_or("unknown").to_string();
        if self.current.as_ref().is_none_or(|(d, _)| *d != day) {
            if let Some((_, mut old)) = self.current.take() {
                let _ = old.flush();
            }
            match open_day(&self.dir, &day) {
                Ok(f) => self.current = Some((day, std::io::BufWriter::new(f))),
                Err(e) => {
                    tracing::warn!(dir = %self.dir.display(), "transcript: cannot open the day's file: {e}");
                    return;
                }
            }
            prune(&self.dir, self.days);
        }
        if let Some((_, f)) = &mut self.current {
            let _ = f.write_all(line.as_bytes());
        }
    }
}

fn stamp() -> impl std::fmt::Display {
    chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.3fZ")
}

fn open_day(dir: &Path, day: &str) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(dir.join(format!("transcript-{day}.log")))
}

/// Removes day files older than `days` days (today counts as one).
fn prune(dir: &Path, days: u32) {
    let oldest_kept = (chrono::Utc::now() - chrono::Duration::days(i64::from(days) - 1))
        .format("%Y-%m-%d")
        .to_string();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(day) = name
            .strip_prefix("transcript-")
            .and_then(|r| r.strip_suffix(".log"))
            && day.len() == 10
            && day < oldest_kept.as_str()
        {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wait_for(path: &Path, needle: &str) -> String {
        for _ in 0..200 {
            if let Ok(text) = std::fs::read_to_string(path)
                && text.contains(needle)
            {
                return text;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("{needle:?} never written to {}", path.display());
    }

    #[test]
    fn each_client_and_the_day_keep_to_their_budget() {
        let budget = Budget {
            per_day: 1000,
            per_client: 300,
            min_free_disk: 0,
        };
        let mut spent = Spent::default();
        let (a, b): (std::net::IpAddr, std::net::IpAddr) =
            ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        for _ in 0..3 {
            assert!(spent.judge(&budget, Some(a), 100).is_ok());
        }
        let first = spent.judge(&budget, Some(a), 100).unwrap_err();
        assert!(first.is_some_and(|n| n.contains("192.0.2.1")), "noted once");
        assert_eq!(
            spent.judge(&budget, Some(a), 100),
            Err(None),
            "then only counted"
        );
        assert!(
            spent.judge(&budget, Some(b), 100).is_ok(),
            "another client goes on"
        );
        assert!(spent.judge(&budget, None, 500).is_ok());
        assert!(
            spent.judge(&budget, None, 200).unwrap_err().is_some(),
            "the day's budget"
        );
        assert_eq!(spent.over_budget, 3);
        spent.disk_low = true;
        assert!(spent.judge(&budget, Some(b), 1).is_err());
    }

    #[test]
    fn secrets_are_masked_and_old_days_pruned() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("transcript-2000-01-01.log"), "old").unwrap();
        std::fs::write(dir.path().join("notes.txt"), "keep").unwrap();
        let t = Transcripts::start(
            dir.path(),
            3,
            Budget {
                per_day: 1 << 20,
                per_client: 1 << 20,
                min_free_disk: 0,
            },
        )
        .unwrap();
        let mut r = t.recorder("in 192.0.2.1");
        r.client(b"EHLO pc.lan\r\n");
        r.server("250-relay.test\r\n250 AUTH PLAIN LOGIN\r\n");
        r.client(b"AUTH PLAIN AGFsaWNlAHNlY3JldA==");
        r.server("235 2.7.0 ok\r\n");
        r.client(b"AUTH LOGIN");
        r.server("334 VXNlcm5hbWU6\r\n");
        r.client(b"YWxpY2U=");
        r.server("334 UGFzc3dvcmQ6\r\n");
        r.client(b"c2VjcmV0");
        r.server("235 2.7.0 ok\r\n");
        // A refused AUTH whose client sends its base64 lines all the same.
        r.client(b"AUTH LOGIN");
        r.server("503 5.5.1 already authenticated\r\n");
        r.client(b"Ym9i");
        r.server("500 5.5.2 unknown command\r\n");
        r.client(b"aHVudGVyMg==");
        r.server("500 5.5.2 unknown command\r\n");
        r.client(b"NOOP");
        r.client(b"QUIT");
        let today = chrono::Utc::now().format("%Y-%m-%d").to_string();
        let file = dir.path().join(format!("transcript-{today}.log"));
        let text = wait_for(&file, "C: QUIT");
        assert!(text.contains("in 192.0.2.1 #1 C: EHLO pc.lan"), "{text}");
        assert!(text.contains("S: 250 AUTH PLAIN LOGIN"), "{text}");
        assert!(text.contains("C: AUTH PLAIN ****"), "{text}");
        assert!(
            !text.contains("AGFsaWNl") && !text.contains("c2VjcmV0") && !text.contains("YWxpY2U="),
            "{text}"
        );
        assert!(
            !text.contains("Ym9i") && !text.contains("aHVudGVyMg=="),
            "lines after a refused AUTH are masked: {text}"
        );
        assert!(
            text.contains("C: NOOP"),
            "a known verb ends the masking: {text}"
        );
        assert!(!dir.path().join("transcript-2000-01-01.log").exists());
        assert!(dir.path().join("notes.txt").exists());
    }
}
