//! The queue store: where queued messages live between the 250 and their
//! last delivery result. The queue manager reads and writes messages only
//! through this trait; the local spool (journal, message files, state files)
//! is its implementation today, and a shared database holding messages
//! under fenced leases is meant to be the next (see the cluster issue):
//! every write names one message and says how durable it must be before it
//! returns, and a store that finds the message gone (deleted, or taken over
//! by another owner) answers `SpoolError::NotFound` and the manager drops
//! its work on it.
//!
//! A session receives a message's content into a `SpoolWriter` (memory,
//! spilling to a local file when large) and hands it to `accept`, which
//! makes it durable before the 250. A store shared by several nodes finds
//! the work of a node that died through `claim_due`.

use super::QueueCommand;
use crate::spool::{
    Envelope, MemoryCopy, MessageState, QueueId, QueuedMessage, Spool, SpoolError, SpoolWriter,
};
use std::future::Future;
use std::pin::Pin;

/// How far a write must have gone before it returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// On stable storage: a crash right after must not undo it (holds,
    /// releases, final results before a bounce, deletes).
    Synced,
    /// Applied, but a crash may lose it: only for what a crash may lose
    /// harmlessly (a deferral's new due time: an earlier retry).
    Quick,
}

/// What became of a command forwarded to the store.
pub enum Forwarded {
    /// Left for the node holding the message.
    Passed { node: i32 },
    /// No live node held it: it is this node's now, to apply the command here.
    TakenOver(QueueId, Box<QueuedMessage>),
}

/// What `load_all` found.
#[derive(Default)]
pub struct Loaded {
    pub messages: Vec<(QueueId, QueuedMessage)>,
    /// Ids that could not be read, and why (left in place).
    pub unreadable: Vec<(String, SpoolError)>,
}

pub trait QueueStore: Send + Sync {
    /// Makes a received message durable: when this returns Ok, the 250 may
    /// be sent. `deliver_now`: the queue manager will deliver it at once
    /// (not held), so a store may keep it where first deliveries are
    /// cheapest (the local accept journal). The message comes back as
    /// queued, for the manager.
    fn accept(
        &self,
        content: SpoolWriter,
        envelope: Envelope,
        deliver_now: bool,
    ) -> Pin<Box<dyn Future<Output = std::io::Result<QueuedMessage>> + Send + '_>>;

    /// Messages due by `now` that no live node holds, taken for this node
    /// (blocking; at most `limit`). The local store has none to give: a
    /// single node holds every message it loaded at start and every one it
    /// accepts. A shared store leases them here (owner, expiry, fence).
    fn claim_due(
        &self,
        now: i64,
        limit: usize,
    ) -> Result<Vec<(QueueId, QueuedMessage)>, SpoolError>;

    /// Every message this node is to deliver, read at start (blocking), and
    /// the ones that could not be read (left in place).
    fn load_all(&self) -> std::io::Result<Loaded>;

    /// A queue command (hold, release, retry, delete) for a message this
    /// node does not hold (blocking). A shared store passes it to the node
    /// that holds it, which applies it at its next claim, or, when no live
    /// node holds the message, hands the message to this node to apply it
    /// here. The local store knows no other node: `NotFound`.
    fn forward(&self, id: &QueueId, command: &QueueCommand) -> Result<Forwarded, SpoolError>;

    /// Commands other nodes left for messages this node holds, oldest
    /// first, taken so that each is applied once (blocking).
    fn take_commands(&self) -> Result<Vec<QueueCommand>, SpoolError>;

    /// One message, newly announced (blocking).
    fn load(&self, id: &QueueId) -> Result<QueuedMessage, SpoolError>;

    /// Gives messages whose content is durable only in the accept journal a
    /// home of their own, from the queue's copy in memory, before their
    /// state is first written. Per message: true when done, false when it
    /// was deleted meanwhile.
    fn settle(&self, messages: &[(&QueueId, &MemoryCopy)]) -> Vec<Result<bool, SpoolError>>;

    /// Replaces a message's delivery state.
    fn record_state(
        &self,
        id: &QueueId,
        state: &MessageState,
        durability: Durability,
    ) -> Result<(), SpoolError>;

