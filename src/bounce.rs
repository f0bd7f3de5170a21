//! Delivery status notifications (RFC 3464): a multipart/report with a
//! human-readable part, a message/delivery-status part, and the original
//! message (or its headers). Written by hand because the message/* parts
//! must not be transfer-encoded (RFC 2046 5.2.1).

use crate::attempt::AttemptResult;
use crate::attempt::EnhancedStatus;
use crate::config::BounceAttach;
use crate::spool::Envelope;

/// One recipient to report on.
pub struct ReportedRecipient {
    pub address: String,
    /// What the last attempt found (or why the message expired).
    pub result: AttemptResult,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportKind {
    /// Permanent failure or expiry: the message was not delivered to these recipients.
    Failed,
    /// Still queued after the warning time; retries go on.
    Delayed,
}

/// Whether a bounce may be sent for this message at all: never to the null
/// sender (that would loop), never about a bounce.
pub fn may_bounce(envelope: &Envelope) -> bool {
    !envelope.sender.is_empty()
}

/// The Status field: the result's enhanced code; a delay is always reported
/// in class 4, whatever the last reply said.
pub fn status_of(result: &AttemptResult, kind: ReportKind) -> EnhancedStatus {
    let status = result.status();
    match kind {
        ReportKind::Failed => status,
        ReportKind::Delayed => status.in_class(4),
    }
}

/// What of the original a report carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attach {
    /// The whole message.
    Full,
    /// Its whole header section.
    Headers,
    /// A few identifying header fields, capped (`SUMMARY_FIELDS`, at most
    /// `SUMMARY_BYTES`): for mail from strangers, whose forged sender would
    /// otherwise get back whatever the stranger put in (backscatter).
    Summary,
}

impl From<BounceAttach> for Attach {
    fn from(a: BounceAttach) -> Attach {
        match a {
            BounceAttach::Full => Attach::Full,
            BounceAttach::Headers => Attach::Headers,
        }
    }
}

/// The header fields a stranger's bounce carries, enough to recognise the message.
const SUMMARY_FIELDS: [&str; 6] = ["from", "to", "cc", "subject", "date", "message-id"];
/// The most a stranger's bounce carries of the original.
const SUMMARY_BYTES: usize = 4096;
/// The most of one field kept (RFC 5322's line limit).
const SUMMARY_FIELD_BYTES: usize = 998;
/// How far into the original the header section is looked for.
const HEADER_SCAN_BYTES: usize = 64 * 1024;

