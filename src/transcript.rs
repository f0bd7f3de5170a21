//! SMTP transcripts (`[log] transcript = "DIR"`): every line of every
//! conversation — clients talking to us, and us talking to next hops — in
//! one file per day (`transcript-YYYY-MM-DD.log`, UTC), kept
//! `transcript_days` days. Message content is not written, only the
//! commands and replies around it; AUTH secrets are masked (the argument of
//! `AUTH <mech> <initial response>` and every line answering a 334 challenge).
//!
//! Sessions never wait for the disk: lines go through a bounded channel to
//! one writer thread; when it falls behind, lines are dropped and counted.

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

pub struct Transcripts {
    tx: SyncSender<String>,
    dropped: Arc<AtomicU64>,
    next_id: AtomicU64,
}

impl Transcripts {
    /// Creates `dir` if needed and starts the writer thread.
    pub fn start(dir: &Path, days: u32) -> std::io::Result<Arc<Transcripts>> {
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
        Transcripts::start(dir, log.transcript_days)
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
    pub fn recorder_tagged(self: &Arc<Self>, tag: &str) -> Recorder {
        Recorder {
            sink: Arc::clone(self),
            tag: tag.to_string(),
            masking: false,
            after_auth: false,
        }
    }

    pub fn recorder(self: &Arc<Self>, tag: &str) -> Recorder {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        Recorder {
            sink: Arc::clone(self),
            tag: format!("{tag} #{n}"),
            masking: false,
            after_auth: false,
        }
    }

    fn push(&self, line: String) {
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
    tag: String,
    /// The server just sent a 334 challenge: the client's next line is a secret.
    masking: bool,
    /// An AUTH command was the last verb: every line until the next known
    /// verb may be a credential (a client goes on sending its base64 lines
    /// after a refused or cancelled AUTH), so none is written.
    after_auth: bool,
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
        self.sink
            .push(format!("{now} {} {side} {text}\n", self.tag));
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
}

impl Writer {
    fn run(mut self, rx: Receiver<String>) {
        while let Ok(line) = rx.recv() {
            self.write(&line);
            // Write what else is waiting, then flush once.
            while let Ok(line) = rx.try_recv() {
                self.write(&line);
            }
            let dropped = self.dropped.swap(0, Ordering::Relaxed);
            if dropped > 0 {
                self.write(&format!(
                    "{} -- transcript writer fell behind: {dropped} line(s) dropped\n",
                    chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.3fZ")
                ));
            }
            if let Some((_, f)) = &mut self.current
                && let Err(e) = f.flush()
            {
                tracing::warn!("transcript: cannot write: {e}");
            }
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
    fn secrets_are_masked_and_old_days_pruned() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("transcript-2000-01-01.log"), "old").unwrap();
        std::fs::write(dir.path().join("notes.txt"), "keep").unwrap();
        let t = Transcripts::start(dir.path(), 3).unwrap();
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
