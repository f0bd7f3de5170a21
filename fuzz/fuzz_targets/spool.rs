//! A torn or hostile spool file or state file: read or refused, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use portcullis::spool::{MessageState, read_message_bytes};

fuzz_target!(|data: &[u8]| {
    if let Ok((envelope, body_len)) = read_message_bytes(data) {
        assert!(body_len <= data.len() as u64);
        let state = MessageState::initial(&envelope);
        let _ = state.next_due();
    }
    if let Ok(state) = serde_json::from_slice::<MessageState>(data) {
        let _ = state.next_due();
        let _ = state.has_queued();
    }
});
