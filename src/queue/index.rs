//! The queue in memory: every spooled message with its envelope and
//! per-recipient state, built from the spool once at start and then kept up
//! to date by its one owner (the manager, or the CLI while it holds the
//! data-dir lock). Commands change the index and say which files to write;
//! the caller does the writing, so the same rules serve both owners.

use super::control::{Changed, MessageDetail, MessageSummary, QueueAnswer, QueueCommand, Selector};
use super::store::{Durability, QueueStore};
use crate::spool::QueueId;
use crate::spool::{
    Envelope, MemoryCopy, MessageState, QueuedMessage, RecipientStatus, SpoolError,
};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

/// Where a queued message's content is: the first `len` bytes of its spool
/// file (and, for a message just received, a copy in memory). Deliveries
/// stream it from there; only reports read it whole.
#[derive(Debug, Clone)]
pub struct Content {
    pub path: PathBuf,
    pub len: u64,
    /// The same bytes in memory, until the first delivery pass is over.
    pub memory: Option<Arc<MemoryCopy>>,
    /// Durable only in the spool journal: `path` does not exist yet, and
    /// `memory` is the only copy to read.
    pub journaled: bool,
}

impl Content {
    pub fn read(&self) -> std::io::Result<Vec<u8>> {
        use std::io::Read;
        if let Some(copy) = &self.memory {
            return Ok(copy.bytes().to_vec());
        }
        let mut bytes = vec![0u8; self.len as usize];
        std::fs::File::open(&self.path)?.read_exact(&mut bytes)?;
        Ok(bytes)
    }

    /// The content to read from: the copy in memory, else the file.
    fn reader(&self) -> std::io::Result<Box<dyn std::io::BufRead + '_>> {
        use std::io::{BufReader, Read};
        Ok(match &self.memory {
            Some(copy) => Box::new(copy.bytes()),
            None => Box::new(BufReader::new(
                std::fs::File::open(&self.path)?.take(self.len),
            )),
        })
    }

    /// The body (after the empty line), at most `limit` bytes of it.
    pub fn body(&self, limit: u64) -> std::io::Result<String> {
        use std::io::Read;
        let mut reader = self.reader()?;
        let mut line = Vec::new();
        loop {
            line.clear();
            if reader.read_until(b'\n', &mut line)? == 0 || line == b"\r\n" || line == b"\n" {
                break;
            }
        }
        let mut body = Vec::new();
        reader.take(limit).read_to_end(&mut body)?;
        Ok(String::from_utf8_lossy(&body).into_owned())
    }

    /// The header section (up to the empty line), read without the body.
    pub fn headers(&self) -> std::io::Result<String> {
        let mut reader = self.reader()?;
        let mut headers = Vec::new();
        let mut line = Vec::new();
        loop {
            line.clear();
            if reader.read_until(b'\n', &mut line)? == 0 || line == b"\r\n" || line == b"\n" {
                break;
            }
            headers.extend_from_slice(&line);
            if headers.len() > 1 << 20 {
                break;
            }
        }
        Ok(String::from_utf8_lossy(&headers).into_owned())
    }
}

/// Command effects that must wait for the attempt in progress to end.
#[derive(Debug, Default, Clone)]
pub struct Pending {
    pub held: Option<bool>,
    pub retry: bool,
}

impl Pending {
    pub fn is_empty(&self) -> bool {
        self.held.is_none() && !self.retry
    }
}

#[derive(Debug)]
pub struct Entry {
    pub envelope: Arc<Envelope>,
    pub state: MessageState,
    pub content: Content,
    /// A job (delivery or state write) owns this message's files right now.
    pub busy: bool,
    /// The state changed since it was last written (deferrals without an
    /// attempt); the manager writes it with the next batch.
    pub unrecorded: bool,
    pub pending: Pending,
}

