//! Group commit for the database: writes that arrive while earlier ones are
//! being committed wait together and go in one statement and one commit
//! (one WAL flush, one round trip to the synchronous standby), the way the
//! local spool's journal batches its syncs. No write waits for a timer: a
//! batch is whatever queued up while the previous ones ran.

use std::future::Future;
use std::sync::Arc;
use tokio::sync::{Semaphore, mpsc, oneshot};

/// Per item: its own answer (e.g. whether its row was there), or the
/// batch's error.
type Reply = oneshot::Sender<Result<bool, String>>;

pub struct Batcher<T> {
    tx: mpsc::UnboundedSender<(T, Reply)>,
}

impl<T: Send + 'static> Batcher<T> {
    /// Runs batches of at most `max` items with `run`, at most `parallel`
    /// at once (more batches in flight keep the database busy while the
    /// next fills). `run` answers one bool per item, in order.
    pub fn start<F, Fut>(parallel: usize, max: usize, run: F) -> Batcher<T>
    where
        F: Fn(Vec<T>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Vec<bool>, String>> + Send + 'static,
    {
        let (tx, mut rx) = mpsc::unbounded_channel::<(T, Reply)>();
        let run = Arc::new(run);
        let slots = Arc::new(Semaphore::new(parallel.max(1)));
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
                    return;
                };
                // What queued up while waiting for a slot joins this batch.
                let mut batch = vec![first];
                while batch.len() < max.max(1) {
                    match rx.try_recv() {
                        Ok(item) => batch.push(item),
                        Err(_) => break,
                    }
                }
                let run = Arc::clone(&run);
                tokio::spawn(async move {
                    let (items, replies): (Vec<T>, Vec<Reply>) = batch.into_iter().unzip();
                    let count = items.len();
                    let result = run(items).await;
                    for (i, reply) in replies.into_iter().enumerate() {
                        let answer = match &result {
                            Ok(each) if each.len() == count => Ok(each[i]),
                            Ok(_) => Err("the batch answered for the wrong number of items".into()),
                            Err(e) => Err(e.clone()),
                        };
                        let _ = reply.send(answer);
                    }
                    drop(slot);
                });
            }
        });
        Batcher { tx }
    }

    /// Queues `item` and waits for its batch to be committed.
    pub async fn submit(&self, item: T) -> Result<bool, String> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send((item, reply))
            .map_err(|_| "the database writer has stopped".to_string())?;
        answer
            .await
            .map_err(|_| "the database writer has stopped".to_string())?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn writes_that_wait_together_go_in_one_batch() {
        let batches = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&batches);
        let batcher = Arc::new(Batcher::start(1, 100, move |items: Vec<u32>| {
            counted.fetch_add(1, Ordering::SeqCst);
            async move {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                Ok(items.iter().map(|i| i % 2 == 0).collect())
            }
        }));
        let mut waiting = tokio::task::JoinSet::new();
        for i in 0..50u32 {
            let b = Arc::clone(&batcher);
            waiting.spawn(async move { (i, b.submit(i).await) });
        }
        while let Some(done) = waiting.join_next().await {
            let (i, answer) = done.unwrap();
            assert_eq!(answer, Ok(i % 2 == 0), "each item gets its own answer");
        }
        let n = batches.load(Ordering::SeqCst);
        assert!(n < 10, "50 writes in {n} batches");
    }

    #[tokio::test]
    async fn a_failed_batch_fails_each_of_its_items() {
        let batcher = Batcher::start(2, 10, |_items: Vec<u32>| async {
            Err::<Vec<bool>, _>("database gone".to_string())
        });
        assert_eq!(batcher.submit(1).await, Err("database gone".to_string()));
    }
}
