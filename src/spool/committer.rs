//! Group commit: sessions prepare their messages in parallel (write and
//! fdatasync their own file); this task renames them into the queue and
//! fsyncs the queue directory once for every batch. Messages that arrive while
//! a batch is syncing form the next batch, so under load many messages share
//! one directory fsync, and a lone message waits for nobody.

use super::writer::Prepared;
use std::io;
use std::path::PathBuf;
use tokio::sync::{mpsc, oneshot};

const MAX_BATCH: usize = 512;

type Request = (Prepared, oneshot::Sender<io::Result<()>>);

#[derive(Clone)]
pub struct Committer {
    tx: mpsc::UnboundedSender<Request>,
}

impl Committer {
    /// Starts the committer task for `queue_dir` (needs a Tokio runtime).
    pub fn start(queue_dir: PathBuf) -> Committer {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(queue_dir, rx));
        Committer { tx }
    }

    /// Publishes one prepared message; returns once its rename is durable.
    pub async fn publish(&self, prepared: Prepared) -> io::Result<()> {
        let (done_tx, done_rx) = oneshot::channel();
        self.tx
            .send((prepared, done_tx))
            .map_err(|_| io::Error::other("spool committer stopped"))?;
        done_rx
            .await
            .unwrap_or_else(|_| Err(io::Error::other("spool committer stopped")))
    }
}

async fn run(queue_dir: PathBuf, mut rx: mpsc::UnboundedReceiver<Request>) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        let (prepared, waiters): (Vec<Prepared>, Vec<_>) = batch.into_iter().unzip();
        let dir = queue_dir.clone();
        let results = match tokio::task::spawn_blocking(move || {
            Prepared::publish_batch(prepared, &dir)
        })
        .await
        {
            Ok(r) => r,
            Err(e) => waiters
                .iter()
                .map(|_| Err(io::Error::other(format!("spool commit task failed: {e}"))))
                .collect(),
        };
        for (waiter, result) in waiters.into_iter().zip(results) {
            let _ = waiter.send(result);
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::spool::{Envelope, QueueId, Spool};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_publications_all_land_in_the_queue() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let committer = super::Committer::start(spool.queue_dir());
        let mut tasks = Vec::new();
        for i in 0..60 {
            let spool = spool.clone();
            let committer = committer.clone();
            tasks.push(tokio::spawn(async move {
                let id = QueueId::new();
                let mut w = spool.begin(&id);
                w.write(format!("Subject: {i}\r\n\r\nbody\r\n").as_bytes());
                let env = Envelope::for_test(&id, "a@x.test", &["b@y.test"]);
                let prepared = tokio::task::spawn_blocking(move || w.prepare(&env))
                    .await
                    .unwrap()
                    .unwrap();
                committer.publish(prepared).await.unwrap();
                // Published means readable as a complete message at once.
                assert!(spool.load(&id).is_ok());
                id
            }));
        }
        let mut ids = Vec::new();
        for t in tasks {
            ids.push(t.await.unwrap());
        }
        ids.sort();
        assert_eq!(spool.ids().unwrap(), ids);
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            0
        );
    }
}
