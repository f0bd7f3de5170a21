//! Sender rewriting for a profile's `rewrite_sender`: providers send only
//! as the mailbox that logged in. The envelope sender becomes that address,
//! and in the header:
//! - `From:` becomes the address, keeping the original display name
//!   (`From: "Scanner 3F" <relay@example.org>`, or `From: relay@example.org`);
//! - the original `From:` value is kept in a `Reply-To:` added right after
//!   it, unless the message already has a `Reply-To:` (then left alone), so
//!   that answers still reach the real sender;
//! - every `DKIM-Signature:` is removed: it covered the old `From:` and
//!   would now fail, and a failing signature makes receivers distrust the
//!   message more than none (the provider signs for its own domain);
//! - nothing else changes, the body included.

/// One header field: its name and its whole raw text (folded lines included).
struct Field<'a> {
    name: String,
    raw: &'a [u8],
}

/// Splits the header from the body; the header's fields, and where the body starts.
fn fields(content: &[u8]) -> (Vec<Field<'_>>, usize) {
    let mut out: Vec<Field> = Vec::new();
    let mut pos = 0;
    while pos < content.len() {
        let end = memchr::memchr(b'\n', &content[pos..]).map_or(content.len(), |i| pos + i + 1);
        let line = &content[pos..end];
        if line == b"\r\n" || line == b"\n" {
            return (out, pos);
        }
        if matches!(line.first(), Some(b' ' | b'\t'))
            && let Some(last) = out.last_mut()
        {
            // A folded continuation of the field before.
            let start = last.raw.as_ptr() as usize - content.as_ptr() as usize;
            last.raw = &content[start..end];
        } else {
            let name = line
                .iter()
                .position(|&b| b == b':')
                .map(|i| {
                    String::from_utf8_lossy(&line[..i])
                        .trim()
                        .to_ascii_lowercase()
                })
                .unwrap_or_default();
            out.push(Field {
                name,
                raw: &content[pos..end],
            });
        }
        pos = end;
    }
    (out, content.len())
}

/// The value of a field (after the colon), unfolded, trimmed.
fn value(raw: &[u8]) -> String {
    let colon = raw.iter().position(|&b| b == b':').map_or(0, |i| i + 1);
    let text = String::from_utf8_lossy(&raw[colon..]);
    text.split(['\r', '\n'])
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The display name of an address field's value, when it has one.
fn display_name(from: &str) -> Option<&str> {
    let (name, _) = from.split_once('<')?;
    let name = name.trim();
    (!name.is_empty()).then_some(name)
}

/// The message with its header rewritten for `new_sender` (see the module doc).
pub fn rewrite(content: &[u8], new_sender: &str) -> Vec<u8> {
    let (fields, body_start) = fields(content);
    let has_reply_to = fields.iter().any(|f| f.name == "reply-to");
    let mut out = Vec::with_capacity(content.len() + 128);
    let mut from_done = false;
    for f in &fields {
        match f.name.as_str() {
            "dkim-signature" => {}
            "from" if !from_done => {
                from_done = true;
                let original = value(f.raw);
                let new_from = match display_name(&original) {
                    Some(name) => format!("From: {name} <{new_sender}>\r\n"),
                    None => format!("From: {new_sender}\r\n"),
                };
                out.extend_from_slice(new_from.as_bytes());
                if !has_reply_to && !original.is_empty() {
                    // The original value, as it was written (folding and all).
                    let colon = f.raw.iter().position(|&b| b == b':').map_or(0, |i| i + 1);
                    out.extend_from_slice(b"Reply-To:");
                    out.extend_from_slice(&f.raw[colon..]);
                }
            }
            _ => out.extend_from_slice(f.raw),
        }
    }
    if !from_done {
        out.extend_from_slice(format!("From: {new_sender}\r\n").as_bytes());
    }
    out.extend_from_slice(&content[body_start..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_rewritten_original_kept_in_reply_to_dkim_removed_rest_byte_for_byte() {
        let msg = b"Received: from x\r\n\tby y\r\nDKIM-Signature: v=1; a=rsa-sha256; d=old.example;\r\n b=abc\r\nFrom: \"Scanner 3F\" <scan@printers.lan>\r\nTo: boss@example.org\r\nSubject: scan\r\n\r\nFrom: not a header\r\nbody\r\n";
        let out = rewrite(msg, "relay@contoso.example");
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "Received: from x\r\n\tby y\r\nFrom: \"Scanner 3F\" <relay@contoso.example>\r\nReply-To: \"Scanner 3F\" <scan@printers.lan>\r\nTo: boss@example.org\r\nSubject: scan\r\n\r\nFrom: not a header\r\nbody\r\n"
        );
    }

    #[test]
    fn an_existing_reply_to_stays_and_a_bare_from_stays_bare() {
        let msg = b"From: app@app.lan\r\nReply-To: support@example.org\r\n\r\nhi\r\n";
        let out = rewrite(msg, "relay@contoso.example");
        assert_eq!(
            out,
            b"From: relay@contoso.example\r\nReply-To: support@example.org\r\n\r\nhi\r\n"
        );
    }

    #[test]
    fn a_message_without_from_gets_one() {
        let out = rewrite(b"Subject: x\r\n\r\nbody\r\n", "r@c.example");
        assert_eq!(out, b"Subject: x\r\nFrom: r@c.example\r\n\r\nbody\r\n");
    }
}
