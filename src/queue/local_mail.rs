//! Mail we write ourselves (alert notices, TLS reports) put in the queue
//! like any message: synced, then announced to the manager. Bounces and
//! delay notices have their own path in `work.rs` (they belong to a message).

use super::QueueHandle;
use crate::spool::{ContentInfo, Envelope, EnvelopeRecipient, Origin, QueueId, Spool};

/// Queues `message` from `sender` (empty: the null sender) to `to`.
pub async fn submit(
    spool: &Spool,
    queue: Option<&QueueHandle>,
    hostname: &str,
    sender: &str,
    to: &str,
    message: Vec<u8>,
) -> Result<QueueId, String> {
    let id = QueueId::new();
    let envelope = Envelope::new(
        &id,
        sender.to_string(),
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
            smtputf8: false,
            eight_bit: !message.is_ascii(),
            size: message.len() as u64,
        },
    );
    let spool = spool.clone();
    let qid = id.clone();
    tokio::task::spawn_blocking(move || {
        let mut w = spool.begin(&qid);
        w.write(&message);
        w.commit(&envelope)
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| e.to_string())?;
    if let Some(q) = queue {
        q.notify(id.clone());
    }
    Ok(id)
}
