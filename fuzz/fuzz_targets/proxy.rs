//! PROXY v1/v2 headers on any bytes (the first byte picks a cut): never a
//! panic; a header is self-delimiting, and every piece of one cut short
//! waits for the rest instead of being refused.
#![no_main]
use libfuzzer_sys::fuzz_target;
use portcullis::server::proxy::{HeaderParse, parse_header};

fuzz_target!(|data: &[u8]| {
    let Some((&cut, input)) = data.split_first() else {
        return;
    };
    match parse_header(input) {
        HeaderParse::Header { len, source } => {
            assert!(len > 0 && len <= input.len() && len <= 536);
            // The header alone reads the same as the header and what follows.
            assert_eq!(parse_header(&input[..len]), HeaderParse::Header { len, source });
            // Cut anywhere inside, it is a header still on its way.
            let short = cut as usize % len;
            assert_eq!(parse_header(&input[..short]), HeaderParse::Incomplete, "cut at {short}");
        }
        HeaderParse::Incomplete => {
            assert!(input.len() < 536);
            let short = (cut as usize).min(input.len());
            assert_eq!(parse_header(&input[..short]), HeaderParse::Incomplete, "cut at {short}");
        }
        HeaderParse::Refused(why) => assert!(!why.is_empty()),
    }
});