    /// Replaces several messages' delivery states (the deferrals written
    /// later, together): one result per message, in order. A shared store
    /// writes them in one statement.
    fn record_states(
        &self,
        states: &[(&QueueId, &MessageState)],
        durability: Durability,
    ) -> Vec<Result<(), SpoolError>> {
        states
            .iter()
            .map(|(id, state)| self.record_state(id, state, durability))
            .collect()
    }

    /// An admin's delete: the message and its state go, durably.
    fn delete(&self, id: &QueueId) -> Result<(), SpoolError>;

    /// Whether messages are held under leases that can end (a shared
    /// store), so that `renew_lease` is worth asking before an attempt.
    fn leases(&self) -> bool {
        false
    }

    /// The shared queue beyond this node (blocking): this node's number
    /// and the messages it does not hold, each with its holder. None for
    /// the local store (every message is this node's).
    fn shared_queue(&self) -> Result<Option<SharedQueue>, SpoolError> {
        Ok(None)
    }

    /// The counts of the messages this node does not hold (blocking), for
    /// the whole shared queue's figures. None for the local store.
    fn shared_stats(&self) -> Result<Option<super::QueueStats>, SpoolError> {
        Ok(None)
    }

    /// A message this node does not hold, as the shared store has it
    /// (blocking; envelope, state and header section). None for the local
    /// store, and for a message not in the store.
    fn show_shared(&self, _id: &QueueId) -> Result<Option<super::MessageDetail>, SpoolError> {
        Ok(None)
    }

    /// A hold, release, retry or delete of many messages (`--source`,
    /// `--all`) on the messages this node does not hold (blocking): passed
    /// to their holders, or applied in the store when no live node holds
    /// them. Nothing for the local store (every message is this node's).
    fn change_shared(&self, _command: &QueueCommand) -> Result<Vec<super::Changed>, SpoolError> {
        Ok(Vec::new())
    }

    /// The node stops (blocking): a shared store frees its node number at
    /// once and, when no attempt of this node runs any more (`settled`),
    /// ends its leases, so that the other nodes deliver its messages now
    /// rather than a lease later.
    fn leave(&self, _settled: bool) -> Result<(), SpoolError> {
        Ok(())
    }

    /// Before an attempt (blocking): whether this node still holds `id`,
    /// its lease renewed for the attempt. A node that stalled past its
    /// lease learns here that another took the message, and does not
    /// deliver it a second time. The local store holds all it has.
    fn renew_lease(&self, _id: &QueueId) -> Result<bool, SpoolError> {
        Ok(true)
    }

    /// Delivery is over: the message goes. `journaled`: it never left the
    /// accept journal, so releasing its record is all there is. A crash
    /// right after may bring it back for a duplicate delivery, never lose it.
    fn finish(&self, id: &QueueId, journaled: bool) -> Result<(), SpoolError>;
}

/// What `QueueStore::shared_queue` sees.
pub struct SharedQueue {
    pub node: u8,
    pub others: Vec<super::MessageSummary>,
}

