//! Writing one message: content streams into `tmp/ID`; `commit` appends the
//! envelope and trailer, fsyncs the file, renames it into `queue/` and fsyncs
//! that directory. Dropping an uncommitted writer removes the temporary file.

use super::{Envelope, Spool, trailer_line};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

pub struct SpoolWriter {
    file: Option<BufWriter<File>>,
    tmp_path: PathBuf,
    final_path: PathBuf,
    queue_dir: PathBuf,
    body_len: u64,
}

impl SpoolWriter {
    pub(super) fn create(spool: &Spool, id: &str) -> io::Result<SpoolWriter> {
        let tmp_path = spool.tmp_dir().join(id);
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp_path)?;
        Ok(SpoolWriter {
            file: Some(BufWriter::with_capacity(64 * 1024, file)),
            tmp_path,
            final_path: spool.queue_dir().join(id),
            queue_dir: spool.queue_dir(),
            body_len: 0,
        })
    }

    pub fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        let file = self
            .file
            .as_mut()
            .ok_or_else(|| io::Error::other("spool writer already finished"))?;
        file.write_all(bytes)?;
        self.body_len += bytes.len() as u64;
        Ok(())
    }

    pub fn body_len(&self) -> u64 {
        self.body_len
    }

    /// Makes the message durable. Only after this returns Ok may the server say 250.
    pub fn commit(mut self, envelope: &Envelope) -> io::Result<()> {
        let mut file = self
            .file
            .take()
            .ok_or_else(|| io::Error::other("spool writer already finished"))?;
        let env = serde_json::to_vec(envelope).map_err(io::Error::other)?;
        file.write_all(&env)?;
        file.write_all(trailer_line(self.body_len, env.len() as u64).as_bytes())?;
        let file = file.into_inner().map_err(|e| e.into_error())?;
        // fdatasync: the content and the size needed to read it, without mtime churn.
        let result = file
            .sync_data()
            .and_then(|_| fs::rename(&self.tmp_path, &self.final_path))
            .and_then(|_| sync_dir(&self.queue_dir));
        if result.is_err() {
            let _ = fs::remove_file(&self.tmp_path);
        }
        result
    }
}

impl Drop for SpoolWriter {
    fn drop(&mut self) {
        if self.file.take().is_some() {
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
    File::open(dir)?.sync_all()
}