/// Builds the DSN message (headers and body, CRLF line ends).
pub fn build(
    kind: ReportKind,
    hostname: &str,
    original: &Envelope,
    original_body: &[u8],
    recipients: &[ReportedRecipient],
    attach: Attach,
    bounce_id: &str,
) -> Vec<u8> {
    let now = chrono::Utc::now().to_rfc2822();
    let boundary = format!("=_portcullis_{bounce_id}");
    let subject = match kind {
        ReportKind::Failed => "Undelivered Mail Returned to Sender",
        ReportKind::Delayed => "Delayed Mail (still being retried)",
    };
    let mut m = String::new();
    m.push_str(&format!(
        "From: Mail Delivery System <MAILER-DAEMON@{hostname}>\r\n"
    ));
    m.push_str(&format!("To: <{}>\r\n", original.sender));
    m.push_str(&format!("Subject: {subject}\r\n"));
    m.push_str(&format!("Date: {now}\r\n"));
    m.push_str(&format!("Message-ID: <{bounce_id}.dsn@{hostname}>\r\n"));
    m.push_str("Auto-Submitted: auto-replied\r\n");
    m.push_str("MIME-Version: 1.0\r\n");
    m.push_str(&format!("Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"{boundary}\"\r\n\r\n"));
    m.push_str("This is a MIME-encapsulated delivery status notification.\r\n\r\n");

    // Part 1: for people.
    m.push_str(&format!("--{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"));
    m.push_str(&format!("This is the mail system at {hostname}.\r\n\r\n"));
    match kind {
        ReportKind::Failed => m.push_str("Your message could not be delivered to the recipients below. It has been removed from the queue.\r\n\r\n"),
        ReportKind::Delayed => m.push_str("Your message has not been delivered yet to the recipients below. Delivery will be retried; you do not need to send it again.\r\n\r\n"),
    }
    for r in recipients {
        m.push_str(&format!(
            "<{}>: {}\r\n",
            r.address,
            one_line(&r.result.to_string())
        ));
    }
    m.push_str("\r\n");

    // Part 2: for programs.
    m.push_str(&format!(
        "--{boundary}\r\nContent-Type: message/delivery-status\r\n\r\n"
    ));
    m.push_str(&format!("Reporting-MTA: dns; {hostname}\r\n"));
    m.push_str(&format!("X-Portcullis-Queue-ID: {}\r\n", original.id));
    if let Some(arrival) = chrono::DateTime::from_timestamp(original.received_at, 0) {
        m.push_str(&format!("Arrival-Date: {}\r\n", arrival.to_rfc2822()));
    }
    for r in recipients {
        m.push_str("\r\n");
        m.push_str(&format!("Final-Recipient: rfc822; {}\r\n", r.address));
        m.push_str(&format!(
            "Action: {}\r\n",
            if kind == ReportKind::Failed {
                "failed"
            } else {
                "delayed"
            }
        ));
        m.push_str(&format!("Status: {}\r\n", status_of(&r.result, kind)));
        if let Some(remote) = &r.result.remote {
            m.push_str(&format!("Remote-MTA: dns; {remote}\r\n"));
        }
        if let Some(code) = r.result.code {
            let enhanced = r
                .result
                .enhanced
                .map(|e| format!("{e} "))
                .unwrap_or_default();
            m.push_str(&format!(
                "Diagnostic-Code: smtp; {code} {enhanced}{}\r\n",
                one_line(&r.result.text)
            ));
        }
        m.push_str(&format!("Last-Attempt-Date: {now}\r\n"));
    }
    m.push_str("\r\n");

    // Part 3: the original.
    let summary;
    let (ctype, content): (&str, &[u8]) = match attach {
        Attach::Full => ("message/rfc822", original_body),
        Attach::Headers => ("text/rfc822-headers", headers_of(original_body)),
        Attach::Summary => {
            summary = summary_of(original_body);
            ("text/rfc822-headers", summary.as_slice())
        }
    };
    let cte = if content.is_ascii() { "7bit" } else { "8bit" };
    m.push_str(&format!("--{boundary}\r\nContent-Type: {ctype}\r\nContent-Transfer-Encoding: {cte}\r\nContent-Description: the original message\r\n\r\n"));
    let mut out = m.into_bytes();
    out.extend_from_slice(content);
    if !content.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    out
}

fn one_line(s: &str) -> String {
    s.replace(['\r', '\n'], " ")
}

/// The header block of a message, up to and including the blank line.
fn headers_of(body: &[u8]) -> &[u8] {
    match body.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(p) => &body[..p + 4],
        None => body,
    }
}

