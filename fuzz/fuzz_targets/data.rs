//! The DATA/BDAT decoder on any bytes, fed in any split: never a panic, the
//! same result however the input is cut, and normalised output never holds a
//! bare CR, a bare LF or a NUL.
#![no_main]
use libfuzzer_sys::fuzz_target;
use portcullis::config::{BareNewline, NulInData};
use portcullis::smtp::data::{DataDecoder, Mode, Progress};

fn decode(input: &[u8], cut: usize, mode: Mode, bare: BareNewline, nul: NulInData) -> (Vec<u8>, usize, Progress) {
    let mut d = DataDecoder::new(mode, bare, nul, 1 << 20, 1000);
    let mut out = Vec::new();
    let cut = cut.min(input.len());
    let (n1, p1) = d.feed(&input[..cut], &mut out);
    assert!(n1 <= cut);
    if p1 != Progress::More {
        return (out, n1, p1);
    }
    let (n2, p2) = d.feed(&input[cut..], &mut out);
    assert!(n2 <= input.len() - cut);
    (out, n1 + n2, p2)
}

fuzz_target!(|data: &[u8]| {
    let Some((&cut, input)) = data.split_first() else {
        return;
    };
    for mode in [Mode::Dot, Mode::Raw] {
        for (bare, nul) in [
            (BareNewline::Reject, NulInData::Reject),
            (BareNewline::Normalize, NulInData::Strip),
        ] {
            let whole = decode(input, input.len(), mode, bare, nul);
            let split = decode(input, cut as usize, mode, bare, nul);
            assert_eq!(whole, split, "split at {cut}");
            if bare == BareNewline::Normalize {
                let out = &whole.0;
                assert!(!out.contains(&0));
                for (i, &b) in out.iter().enumerate() {
                    if b == b'\n' {
                        assert!(i > 0 && out[i - 1] == b'\r');
                    }
                    if b == b'\r' && i + 1 < out.len() {
                        assert_eq!(out[i + 1], b'\n');
                    }
                }
            }
        }
    }
});
