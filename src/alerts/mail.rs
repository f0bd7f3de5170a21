//! An alert by e-mail: a short plain-text message queued like a bounce
//! (null sender, so a notice that cannot be delivered makes no bounce of
//! its own) to the rule's `email` address.

use crate::session::Context;
use crate::spool::{ContentInfo, Envelope, EnvelopeRecipient, Origin, QueueId};

/// Queues one notice; the queue ID, or why it could not be written.
pub async fn queue_notice(
    ctx: &Context,
    to: &str,
    subject: &str,
    body: &str,
) -> Result<QueueId, String> {
    let id = QueueId::new();
    let host = &ctx.hostname;
    let message = compose(host, to, subject, body, &id);
    let envelope = Envelope::new(
        &id,
        String::new(),
        vec![EnvelopeRecipient {
            address: to.to_string(),
            domain: to
                .rsplit_once('@')
                .map(|(_, d)| crate::smtp::address::Domain::normalize(d))
                .unwrap_or_default(),
        }],
        Origin {
            client_ip: "127.0.0.1".into(),
            helo: host.clone(),
            auth_user: None,
            trusted: true,
        },
        ContentInfo {
            smtputf8: false,
            eight_bit: !message.is_ascii(),
            size: message.len() as u64,
        },
    );
    let spool = ctx.spool.clone();
    let qid = id.clone();
    tokio::task::spawn_blocking(move || {
        let mut w = spool.begin(&qid);
        w.write(message.as_bytes());
        w.commit(&envelope)
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| e.to_string())?;
    if let Some(q) = &ctx.queue {
        q.notify(id.clone());
    }
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
