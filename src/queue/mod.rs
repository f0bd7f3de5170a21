//! The queue manager: knows when each spooled message is next due, runs
//! deliveries under the concurrency limits, writes every result back to the
//! spool before acting on it, sends bounces, and removes finished messages.

mod schedule;

pub use schedule::{expired, next_attempt};

use crate::bounce::{self, ReportKind, ReportedRecipient};
use crate::config::Config;
use crate::delivery::client::Outgoing;
use crate::delivery::{Deliverer, Job, Outcome};
use crate::spool::{
    Envelope, EnvelopeRecipient, MessageState, RecipientStatus, Spool, SpoolError, new_queue_id,
};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

/// How often the spool is read again in full, to pick up changes made by hand.
const RESCAN_EVERY: Duration = Duration::from_secs(60);

pub fn unix_now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Where a queued message's content is: the first `len` bytes of its spool
/// file. Deliveries stream it from there; only reports read it whole.
#[derive(Clone)]
struct Content {
    path: std::path::PathBuf,
    len: u64,
}

impl Content {
    fn read(&self) -> std::io::Result<Vec<u8>> {
        use std::io::Read;
        let mut bytes = vec![0u8; self.len as usize];
        std::fs::File::open(&self.path)?.read_exact(&mut bytes)?;
        Ok(bytes)
    }
}

/// Hands newly spooled queue IDs to the manager.
#[derive(Clone)]
pub struct QueueHandle(mpsc::UnboundedSender<String>);

impl QueueHandle {
    pub fn notify(&self, id: &str) {
        let _ = self.0.send(id.to_string());
    }
}

pub struct QueueManager {
    spool: Spool,
    config: Arc<Config>,
    deliverer: Arc<Deliverer>,
    hostname: String,
    global: Arc<Semaphore>,
    per_domain: Mutex<HashMap<String, Arc<Semaphore>>>,
    handle: QueueHandle,
}

/// Due times by queue ID, ordered for "what is next".
#[derive(Default)]
struct Schedule {
    by_time: BTreeSet<(i64, String)>,
    by_id: HashMap<String, i64>,
}

