//! The queue manager: the one owner of queue state. It keeps every queued
//! message in memory (an index built from the spool at start), knows when each
//! is next due, starts delivery passes under the concurrency limits (never two
//! for one message), and handles the queue's commands (`QueueCommand`, from
//! the control socket and the admin page) in the same loop. Every write of a message's state is
//! made by a job it started, so no two writers ever race.

mod control;
mod index;
pub mod local_mail;
mod schedule;
mod store;
mod work;

pub use control::{
    BODY_SHOWN, Changed, MessageDetail, MessageSummary, QueueAnswer, QueueCommand, QueueStats,
    Selector, message_state, recipient_state,
};
pub use index::{Applied, Content, Index, Write};
pub use schedule::{expired, next_attempt};
pub use store::{Durability, Forwarded, Loaded, QueueStore, SharedQueue};
pub use work::route_facts;

use crate::config::Config;
use crate::delivery::Deliverer;
use crate::events::{Event, Events};
use crate::spool::{MessageState, QueueId, QueuedMessage, Spool, SpoolError, off_thread};
use index::Entry;
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::clock::unix_now;

/// What reaches the manager's loop.
enum Inbound {
    /// A message was just spooled (by a session, or a bounce we wrote).
    New(QueueId),
    Loaded(QueueId, Result<QueuedMessage, SpoolError>),
    /// What the store gave this node from its due work (see `claim_due`).
    Claimed(Result<Vec<(QueueId, QueuedMessage)>, SpoolError>),
    Command(QueueCommand, oneshot::Sender<QueueAnswer>),
    Done(QueueId, Done),
}

/// A job the manager started has ended.
enum Done {
    /// A delivery pass ended.
    Processed(work::PassEnd),
    /// A state write for a command.
    Written,
    /// A journaled message got its own file (and its state was written).
    Moved,
}

/// The way into the manager: announce new messages, send commands.
#[derive(Clone)]
pub struct QueueHandle(mpsc::UnboundedSender<Inbound>);

impl QueueHandle {
    pub fn notify(&self, id: QueueId) {
        let _ = self.0.send(Inbound::New(id));
    }

    /// A message just published by this process, handed over as it is
    /// in memory so the manager need not read it back from disk.
    pub fn notify_queued(&self, id: QueueId, message: QueuedMessage) {
        let _ = self.0.send(Inbound::Loaded(id, Ok(message)));
    }

    /// Runs a command in the manager's loop and waits for its answer.
    pub async fn command(&self, cmd: QueueCommand) -> QueueAnswer {
        let (tx, rx) = oneshot::channel();
        if self.0.send(Inbound::Command(cmd, tx)).is_err() {
            return QueueAnswer::error("the queue manager has stopped");
        }
        rx.await
            .unwrap_or_else(|_| QueueAnswer::error("the queue manager has stopped"))
    }

    fn done(&self, id: QueueId, done: Done) {
        let _ = self.0.send(Inbound::Done(id, done));
    }
}

/// The manager's receiving end, handed to `run`.
pub struct QueueInbox(mpsc::UnboundedReceiver<Inbound>);

pub struct QueueManager {
    /// Where queued messages and their states are read and written.
    store: Arc<dyn QueueStore>,
    /// Where the reports we write ourselves (bounces, delay notices) are
    /// accepted, as a session's message is.
    spool: Spool,
    /// Replaced as a whole on reload: the next passes follow it.
    config: std::sync::RwLock<Arc<Config>>,
    deliverer: Arc<Deliverer>,
    hostname: String,
    global: Arc<Semaphore>,
    per_domain: Mutex<HashMap<String, Arc<Semaphore>>>,
    handle: QueueHandle,
    events: Events,
}

/// Due times by queue ID, ordered for "what is next".
#[derive(Default)]
struct Schedule {
    by_time: BTreeSet<(i64, QueueId)>,
    by_id: HashMap<QueueId, i64>,
}

impl Schedule {
    fn set(&mut self, id: QueueId, due: Option<i64>) {
        self.remove(&id);
        if let Some(due) = due {
            self.by_id.insert(id.clone(), due);
            self.by_time.insert((due, id));
        }
    }
    fn remove(&mut self, id: &QueueId) {
        if let Some(old) = self.by_id.remove(id) {
            self.by_time.remove(&(old, id.clone()));
        }
    }
    fn pop_due(&mut self, now: i64) -> Option<QueueId> {
        let (due, id) = self.by_time.first()?.clone();
        if due > now {
            return None;
        }
        self.remove(&id);
        Some(id)
    }
    fn next_time(&self) -> Option<i64> {
        self.by_time.first().map(|(t, _)| *t)
    }
}

