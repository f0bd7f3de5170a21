//! The message-data decoder. In DATA mode it finds the end of data — CRLF.CRLF
//! and nothing else — and removes dot-stuffing; in BDAT mode it only checks
//! line endings. Bare CR or LF is refused or normalised to CRLF, so that no
//! variant such as LF.LF or CR.CR can end the data or be passed on ("SMTP smuggling").
//! NUL is refused or removed the same way: a next hop that drops it silently
//! would read CRLF NUL . CRLF as the end of data.
//! Memory use is bounded: the decoder stores nothing but its state.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BareNewline {
    /// Refuse the message and close the connection (nothing after it is read as SMTP).
    Reject,
    /// Turn each bare CR or LF into CRLF inside the message; end of data stays CRLF.CRLF only.
    Normalize,
}

/// NUL in message data. A next hop that silently drops NUL would read
/// `CRLF NUL . CRLF` as the end of data and run what follows as a second
/// transaction (SMTP smuggling), so it is refused by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NulInData {
    /// Refuse the message (554 5.6.0) and close the connection.
    Reject,
    /// Remove each NUL; a dot after a removed NUL is text, never the end of data.
    Strip,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// DATA: dot-stuffed, ends at CRLF.CRLF.
    Dot,
    /// BDAT: raw octets, the length is given by the command.
    Raw,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// In a line; `at_start` when nothing of the line has been seen yet.
    Text { at_start: bool },
    /// Saw CR inside a line.
    Cr,
    /// Saw '.' at the start of a line (DATA only).
    Dot,
    /// Saw ".\r" at the start of a line (DATA only).
    DotCr,
}

/// What `feed` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// All input consumed; more is needed.
    More,
    /// The end-of-data line was consumed; anything after it is the next command.
    End,
    /// A bare CR or LF under the "reject" policy; stop reading data.
    BareNewline,
    /// A NUL byte under the "reject" policy; stop reading data.
    Nul,
}

#[derive(Debug)]
pub struct DataDecoder {
    mode: Mode,
    state: State,
    policy: BareNewline,
    nul: NulInData,
    max_size: u64,
    max_line: usize,
    size: u64,
    line_len: usize,
    too_big: bool,
    line_too_long: bool,
}

impl DataDecoder {
    pub fn new(
        mode: Mode,
        policy: BareNewline,
        nul: NulInData,
        max_size: u64,
        max_line: usize,
    ) -> Self {
        Self {
            mode,
            state: State::Text { at_start: true },
            policy,
            nul,
            max_size,
            max_line,
            size: 0,
            line_len: 0,
            too_big: false,
            line_too_long: false,
        }
    }

    /// The message is larger than allowed; content is no longer kept.
    pub fn too_big(&self) -> bool {
        self.too_big
    }

    /// A line was longer than allowed; content is no longer kept.
    pub fn line_too_long(&self) -> bool {
        self.line_too_long
    }

    /// Octets of decoded content so far (counted even after content stops being kept).
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Decodes `input`, appending content to `out`. Returns how many bytes were consumed.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> (usize, Progress) {
        let mut i = 0;
        while i < input.len() {
            // Fast path: copy the run up to the next CR, LF or NUL in one go.
            if let State::Text { at_start } = self.state
                && !(at_start && self.mode == Mode::Dot && input[i] == b'.')
            {
                let run_end =
                    memchr::memchr3(b'\r', b'\n', 0, &input[i..]).map_or(input.len(), |p| i + p);
                if run_end > i {
                    self.emit(&input[i..run_end], out);
                    self.line_len += run_end - i;
                    self.check_line();
                    self.state = State::Text { at_start: false };
                    i = run_end;
                    continue;
                }
            }
            let b = input[i];
            i += 1;
            match self.step(b, out) {
                Step::Continue => {}
                Step::Reprocess => i -= 1,
                Step::End => return (i, Progress::End),
                Step::Bare => return (i, Progress::BareNewline),
                Step::Nul => return (i, Progress::Nul),
            }
        }
        (i, Progress::More)
    }

    /// For BDAT: the last chunk has ended; a CR left pending is a bare CR.
    pub fn finish(&mut self, out: &mut Vec<u8>) -> Progress {
        if self.state == State::Cr {
            self.state = State::Text { at_start: true };
            if self.policy == BareNewline::Reject {
                return Progress::BareNewline;
            }
            self.emit(b"\r\n", out);
        }
        Progress::End
    }