impl Schedule {
    fn set(&mut self, id: String, due: i64) {
        if let Some(old) = self.by_id.insert(id.clone(), due) {
            self.by_time.remove(&(old, id.clone()));
        }
        self.by_time.insert((due, id));
    }
    fn remove(&mut self, id: &str) {
        if let Some(old) = self.by_id.remove(id) {
            self.by_time.remove(&(old, id.to_string()));
        }
    }
    fn pop_due(&mut self, now: i64) -> Option<String> {
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

impl QueueManager {
    pub fn new(
        spool: Spool,
        config: Arc<Config>,
        deliverer: Arc<Deliverer>,
    ) -> (Arc<QueueManager>, mpsc::UnboundedReceiver<String>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let manager = QueueManager {
            hostname: config.hostname(),
            global: Arc::new(Semaphore::new(config.delivery.concurrency)),
            per_domain: Mutex::new(HashMap::new()),
            handle: QueueHandle(tx),
            spool,
            config,
            deliverer,
        };
        (Arc::new(manager), rx)
    }

    pub fn handle(&self) -> QueueHandle {
        self.handle.clone()
    }

    /// Runs until `shutdown`; deliveries in progress then get `grace` to finish.
    pub async fn run(
        self: Arc<Self>,
        mut new_ids: mpsc::UnboundedReceiver<String>,
        shutdown: CancellationToken,
        grace: Duration,
    ) {
        let mut schedule = Schedule::default();
        let mut in_flight: HashSet<String> = HashSet::new();
        let mut again: HashSet<String> = HashSet::new();
        self.rescan(&mut schedule, &in_flight).await;
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<(String, Option<i64>)>();
        let tasks = TaskTracker::new();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut last_poke = self.spool.poked_at();
        let mut last_rescan = tokio::time::Instant::now();
        loop {
            let now = unix_now();
            while let Some(id) = schedule.pop_due(now) {
                if !in_flight.insert(id.clone()) {
                    again.insert(id);
                    continue;
                }
                let me = Arc::clone(&self);
                let done = done_tx.clone();
                tasks.spawn(async move {
                    let next = me.process(&id).await;
                    let _ = done.send((id, next));
                });
            }
            let wait = schedule.next_time().map_or(60, |t| (t - now).clamp(1, 60)) as u64;
            tokio::select! {
                Some(id) = new_ids.recv() => {
                    if in_flight.contains(&id) { again.insert(id); } else { schedule.set(id, 0); }
                }
                Some((id, next)) = done_rx.recv() => {
                    in_flight.remove(&id);
                    let next = if again.remove(&id) { Some(0) } else { next };
                    if let Some(t) = next { schedule.set(id, t); }
                }
                _ = tick.tick() => {
                    let poked = self.spool.poked_at();
                    if poked != last_poke || last_rescan.elapsed() >= RESCAN_EVERY {
                        last_poke = poked;
                        last_rescan = tokio::time::Instant::now();
                        self.rescan(&mut schedule, &in_flight).await;
                    }
                    self.deliverer.sweep_idle().await;
                    self.forget_idle_domains();
                }
                _ = tokio::time::sleep(Duration::from_secs(wait)) => {}
                _ = shutdown.cancelled() => break,
            }
        }
        tasks.close();
        if tokio::time::timeout(grace, tasks.wait()).await.is_err() {
            warn!("deliveries still running at shutdown; they will be retried at the next start");
        }
        self.deliverer.close_idle().await;
    }

    /// Reads every message's state from disk (at start, after a `queue` command, and now and then).
    async fn rescan(&self, schedule: &mut Schedule, in_flight: &HashSet<String>) {
        let spool = self.spool.clone();
        let found = tokio::task::spawn_blocking(move || -> Vec<(String, Option<i64>)> {
            let ids = spool.ids().unwrap_or_default();
            ids.into_iter()
                .filter_map(|id| match spool.load(&id) {
                    Ok(m) => Some((id, due_of(&m.state))),
                    Err(e) => {
                        error!(queue_id = %id, error = %e, "unreadable queue file left in place");
                        None
                    }
                })
                .collect()
        })
        .await
        .unwrap_or_default();
        let present: HashSet<&String> = found.iter().map(|(id, _)| id).collect();
        let gone: Vec<String> = schedule
            .by_id
            .keys()
            .filter(|id| !present.contains(id))
            .cloned()
            .collect();
        for id in gone {
            schedule.remove(&id);
        }
        for (id, due) in &found {
            if in_flight.contains(id) {
                continue;
            }
            match due {
                Some(t) => schedule.set(id.clone(), *t),
                None => schedule.remove(id),
            }
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
            Arc::new(Semaphore::new(self.config.delivery.per_domain_concurrency))
        }))
    }

    /// One pass over one message. Returns when it is next due.
    async fn process(&self, id: &str) -> Option<i64> {
        let spool = self.spool.clone();
        let owned_id = id.to_string();
        let loaded = tokio::task::spawn_blocking(move || spool.load(&owned_id)).await;
        let msg = match loaded {
            Ok(Ok(x)) => x,
            Ok(Err(SpoolError::NotFound(_))) => return None,
            Ok(Err(e)) => {
                error!(queue_id = %id, error = %e, "cannot read queued message; will look again later");
                return Some(unix_now() + 300);
            }
            Err(e) => {
                error!(queue_id = %id, error = %e, "queue task failed");
                return Some(unix_now() + 300);
            }
        };
        if msg.state.held {
            return None;
        }
        let body = Content {
            path: msg.path.clone(),
            len: msg.body_len,
        };
        let env = msg.envelope;
        let mut state = msg.state;
        let now = unix_now();
        let d = &self.config.delivery;
        if expired(now, env.received_at, d.max_queue_lifetime.get()) {
            for r in state
                .recipients
                .iter_mut()
                .filter(|r| r.status == RecipientStatus::Queued)
            {
                r.status = RecipientStatus::Failed;
                r.next_attempt = None;
                r.last_error = Some(format!(
                    "4.4.7 message expired after {} in the queue; last error: {}",
                    d.max_queue_lifetime,
                    r.last_error.as_deref().unwrap_or("none")
                ));
                warn!(queue_id = %id, to = %r.address, "expired");
            }
        } else {
            self.deliver_due(id, &env, &body, &mut state, now).await;
        }
        if state.has_queued() {
            self.maybe_warn_delay(id, &env, &body, &mut state, now)
                .await;
        }
        if state
            .recipients
            .iter()
            .all(|r| r.status == RecipientStatus::Delivered)
        {
            // Nothing left to record or report: remove it at once.
            self.finish(id, &env, &body, &state).await;
            return None;
        }
        let spool = self.spool.clone();
        let owned_id = id.to_string();
        let mut to_write = state.clone();
        // Final results that lead to a bounce must survive a crash; a deferral
        // lost to a crash only means an earlier retry.
        let durable = !state.has_queued();
        let written = tokio::task::spawn_blocking(move || {
            // A `queue hold` given while this attempt ran must survive our write.
            to_write.held = spool.is_held(&owned_id);
            let result = if durable {
                spool.write_state(&owned_id, &to_write)
            } else {
                spool.write_state_quick(&owned_id, &to_write)
            };
            result.map(|_| to_write.held)
        })
        .await;
        match written {
            Ok(Ok(true)) => return None,
            Ok(Ok(false)) => {}
            Ok(Err(SpoolError::NotFound(_))) => return None,
            other => {
                error!(queue_id = %id, result = ?other.map(|r| r.err().map(|e| e.to_string())), "cannot record delivery state; will retry");
                return Some(unix_now() + 60);
            }
        }
        if state.has_queued() {
            // Never later than the moment the message expires.
            let expires = env.received_at + d.max_queue_lifetime.get().as_secs() as i64;
            return state.next_due().map(|t| t.min(expires));
        }
        self.finish(id, &env, &body, &state).await;
        None
    }

