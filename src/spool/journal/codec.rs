//! The journal's record format: magic, kind, id length, payload length,
//! CRC-32 of all after the magic, then the id and the payload. Decoding
//! stops at the first record that is torn, foreign or damaged: a crash
//! mid-write leaves at most the tail torn, and nothing after it counts.
//! Public for the fuzz target (`fuzz/`), which feeds it arbitrary bytes.

pub const MAGIC: &[u8; 4] = b"PJR1";
/// Magic, kind, id length, payload length, checksum.
pub const HEADER: usize = 4 + 1 + 1 + 4 + 4;
pub const KIND_MESSAGE: u8 = 1;
pub const KIND_RELEASE: u8 = 2;
/// A release record's size, as a rule (queue IDs are 20 digits).
pub const RELEASE_RECORD: usize = HEADER + 20;

pub fn encode(buf: &mut Vec<u8>, kind: u8, id: &str, payload: &[u8]) {
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
pub enum Record<'a> {
    Message { id: &'a str, image: &'a [u8] },
    Release { id: &'a str },
}

/// The whole records at the start of `bytes`, up to the first torn or
/// foreign one (a crash mid-write leaves at most the tail torn).
pub fn decode(bytes: &[u8]) -> Vec<Record<'_>> {
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
            // A release carries no payload: one with a payload is foreign
            // (no writer of ours makes it), and read as a release it would
            // not be what the bytes say.
            KIND_RELEASE if payload.is_empty() => records.push(Record::Release { id }),
            _ => break,
        }
        at = end;
    }
    records
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn record(kind: u8, id: &str, payload: &[u8]) -> Vec<u8> {
        let mut buf = Vec::new();
        encode(&mut buf, kind, id, payload);
        buf
    }

    /// Found by the fuzz target (`fuzz/run.sh journal_codec`): a release
    /// record with a payload and a valid checksum was read as a plain
    /// release. It is foreign: decoding stops there.
    #[test]
    fn a_release_with_a_payload_is_foreign() {
        let mut bytes = record(KIND_MESSAGE, "1", b"content");
        bytes.extend(record(KIND_RELEASE, "1", b"x"));
        bytes.extend(record(KIND_RELEASE, "2", b""));
        assert_eq!(
            decode(&bytes),
            vec![Record::Message {
                id: "1",
                image: b"content"
            }]
        );
    }

    proptest! {
        /// The fuzz target's property, run on every `cargo test`: any bytes
        /// at all decode without a panic, to records that re-encode to the
        /// input's own prefix.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let records = decode(&bytes);
            prop_assert!(records.len() <= bytes.len() / HEADER);
            let mut again = Vec::new();
            for r in &records {
                match r {
                    Record::Message { id, image } => encode(&mut again, KIND_MESSAGE, id, image),
                    Record::Release { id } => encode(&mut again, KIND_RELEASE, id, &[]),
                }
            }
            prop_assert!(bytes.starts_with(&again));
        }

        /// Whole records read back exactly; a torn or damaged one and
        /// everything after it are dropped, never misread.
        #[test]
        fn a_torn_or_damaged_tail_loses_only_itself(
            ids in proptest::collection::vec("[0-9]{1,20}", 1..6),
            payload in proptest::collection::vec(any::<u8>(), 0..64),
            cut in any::<prop::sample::Index>(),
            flip in any::<prop::sample::Index>(),
        ) {
            let mut bytes = Vec::new();
            let mut ends = Vec::new();
            for (n, id) in ids.iter().enumerate() {
                let kind = if n % 2 == 0 { KIND_MESSAGE } else { KIND_RELEASE };
                bytes.extend(record(kind, id, if kind == KIND_MESSAGE { &payload } else { &[] }));
                ends.push(bytes.len());
            }
            prop_assert_eq!(decode(&bytes).len(), ids.len());
            // Torn: only the records wholly inside the cut survive.
            let at = cut.index(bytes.len());
            let whole = ends.iter().filter(|e| **e <= at).count();
            prop_assert_eq!(decode(&bytes[..at]).len(), whole);
            // One flipped bit: the records before it survive, that one does not.
            let bit = flip.index(bytes.len());
            let mut damaged = bytes.clone();
            damaged[bit] ^= 1;
            let before = ends.iter().filter(|e| **e <= bit).count();
            let read = decode(&damaged);
            prop_assert_eq!(read.len(), before);
            for (got, id) in read.iter().zip(&ids) {
                let got_id = match got {
                    Record::Message { id, .. } | Record::Release { id } => *id,
                };
                prop_assert_eq!(got_id, id.as_str());
            }
        }
    }
}
