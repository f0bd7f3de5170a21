//! Any command line: a typed command or a reply, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The session hands the parser valid UTF-8 only (other lines get 500).
    if let Ok(line) = std::str::from_utf8(data) {
        if let Err(portcullis::smtp::command::Unparsed::Reply(r)) =
            portcullis::smtp::command::parse(line)
        {
            assert!((400..600).contains(&r.code), "{r:?}");
        }
    }
});