/// When a message needs attention: its next due recipient, now when it only
/// needs finishing (bounce, removal), never while held.
fn due_of(state: &MessageState) -> Option<i64> {
    if state.held {
        None
    } else if state.has_queued() {
        state.next_due()
    } else {
        Some(0)
    }
}

/// Answers a command once every state write it started has ended (each write
/// job holds a clone; the last one dropped sends the answer).
struct AnswerWhenWritten {
    tx: Mutex<Option<oneshot::Sender<QueueAnswer>>>,
    answer: Mutex<Option<QueueAnswer>>,
    failures: Mutex<Vec<String>>,
}

impl AnswerWhenWritten {
    /// Sends the answer before every write has ended.
    fn answer_now(&self) {
        let tx = self.tx.lock().unwrap_or_else(|p| p.into_inner()).take();
        let answer = self.answer.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let (Some(tx), Some(answer)) = (tx, answer) {
            let _ = tx.send(answer);
        }
    }

    fn failed(&self, what: String) {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(what);
    }
}

impl Drop for AnswerWhenWritten {
    fn drop(&mut self) {
        let failures = std::mem::take(self.failures.get_mut().unwrap_or_else(|p| p.into_inner()));
        let answer = if failures.is_empty() {
            self.answer
                .get_mut()
                .unwrap_or_else(|p| p.into_inner())
                .take()
        } else {
            Some(QueueAnswer::error(failures.join("; ")))
        };
        if let (Some(tx), Some(answer)) = (
            self.tx.get_mut().unwrap_or_else(|p| p.into_inner()).take(),
            answer,
        ) {
            let _ = tx.send(answer);
        }
    }
}

/// How often states kept in memory only are written (see `flush_unrecorded`).
const UNRECORDED_FLUSH: Duration = Duration::from_secs(30);

/// How often the store is asked for due work no live node holds (a shared
/// store's: a dead node's messages are taken over at most this late after
/// their lease ends).
pub const CLAIM_EVERY: Duration = Duration::from_secs(10);

/// What a queue command passed to the node holding its message says.
pub fn passed_to(node: i32) -> String {
    format!(
        "passed to node {node}, which holds it (applied within {}s)",
        CLAIM_EVERY.as_secs()
    )
}

/// Deferred messages still only in the journal that make a flush start at once.
const JOURNALED_FLUSH_AT: usize = 256;

/// A journaled message's copy in memory: what its file is written from.
fn journaled_copy(entry: &Entry) -> Option<Arc<crate::spool::MemoryCopy>> {
    entry
        .content
        .journaled
        .then(|| entry.content.memory.clone())
        .flatten()
}

/// How long a command waits for an attempt in progress to end before it answers.
const WAIT_FOR_ATTEMPT: Duration = Duration::from_secs(5);

/// The loop's own state.
struct Queue {
    index: Index,
    schedule: Schedule,
    tasks: TaskTracker,
    /// Commands waiting for an attempt in progress to end, by message.
    waiting: HashMap<QueueId, Vec<Arc<AnswerWhenWritten>>>,
    /// Deferred messages still only in the journal, since the last flush.
    journaled_unrecorded: usize,
    /// A claim of due work from the store is under way.
    claiming: bool,
}

impl QueueManager {
    pub fn new(
        spool: Spool,
        store: Arc<dyn QueueStore>,
        config: Arc<Config>,
        deliverer: Arc<Deliverer>,
        events: Events,
    ) -> (Arc<QueueManager>, QueueInbox) {
        let (tx, rx) = mpsc::unbounded_channel();
        let manager = QueueManager {
            hostname: config.hostname(),
            global: Arc::new(Semaphore::new(config.delivery.concurrency)),
            per_domain: Mutex::new(HashMap::new()),
            handle: QueueHandle(tx),
            store,
            spool,
            config: std::sync::RwLock::new(config),
            deliverer,
            events,
        };
        (Arc::new(manager), QueueInbox(rx))
    }

    pub fn handle(&self) -> QueueHandle {
        self.handle.clone()
    }

