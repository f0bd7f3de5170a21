//! Mail we write ourselves — delivery reports, alert notices, TLS reports —
//! put in the queue like any message: accepted by the queue store (durable
//! before this returns), then handed to the manager. It always has the
//! null sender, so that a report that cannot be delivered makes no report
//! of its own.

use super::{QueueHandle, QueueStore};
use crate::spool::{ContentInfo, Envelope, EnvelopeRecipient, Origin, QueueId, Spool};

/// What to queue: `message` for `to`, as `id`.
pub struct LocalMail<'a> {
    pub id: &'a QueueId,
    pub hostname: &'a str,
    pub to: &'a str,
    pub message: Vec<u8>,
    pub smtputf8: bool,
}

/// The way into the queue: the store that makes the message durable, the
/// spool whose writer holds its content meanwhile, the manager to tell.
pub struct Queueing<'a> {
    pub store: &'a dyn QueueStore,
    pub spool: &'a Spool,
    /// Absent where no manager runs (tests of the protocol alone).
    pub queue: Option<&'a QueueHandle>,
}

/// Queues the message and tells the manager.
pub async fn submit(into: Queueing<'_>, mail: LocalMail<'_>) -> Result<(), String> {
    let envelope = envelope(&mail);
    let mut writer = into.spool.begin(mail.id);
    writer.write(&mail.message);
    let queued = into
        .store
        .accept(writer, envelope, into.queue.is_some())
        .await
        .map_err(|e| e.to_string())?;
    if let Some(q) = into.queue {
        q.notify_queued(mail.id.clone(), queued);
    }
    Ok(())
}

fn envelope(mail: &LocalMail<'_>) -> Envelope {
    Envelope::new(
        mail.id,
        String::new(),
        vec![EnvelopeRecipient {
            address: mail.to.to_string(),
            domain: mail
                .to
                .rsplit_once('@')
                .map(|(_, d)| crate::smtp::address::Domain::normalize(d))
                .unwrap_or_default(),
        }],
        Origin {
            client_ip: "127.0.0.1".into(),
            helo: mail.hostname.to_string(),
            auth_user: None,
            trusted: true,
        },
        ContentInfo {
            smtputf8: mail.smtputf8,
            eight_bit: !mail.message.is_ascii(),
            size: mail.message.len() as u64,
        },
    )
}
