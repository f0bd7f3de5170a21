//! The spool journal's record decoder reads whatever a crash left on disk:
//! it must never panic, and every record it returns must lie inside the input
//! and re-encode to the very bytes it was read from.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::spool::journal::codec::{Record, decode, encode, KIND_MESSAGE, KIND_RELEASE};

fuzz_target!(|bytes: &[u8]| {
    let mut again = Vec::new();
    for record in decode(bytes) {
        match record {
            Record::Message { id, image } => encode(&mut again, KIND_MESSAGE, id, image),
            Record::Release { id } => encode(&mut again, KIND_RELEASE, id, &[]),
        }
    }
    assert!(bytes.starts_with(&again), "decoded records re-encode to the input's prefix");
});