    /// Delivers every recipient that is due, one domain at a time, under the limits.
    async fn deliver_due(
        &self,
        id: &str,
        env: &Envelope,
        body: &Content,
        state: &mut MessageState,
        now: i64,
    ) {
        let mut groups: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for (i, r) in state.recipients.iter().enumerate() {
            if r.status == RecipientStatus::Queued && r.next_attempt.unwrap_or(0) <= now {
                let domain = domain_of(env, &r.address);
                groups.entry(domain).or_default().push(i);
            }
        }
        let schedule: Vec<std::time::Duration> = self
            .config
            .delivery
            .retry_schedule
            .iter()
            .map(|x| x.get())
            .collect();
        for (domain, idxs) in groups {
            let slot = self.domain_slot(&domain);
            let _domain_permit = slot.acquire_owned().await;
            let _permit = self.global.acquire().await;
            let recipients: Vec<String> = idxs
                .iter()
                .map(|&i| state.recipients[i].address.clone())
                .collect();
            let job = Job {
                queue_id: id,
                domain: &domain,
                message: Outgoing {
                    sender: &env.sender,
                    recipients: &recipients,
                    body_path: &body.path,
                    body_len: body.len,
                    eight_bit: env.eight_bit,
                    smtputf8: env.smtputf8,
                },
            };
            let outcomes = self.deliverer.deliver(&job).await;
            let after = unix_now();
            for (&i, outcome) in idxs.iter().zip(outcomes) {
                let r = &mut state.recipients[i];
                match outcome {
                    Outcome::Delivered { host, reply } => {
                        r.status = RecipientStatus::Delivered;
                        r.next_attempt = None;
                        r.last_error = None;
                        r.attempts += 1;
                        info!(queue_id = %id, to = %r.address, host = %host, reply = %reply, "recipient delivered");
                    }
                    Outcome::Failed { reason, remote } => {
                        r.status = RecipientStatus::Failed;
                        r.next_attempt = None;
                        r.attempts += 1;
                        warn!(queue_id = %id, to = %r.address, remote = remote.as_deref(), reason = %reason, "recipient failed permanently");
                        r.last_error = Some(match remote {
                            Some(host) => format!("{reason} (from {host})"),
                            None => reason,
                        });
                    }
                    Outcome::Deferred { reason, counts } => {
                        if counts {
                            r.attempts += 1;
                        }
                        r.next_attempt = Some(next_attempt(after, r.attempts, &schedule));
                        info!(queue_id = %id, to = %r.address, reason = %reason, counted = counts, next = r.next_attempt, "recipient deferred");
                        r.last_error = Some(reason);
                    }
                }
            }
        }
    }

    async fn maybe_warn_delay(
        &self,
        id: &str,
        env: &Envelope,
        body: &Content,
        state: &mut MessageState,
        now: i64,
    ) {
        let Some(after) = self.config.delivery.delay_warning else {
            return;
        };
        if state.delay_warned
            || !bounce::may_bounce(env)
            || now - env.received_at < after.get().as_secs() as i64
        {
            return;
        }
        let waiting: Vec<ReportedRecipient> = state
            .recipients
            .iter()
            .filter(|r| r.status == RecipientStatus::Queued)
            .map(|r| ReportedRecipient {
                address: r.address.clone(),
                reason: r
                    .last_error
                    .clone()
                    .unwrap_or_else(|| "4.0.0 not yet delivered".into()),
                remote: None,
            })
            .collect();
        if self
            .queue_report(ReportKind::Delayed, id, env, body, &waiting)
            .await
        {
            state.delay_warned = true;
        }
    }