/// The identifying fields of the original's header section, each cut to
/// one line's length, all together at most `SUMMARY_BYTES`.
fn summary_of(body: &[u8]) -> Vec<u8> {
    let scanned = &body[..body.len().min(HEADER_SCAN_BYTES)];
    let head = match memchr::memmem::find(scanned, b"\r\n\r\n") {
        Some(p) => &scanned[..p + 2],
        None => scanned,
    };
    let mut out = Vec::new();
    let mut field: Vec<u8> = Vec::new();
    let keep = |field: &[u8], out: &mut Vec<u8>| {
        let name = field.iter().position(|&b| b == b':').map(|p| {
            String::from_utf8_lossy(&field[..p])
                .trim()
                .to_ascii_lowercase()
        });
        if name.is_some_and(|n| SUMMARY_FIELDS.contains(&n.as_str())) {
            let line = &field[..field.len().min(SUMMARY_FIELD_BYTES)];
            if out.len() + line.len() + 2 <= SUMMARY_BYTES {
                out.extend_from_slice(line);
                out.extend_from_slice(b"\r\n");
            }
        }
    };
    for line in head.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if matches!(line.first(), Some(b' ' | b'\t')) {
            // A folded line: part of the field above, unfolded.
            field.push(b' ');
            field.extend(line.iter().skip_while(|b| matches!(b, b' ' | b'\t')));
            continue;
        }
        keep(&field, &mut out);
        field.clear();
        field.extend_from_slice(line);
    }
    keep(&field, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_codes() {
        use crate::attempt::Stage;
        let local =
            |e: &str| AttemptResult::local(Stage::Routing, EnhancedStatus::parse(e).unwrap(), "x");
        let status = |e: &str, kind| status_of(&local(e), kind).to_string();
        assert_eq!(status("5.1.10", ReportKind::Failed), "5.1.10");
        assert_eq!(status("4.4.7", ReportKind::Failed), "4.4.7");
        assert_eq!(status("5.1.1", ReportKind::Delayed), "4.1.1");
    }

    #[test]
    fn report_structure() {
        let env = Envelope::for_test(
            "0123456789ABCDEF01",
            "alice@example.org",
            &["bob@example.net"],
        );
        let original = b"Subject: hello\r\n\r\nbody\r\n";
        let rcpts = [ReportedRecipient {
            address: "bob@example.net".into(),
            result: AttemptResult::reply(
                crate::attempt::Stage::RcptTo,
                &crate::delivery::client::ServerReply {
                    code: 550,
                    text: "5.1.1 user unknown".into(),
                    step: crate::delivery::client::Step::RcptTo,
                    local: false,
                },
                "mx.example.net",
            ),
        }];
        let dsn = String::from_utf8(build(
            ReportKind::Failed,
            "relay.test",
            &env,
            original,
            &rcpts,
            Attach::Full,
            "FEDCBA9876543210FF",
        ))
        .unwrap();
        assert!(dsn.contains("Content-Type: multipart/report; report-type=delivery-status"));
        assert!(dsn.contains("Final-Recipient: rfc822; bob@example.net\r\nAction: failed\r\nStatus: 5.1.1\r\nRemote-MTA: dns; mx.example.net\r\nDiagnostic-Code: smtp; 550 5.1.1 user unknown\r\n"));
        assert!(dsn.contains("Content-Type: message/rfc822"));
        assert!(
            dsn.contains("Subject: hello\r\n\r\nbody\r\n--=_portcullis_FEDCBA9876543210FF--\r\n")
        );
        let headers_only = String::from_utf8(build(
            ReportKind::Failed,
            "relay.test",
            &env,
            original,
            &rcpts,
            Attach::Headers,
            "X",
        ))
        .unwrap();
        assert!(
            headers_only.contains("text/rfc822-headers") && !headers_only.contains("body\r\n--")
        );
    }

    #[test]
    fn a_strangers_bounce_carries_a_few_capped_fields() {
        let mut spam = String::from("Subject: buy\r\n From: x\r\nMessage-ID: <1@spam>\r\n");
        for i in 0..2000 {
            spam.push_str(&format!("X-Junk-{i}: {}\r\n", "A".repeat(50)));
        }
        spam.push_str(&format!("To: {}\r\n\r\nbody\r\n", "v".repeat(5000)));
        let s = summary_of(spam.as_bytes());
        let text = String::from_utf8(s.clone()).unwrap();
        assert!(
            text.starts_with("Subject: buy From: x\r\nMessage-ID: <1@spam>\r\n"),
            "{text}"
        );
        assert!(!text.contains("X-Junk"), "{text}");
        assert!(s.len() <= SUMMARY_BYTES);
        // A huge message without a blank line is no different.
        let no_blank = "Subject: s\r\n".to_string() + &"x".repeat(3_000_000);
        assert!(summary_of(no_blank.as_bytes()).len() <= SUMMARY_BYTES);
    }
}