impl Entry {
    pub fn from_spool(m: QueuedMessage) -> Entry {
        Entry {
            envelope: Arc::new(m.envelope),
            state: m.state,
            content: Content {
                path: m.path,
                len: m.body_len,
                memory: m.memory,
                journaled: m.journaled,
            },
            busy: false,
            unrecorded: false,
            pending: Pending::default(),
        }
    }

    fn came_from(&self, source: &str) -> bool {
        self.envelope.came_from(source)
    }

    fn summary(&self, id: &QueueId) -> MessageSummary {
        MessageSummary::of(
            id,
            &self.envelope,
            &self.state,
            self.pending.held.unwrap_or(self.state.held),
            self.busy,
        )
    }

    /// Makes every queued recipient due at `now`.
    pub fn make_due(&mut self, now: i64) {
        self.state.make_due(now);
    }
}

/// A file change a command asks for; the index's owner carries it out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    /// Replace the state file durably (hold, release: a crash must not undo them).
    State(QueueId),
    /// Replace the state file without waiting for the disk (a lost retry only means a later attempt).
    StateQuick(QueueId),
    /// Remove the message and its state, durably.
    Delete(QueueId),
}

impl Write {
    /// Carries the write out on `store` (blocking): the one executor of a
    /// command's writes, for the manager's jobs and for the CLI when no
    /// server runs. `state`: the message's state as the index holds it
    /// (none for a delete: the message has left the index).
    pub fn carry_out(
        &self,
        store: &dyn QueueStore,
        state: Option<&MessageState>,
    ) -> Result<(), SpoolError> {
        match (self, state) {
            (Write::State(id), Some(state)) => store.record_state(id, state, Durability::Synced),
            (Write::StateQuick(id), Some(state)) => {
                store.record_state(id, state, Durability::Quick)
            }
            (Write::Delete(id), _) => store.delete(id),
            (Write::State(id) | Write::StateQuick(id), None) => {
                Err(SpoolError::NotFound(id.to_string()))
            }
        }
    }

    pub fn id(&self) -> &QueueId {
        match self {
            Write::State(id) | Write::StateQuick(id) | Write::Delete(id) => id,
        }
    }
}

/// What applying a command produced.
pub struct Applied {
    pub answer: QueueAnswer,
    /// For `show`: the answer still needs the headers read from here.
    pub headers_from: Option<Content>,
    pub writes: Vec<Write>,
    /// Messages whose due time may have changed.
    pub reschedule: Vec<QueueId>,
}

impl Applied {
    fn answer(answer: QueueAnswer) -> Applied {
        Applied {
            answer,
            headers_from: None,
            writes: Vec::new(),
            reschedule: Vec::new(),
        }
    }
}

#[derive(Debug, Default)]
pub struct Index {
    pub entries: BTreeMap<QueueId, Entry>,
}

impl Index {
    /// Reads every message in the store (blocking). Unreadable ones are left
    /// in place and reported. The caller holds the data-dir lock.
    pub fn load(store: &dyn QueueStore) -> std::io::Result<(Index, Vec<(String, SpoolError)>)> {
        let loaded = store.load_all()?;
        let entries = loaded
            .messages
            .into_iter()
            .map(|(id, m)| (id, Entry::from_spool(m)))
            .collect();
        Ok((Index { entries }, loaded.unreadable))
    }

    pub fn get_mut(&mut self, id: &QueueId) -> Option<&mut Entry> {
        self.entries.get_mut(id)
    }

    /// Messages the selector names.
    fn select(&self, select: &Selector) -> Result<Vec<QueueId>, String> {
        match select {
            Selector::Id(id) if self.entries.contains_key(id) => Ok(vec![id.clone()]),
            Selector::Id(id) => Err(format!("no message {id} in the queue")),
            Selector::All => Ok(self.entries.keys().cloned().collect()),
            Selector::Source(source) => Ok(self
                .entries
                .iter()
                .filter(|(_, e)| e.came_from(source))
                .map(|(id, _)| id.clone())
                .collect()),
        }
    }