/// The single-node store: the local spool in `data_dir`.
impl QueueStore for Spool {
    fn accept(
        &self,
        content: SpoolWriter,
        envelope: Envelope,
        deliver_now: bool,
    ) -> Pin<Box<dyn Future<Output = std::io::Result<QueuedMessage>> + Send + '_>> {
        Box::pin(Spool::accept(self, content, envelope, deliver_now))
    }

    fn forward(&self, id: &QueueId, _command: &QueueCommand) -> Result<Forwarded, SpoolError> {
        Err(SpoolError::NotFound(id.to_string()))
    }

    fn take_commands(&self) -> Result<Vec<QueueCommand>, SpoolError> {
        Ok(Vec::new())
    }

    fn claim_due(
        &self,
        _now: i64,
        _limit: usize,
    ) -> Result<Vec<(QueueId, QueuedMessage)>, SpoolError> {
        Ok(Vec::new())
    }

    fn load_all(&self) -> std::io::Result<Loaded> {
        self.remove_orphan_states()?;
        let mut loaded = Vec::new();
        let mut problems = Vec::new();
        for id in self.ids()? {
            match self.load_owned(&id) {
                Ok(m) => loaded.push((id, m)),
                Err(e) => problems.push((id.to_string(), e)),
            }
        }
        Ok(Loaded {
            messages: loaded,
            unreadable: problems,
        })
    }

    fn load(&self, id: &QueueId) -> Result<QueuedMessage, SpoolError> {
        self.load_owned(id)
    }

    fn settle(&self, messages: &[(&QueueId, &MemoryCopy)]) -> Vec<Result<bool, SpoolError>> {
        self.materialize(messages)
    }

    fn record_state(
        &self,
        id: &QueueId,
        state: &MessageState,
        durability: Durability,
    ) -> Result<(), SpoolError> {
        match durability {
            Durability::Synced => self.write_state(id, state),
            Durability::Quick => self.write_state_quick(id, state),
        }
    }

    fn delete(&self, id: &QueueId) -> Result<(), SpoolError> {
        Spool::delete(self, id)
    }

    fn finish(&self, id: &QueueId, journaled: bool) -> Result<(), SpoolError> {
        if journaled {
            self.release_journaled(id);
            Ok(())
        } else {
            self.remove_finished(id)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::Write;

    fn spool_with_one_message() -> (tempfile::TempDir, Spool, QueueId) {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let id = QueueId::new();
        let mut w = spool.begin(&id);
        w.write(b"Subject: x\r\n\r\nbody\r\n");
        w.commit(&Envelope::for_test(&id, "a@x.test", &["to@example.net"]))
            .unwrap();
        (dir, spool, id)
    }

    #[test]
    fn the_local_store_loads_records_and_finishes_a_message() {
        let (_dir, spool, id) = spool_with_one_message();
        let store: &dyn QueueStore = &spool;
        let loaded = store.load_all().unwrap();
        assert!(loaded.unreadable.is_empty());
        assert_eq!(loaded.messages.len(), 1);
        let mut state = loaded.messages[0].1.state.clone();
        assert!(!state.held);
        state.held = true;
        Write::State(id.clone())
            .carry_out(store, Some(&state))
            .unwrap();
        assert!(store.load(&id).unwrap().state.held, "the hold was recorded");
        store.finish(&id, false).unwrap();
        assert!(store.load_all().unwrap().messages.is_empty());
        // Gone: a later write says so instead of leaving a stray state.
        assert!(matches!(
            Write::StateQuick(id.clone()).carry_out(store, Some(&state)),
            Err(SpoolError::NotFound(_))
        ));
    }

    #[test]
    fn a_delete_needs_no_state_and_a_state_write_does() {
        let (_dir, spool, id) = spool_with_one_message();
        let store: &dyn QueueStore = &spool;
        assert!(matches!(
            Write::State(id.clone()).carry_out(store, None),
            Err(SpoolError::NotFound(_))
        ));
        assert_eq!(store.load_all().unwrap().messages.len(), 1);
        Write::Delete(id.clone()).carry_out(store, None).unwrap();
        assert!(store.load_all().unwrap().messages.is_empty());
        assert!(matches!(store.load(&id), Err(SpoolError::NotFound(_))));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_accepted_message_is_durable_and_queued() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap().with_committer();
        let store: std::sync::Arc<dyn QueueStore> = std::sync::Arc::new(spool.clone());
        let id = QueueId::new();
        let mut content = spool.begin(&id);
        content.write(b"Subject: accepted\r\n\r\nbody\r\n");
        let envelope = Envelope::for_test(&id, "a@x.test", &["b@y.test"]);
        let queued = store.accept(content, envelope, true).await.unwrap();
        // No journal on this spool: the message has a file of its own.
        assert!(!queued.journaled);
        assert_eq!(queued.envelope.id, id.as_str());
        assert!(queued.memory.is_some(), "a small message stays in memory");
        let loaded = store.load_all().unwrap();
        assert_eq!(loaded.messages.len(), 1);
        assert_eq!(loaded.messages[0].0, id);
        assert!(
            String::from_utf8(spool.read_body(&id).unwrap())
                .unwrap()
                .contains("Subject: accepted")
        );
        // A single node holds all its messages: nothing to claim.
        assert!(store.claim_due(i64::MAX, 100).unwrap().is_empty());
    }
}