    /// The message is done with: bounce what failed, then remove it.
    async fn finish(&self, id: &str, env: &Envelope, body: &Content, state: &MessageState) {
        let failed: Vec<ReportedRecipient> = state
            .recipients
            .iter()
            .filter(|r| r.status == RecipientStatus::Failed)
            .map(|r| ReportedRecipient {
                address: r.address.clone(),
                remote: r.last_error.as_deref().and_then(|e| {
                    e.rsplit_once("(from ")
                        .map(|(_, h)| h.trim_end_matches(')').to_string())
                }),
                reason: r
                    .last_error
                    .clone()
                    .unwrap_or_else(|| "5.0.0 delivery failed".into()),
            })
            .collect();
        if !failed.is_empty() {
            if bounce::may_bounce(env) {
                if !self
                    .queue_report(ReportKind::Failed, id, env, body, &failed)
                    .await
                {
                    // Keep the message (its state says everything is final) and try again later.
                    return;
                }
            } else {
                warn!(queue_id = %id, failed = failed.len(), "no bounce: the sender is the null address");
            }
        }
        let spool = self.spool.clone();
        let owned = id.to_string();
        match tokio::task::spawn_blocking(move || spool.remove_finished(&owned)).await {
            Ok(Ok(())) | Ok(Err(SpoolError::NotFound(_))) => {
                info!(queue_id = %id, failed = failed.len(), "message done, removed from the queue")
            }
            other => {
                error!(queue_id = %id, result = ?other.map(|r| r.err().map(|e| e.to_string())), "cannot remove finished message")
            }
        }
    }

    /// Spools a DSN to the original sender. Returns false when it could not be written.
    async fn queue_report(
        &self,
        kind: ReportKind,
        id: &str,
        env: &Envelope,
        body: &Content,
        rcpts: &[ReportedRecipient],
    ) -> bool {
        let content = body.clone();
        let original = match tokio::task::spawn_blocking(move || content.read()).await {
            Ok(Ok(bytes)) => bytes,
            other => {
                error!(queue_id = %id, result = ?other.map(|r| r.err().map(|e| e.to_string())), "cannot read the message to attach to its report");
                return false;
            }
        };
        let bounce_id = new_queue_id();
        let dsn = bounce::build(
            kind,
            &self.hostname,
            env,
            &original,
            rcpts,
            self.config.delivery.bounce_attach,
            &bounce_id,
        );
        let envelope = Envelope {
            version: 1,
            id: bounce_id.clone(),
            received_at: unix_now(),
            sender: String::new(),
            recipients: vec![EnvelopeRecipient {
                address: env.sender.clone(),
                domain: domain_of_address(&env.sender),
            }],
            client_ip: "127.0.0.1".into(),
            helo: self.hostname.clone(),
            auth_user: None,
            smtputf8: env.smtputf8,
            eight_bit: !dsn.is_ascii(),
            size: dsn.len() as u64,
        };
        let spool = self.spool.clone();
        let bid = bounce_id.clone();
        let written = tokio::task::spawn_blocking(move || {
            let mut w = spool.begin(&bid);
            w.write(&dsn);
            w.commit(&envelope)
        })
        .await;
        match written {
            Ok(Ok(())) => {
                info!(queue_id = %id, bounce_id = %bounce_id, to = %env.sender, kind = ?kind, recipients = rcpts.len(), "delivery report queued");
                self.handle.notify(&bounce_id);
                true
            }
            other => {
                error!(queue_id = %id, result = ?other.map(|r| r.err().map(|e| e.to_string())), "cannot queue delivery report");
                false
            }
        }
    }
}

fn domain_of_address(address: &str) -> String {
    address
        .rsplit_once('@')
        .map(|(_, d)| d.to_lowercase())
        .unwrap_or_default()
}

/// The routing domain of a recipient, from the envelope (falls back to the address).
fn domain_of(env: &Envelope, address: &str) -> String {
    env.recipients
        .iter()
        .find(|r| r.address == address)
        .map(|r| r.domain.clone())
        .unwrap_or_else(|| domain_of_address(address))
}