    fn stats(&self) -> super::QueueStats {
        let mut stats = super::QueueStats {
            messages: self.entries.len(),
            ..Default::default()
        };
        for e in self.entries.values() {
            if e.pending.held.unwrap_or(e.state.held) {
                stats.held += 1;
            }
            stats.recipients_queued += e
                .state
                .recipients
                .iter()
                .filter(|r| r.status == RecipientStatus::Queued)
                .count();
            let at = e.envelope.received_at;
            stats.oldest_received_at = Some(stats.oldest_received_at.map_or(at, |o| o.min(at)));
        }
        stats
    }

    /// Applies one command at time `now`.
    pub fn apply(&mut self, cmd: &QueueCommand, now: i64) -> Applied {
        match cmd {
            QueueCommand::List => Applied::answer(QueueAnswer::List {
                messages: self.entries.iter().map(|(id, e)| e.summary(id)).collect(),
            }),
            QueueCommand::Stats => Applied::answer(QueueAnswer::Stats {
                stats: self.stats(),
            }),
            QueueCommand::Show { id, .. } => match self.entries.get(id) {
                Some(e) => Applied {
                    headers_from: Some(e.content.clone()),
                    ..Applied::answer(QueueAnswer::Show {
                        message: Box::new(MessageDetail {
                            envelope: (*e.envelope).clone(),
                            state: MessageState {
                                held: e.pending.held.unwrap_or(e.state.held),
                                ..e.state.clone()
                            },
                            in_flight: e.busy,
                            headers: String::new(),
                            body: None,
                        }),
                    })
                },
                _ => Applied::answer(QueueAnswer::error(format!("no message {id} in the queue"))),
            },
            QueueCommand::Hold { select } => {
                self.change(select, |e, id, w| set_held(e, id, true, w))
            }
            QueueCommand::Release { select } => {
                self.change(select, |e, id, w| set_held(e, id, false, w))
            }
            QueueCommand::Retry { select } => self.change(select, |e, id, w| {
                if e.busy {
                    e.pending.retry = true;
                    return "due again when the attempt in progress ends".into();
                }
                e.make_due(now);
                w.push(Write::StateQuick(id.clone()));
                if e.state.held {
                    "due now, but held: release it to deliver".into()
                } else {
                    "due now".into()
                }
            }),
            QueueCommand::Delete { select } => {
                // At once, even during an attempt: the attempt streams from
                // its open file and finds the message gone when it records.
                let mut applied = self.change(select, |_, id, w| {
                    w.push(Write::Delete(id.clone()));
                    "deleted".into()
                });
                for w in &applied.writes {
                    if let Write::Delete(id) = w {
                        self.entries.remove(id);
                    }
                }
                applied.reschedule.clear();
                applied
            }
        }
    }

    /// Applies `act` to each selected message; `act` says what it did.
    fn change(
        &mut self,
        select: &Selector,
        mut act: impl FnMut(&mut Entry, &QueueId, &mut Vec<Write>) -> String,
    ) -> Applied {
        let ids = match self.select(select) {
            Ok(ids) => ids,
            Err(e) => return Applied::answer(QueueAnswer::error(e)),
        };
        let mut writes = Vec::new();
        let mut changed = Vec::new();
        for id in &ids {
            if let Some(entry) = self.entries.get_mut(id) {
                let result = act(entry, id, &mut writes);
                changed.push(Changed {
                    id: id.clone(),
                    result,
                });
            }
        }
        Applied {
            answer: QueueAnswer::Changed { changed },
            headers_from: None,
            writes,
            reschedule: ids,
        }
    }
}

