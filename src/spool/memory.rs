//! A small message's content kept in memory after it was spooled, so that
//! its first delivery streams it from memory instead of opening and reading
//! the file back (two trips to the blocking threads per message). The file
//! stays the durable copy; this is only a cache, bounded per message and in
//! total, and dropped once the first delivery pass is over.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Larger messages are always read from their file.
pub const MEMORY_COPY_MAX: usize = 256 * 1024;
/// All copies together never hold more than this.
const MEMORY_BUDGET: usize = 16 * 1024 * 1024;

static HELD: AtomicUsize = AtomicUsize::new(0);

#[derive(Debug)]
pub struct MemoryCopy {
    /// The content, or (for a journaled message) the whole spool-file image
    /// whose first `body_len` bytes are the content.
    bytes: Vec<u8>,
    body_len: usize,
}

impl MemoryCopy {
    /// Keeps `bytes` when it is small and the budget allows; None otherwise
    /// (the content is then read from the file when needed).
    pub fn keep(bytes: Vec<u8>) -> Option<Arc<MemoryCopy>> {
        let body_len = bytes.len() as u64;
        MemoryCopy::keep_image(bytes, body_len).ok()
    }

    /// Keeps a whole spool-file image whose content is its first `body_len`
    /// bytes, under the same bounds; gives it back when they refuse.
    pub fn keep_image(image: Vec<u8>, body_len: u64) -> Result<Arc<MemoryCopy>, Vec<u8>> {
        let body_len = body_len as usize;
        let len = image.len();
        if body_len > MEMORY_COPY_MAX || body_len > len {
            return Err(image);
        }
        let before = HELD.fetch_add(len, Ordering::Relaxed);
        if before + len > MEMORY_BUDGET {
            HELD.fetch_sub(len, Ordering::Relaxed);
            return Err(image);
        }
        Ok(Arc::new(MemoryCopy {
            bytes: image,
            body_len,
        }))
    }

    /// The message content.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes[..self.body_len]
    }

    /// Everything kept: the whole file image for a journaled message.
    pub fn image(&self) -> &[u8] {
        &self.bytes
    }

    /// Bytes held by every copy alive now.
    #[cfg(test)]
    fn held() -> usize {
        HELD.load(Ordering::Relaxed)
    }
}

impl Drop for MemoryCopy {
    fn drop(&mut self) {
        HELD.fetch_sub(self.bytes.len(), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // One test: the budget is process-wide, so two tests filling it at
    // once would see each other.
    #[test]
    fn copies_are_bounded_per_message_and_in_total() {
        assert!(MemoryCopy::keep(vec![0; MEMORY_COPY_MAX + 1]).is_none());
        let copy = MemoryCopy::keep(b"Subject: x\r\n\r\nhi\r\n".to_vec()).expect("small is kept");
        assert_eq!(copy.bytes(), b"Subject: x\r\n\r\nhi\r\n");
        let mut kept = vec![copy];
        for _ in 0..(MEMORY_BUDGET / MEMORY_COPY_MAX + 8) {
            if let Some(c) = MemoryCopy::keep(vec![1; MEMORY_COPY_MAX]) {
                kept.push(c);
            }
        }
        assert!(kept.len() <= MEMORY_BUDGET / MEMORY_COPY_MAX + 1);
        assert!(MemoryCopy::held() <= MEMORY_BUDGET);
        let held = MemoryCopy::held();
        kept.truncate(1);
        assert!(
            MemoryCopy::held() < held,
            "dropped copies give their bytes back"
        );
    }
}