    /// The deliverer, for what it knows of profiles (the dashboard).
    pub fn deliverer(&self) -> Arc<Deliverer> {
        Arc::clone(&self.deliverer)
    }

    fn config(&self) -> Arc<Config> {
        Arc::clone(&self.config.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Where deliveries record their conversations from now on.
    pub fn set_transcripts(&self, transcripts: Option<Arc<crate::transcript::Transcripts>>) {
        self.deliverer.set_transcripts(transcripts);
    }

    /// Takes a reloaded config (retry schedule, lifetimes, routes…) for the next passes.
    pub fn reconfigure(&self, config: Arc<Config>) {
        self.deliverer.reconfigure(Arc::clone(&config));
        *self.config.write().unwrap_or_else(|p| p.into_inner()) = config;
    }

    /// Runs until `shutdown`; jobs in progress then get `grace` to finish.
    pub async fn run(
        self: Arc<Self>,
        inbox: QueueInbox,
        shutdown: CancellationToken,
        grace: Duration,
    ) {
        let mut inbox = inbox.0;
        let store = Arc::clone(&self.store);
        let index = match off_thread(move || Index::load(&*store)).await {
            Ok((index, problems)) => {
                for (id, e) in problems {
                    self.events.emit(Event::SpoolProblem {
                        queue_id: QueueId::parse(&id),
                        doing: "unreadable queue file left in place",
                        error: format!("{id}: {e}"),
                    });
                }
                index
            }
            Err(e) => {
                self.events.emit(Event::SpoolProblem {
                    queue_id: None,
                    doing: "cannot read the queue; starting with what arrives from now on",
                    error: e.to_string(),
                });
                Index::default()
            }
        };
        let mut q = Queue {
            index,
            schedule: Schedule::default(),
            tasks: TaskTracker::new(),
            waiting: HashMap::new(),
            journaled_unrecorded: 0,
            claiming: false,
        };
        for (id, e) in &q.index.entries {
            q.schedule.set(id.clone(), due_of(&e.state));
        }
        info!(messages = q.index.entries.len(), "queue loaded");
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut flush = tokio::time::interval(UNRECORDED_FLUSH);
        flush.tick().await;
        let mut claim = tokio::time::interval(CLAIM_EVERY);
        claim.tick().await;
        loop {
            let now = unix_now();
            while let Some(id) = q.schedule.pop_due(now) {
                self.dispatch(&mut q, id);
            }
            let wait = q
                .schedule
                .next_time()
                .map_or(60, |t| (t - now).clamp(1, 60)) as u64;
            tokio::select! {
                Some(msg) = inbox.recv() => self.handle_inbound(&mut q, msg),
                _ = tick.tick() => {
                    self.deliverer.sweep_idle().await;
                    self.forget_idle_domains();
                }
                _ = flush.tick() => self.flush_unrecorded(&mut q),
                _ = claim.tick() => self.claim_due(&mut q),
                _ = tokio::time::sleep(Duration::from_secs(wait)) => {}
                _ = shutdown.cancelled() => break,
            }
        }
        q.tasks.close();
        if tokio::time::timeout(grace, q.tasks.wait()).await.is_err() {
            warn!("deliveries still running at shutdown; they will be retried at the next start");
        }
        // Passes that ended meanwhile, then what they left in memory only.
        while let Ok(msg) = inbox.try_recv() {
            if let Inbound::Done(id, done) = msg {
                self.job_done(&mut q, id, done);
            }
        }
        self.flush_unrecorded(&mut q);
        let settled = tokio::time::timeout(grace, q.tasks.wait()).await.is_ok();
        if self.store.leases() {
            // With nothing of ours in flight, the others may take it all now.
            let store = Arc::clone(&self.store);
            match tokio::time::timeout(grace, off_thread(move || store.leave(settled))).await {
                Ok(Ok(())) if settled => {
                    info!("leases ended: the other nodes deliver this node's messages")
                }
                Ok(Ok(())) => info!(
                    "attempts still running: the other nodes take this node's messages when its leases run out"
                ),
                Ok(Err(e)) => {
                    warn!(error = %e, "cannot end this node's leases; the other nodes take its messages when they run out")
                }
                Err(_) => warn!(
                    "the database did not answer in time; the other nodes take this node's messages when its leases run out"
                ),
            }
        }
        self.deliverer.close_idle().await;
    }

    fn handle_inbound(self: &Arc<Self>, q: &mut Queue, msg: Inbound) {
        match msg {
            Inbound::New(id) => {
                if let Some(e) = q.index.entries.get(&id) {
                    if !e.busy {
                        q.schedule.set(id, due_of(&e.state));
                    }
                    return;
                }
                let store = Arc::clone(&self.store);
                let handle = self.handle.clone();
                q.tasks.spawn(async move {
                    let owned = id.clone();
                    let loaded = off_thread(move || store.load(&owned)).await;
                    let _ = handle.0.send(Inbound::Loaded(id, loaded));
                });
            }
            Inbound::Loaded(id, Ok(m)) => {
                if let Some(e) = q.index.entries.get_mut(&id) {
                    // Found by the start-up scan first (accepted while the
                    // index was read): the session's copy serves as well.
                    if e.content.journaled && e.content.memory.is_none() {
                        e.content.memory = m.memory;
                    }
                } else {
                    let mut entry = Entry::from_spool(m);
                    if entry.state.held && !entry.content.journaled {
                        // It may wait long: no memory kept for it.
                        entry.content.memory = None;
                    }
                    q.schedule.set(id.clone(), due_of(&entry.state));
                    q.index.entries.insert(id, entry);
                }
            }
            Inbound::Loaded(id, Err(e)) => {
                self.events.emit(Event::SpoolProblem {
                    queue_id: Some(id.clone()),
                    doing: "cannot read a newly queued message; it will be picked up at the next start",
                    error: e.to_string(),
                });
            }
            Inbound::Claimed(claimed) => {
                q.claiming = false;
                match claimed {
                    Ok(messages) => {
                        for (id, m) in messages {
                            self.handle_inbound(q, Inbound::Loaded(id, Ok(m)));
                        }
                    }
                    Err(e) => self.events.emit(Event::SpoolProblem {
                        queue_id: None,
                        doing: "cannot claim due messages from the queue store",
                        error: e.to_string(),
                    }),
                }
            }
            Inbound::Command(cmd, reply) => self.command(q, cmd, reply),
            Inbound::Done(id, done) => self.job_done(q, id, done),
        }
    }

    /// Asks the store for due messages no live node holds (a shared
    /// store's; the local one has none), one claim at a time.
    fn claim_due(self: &Arc<Self>, q: &mut Queue) {
        if q.claiming {
            return;
        }
        q.claiming = true;
        let store = Arc::clone(&self.store);
        let handle = self.handle.clone();
        let limit = self.config().delivery.concurrency;
        q.tasks.spawn(async move {
            let taking = Arc::clone(&store);
            let claimed = off_thread(move || taking.claim_due(unix_now(), limit)).await;
            let _ = handle.0.send(Inbound::Claimed(claimed));
            // What other nodes asked of the messages this node holds.
            match off_thread(move || store.take_commands()).await {
                Ok(commands) => {
                    for cmd in commands {
                        let (tx, _) = oneshot::channel();
                        let _ = handle.0.send(Inbound::Command(cmd, tx));
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot read the commands other nodes left"),
            }
        });
    }

    /// A command for one message this node does not hold goes to the store:
    /// passed to the node that holds it, or the message is taken over and
    /// the command applied here.
    fn forward(
        self: &Arc<Self>,
        q: &mut Queue,
        id: QueueId,
        cmd: QueueCommand,
        reply: oneshot::Sender<QueueAnswer>,
    ) {
        let store = Arc::clone(&self.store);
        let handle = self.handle.clone();
        q.tasks.spawn(async move {
            let (owned, command) = (id.clone(), cmd.clone());
            match off_thread(move || store.forward(&owned, &command)).await {
                Ok(Forwarded::Passed { node }) => {
                    let _ = reply.send(QueueAnswer::Changed {
                        changed: vec![Changed {
                            id,
                            result: passed_to(node),
                        }],
                    });
                }
                Ok(Forwarded::TakenOver(id, message)) => {
                    // In order: the message joins the index, then the command applies.
                    let _ = handle.0.send(Inbound::Loaded(id, Ok(*message)));
                    let _ = handle.0.send(Inbound::Command(cmd, reply));
                }
                Err(SpoolError::NotFound(_)) => {
                    let _ = reply.send(QueueAnswer::error(format!("no message {id} in the queue")));
                }
                Err(e) => {
                    let _ = reply.send(QueueAnswer::error(format!("{id}: {e}")));
                }
            }
        });
    }

    /// Starts a delivery pass for a due message that no job owns.
    fn dispatch(self: &Arc<Self>, q: &mut Queue, id: QueueId) {
        let Some(entry) = q.index.get_mut(&id) else {
            return;
        };
        if entry.busy || entry.state.held {
            return;
        }
        entry.busy = true;
        let envelope = Arc::clone(&entry.envelope);
        let content = entry.content.clone();
        let state = entry.state.clone();
        let me = Arc::clone(self);
        q.tasks.spawn(async move {
            let end = me.process(&id, &envelope, &content, state).await;
            me.handle.done(id, Done::Processed(end));
        });
    }

    fn command(
        self: &Arc<Self>,
        q: &mut Queue,
        cmd: QueueCommand,
        mut reply: oneshot::Sender<QueueAnswer>,
    ) {
        if let Some(id) = held_elsewhere(&cmd, &q.index) {
            return self.forward(q, id, cmd, reply);
        }
        if self.store.leases() && changes_many(&cmd) {
            reply = self.with_shared_changes(&cmd, reply);
        }
        if let QueueCommand::Show { id, .. } = &cmd
            && self.store.leases()
            && !q.index.entries.contains_key(id)
        {
            return self.show_shared(id.clone(), reply);
        }
        if matches!(cmd, QueueCommand::Retry { .. }) {
            self.deliverer.forget_down_hosts();
        }
        let applied = q.index.apply(&cmd, unix_now());
        if let (QueueCommand::List, QueueAnswer::List { messages }) = (&cmd, &applied.answer)
            && self.store.leases()
        {
            return self.list_shared(messages.clone(), reply);
        }
        if let (QueueCommand::Stats, QueueAnswer::Stats { stats }) = (&cmd, &applied.answer)
            && self.store.leases()
        {
            return self.stats_shared(stats.clone(), reply);
        }
        let with_body = matches!(cmd, QueueCommand::Show { body: true, .. });
        if !matches!(
            cmd,
            QueueCommand::List | QueueCommand::Show { .. } | QueueCommand::Stats
        ) {
            let (messages, error) = match &applied.answer {
                QueueAnswer::Changed { changed } => (changed.len(), None),
                QueueAnswer::Error { message } => (0, Some(message.clone())),
                _ => (0, None),
            };
            self.events.emit(Event::QueueCommand {
                command: cmd.name(),
                messages,
                error,
            });
        }
        for id in &applied.reschedule {
            self.reschedule(q, id);
        }
        if let Some(content) = applied.headers_from {
            let mut answer = applied.answer;
            q.tasks.spawn(async move {
                let (headers, body) = off_thread(move || {
                    let body = with_body.then(|| content.body(BODY_SHOWN));
                    Ok::<_, std::io::Error>((content.headers(), body))
                })
                .await
                .unwrap_or_else(|e| (Err(std::io::Error::other(e.to_string())), None));
                if let QueueAnswer::Show { message } = &mut answer {
                    message.headers =
                        headers.unwrap_or_else(|e| format!("(headers unreadable: {e})"));
                    message.body =
                        body.map(|b| b.unwrap_or_else(|e| format!("(body unreadable: {e})")));
                }
                let _ = reply.send(answer);
            });
            return;
        }
        let waiter = Arc::new(AnswerWhenWritten {
            tx: Mutex::new(Some(reply)),
            answer: Mutex::new(Some(applied.answer)),
            failures: Mutex::new(Vec::new()),
        });
        for write in applied.writes {
            self.write(q, write, vec![Arc::clone(&waiter)]);
        }
        // A change to a message in the middle of an attempt is made when the
        // attempt ends; wait for that a little, then answer anyway.
        let mut parked = false;
        for id in &applied.reschedule {
            if q.index
                .entries
                .get(id)
                .is_some_and(|e| e.busy && !e.pending.is_empty())
            {
                q.waiting
                    .entry(id.clone())
                    .or_default()
                    .push(Arc::clone(&waiter));
                parked = true;
            }
        }
        if parked {
            let weak = Arc::downgrade(&waiter);
            tokio::spawn(async move {
                tokio::time::sleep(WAIT_FOR_ATTEMPT).await;
                if let Some(w) = weak.upgrade() {
                    w.answer_now();
                }
            });
        }
    }

    /// `queue list` in a cluster: this node's messages and, from the
    /// shared store, every other one, each with the node that holds it.
    fn list_shared(&self, mut mine: Vec<MessageSummary>, reply: oneshot::Sender<QueueAnswer>) {
        let store = Arc::clone(&self.store);
        tokio::spawn(async move {
            let answer = match off_thread(move || store.shared_queue()).await {
                Ok(Some(shared)) => {
                    for m in &mut mine {
                        m.node = Some(shared.node);
                    }
                    mine.extend(shared.others);
                    mine.sort_by(|a, b| (a.received_at, &a.id).cmp(&(b.received_at, &b.id)));
                    QueueAnswer::List { messages: mine }
                }
                Ok(None) => QueueAnswer::List { messages: mine },
                Err(e) => QueueAnswer::error(format!(
                    "the shared queue cannot be read ({e}); this node holds {} message(s)",
                    mine.len()
                )),
            };
            let _ = reply.send(answer);
        });
    }

    /// A change of many messages in a cluster: the other nodes' messages
    /// are changed through the store while this node changes its own; the
    /// answer that comes back on the returned sender is sent on `reply`
    /// with the others' changes added.
    fn with_shared_changes(
        &self,
        cmd: &QueueCommand,
        reply: oneshot::Sender<QueueAnswer>,
    ) -> oneshot::Sender<QueueAnswer> {
        let (local_tx, local_rx) = oneshot::channel();
        let store = Arc::clone(&self.store);
        let shared_cmd = cmd.clone();
        tokio::spawn(async move {
            let shared = off_thread(move || store.change_shared(&shared_cmd)).await;
            let local = local_rx
                .await
                .unwrap_or_else(|_| QueueAnswer::error("the queue stopped before it answered"));
            let answer = match (local, shared) {
                (QueueAnswer::Changed { mut changed }, Ok(others)) => {
                    changed.extend(others);
                    QueueAnswer::Changed { changed }
                }
                (QueueAnswer::Changed { changed }, Err(e)) => QueueAnswer::error(format!(
                    "{} message(s) of this node changed; the other nodes' messages cannot be reached: {e}",
                    changed.len()
                )),
                (other, _) => other,
            };
            let _ = reply.send(answer);
        });
        local_tx
    }

    /// `Show` in a cluster, of a message this node does not hold: as the
    /// shared store has it (envelope, state, headers).
    fn show_shared(&self, id: QueueId, reply: oneshot::Sender<QueueAnswer>) {
        let store = Arc::clone(&self.store);
        tokio::spawn(async move {
            let asked = id.clone();
            let answer = match off_thread(move || store.show_shared(&asked)).await {
                Ok(Some(message)) => QueueAnswer::Show {
                    message: Box::new(message),
                },
                Ok(None) => QueueAnswer::error(format!("no message {id} in the queue")),
                Err(e) => QueueAnswer::error(format!("the shared queue cannot be read: {e}")),
            };
            let _ = reply.send(answer);
        });
    }

    /// `Stats` in a cluster: this node's counts, and the whole shared
    /// queue's (this node's and, from the store, every other one's).
    fn stats_shared(&self, mut mine: QueueStats, reply: oneshot::Sender<QueueAnswer>) {
        let store = Arc::clone(&self.store);
        tokio::spawn(async move {
            match off_thread(move || store.shared_stats()).await {
                Ok(Some(others)) => mine.cluster = Some(Box::new(mine.plus(&others))),
                Ok(None) => {}
                Err(e) => {
                    mine.cluster_error = Some(format!("the shared queue cannot be read: {e}"))
                }
            }
            let _ = reply.send(QueueAnswer::Stats { stats: mine });
        });
    }

    /// Carries out a write a command asked for, as a job that owns the message meanwhile.
    fn write(self: &Arc<Self>, q: &mut Queue, write: Write, waiters: Vec<Arc<AnswerWhenWritten>>) {
        let store = Arc::clone(&self.store);
        let handle = self.handle.clone();
        let events = self.events.clone();
        let id = match &write {
            Write::Delete(id) => return self.delete(q, id.clone(), waiters),
            Write::State(id) | Write::StateQuick(id) => id.clone(),
        };
        let Some(entry) = q.index.get_mut(&id) else {
            return;
        };
        entry.busy = true;
        q.schedule.remove(&id);
        let state = entry.state.clone();
        let journaled = journaled_copy(entry);
        q.tasks.spawn(async move {
            let owned = id.clone();
            let moved = journaled.is_some();
            let result = off_thread(move || {
                if let Some(copy) = journaled
                    && !settle_one(&*store, &owned, &copy)?
                {
                    return Err(SpoolError::NotFound(owned.to_string()));
                }
                write.carry_out(&*store, Some(&state))
            })
            .await;
            let done = match result {
                Ok(()) if moved => Done::Moved,
                Ok(()) => Done::Written,
                Err(e) => {
                    events.emit(Event::SpoolProblem {
                        queue_id: Some(id.clone()),
                        doing: "cannot record a queue command",
                        error: e.to_string(),
                    });
                    for w in &waiters {
                        w.failed(format!("{id}: {e}"));
                    }
                    Done::Written
                }
            };
            drop(waiters);
            handle.done(id, done);
        });
    }

    /// Writes, in one job, every state that passes left in memory only
    /// (deferrals without an attempt), so the files catch up in a batch
    /// instead of one write per deferral.
    fn flush_unrecorded(self: &Arc<Self>, q: &mut Queue) {
        q.journaled_unrecorded = 0;
        let mut batch = Vec::new();
        for (id, entry) in q.index.entries.iter_mut() {
            if entry.unrecorded && !entry.busy {
                entry.unrecorded = false;
                entry.busy = true;
                batch.push((id.clone(), entry.state.clone(), journaled_copy(entry)));
            }
        }
        if batch.is_empty() {
            return;
        }
        for (id, _, _) in &batch {
            q.schedule.remove(id);
        }
        let store = Arc::clone(&self.store);
        let handle = self.handle.clone();
        let events = self.events.clone();
        q.tasks.spawn(async move {
            let in_thread = events.clone();
            let done = off_thread(move || {
                let events = in_thread;
                // Those still only in the journal get their files first, together.
                let journaled: Vec<(&QueueId, &crate::spool::MemoryCopy)> = batch
                    .iter()
                    .filter_map(|(id, _, copy)| copy.as_deref().map(|c| (id, c)))
                    .collect();
                let mut moved = store.settle(&journaled).into_iter();
                // The others' states go together (one statement on a shared store).
                let plain: Vec<(&QueueId, &MessageState)> = batch
                    .iter()
                    .filter(|(_, _, copy)| copy.is_none())
                    .map(|(id, state, _)| (id, state))
                    .collect();
                let mut written = store.record_states(&plain, Durability::Quick).into_iter();
                let mut done = Vec::with_capacity(batch.len());
                for (id, state, journaled) in &batch {
                    let recorded = match journaled {
                        Some(_) => match moved.next() {
                            Some(Ok(true)) => store
                                .record_state(id, state, Durability::Quick)
                                .map(|()| true),
                            Some(Ok(false)) => Err(SpoolError::NotFound(id.to_string())),
                            Some(Err(e)) => Err(e),
                            None => Err(std::io::Error::other("not materialized").into()),
                        },
                        None => written
                            .next()
                            .unwrap_or_else(|| Err(std::io::Error::other("not written").into()))
                            .map(|()| false),
                    };
                    match recorded {
                        Ok(true) => done.push((id.clone(), Done::Moved)),
                        Ok(false) | Err(SpoolError::NotFound(_)) => {
                            done.push((id.clone(), Done::Written))
                        }
                        Err(e) => {
                            events.emit(Event::SpoolProblem {
                                queue_id: Some(id.clone()),
                                doing: "cannot record delivery state",
                                error: e.to_string(),
                            });
                            done.push((id.clone(), Done::Written));
                        }
                    }
                }
                Ok::<_, SpoolError>(done)
            })
            .await;
            match done {
                Ok(done) => {
                    for (id, d) in done {
                        handle.done(id, d);
                    }
                }
                Err(e) => events.emit(Event::SpoolProblem {
                    queue_id: None,
                    doing: "cannot record delivery states",
                    error: e.to_string(),
                }),
            }
        });
    }

    /// Removes a message's files (it has already left the index).
    fn delete(&self, q: &mut Queue, id: QueueId, waiters: Vec<Arc<AnswerWhenWritten>>) {
        let store = Arc::clone(&self.store);
        let events = self.events.clone();
        q.schedule.remove(&id);
        q.tasks.spawn(async move {
            let write = Write::Delete(id.clone());
            match off_thread(move || write.carry_out(&*store, None)).await {
                Ok(()) | Err(SpoolError::NotFound(_)) => {
                    info!(queue_id = %id, "message deleted from the queue")
                }
                Err(e) => {
                    events.emit(Event::SpoolProblem {
                        queue_id: Some(id.clone()),
                        doing: "cannot delete message",
                        error: e.to_string(),
                    });
                    for w in &waiters {
                        w.failed(format!("{id}: {e}"));
                    }
                }
            }
            drop(waiters);
        });
    }
    /// A job ended: take its result, then apply what commands left pending.
    fn job_done(self: &Arc<Self>, q: &mut Queue, id: QueueId, done: Done) {
        let Some(entry) = q.index.get_mut(&id) else {
            return;
        };
        entry.busy = false;
        let mut next = None;
        if let Done::Moved = done {
            entry.content.journaled = false;
            entry.content.memory = None;
        }
        if let Done::Processed(end) = done {
            match end.state {
                Some(s) => {
                    entry.state = s;
                    entry.unrecorded = end.unrecorded;
                    next = end.next;
                    entry.content.journaled = end.journaled;
                    if !end.journaled {
                        // Later passes read the file: the copy only served the first.
                        entry.content.memory = None;
                    } else if end.unrecorded {
                        q.journaled_unrecorded += 1;
                    }
                }
                None => {
                    q.index.entries.remove(&id);
                    q.schedule.remove(&id);
                    q.waiting.remove(&id);
                    return;
                }
            }
        }
        let pending = std::mem::take(&mut entry.pending);
        let waiters = q.waiting.remove(&id).unwrap_or_default();
        let mut write = None;
        if let Some(held) = pending.held {
            entry.state.held = held;
            write = Some(Write::State(id.clone()));
        }
        if pending.retry {
            entry.make_due(unix_now());
            next = None;
            write.get_or_insert(Write::StateQuick(id.clone()));
        }
        if let Some(w) = write {
            self.write(q, w, waiters);
            return;
        }
        let due = if entry.state.held {
            None
        } else {
            next.or_else(|| due_of(&entry.state))
        };
        q.schedule.set(id, due);
        if q.journaled_unrecorded >= JOURNALED_FLUSH_AT {
            // Each holds memory and keeps journal segments alive: move them now.
            self.flush_unrecorded(q);
        }
    }

    /// After a command: schedule a message by its (possibly changed) state.
    fn reschedule(&self, q: &mut Queue, id: &QueueId) {
        match q.index.entries.get(id) {
            Some(e) if !e.busy => q.schedule.set(id.clone(), due_of(&e.state)),
            _ => q.schedule.remove(id),
        }
    }

    /// Drops the limit of every domain no delivery is using, so the map does
    /// not grow with every domain ever seen.
    fn forget_idle_domains(&self) {
        let mut map = self.per_domain.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, slot| Arc::strong_count(slot) > 1);
    }

    fn domain_slot(&self, domain: &str) -> Arc<Semaphore> {
        let mut map = self.per_domain.lock().unwrap_or_else(|p| p.into_inner());
        Arc::clone(map.entry(domain.to_string()).or_insert_with(|| {
            Arc::new(Semaphore::new(
                self.config().delivery.per_domain_concurrency,
            ))
        }))
    }
}

/// Settles one journaled message (see `QueueStore::settle`): false when
/// it was deleted meanwhile.
fn settle_one(
    store: &dyn QueueStore,
    id: &QueueId,
    copy: &crate::spool::MemoryCopy,
) -> Result<bool, SpoolError> {
    store
        .settle(&[(id, copy)])
        .pop()
        .unwrap_or_else(|| Err(std::io::Error::other("nothing settled").into()))
}

/// A hold, release, retry or delete by `--source` or `--all`.
fn changes_many(cmd: &QueueCommand) -> bool {
    cmd.selector()
        .is_some_and(|select| !matches!(select, Selector::Id(_)))
}

/// The message a hold, release, retry or delete names, when this node does
/// not hold it (it may be another node's, in a shared store).
fn held_elsewhere(cmd: &QueueCommand, index: &Index) -> Option<QueueId> {
    match cmd.selector()? {
        Selector::Id(id) if !index.entries.contains_key(id) => Some(id.clone()),
        _ => None,
    }
}
