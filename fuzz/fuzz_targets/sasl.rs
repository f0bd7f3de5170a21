//! AUTH responses: decoded or refused with a reply, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use portcullis::smtp::sasl::{Answer, decode_answer, login_credentials, parse_plain};

fuzz_target!(|data: &[u8]| {
    if let Answer::Data(d) = decode_answer(data) {
        let _ = parse_plain(&d);
        let half = d.len() / 2;
        let _ = login_credentials(d[..half].to_vec(), d[half..].to_vec());
    }
    let _ = parse_plain(data);
});
