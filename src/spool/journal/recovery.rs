//! Reading the journal back: what it holds and has not released, and the
//! recovery at start that writes those messages into `queue/`.

use super::codec::{Record, decode};
use super::segments::segment_files;
use std::collections::HashMap;
use std::fs::{self, File};
use std::io;
use std::path::Path;

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
pub fn recover(root: &Path) -> Result<usize, crate::spool::SpoolError> {
    let paths = segment_files(root)?;
    if paths.is_empty() {
        return Ok(0);
    }
    let queue_dir = root.join("queue");
    let pending = unreleased(root)?;
    let mut to_write = Vec::new();
    for (id, image) in &pending {
        let whole = crate::spool::read_message_bytes(image)
            .is_ok_and(|(envelope, _)| envelope.id == *id && crate::spool::queue_id::is_valid(id));
        if !whole {
            tracing::warn!(queue_id = %id, "journal record with a damaged message skipped");
            continue;
        }
        let path = queue_dir.join(id);
        let already = File::open(&path)
            .map_err(crate::spool::SpoolError::from)
            .and_then(|mut f| crate::spool::read_envelope(&mut f, &path))
            .is_ok();
        if !already {
            to_write.push((id.as_str(), image.as_slice()));
        }
    }
    let spool = crate::spool::Spool::open_existing(root)?;
    for written in spool.write_images(&to_write) {
        written?;
    }
    for path in &paths {
        fs::remove_file(path)?;
    }
    crate::fsio::sync_dir(&root.join("journal"))?;
    Ok(to_write.len())
}
