//! How the spool journal's writer puts bytes into a segment file.
//!
//! Where the file system allows it, appends go through direct I/O
//! (`O_DIRECT`), and a durable append is one write with `O_DSYNC`. That
//! writes the device blocks and flushes the disk's cache, as `pwrite` and
//! `fdatasync` do, without taking the page cache's writeback path, for less
//! CPU: on the development VM about half in a loop of 1 KB syncs, and a
//! tenth of the journal thread's in the server (README "Performance").
//! Direct I/O writes whole aligned blocks, so the
//! last partly used block is kept in memory and written again, with the
//! new records after it and zeros up to the block's end. A rewritten block
//! repeats its earlier bytes exactly, so a torn rewrite cannot damage a
//! record already acknowledged.
//!
//! A write that is not durable (releases alone) leaves `unsynced_from`
//! where it was, and the next durable write starts again from there. A
//! flush then makes every block written since the last one durable, even on
//! a disk whose `FUA` would sync only the block it is given: no stretch of
//! lost releases can sit before a durable record, where recovery would stop.
//! File systems without direct I/O (tmpfs, say) get buffered writes and
//! `fdatasync`, as before.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

/// Offsets, lengths and buffer addresses of direct writes are multiples of
/// this (the largest logical block size of common disks).
const BLOCK: usize = 4096;
/// Past this many bytes written and not synced, a write is made durable
/// anyway, so that the block kept in memory stays small.
const UNSYNCED_LIMIT: usize = 64 * 1024;

pub(super) struct SegmentFile {
    how: How,
    /// A failed write could not be undone: the writer must start another segment.
    pub broken: bool,
}

enum How {
    Buffered(File),
    Direct(Direct),
}

struct Direct {
    plain: File,
    durable: File,
    /// The segment's bytes from `tail_start` (a block boundary) to its end.
    tail: Vec<u8>,
    tail_start: u64,
    /// Where the bytes not yet made durable begin.
    unsynced_from: u64,
    scratch: AlignedBuf,
}

impl SegmentFile {
    /// Takes an empty segment (`file` was opened on `path` for writing) and
    /// opens it for direct I/O when the file system allows.
    pub fn new(path: &Path, file: File) -> SegmentFile {
        let how = match Direct::open(path) {
            Ok(direct) => How::Direct(direct),
            Err(e) => {
                tracing::debug!(path = %path.display(), "journal segment without direct I/O: {e}");
                How::Buffered(file)
            }
        };
        SegmentFile { how, broken: false }
    }

    #[cfg(test)]
    fn buffered(file: File) -> SegmentFile {
        SegmentFile {
            how: How::Buffered(file),
            broken: false,
        }
    }

    /// Writes `buf` at `end` (the segment's current end), durably when
    /// `sync`. On failure the bytes are taken back (zeroed on disk), so that
    /// no record ever follows a torn one; when even that fails, `broken`.
    pub fn append(&mut self, end: u64, buf: &[u8], sync: bool) -> io::Result<()> {
        let result = match &mut self.how {
            How::Buffered(file) => file
                .write_all_at(buf, end)
                .and_then(|()| if sync { file.sync_data() } else { Ok(()) }),
            How::Direct(direct) => direct.append(end, buf, sync),
        };
        if result.is_err() && self.undo(end, buf.len()).is_err() {
            self.broken = true;
        }
        result
    }

    fn undo(&mut self, end: u64, len: usize) -> io::Result<()> {
        match &mut self.how {
            How::Buffered(file) => file
                .write_all_at(&vec![0; len], end)
                .and_then(|()| file.sync_data()),
            How::Direct(direct) => direct.undo(end, len),
        }
    }
}

impl Direct {
    fn open(path: &Path) -> io::Result<Direct> {
        let open = |flags| {
            OpenOptions::new()
                .write(true)
                .custom_flags(flags)
                .open(path)
        };
        let plain = open(libc::O_DIRECT)?;
        let durable = open(libc::O_DIRECT | libc::O_DSYNC)?;
        let mut scratch = AlignedBuf::default();
        // Some file systems open with O_DIRECT and refuse the writes: try one.
        // The segment is empty, so a block of zeros changes nothing.
        plain.write_all_at(scratch.zeroed(BLOCK), 0)?;
        Ok(Direct {
            plain,
            durable,
            tail: Vec::new(),
            tail_start: 0,
            unsynced_from: 0,
            scratch,
        })
    }

    fn append(&mut self, end: u64, buf: &[u8], sync: bool) -> io::Result<()> {
        debug_assert_eq!(end, self.tail_start + self.tail.len() as u64);
        self.tail.extend_from_slice(buf);
        let new_end = end + buf.len() as u64;
        let sync = sync || (new_end - self.unsynced_from) as usize > UNSYNCED_LIMIT;
        self.write_blocks(new_end, sync)?;
        if sync {
            self.unsynced_from = new_end;
            // Forget the tail before the block that holds the new end.
            let start = block_start(new_end);
            self.tail.drain(..(start - self.tail_start) as usize);
            self.tail_start = start;
        }
        Ok(())
    }

    /// Writes the blocks from the one holding `unsynced_from` up to `reach`
    /// (or the tail's end, if further): the tail's bytes, then zeros.
    fn write_blocks(&mut self, reach: u64, durable: bool) -> io::Result<()> {
        let start = block_start(self.unsynced_from);
        let bytes = &self.tail[(start - self.tail_start) as usize..];
        let len = bytes.len().max((reach - start) as usize);
        if len == 0 {
            return Ok(());
        }
        let out = self.scratch.zeroed(len.div_ceil(BLOCK) * BLOCK);
        out[..bytes.len()].copy_from_slice(bytes);
        let file = if durable { &self.durable } else { &self.plain };
        file.write_all_at(out, start)
    }

