//! Making a received message durable before the 250, in the first way that
//! applies (see the module doc of `spool`): the accept journal for a small
//! message delivered at once, else its own file (a slot, or tmp + rename
//! published by the committer, one directory sync per batch).

use super::writer::Prepared;
use super::{Envelope, MemoryCopy, QueuedMessage, Spool, SpoolWriter};
use std::io;
use std::sync::Arc;

impl Spool {
    /// Makes the message whose content `writer` holds durable under
    /// `envelope`; when this returns Ok, the 250 may be sent. `journal_ok`:
    /// the queue manager delivers it at once (not held), so it may live in
    /// the shared journal until its first delivery pass ends. The message
    /// comes back as queued, with its content in memory when small.
    pub async fn accept(
        &self,
        writer: SpoolWriter,
        envelope: Envelope,
        journal_ok: bool,
    ) -> io::Result<QueuedMessage> {
        let body_len = writer.body_len();
        let journal = self.journal().filter(|_| journal_ok);
        let writer = match journal {
            Some(journal) => match writer.into_image(&envelope) {
                Ok((image, body_len)) => match MemoryCopy::keep_image(image, body_len) {
                    Ok(copy) => {
                        journal.append(&envelope.id, Arc::clone(&copy)).await?;
                        return Ok(self.just_queued(envelope, body_len, Some(copy), true));
                    }
                    // Over the memory budget: a file of its own after all.
                    Err(image) => {
                        let mut writer = self.begin_named(&envelope.id);
                        writer.write(&image[..body_len as usize]);
                        writer
                    }
                },
                Err(writer) => writer,
            },
            None => writer,
        };
        let env = envelope.clone();
        let prepared = tokio::task::spawn_blocking(move || {
            let mut prepared = writer.prepare(&env)?;
            let content = prepared.take_content();
            Ok((prepared.publish_if_durable()?, content))
        })
        .await
        .unwrap_or_else(|e| Err(io::Error::other(e.to_string())))?;
        let content = match prepared {
            (None, content) => content,
            (Some(p), content) => {
                self.publish(p).await?;
                content
            }
        };
        let memory = content.and_then(MemoryCopy::keep);
        Ok(self.just_queued(envelope, body_len, memory, false))
    }

    /// Renames a prepared file into `queue/` durably: through the
    /// committer (batched) when the server runs one, else here.
    async fn publish(&self, prepared: Prepared) -> io::Result<()> {
        if let Some(committer) = &self.committer {
            return committer.publish(prepared).await;
        }
        let queue_dir = self.queue_dir();
        tokio::task::spawn_blocking(move || {
            Prepared::publish_batch(vec![prepared], &queue_dir)
                .pop()
                .unwrap_or_else(|| Err(io::Error::other("nothing published")))
        })
        .await
        .unwrap_or_else(|e| Err(io::Error::other(e.to_string())))
    }
}