fn set_held(e: &mut Entry, id: &QueueId, held: bool, writes: &mut Vec<Write>) -> String {
    let word = if held { "held" } else { "released" };
    if e.busy {
        e.pending.held = Some(held);
        return format!("{word} when the attempt in progress ends");
    }
    e.state.held = held;
    writes.push(Write::State(id.clone()));
    word.into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::EnvelopeRecipient;

    fn entry(ip: &str, user: Option<&str>) -> Entry {
        let envelope = Envelope {
            version: 1,
            id: String::new(),
            received_at: 100,
            sender: "a@x.test".into(),
            recipients: vec![EnvelopeRecipient {
                address: "b@y.test".into(),
                domain: "y.test".into(),
            }],
            client_ip: ip.into(),
            helo: "h".into(),
            auth_user: user.map(str::to_string),
            smtputf8: false,
            eight_bit: false,
            size: 10,
            trusted_origin: true,
            hold: false,
        };
        Entry {
            state: MessageState::initial(&envelope),
            envelope: Arc::new(envelope),
            content: Content {
                path: PathBuf::from("/nonexistent"),
                len: 0,
                memory: None,
                journaled: false,
            },
            busy: false,
            unrecorded: false,
            pending: Pending::default(),
        }
    }

    fn index() -> (Index, Vec<QueueId>) {
        let mut index = Index::default();
        let ids: Vec<QueueId> = (0..3).map(|_| QueueId::new()).collect();
        index
            .entries
            .insert(ids[0].clone(), entry("192.0.2.1", None));
        index
            .entries
            .insert(ids[1].clone(), entry("192.0.2.2", Some("carol")));
        index
            .entries
            .insert(ids[2].clone(), entry("192.0.2.1", None));
        (index, ids)
    }

    #[test]
    fn hold_of_an_idle_message_is_written_and_one_in_flight_waits() {
        let (mut index, ids) = index();
        index.get_mut(&ids[1]).unwrap().busy = true;
        let applied = index.apply(
            &QueueCommand::Hold {
                select: Selector::All,
            },
            200,
        );
        assert_eq!(
            applied.writes,
            vec![Write::State(ids[0].clone()), Write::State(ids[2].clone())]
        );
        assert!(index.entries[&ids[0]].state.held);
        let busy = &index.entries[&ids[1]];
        assert!(
            !busy.state.held,
            "the running attempt's state is not touched"
        );
        assert_eq!(busy.pending.held, Some(true));
    }

    #[test]
    fn source_selects_by_client_ip_or_user() {
        let (mut index, ids) = index();
        let applied = index.apply(
            &QueueCommand::Delete {
                select: Selector::Source("192.0.2.1".into()),
            },
            200,
        );
        assert_eq!(
            applied.writes,
            vec![Write::Delete(ids[0].clone()), Write::Delete(ids[2].clone())]
        );
        assert_eq!(index.entries.len(), 1);
        let applied = index.apply(
            &QueueCommand::Retry {
                select: Selector::Source("carol".into()),
            },
            200,
        );
        assert_eq!(applied.writes, vec![Write::StateQuick(ids[1].clone())]);
        assert_eq!(index.entries[&ids[1]].state.next_due(), Some(200));
    }

    #[test]
    fn unknown_and_deleted_ids_are_errors() {
        let (mut index, ids) = index();
        index.get_mut(&ids[0]).unwrap().busy = true;
        let applied = index.apply(
            &QueueCommand::Delete {
                select: Selector::Id(ids[0].clone()),
            },
            200,
        );
        for cmd in [
            QueueCommand::Show {
                id: ids[0].clone(),
                body: false,
            },
            QueueCommand::Hold {
                select: Selector::Id(ids[0].clone()),
            },
        ] {
            assert!(matches!(
                index.apply(&cmd, 200).answer,
                QueueAnswer::Error { .. }
            ));
        }
        let QueueAnswer::List { messages } = index.apply(&QueueCommand::List, 200).answer else {
            panic!("list answers a list");
        };
        assert_eq!(messages.len(), 2, "a deleted message is not listed");
        assert_eq!(
            applied.writes,
            vec![Write::Delete(ids[0].clone())],
            "deleted at once, even during an attempt"
        );
    }
}
