//! Counts the Received: headers of a message as it streams past, so that a
//! mail loop (our own MX pointing back at us, two relays forwarding to each
//! other) is stopped at the door (RFC 5321 6.3).

const TAG: &[u8] = b"received:";

#[derive(Debug, Default)]
pub struct HopCounter {
    hops: usize,
    in_body: bool,
    /// How many bytes of "received:" the current line has matched so far (None: no match).
    matched: Option<usize>,
    /// Bytes seen on the current line before its LF (a CRLF-only line ends the headers).
    line_len: usize,
}

impl HopCounter {
    pub fn new() -> Self {
        Self {
            matched: Some(0),
            ..Default::default()
        }
    }

    pub fn hops(&self) -> usize {
        self.hops
    }

    /// Feeds decoded message bytes (CRLF line ends).
    pub fn feed(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if self.in_body {
                return;
            }
            if b == b'\n' {
                if self.line_len <= 1 {
                    self.in_body = true; // CRLF alone: end of the header section
                }
                self.matched = Some(0);
                self.line_len = 0;
                continue;
            }
            self.line_len += 1;
            if let Some(m) = self.matched {
                if m < TAG.len() && b.to_ascii_lowercase() == TAG[m] {
                    self.matched = Some(m + 1);
                    if m + 1 == TAG.len() {
                        self.hops += 1;
                        self.matched = None;
                    }
                } else {
                    self.matched = None;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_received_headers_only_in_the_header_section() {
        let mut h = HopCounter::new();
        h.feed(b"Received: from a\r\n\tby b\r\nRECEIVED: x\r\nSubject: Received: no\r\nX-Received: no\r\n\r\nReceived: in body\r\n");
        assert_eq!(h.hops(), 2);
    }

    #[test]
    fn split_feeding_gives_the_same_count() {
        let msg = b"Received: 1\r\nReceived: 2\r\nReceived: 3\r\n\r\nbody";
        for split in 1..msg.len() {
            let mut h = HopCounter::new();
            h.feed(&msg[..split]);
            h.feed(&msg[split..]);
            assert_eq!(h.hops(), 3, "split at {split}");
        }
    }
}