    /// The blocks the failed write reached, written again without it.
    fn undo(&mut self, end: u64, len: usize) -> io::Result<()> {
        self.tail.truncate((end - self.tail_start) as usize);
        self.write_blocks(end + len as u64, true)
    }
}

/// The start of the block that holds `offset`.
fn block_start(offset: u64) -> u64 {
    offset - offset % BLOCK as u64
}

/// A reusable buffer whose start is aligned to `BLOCK`, as direct I/O needs.
#[derive(Default)]
struct AlignedBuf {
    mem: Vec<u8>,
}

impl AlignedBuf {
    /// `len` zero bytes starting at an aligned address.
    fn zeroed(&mut self, len: usize) -> &mut [u8] {
        if self.mem.len() < len + BLOCK {
            self.mem = vec![0; len + BLOCK];
        }
        let offset = self.mem.as_ptr().align_offset(BLOCK);
        let out = &mut self.mem[offset..offset + len];
        out.fill(0);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    /// A temporary directory on the disk the project is built on (`/tmp`
    /// is a tmpfs on newer Debian, which takes no direct I/O).
    fn disk_dir() -> tempfile::TempDir {
        let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
        fs::create_dir_all(&target).unwrap();
        tempfile::tempdir_in(target).unwrap()
    }

    /// Whether `seg` writes directly; when a direct run was asked for and
    /// the file system cannot, says the run is skipped rather than passing
    /// on buffered writes unnoticed.
    fn is_direct(seg: &SegmentFile, asked: bool) -> bool {
        let direct = matches!(seg.how, How::Direct(_));
        if asked && !direct {
            println!(
                "SKIPPED the direct-I/O run: the test directory's file system takes no O_DIRECT"
            );
        }
        direct
    }

    /// A new segment, written directly when `direct` (and the file system
    /// allows), else the buffered way.
    fn segment(dir: &Path, direct: bool) -> (std::path::PathBuf, SegmentFile) {
        let path = dir.join("s.journal");
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .unwrap();
        file.set_len(64 * 1024).unwrap();
        let seg = if direct {
            SegmentFile::new(&path, file)
        } else {
            SegmentFile::buffered(file)
        };
        (path, seg)
    }

    #[test]
    fn appends_of_any_size_read_back_as_written_with_zeros_after() {
        for direct in [true, false] {
            appends_read_back(direct);
        }
    }

    fn appends_read_back(direct: bool) {
        let dir = disk_dir();
        let (path, mut seg) = segment(dir.path(), direct);
        if direct && !is_direct(&seg, true) {
            return;
        }
        let mut expected = Vec::new();
        for (i, len) in [1usize, 100, 4095, 1, 4096, 9000, 3, 5000]
            .iter()
            .enumerate()
        {
            let bytes: Vec<u8> = (0..*len).map(|b| (b % 251) as u8 + 1).collect();
            seg.append(expected.len() as u64, &bytes, i % 3 != 1)
                .unwrap();
            expected.extend_from_slice(&bytes);
            let on_disk = fs::read(&path).unwrap();
            assert_eq!(
                &on_disk[..expected.len()],
                &expected[..],
                "after append {i} (direct: {direct})"
            );
            assert!(on_disk[expected.len()..].iter().all(|&b| b == 0));
        }
        assert!(!seg.broken);
    }

    #[test]
    fn the_block_kept_in_memory_stays_small() {
        let dir = disk_dir();
        let (_path, mut seg) = segment(dir.path(), true);
        if !is_direct(&seg, true) {
            return;
        }
        let mut end = 0u64;
        let mut most = 0;
        for i in 0..200 {
            // Releases alone (not durable), and only now and then an append.
            seg.append(end, &[7u8; 1000], i % 100 == 99).unwrap();
            end += 1000;
            if let How::Direct(d) = &seg.how {
                most = most.max(d.tail.len());
            }
        }
        assert!(most > 0, "a direct segment keeps its last partial block");
        assert!(most <= UNSYNCED_LIMIT + BLOCK, "{most} bytes kept");
    }

    #[test]
    fn undo_takes_back_a_failed_append_and_keeps_what_was_before() {
        for direct in [true, false] {
            undo_takes_back(direct);
        }
    }

    fn undo_takes_back(direct: bool) {
        let dir = disk_dir();
        let (path, mut seg) = segment(dir.path(), direct);
        if direct && !is_direct(&seg, true) {
            return;
        }
        seg.append(0, b"first record", true).unwrap();
        seg.append(12, b", a release", false).unwrap();
        // An append that reached the disk and then failed (its sync, say).
        let failed = vec![9u8; 5000];
        match &mut seg.how {
            How::Direct(d) => {
                d.tail.extend_from_slice(&failed);
                let reach = 23 + failed.len() as u64;
                d.write_blocks(reach, false).unwrap();
            }
            How::Buffered(f) => f.write_all_at(&failed, 23).unwrap(),
        }
        assert_eq!(fs::read(&path).unwrap()[23..5023], failed[..]);
        seg.undo(23, failed.len()).unwrap();
        let on_disk = fs::read(&path).unwrap();
        assert_eq!(&on_disk[..23], b"first record, a release");
        assert!(on_disk[23..].iter().all(|&b| b == 0));
    }
}
