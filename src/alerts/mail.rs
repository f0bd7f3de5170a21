//! An alert by e-mail: a short plain-text message queued like a bounce
//! (null sender, so a notice that cannot be delivered makes no bounce of
//! its own) to the rule's `email` address.

use crate::app::Context;
use crate::spool::QueueId;

/// Queues one notice; the queue ID, or why it could not be written.
pub async fn queue_notice(
    ctx: &Context,
    to: &str,
    subject: &str,
    body: &str,
) -> Result<QueueId, String> {
    let id = QueueId::new();
    let message = compose(&ctx.hostname, to, subject, body, &id);
    crate::queue::local_mail::submit(
        ctx.queueing(),
        crate::queue::local_mail::LocalMail {
            id: &id,
            hostname: &ctx.hostname,
            to,
            message: message.into_bytes(),
            smtputf8: false,
        },
    )
    .await?;
    Ok(id)
}

/// Control characters (a reply text from a remote server may carry some)
/// become spaces: nothing in a notice can start a header of its own.
fn clean(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

fn compose(host: &str, to: &str, subject: &str, body: &str, id: &QueueId) -> String {
    let date = chrono::Utc::now().to_rfc2822();
    let mut text = String::new();
    for line in body.lines() {
        text.push_str(&clean(line));
        text.push_str("\r\n");
    }
    format!(
        "Date: {date}\r\nFrom: Portcullis on {host} <postmaster@{host}>\r\nTo: <{to}>\r\nSubject: {subject}\r\nMessage-ID: <alert.{id}@{host}>\r\nAuto-Submitted: auto-generated\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n{text}",
        host = clean(host),
        to = clean(to),
        subject = clean(subject),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_notice_cannot_carry_a_header_of_its_own() {
        let id = QueueId::parse("0123456789ABCDEF0123").unwrap();
        let m = compose(
            "relay.example",
            "ops@example.org",
            "ALERT x\r\nBcc: victim@example.net",
            "line one\r\nline two",
            &id,
        );
        let (head, body) = m.split_once("\r\n\r\n").unwrap();
        assert!(!head.contains("\r\nBcc:"), "{head}");
        assert!(head.contains("Subject: ALERT x  Bcc: victim@example.net"));
        assert_eq!(body, "line one\r\nline two\r\n");
        assert!(head.contains("Auto-Submitted: auto-generated"));
    }
}
