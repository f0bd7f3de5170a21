//! Any MAIL/RCPT argument: a path or an error; a parsed mailbox prints back
//! to something that parses to the same mailbox.
#![no_main]
use libfuzzer_sys::fuzz_target;
use portcullis::smtp::address::{Path, parse_path};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for utf8 in [false, true] {
        if let Ok((Path::Mailbox(m), _)) = parse_path(text, utf8) {
            let _ = m.hidden_route();
            let printed = format!("<{m}>");
            if let Ok((Path::Mailbox(m2), _)) = parse_path(&printed, true) {
                assert_eq!(m.domain, m2.domain, "{text:?}");
            }
        }
    }
});