    fn step(&mut self, b: u8, out: &mut Vec<u8>) -> Step {
        match self.state {
            State::Text { at_start } => match b {
                b'.' if at_start && self.mode == Mode::Dot => {
                    self.line_len += 1;
                    self.state = State::Dot;
                }
                b'\r' => self.state = State::Cr,
                b'\n' => return self.bare(out),
                0 => return self.nul(),
                _ => {
                    self.emit(&[b], out);
                    self.line_len += 1;
                    self.check_line();
                    self.state = State::Text { at_start: false };
                }
            },
            State::Cr => {
                if b == b'\n' {
                    self.end_line(out, true);
                } else {
                    // Bare CR: the byte after it starts a new line.
                    let step = self.bare(out);
                    if step == Step::Continue {
                        return Step::Reprocess;
                    }
                    return step;
                }
            }
            State::Dot => match b {
                b'\r' => self.state = State::DotCr,
                b'\n' => {
                    // ".<LF>" is not the end of data; keep the dot as text.
                    self.emit(b".", out);
                    return self.bare(out);
                }
                _ => {
                    // A stuffed dot: drop it, the rest of the line is text.
                    self.state = State::Text { at_start: false };
                    return Step::Reprocess;
                }
            },
            State::DotCr => {
                if b == b'\n' {
                    self.state = State::Text { at_start: true };
                    return Step::End;
                }
                // ".<CR>x": a line "." ended by a bare CR.
                self.emit(b".", out);
                let step = self.bare(out);
                if step == Step::Continue {
                    return Step::Reprocess;
                }
                return step;
            }
        }
        Step::Continue
    }

    /// A bare CR or LF was seen: refuse, or end the line with CRLF.
    fn bare(&mut self, out: &mut Vec<u8>) -> Step {
        match self.policy {
            BareNewline::Reject => Step::Bare,
            BareNewline::Normalize => {
                // The next line is not at a real line start: a dot there is text,
                // never the end of data (LF.CRLF must not end it).
                self.end_line(out, false);
                Step::Continue
            }
        }
    }

    /// A NUL was seen: refuse, or drop it. Either way the line has started,
    /// so a dot after it is text.
    fn nul(&mut self) -> Step {
        match self.nul {
            NulInData::Reject => Step::Nul,
            NulInData::Strip => {
                self.state = State::Text { at_start: false };
                Step::Continue
            }
        }
    }

    fn end_line(&mut self, out: &mut Vec<u8>, real_crlf: bool) {
        self.emit(b"\r\n", out);
        self.line_len += 2;
        self.check_line();
        self.line_len = 0;
        self.state = State::Text {
            at_start: real_crlf,
        };
    }

    fn check_line(&mut self) {
        if self.line_len > self.max_line {
            self.line_too_long = true;
        }
    }

