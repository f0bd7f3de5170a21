//! 8-bit to 7-bit conversion for a next hop that does not offer 8BITMIME
//! (RFC 6152 section 3: convert or return the message; never send 8-bit
//! octets to a 7-bit server). Each MIME leaf part whose body holds 8-bit
//! octets is re-encoded, quoted-printable for text and base64 for anything
//! else, with its Content-Transfer-Encoding field replaced; multipart bodies
//! and attached messages are walked into; header fields with 8-bit octets
//! get RFC 2047 encoded-words for the words that need them. The result holds
//! no octet above 127, whatever the input.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;

/// Nesting deeper than this is not walked into: its 8-bit octets are
/// encoded as one opaque base64 body instead.
const MAX_DEPTH: usize = 16;
/// RFC 2047: an encoded-word is at most 75 characters. This many octets of
/// text make one of 64 ("=?utf-8?B?", 52 of base64, "?="), so that a field
/// name and the word still fit in a 78-character line.
const WORD_OCTETS: usize = 39;

/// Whether `content` holds any octet above 127.
pub fn has_eight_bit(content: &[u8]) -> bool {
    !content.is_ascii()
}

/// `message` rewritten to 7 bits (see the module doc).
pub fn to_seven_bit(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + message.len() / 3);
    entity(message, &mut out, 0);
    out
}

/// One MIME entity: header fields, a blank line, a body.
fn entity(input: &[u8], out: &mut Vec<u8>, depth: usize) {
    let (head, body) = split_head(input);
    let fields = header_fields(head);
    let content_type = field_value(&fields, "content-type").unwrap_or_default();
    let media = media_type(&content_type);
    let encoding = field_value(&fields, "content-transfer-encoding")
        .map(|v| v.trim().to_ascii_lowercase())
        .unwrap_or_default();
    let needs_encoding = has_eight_bit(body);
    let walk_into = depth < MAX_DEPTH;
    let boundary = parameter(&content_type, "boundary");
    if walk_into && media.starts_with("multipart/") && boundary.is_some() {
        write_fields(&fields, out, None);
        out.extend_from_slice(b"\r\n");
        multipart(body, boundary.as_deref().unwrap_or_default(), out, depth);
    } else if walk_into
        && (media == "message/rfc822" || media == "message/global")
        && needs_encoding
    {
        // An attached message may not be encoded as a whole (RFC 2046 5.2.1): its own parts are.
        write_fields(&fields, out, Some("7bit"));
        out.extend_from_slice(b"\r\n");
        entity(body, out, depth + 1);
    } else if needs_encoding {
        let text = media.is_empty() || media.starts_with("text/");
        let already_encoded = encoding == "base64" || encoding == "quoted-printable";
        if text && !already_encoded {
            write_fields(&fields, out, Some("quoted-printable"));
            out.extend_from_slice(b"\r\n");
            out.extend_from_slice(&quoted_printable::encode(body));
        } else {
            write_fields(&fields, out, Some("base64"));
            out.extend_from_slice(b"\r\n");
            base64_lines(body, out);
        }
    } else {
        write_fields(&fields, out, None);
        if head.len() < input.len() || !body.is_empty() {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(body);
    }
}

/// The header block (without the blank line) and the body.
fn split_head(input: &[u8]) -> (&[u8], &[u8]) {
    if input.starts_with(b"\r\n") {
        return (&[], &input[2..]);
    }
    match memchr::memmem::find(input, b"\r\n\r\n") {
        Some(p) => (&input[..p + 2], &input[p + 4..]),
        None => (input, &[]),
    }
}

/// A header field: its name and its whole raw text (folded lines and the
/// final CRLF included).
struct Field<'a> {
    name: String,
    raw: &'a [u8],
}

