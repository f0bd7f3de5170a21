//! Mail we write ourselves — delivery reports, alert notices, TLS reports —
//! put in the queue like any message: synced, then announced to the
//! manager. It always has the null sender, so that a report that cannot be
//! delivered makes no report of its own.

use super::QueueHandle;
use crate::spool::{ContentInfo, Envelope, EnvelopeRecipient, Origin, QueueId, Spool};

/// Writes `message` for `to` into the spool as `id` (blocking: synced).
pub fn write(
    spool: &Spool,
    id: &QueueId,
    hostname: &str,
    to: &str,
    message: &[u8],
    smtputf8: bool,
) -> std::io::Result<()> {
    let envelope = Envelope::new(
        id,
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
            helo: hostname.to_string(),
            auth_user: None,
            trusted: true,
        },
        ContentInfo {
            smtputf8,
            eight_bit: !message.is_ascii(),
            size: message.len() as u64,
        },
    );
    let mut w = spool.begin(id);
    w.write(message);
    w.commit(&envelope)
}

/// Queues `message` for `to` as `id`, off the async threads, and tells the manager.
pub async fn submit(
    spool: &Spool,
    queue: Option<&QueueHandle>,
    hostname: &str,
    id: &QueueId,
    to: &str,
    message: Vec<u8>,
) -> Result<(), String> {
    let (spool, qid, host, to) = (
        spool.clone(),
        id.clone(),
        hostname.to_string(),
        to.to_string(),
    );
    tokio::task::spawn_blocking(move || write(&spool, &qid, &host, &to, &message, false))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    if let Some(q) = queue {
        q.notify(id.clone());
    }
    Ok(())
}