    fn emit(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        self.size += bytes.len() as u64;
        if self.size > self.max_size {
            self.too_big = true;
        }
        if !self.too_big && !self.line_too_long {
            out.extend_from_slice(bytes);
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Continue,
    Reprocess,
    End,
    Bare,
    Nul,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A decoder with the usual limits (1 MiB, 1,000-octet lines), NUL refused.
    fn decoder(mode: Mode, policy: BareNewline) -> DataDecoder {
        DataDecoder::new(mode, policy, NulInData::Reject, 1 << 20, 1000)
    }

    fn decode(policy: BareNewline, input: &[u8]) -> (Vec<u8>, usize, Progress) {
        let mut d = decoder(Mode::Dot, policy);
        let mut out = Vec::new();
        let (n, p) = d.feed(input, &mut out);
        (out, n, p)
    }

    #[test]
    fn ends_only_at_crlf_dot_crlf() {
        let (out, n, p) = decode(
            BareNewline::Reject,
            b"Subject: x\r\n\r\nhello\r\n.\r\nQUIT\r\n",
        );
        assert_eq!(p, Progress::End);
        assert_eq!(out, b"Subject: x\r\n\r\nhello\r\n");
        assert_eq!(n, b"Subject: x\r\n\r\nhello\r\n.\r\n".len());
    }

    #[test]
    fn empty_message_and_leading_dot() {
        let (out, _, p) = decode(BareNewline::Reject, b".\r\n");
        assert_eq!((out.as_slice(), p), (&b""[..], Progress::End));
        let (out, _, p) = decode(BareNewline::Reject, b"..leading\r\n.\r\n");
        assert_eq!((out.as_slice(), p), (&b".leading\r\n"[..], Progress::End));
    }

    #[test]
    fn smuggling_variants_never_end_the_data() {
        for evil in [
            &b"a\n.\nMAIL"[..],
            b"a\r.\rMAIL",
            b"a\n.\r\nMAIL",
            b"a\r\n.\nMAIL",
            b"a\r.\r\nMAIL",
            b"a\r\n.\rMAIL",
        ] {
            let (_, _, p) = decode(BareNewline::Reject, evil);
            assert_eq!(p, Progress::BareNewline, "{evil:?}");
            let (out, _, p) = decode(BareNewline::Normalize, evil);
            assert_eq!(p, Progress::More, "{evil:?}");
            // After normalisation every line ends in CRLF and no bare CR/LF remains.
            assert!(!has_bare_newline(&out), "{out:?}");
        }
    }

    #[test]
    fn split_anywhere_gives_the_same_result() {
        let input = b"line one\r\n..dotted\r\n\r\nlast\r\n.\r\nRSET\r\n";
        let (whole, n_whole, _) = decode(BareNewline::Reject, input);
        for split in 1..input.len() {
            let mut d = decoder(Mode::Dot, BareNewline::Reject);
            let mut out = Vec::new();
            let (n1, p1) = d.feed(&input[..split], &mut out);
            let consumed = if p1 == Progress::End {
                n1
            } else {
                assert_eq!(n1, split);
                let (n2, p2) = d.feed(&input[split..], &mut out);
                assert_eq!(p2, Progress::End);
                split + n2
            };
            assert_eq!(out, whole, "split at {split}");
            assert_eq!(consumed, n_whole);
        }
    }

    #[test]
    fn size_and_line_limits_stop_keeping_content() {
        let mut d = DataDecoder::new(Mode::Dot, BareNewline::Reject, NulInData::Reject, 10, 1000);
        let mut out = Vec::new();
        let (_, p) = d.feed(b"0123456789abcdef\r\n.\r\n", &mut out);
        assert_eq!(p, Progress::End);
        assert!(d.too_big());
        let mut d = DataDecoder::new(
            Mode::Dot,
            BareNewline::Reject,
            NulInData::Reject,
            1 << 20,
            20,
        );
        let (_, p) = d.feed(&[b'x'; 100], &mut out);
        assert_eq!(p, Progress::More);
        assert!(d.line_too_long());
    }

    #[test]
    fn raw_mode_keeps_dots_and_checks_endings() {
        let mut d = decoder(Mode::Raw, BareNewline::Reject);
        let mut out = Vec::new();
        assert_eq!(d.feed(b".\r\n..x\r", &mut out).1, Progress::More);
        assert_eq!(d.feed(b"\n", &mut out).1, Progress::More);
        assert_eq!(d.finish(&mut out), Progress::End);
        assert_eq!(out, b".\r\n..x\r\n");
        let mut d = decoder(Mode::Raw, BareNewline::Reject);
        assert_eq!(d.feed(b"a\nb", &mut out).1, Progress::BareNewline);
    }

    #[test]
    fn nul_never_hides_an_end_of_data() {
        for evil in [
            &b"a\r\n\0.\r\nMAIL FROM:<x@y>\r\n"[..],
            b"a\r\n.\0\r\nMAIL",
            b"a\0b\r\n.\r\n",
        ] {
            let (_, _, p) = decode(BareNewline::Reject, evil);
            assert_eq!(p, Progress::Nul, "{evil:?}");
        }
        // Stripped: the dot after a NUL is text, kept (and stuffed again on the way out).
        let mut d = DataDecoder::new(
            Mode::Dot,
            BareNewline::Reject,
            NulInData::Strip,
            1 << 20,
            1000,
        );
        let mut out = Vec::new();
        let (n, p) = d.feed(b"a\r\n\0.\r\nb\0c\r\n.\r\nQUIT\r\n", &mut out);
        assert_eq!(p, Progress::End);
        assert_eq!(out, b"a\r\n.\r\nbc\r\n");
        assert_eq!(n, b"a\r\n\0.\r\nb\0c\r\n.\r\n".len());
        // BDAT: NUL needs BINARYMIME, which is not offered.
        let mut d = decoder(Mode::Raw, BareNewline::Reject);
        assert_eq!(d.feed(b"a\0b\r\n", &mut out).1, Progress::Nul);
    }

    fn has_bare_newline(b: &[u8]) -> bool {
        b.iter().enumerate().any(|(i, &c)| {
            (c == b'\n' && (i == 0 || b[i - 1] != b'\r'))
                || (c == b'\r' && b.get(i + 1) != Some(&b'\n'))
        })
    }

    /// What a correct sender does: CRLF lines, dots doubled at line start, CRLF.CRLF at the end.
    fn stuff(content: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut at_start = true;
        for &b in content {
            if at_start && b == b'.' {
                out.push(b'.');
            }
            out.push(b);
            at_start = b == b'\n';
        }
        out.extend_from_slice(b".\r\n");
        out
    }

    proptest! {
        #[test]
        fn stuffed_content_round_trips(lines in proptest::collection::vec("[.a-z ]{0,20}", 0..20)) {
            let mut content = Vec::new();
            for l in &lines {
                content.extend_from_slice(l.as_bytes());
                content.extend_from_slice(b"\r\n");
            }
            let wire = stuff(&content);
            let (out, n, p) = decode(BareNewline::Reject, &wire);
            prop_assert_eq!(p, Progress::End);
            prop_assert_eq!(n, wire.len());
            prop_assert_eq!(out, content);
        }

        #[test]
        fn arbitrary_bytes_never_panic_and_normalised_output_is_clean(input in proptest::collection::vec(any::<u8>(), 0..300)) {
            let (out, n, _) = decode(BareNewline::Normalize, &input);
            prop_assert!(n <= input.len());
            prop_assert!(!has_bare_newline(&out));
            let mut d = DataDecoder::new(Mode::Dot, BareNewline::Normalize, NulInData::Strip, 1 << 20, 1000);
            let mut out = Vec::new();
            d.feed(&input, &mut out);
            prop_assert!(!out.contains(&0));
        }
    }
}