fn header_fields(head: &[u8]) -> Vec<Field<'_>> {
    let mut fields: Vec<Field<'_>> = Vec::new();
    let mut start = 0;
    while start < head.len() {
        // A field runs until a line that does not start with white space.
        let mut end = start;
        loop {
            end = memchr::memchr(b'\n', &head[end..]).map_or(head.len(), |p| end + p + 1);
            if end >= head.len() || !matches!(head[end], b' ' | b'\t') {
                break;
            }
        }
        let raw = &head[start..end];
        let name = raw
            .iter()
            .position(|&b| b == b':')
            .map(|p| {
                String::from_utf8_lossy(&raw[..p])
                    .trim()
                    .to_ascii_lowercase()
            })
            .unwrap_or_default();
        fields.push(Field { name, raw });
        start = end;
    }
    fields
}

fn field_value(fields: &[Field<'_>], name: &str) -> Option<String> {
    let f = fields.iter().find(|f| f.name == name)?;
    let colon = f.raw.iter().position(|&b| b == b':')?;
    let value = String::from_utf8_lossy(&f.raw[colon + 1..]);
    Some(value.split_whitespace().collect::<Vec<_>>().join(" "))
}

/// "text/plain" from "Text/Plain; charset=utf-8".
fn media_type(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

/// A parameter's value, unquoted ("boundary").
fn parameter(content_type: &str, name: &str) -> Option<String> {
    content_type.split(';').skip(1).find_map(|p| {
        let (k, v) = p.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().trim_matches('"').to_string())
            .filter(|v| !v.is_empty())
    })
}

/// Writes the fields, 8-bit words encoded; with `encoding`, every
/// Content-Transfer-Encoding field is replaced by one saying that.
fn write_fields(fields: &[Field<'_>], out: &mut Vec<u8>, encoding: Option<&str>) {
    for f in fields {
        if encoding.is_some() && f.name == "content-transfer-encoding" {
            continue;
        }
        if has_eight_bit(f.raw) {
            encode_field(f.raw, out);
        } else {
            out.extend_from_slice(f.raw);
        }
    }
    if let Some(e) = encoding {
        out.extend_from_slice(format!("Content-Transfer-Encoding: {e}\r\n").as_bytes());
    }
}

/// A field with 8-bit octets: each run of words that hold them (with the
/// white space between those words) becomes encoded-words; the rest stays.
fn encode_field(raw: &[u8], out: &mut Vec<u8>) {
    // A line without a colon, or with 8-bit octets before it, is no field;
    // its octets are encoded all the same.
    let (name, value) = match raw.iter().position(|&b| b == b':') {
        Some(colon) if raw[..colon].is_ascii() => raw.split_at(colon + 1),
        _ => (&raw[..0], raw),
    };
    // Unfolded: the folds come back around the encoded-words.
    let value: Vec<u8> = value
        .iter()
        .copied()
        .filter(|&b| b != b'\r' && b != b'\n')
        .collect();
    let words: Vec<&[u8]> = value
        .split(|&b| b == b' ' || b == b'\t')
        .filter(|w| !w.is_empty())
        .collect();
    out.extend_from_slice(name);
    let mut i = 0;
    while i < words.len() {
        out.push(b' ');
        if !has_eight_bit(words[i]) {
            out.extend_from_slice(words[i]);
            i += 1;
            continue;
        }
        let mut run = words[i].to_vec();
        i += 1;
        while i < words.len() && has_eight_bit(words[i]) {
            run.push(b' ');
            run.extend_from_slice(words[i]);
            i += 1;
        }
        encoded_words(&run, out);
    }
    out.extend_from_slice(b"\r\n");
}

/// `text` as RFC 2047 "B" encoded-words, each on its own folded line after
/// the first; pieces are cut between characters, never inside one.
fn encoded_words(text: &[u8], out: &mut Vec<u8>) {
    let utf8 = std::str::from_utf8(text).is_ok();
    let charset = if utf8 { "utf-8" } else { "unknown-8bit" };
    let mut start = 0;
    let mut first = true;
    while start < text.len() {
        let mut end = (start + WORD_OCTETS).min(text.len());
        // Back off to a character boundary (a UTF-8 continuation octet is 10xxxxxx).
        while utf8 && end < text.len() && end > start + 1 && text[end] & 0xC0 == 0x80 {
            end -= 1;
        }
        if !first {
            out.extend_from_slice(b"\r\n ");
        }
        first = false;
        out.extend_from_slice(
            format!("=?{charset}?B?{}?=", B64.encode(&text[start..end])).as_bytes(),
        );
        start = end;
    }
}

/// A multipart body: the parts between the delimiter lines are entities;
/// the preamble and epilogue (which readers do not show) lose 8-bit octets.
fn multipart(body: &[u8], boundary: &str, out: &mut Vec<u8>, depth: usize) {
    let delimiter = format!("--{boundary}");
    let mut lines = LineCursor::new(body);
    let mut part_start: Option<usize> = None;
    let mut preamble_end = body.len();
    let mut closed_at = None;
    while let Some((start, line)) = lines.next_line() {
        let trimmed = trim_end_space(line);
        let is_close = trimmed == format!("{delimiter}--").as_bytes();
        if trimmed != delimiter.as_bytes() && !is_close {
            continue;
        }
        match part_start {
            None => {
                preamble_end = start;
                out.extend_from_slice(&seven_bit_text(&body[..start]));
            }
            Some(p) => {
                // The CRLF before a delimiter belongs to the delimiter.
                let end = start.saturating_sub(2).max(p);
                entity(&body[p..end], out, depth + 1);
                out.extend_from_slice(b"\r\n");
            }
        }
        out.extend_from_slice(line);
        part_start = Some(start + line.len());
        if is_close {
            closed_at = Some(start + line.len());
            break;
        }
    }
    match (part_start, closed_at) {
        (None, _) => out.extend_from_slice(&seven_bit_text(&body[..preamble_end])),
        (Some(_), Some(end)) => out.extend_from_slice(&seven_bit_text(&body[end..])),
        // No closing delimiter: the last part runs to the end.
        (Some(p), None) => entity(&body[p..], out, depth + 1),
    }
}

/// Text nobody decodes (a preamble, an epilogue): 8-bit octets become '?'.
fn seven_bit_text(text: &[u8]) -> Vec<u8> {
    text.iter()
        .map(|&b| if b < 0x80 { b } else { b'?' })
        .collect()
}

fn trim_end_space(line: &[u8]) -> &[u8] {
    let mut end = line.len();
    while end > 0 && matches!(line[end - 1], b'\r' | b'\n' | b' ' | b'\t') {
        end -= 1;
    }
    &line[..end]
}

/// Base64 in lines of 76 characters, CRLF after each.
fn base64_lines(body: &[u8], out: &mut Vec<u8>) {
    for chunk in body.chunks(57) {
        out.extend_from_slice(B64.encode(chunk).as_bytes());
        out.extend_from_slice(b"\r\n");
    }
}

/// Lines with their line ends, and where each starts.
struct LineCursor<'a> {
    text: &'a [u8],
    pos: usize,
}

impl<'a> LineCursor<'a> {
    fn new(text: &'a [u8]) -> Self {
        Self { text, pos: 0 }
    }

    fn next_line(&mut self) -> Option<(usize, &'a [u8])> {
        if self.pos >= self.text.len() {
            return None;
        }
        let start = self.pos;
        self.pos =
            memchr::memchr(b'\n', &self.text[start..]).map_or(self.text.len(), |p| start + p + 1);
        Some((start, &self.text[start..self.pos]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(bytes: &[u8]) -> String {
        String::from_utf8(bytes.to_vec()).expect("7-bit output is ASCII")
    }

    #[test]
    fn a_plain_8bit_body_becomes_quoted_printable() {
        let m = "Subject: hi\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\nGrüße\r\nzweite Zeile\r\n";
        let out = text(&to_seven_bit(m.as_bytes()));
        assert!(
            out.contains("Content-Transfer-Encoding: quoted-printable\r\n"),
            "{out}"
        );
        assert!(!out.contains("8bit"), "{out}");
        assert!(
            out.ends_with("\r\n\r\nGr=C3=BC=C3=9Fe\r\nzweite Zeile\r\n"),
            "{out}"
        );
        let (_, body) = split_head(out.as_bytes());
        assert_eq!(
            quoted_printable::decode(body, quoted_printable::ParseMode::Strict).unwrap(),
            "Grüße\r\nzweite Zeile\r\n".as_bytes()
        );
    }

    #[test]
    fn seven_bit_messages_are_left_as_they_are() {
        let m = b"Subject: hi\r\n\r\nplain\r\n.dot\r\n";
        assert_eq!(to_seven_bit(m), m);
        let headers_only = b"Subject: hi\r\n";
        assert_eq!(to_seven_bit(headers_only), headers_only);
    }

    #[test]
    fn multipart_parts_are_converted_one_by_one() {
        let m = "Content-Type: multipart/mixed; boundary=\"b1\"\r\n\r\npreamble ä\r\n--b1\r\nContent-Type: text/plain\r\n\r\nä\r\n--b1\r\nContent-Type: application/octet-stream\r\n\r\n\u{1}\u{ff}\r\n--b1\r\nContent-Type: text/plain\r\n\r\nascii only\r\n--b1--\r\nepilogue\r\n";
        let out = text(&to_seven_bit(m.as_bytes()));
        assert!(out.contains("--b1\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n=C3=A4\r\n--b1\r\n"), "{out}");
        assert!(out.contains("Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"), "{out}");
        assert!(
            out.contains(
                "--b1\r\nContent-Type: text/plain\r\n\r\nascii only\r\n--b1--\r\nepilogue\r\n"
            ),
            "{out}"
        );
        assert!(out.contains("preamble ??"), "{out}");
    }

    #[test]
    fn header_words_with_8bit_become_encoded_words() {
        let m =
            "From: Jürgen Müller <j@example.org>\r\nSubject: Grüße aus Köln, heute\r\n\r\nx\r\n";
        let out = text(&to_seven_bit(m.as_bytes()));
        let from = out.lines().next().unwrap();
        assert!(from.starts_with("From: =?utf-8?B?"), "{out}");
        assert!(from.ends_with(" <j@example.org>"), "{out}");
        let word = from
            .trim_start_matches("From: =?utf-8?B?")
            .split("?=")
            .next()
            .unwrap();
        assert_eq!(B64.decode(word).unwrap(), "Jürgen Müller".as_bytes());
        assert!(out.contains(" heute\r\n"), "{out}");
    }

    #[test]
    fn long_8bit_header_text_is_cut_between_characters() {
        let subject = "ü".repeat(60);
        let m = format!("Subject: {subject}\r\n\r\nx\r\n");
        let out = text(&to_seven_bit(m.as_bytes()));
        let mut decoded = Vec::new();
        for word in out.split("=?utf-8?B?").skip(1) {
            let b64 = word.split("?=").next().unwrap();
            let piece = B64.decode(b64).unwrap();
            assert!(
                std::str::from_utf8(&piece).is_ok(),
                "a piece holds whole characters"
            );
            decoded.extend(piece);
        }
        assert_eq!(decoded, subject.as_bytes());
        assert!(out.lines().all(|l| l.len() <= 78), "{out}");
    }

    #[test]
    fn an_attached_message_is_walked_into() {
        let m = "Content-Type: message/rfc822\r\n\r\nSubject: inner\r\nContent-Type: text/plain\r\n\r\nÄrger\r\n";
        let out = text(&to_seven_bit(m.as_bytes()));
        assert!(out.starts_with("Content-Type: message/rfc822\r\nContent-Transfer-Encoding: 7bit\r\n\r\nSubject: inner\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n=C3=84rger"), "{out}");
    }

    proptest::proptest! {
        #[test]
        fn the_output_is_always_seven_bit(
            message in proptest::collection::vec(proptest::sample::select(
                b"ab \r\n-:=\";\xc3\xa4\xff".to_vec()), 0..400),
            multipart in proptest::bool::ANY,
        ) {
            let mut input = if multipart {
                b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n".to_vec()
            } else {
                Vec::new()
            };
            input.extend(message);
            let out = to_seven_bit(&input);
            proptest::prop_assert!(out.is_ascii());
        }
    }
}
