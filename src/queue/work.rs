//! One delivery pass over one message: expiry, delivery of the due
//! recipients under the concurrency limits, delay notices, the state write,
//! and at the end the bounce and the removal. Runs as a task the manager
//! starts; it touches only the message the manager handed it.

use super::index::Content;
use super::store::Durability;
use super::{QueueManager, expired, next_attempt, unix_now};
use crate::attempt::EnhancedStatus;
use crate::bounce::{self, ReportKind, ReportedRecipient};
use crate::delivery::client::Outgoing;
use crate::delivery::route::{self, Destination, RouteFacts};
use crate::delivery::{AttemptResult, Job, Outcome, Stage};
use crate::events::{self, DeliveryState, Event};
use crate::spool::{Envelope, MessageState, QueueId, RecipientStatus, SpoolError, off_thread};
use std::collections::BTreeMap;
use std::sync::Arc;

/// When a message still queued is next due: never later than the moment it expires.
fn next_due_before_expiry(
    env: &Envelope,
    state: &MessageState,
    d: &crate::config::DeliveryConfig,
) -> Option<i64> {
    let expires = env.received_at + d.max_queue_lifetime.get().as_secs() as i64;
    state.next_due().map(|t| t.min(expires))
}

/// How a delivery pass ended.
pub(super) struct PassEnd {
    /// The new state; None when the message is gone.
    pub state: Option<MessageState>,
    /// When it is next due.
    pub next: Option<i64>,
    /// The new state is in memory only (deferrals without an attempt); the
    /// manager writes such states later, in a batch.
    pub unrecorded: bool,
    /// The message is still durable only in the journal (moving it into
    /// the queue failed; a later pass tries again).
    pub journaled: bool,
}

impl PassEnd {
    fn gone() -> PassEnd {
        PassEnd {
            state: None,
            next: None,
            unrecorded: false,
            journaled: false,
        }
    }

    fn kept(state: MessageState, next: Option<i64>) -> PassEnd {
        PassEnd {
            state: Some(state),
            next,
            unrecorded: false,
            journaled: false,
        }
    }
}

impl QueueManager {
    /// One delivery pass over one message, on a snapshot of its state the
    /// manager handed over (it writes nothing else of this message meanwhile).
    /// Returns the new state, or None when the message is gone, and when it is next due.
    pub(super) async fn process(
        &self,
        id: &QueueId,
        env: &Envelope,
        body: &Content,
        mut state: MessageState,
    ) -> PassEnd {
        let now = unix_now();
        let config = self.config();
        let d = &config.delivery;
        let is_expired = expired(now, env.received_at, d.max_queue_lifetime.get());
        if is_expired {
            for r in state
                .recipients
                .iter_mut()
                .filter(|r| r.status == RecipientStatus::Queued)
            {
                r.status = RecipientStatus::Failed;
                r.next_attempt = None;
                let mut expiry = AttemptResult::local(
                    Stage::Queue,
                    EnhancedStatus::new(4, 4, 7),
                    format!(
                        "message expired after {} in the queue; last error: {}",
                        d.max_queue_lifetime,
                        r.last_error().unwrap_or_else(|| "none".into())
                    ),
                );
                // The next hop last tried is still worth naming in the report.
                expiry.remote = r.last_result.as_ref().and_then(|l| l.remote.clone());
                self.events.emit(Event::Delivery {
                    queue_id: id.clone(),
                    source: source_of(env),
                    from: env.sender.clone(),
                    to: r.address.clone(),
                    attempts: r.attempts,
                    state: DeliveryState::Expired,
                    result: expiry.clone(),
                    counted: false,
                    next_attempt: None,
                    attempt_seconds: 0.0,
                    queued_seconds: (now - env.received_at).max(0) as f64,
                });
                r.record(expiry);
            }
        }
        // A shared store: another node may have taken the message over
        // while this one stalled; then it is theirs to deliver.
        if self.store.leases() {
            let store = Arc::clone(&self.store);
            let owned_id = id.clone();
            match off_thread(move || store.renew_lease(&owned_id)).await {
                Ok(true) => {}
                Ok(false) | Err(SpoolError::NotFound(_)) => return PassEnd::gone(),
                Err(e) => {
                    self.events.emit(Event::SpoolProblem {
                        queue_id: Some(id.clone()),
                        doing: "cannot renew the lease before an attempt; will retry",
                        error: e.to_string(),
                    });
                    return PassEnd::kept(state, Some(unix_now() + 30));
                }
            }
        }
        // An expiry is a result; otherwise the pass says whether it had one.
        let mut worth_recording =
            is_expired || self.deliver_due(id, env, body, &mut state, now).await;
        if state.has_queued() {
            let warned = state.delay_warned;
            self.maybe_warn_delay(id, env, body, &mut state, now).await;
            worth_recording |= state.delay_warned != warned;
        }
        if state
            .recipients
            .iter()
            .all(|r| r.status == RecipientStatus::Delivered)
        {
            // Nothing left to record or report: remove it at once.
            if self.finish(id, env, body, &state, body.journaled).await {
                return PassEnd::gone();
            }
            return PassEnd::kept(state, Some(unix_now() + 60));
        }
        if !worth_recording && state.has_queued() {
            // Only deferrals without an attempt (the next hop is known to be
            // down, or our own network is): nothing a crash could not lose,
            // so it is written later with others (`flush_unrecorded`).
            // A journaled message stays so meanwhile: its journal record is durable.
            let next = next_due_before_expiry(env, &state, d);
            return PassEnd {
                state: Some(state),
                next,
                unrecorded: true,
                journaled: body.journaled,
            };
        }
        if body.journaled {
            // Results to keep: it needs its own file before its state is written.
            match self.materialize(id, body).await {
                Ok(true) => {}
                Ok(false) => return PassEnd::gone(),
                Err(e) => {
                    self.events.emit(Event::SpoolProblem {
                        queue_id: Some(id.clone()),
                        doing: "cannot move a journaled message into the queue; will retry",
                        error: e.to_string(),
                    });
                    return PassEnd {
                        state: Some(state),
                        next: Some(unix_now() + 60),
                        unrecorded: true,
                        journaled: true,
                    };
                }
            }
        }
        let store = Arc::clone(&self.store);
        let owned_id = id.clone();
        let to_write = state.clone();
        // Final results that lead to a bounce must survive a crash; a deferral
        // lost to a crash only means an earlier retry.
        let durable = !state.has_queued();
        let durability = if durable {
            Durability::Synced
        } else {
            Durability::Quick
        };
        let written =
            off_thread(move || store.record_state(&owned_id, &to_write, durability)).await;
        match written {
            Ok(()) => {}
            Err(SpoolError::NotFound(_)) => return PassEnd::gone(),
            Err(e) => {
                self.events.emit(Event::SpoolProblem {
                    queue_id: Some(id.clone()),
                    doing: "cannot record delivery state; will retry",
                    error: e.to_string(),
                });
                return PassEnd::kept(state, Some(unix_now() + 60));
            }
        }
        if state.has_queued() {
            let next = next_due_before_expiry(env, &state, d);
            return PassEnd::kept(state, next);
        }
        if self.finish(id, env, body, &state, false).await {
            PassEnd::gone()
        } else {
            // The report could not be queued: keep the message and try again.
            PassEnd::kept(state, Some(unix_now() + 60))
        }
    }

    /// Delivers every recipient that is due, one domain at a time, under the limits.
    async fn deliver_due(
        &self,
        id: &QueueId,
        env: &Envelope,
        body: &Content,
        state: &mut MessageState,
        now: i64,
    ) -> bool {
        // Whether anything happened worth a state write: an attempt, or a result.
        let mut attempted = false;
        // Recipients that go the same way travel together: one transaction
        // per destination (a domain's MX, a route's host, a profile).
        let config = self.config();
        let facts = route_facts(env);
        let mut groups: BTreeMap<String, (Destination, Vec<usize>)> = BTreeMap::new();
        let mut unroutable: Vec<(usize, Outcome)> = Vec::new();
        for (i, r) in state.recipients.iter().enumerate() {
            if r.status == RecipientStatus::Queued && r.next_attempt.unwrap_or(0) <= now {
                match route::decide(&r.address, &facts, &config) {
                    Ok(routed) => {
                        groups
                            .entry(routed.destination.key())
                            .or_insert_with(|| (routed.destination, Vec::new()))
                            .1
                            .push(i);
                    }
                    Err(e) => unroutable.push((i, crate::delivery::route_failure(e))),
                }
            }
        }
        let schedule: Vec<std::time::Duration> = config
            .delivery
            .retry_schedule
            .iter()
            .map(|x| x.get())
            .collect();
        if !unroutable.is_empty() {
            let (idxs, outcomes): (Vec<usize>, Vec<Outcome>) = unroutable.into_iter().unzip();
            attempted |= self.record_outcomes(id, env, state, &idxs, outcomes, 0.0, &schedule);
        }
        for (key, (destination, idxs)) in groups {
            let slot = self.domain_slot(&key);
            let _domain_permit = slot.acquire_owned().await;
            let _permit = self.global.acquire().await;
            let recipients: Vec<String> = idxs
                .iter()
                .map(|&i| state.recipients[i].address.clone())
                .collect();
            let job = Job {
                queue_id: id,
                destination: &destination,
                may_sign: env.trusted_origin,
                message: Outgoing {
                    sender: &env.sender,
                    recipients: &recipients,
                    body_path: &body.path,
                    body_len: body.len,
                    body_memory: body.memory.as_deref().map(|m| m.bytes()),
                    eight_bit: env.eight_bit,
                    smtputf8: env.smtputf8,
                },
            };
            let started = std::time::Instant::now();
            let outcomes = self.deliverer.deliver(&job).await;
            let attempt_seconds = started.elapsed().as_secs_f64();
            attempted |=
                self.record_outcomes(id, env, state, &idxs, outcomes, attempt_seconds, &schedule);
        }
        attempted
    }

    /// Applies one attempt's outcomes to the recipients at `idxs` and tells
    /// each as an event. Returns whether anything was learnt worth a write.
    #[allow(clippy::too_many_arguments)]
    fn record_outcomes(
        &self,
        id: &QueueId,
        env: &Envelope,
        state: &mut MessageState,
        idxs: &[usize],
        outcomes: Vec<Outcome>,
        attempt_seconds: f64,
        schedule: &[std::time::Duration],
    ) -> bool {
        let mut attempted = false;
        let after = unix_now();
        for (&i, outcome) in idxs.iter().zip(outcomes) {
            let r = &mut state.recipients[i];
            let (state, result, counted) = match outcome {
                Outcome::Delivered(result) => {
                    attempted = true;
                    r.status = RecipientStatus::Delivered;
                    r.next_attempt = None;
                    r.attempts += 1;
                    (DeliveryState::Delivered, result, true)
                }
                Outcome::Failed(result) => {
                    attempted = true;
                    r.status = RecipientStatus::Failed;
                    r.next_attempt = None;
                    r.attempts += 1;
                    (DeliveryState::Failed, result, true)
                }
                Outcome::Deferred {
                    result,
                    counts,
                    known_down,
                    retry_at,
                } => {
                    if counts {
                        r.attempts += 1;
                    }
                    attempted |= !known_down;
                    r.next_attempt = Some(match retry_at {
                        // The provider (or a profile's rest) names the time.
                        Some(t) => t.max(after + 1),
                        None => next_attempt(after, r.attempts, schedule),
                    });
                    (DeliveryState::Deferred, result, counts)
                }
            };
            self.events.emit(Event::Delivery {
                queue_id: id.clone(),
                source: source_of(env),
                from: env.sender.clone(),
                to: r.address.clone(),
                attempts: r.attempts,
                state,
                result: result.clone(),
                counted,
                next_attempt: r.next_attempt,
                attempt_seconds,
                queued_seconds: (after - env.received_at).max(0) as f64,
            });
            r.record(result);
        }
        attempted
    }

    async fn maybe_warn_delay(
        &self,
        id: &QueueId,
        env: &Envelope,
        body: &Content,
        state: &mut MessageState,
        now: i64,
    ) {
        let Some(after) = self.config().delivery.delay_warning else {
            return;
        };
        if state.delay_warned
            || !bounce::may_bounce(env)
            || now - env.received_at < after.get().as_secs() as i64
        {
            return;
        }
        let waiting = to_report(
            state,
            RecipientStatus::Queued,
            EnhancedStatus::new(4, 0, 0),
            "not yet delivered",
        );
        if self
            .queue_report(ReportKind::Delayed, id, env, body, &waiting)
            .await
        {
            state.delay_warned = true;
        }
    }

    /// The message is done with: bounce what failed, then remove it. False
    /// when the bounce could not be queued (the message stays).
    async fn finish(
        &self,
        id: &QueueId,
        env: &Envelope,
        body: &Content,
        state: &MessageState,
        journaled: bool,
    ) -> bool {
        let failed = to_report(
            state,
            RecipientStatus::Failed,
            EnhancedStatus::new(5, 0, 0),
            "delivery failed",
        );
        let mut unreported = 0;
        if !failed.is_empty() {
            if bounce::may_bounce(env) {
                if !self
                    .queue_report(ReportKind::Failed, id, env, body, &failed)
                    .await
                {
                    // Keep the message (its state says everything is final) and try again later.
                    return false;
                }
            } else {
                unreported = failed.len();
            }
        }
        let store = Arc::clone(&self.store);
        let owned = id.clone();
        match off_thread(move || store.finish(&owned, journaled)).await {
            Ok(()) | Err(SpoolError::NotFound(_)) => {
                self.events.emit(Event::MessageFinished {
                    queue_id: id.clone(),
                    failed: failed.len(),
                    unreported,
                });
            }
            Err(e) => self.events.emit(Event::SpoolProblem {
                queue_id: Some(id.clone()),
                doing: "cannot remove finished message",
                error: e.to_string(),
            }),
        }
        true
    }

    /// Gives a journaled message its own file in `queue/`, from memory.
    /// False when it was deleted meanwhile.
    async fn materialize(&self, id: &QueueId, body: &Content) -> Result<bool, SpoolError> {
        let copy = body
            .memory
            .clone()
            .ok_or_else(|| std::io::Error::other("journaled message without its copy"))?;
        let store = Arc::clone(&self.store);
        let owned = id.clone();
        off_thread(move || super::settle_one(&*store, &owned, &copy)).await
    }

    /// Spools a DSN to the original sender. Returns false when it could not be written.
    async fn queue_report(
        &self,
        kind: ReportKind,
        id: &QueueId,
        env: &Envelope,
        body: &Content,
        rcpts: &[ReportedRecipient],
    ) -> bool {
        let content = body.clone();
        let original = match off_thread(move || content.read()).await {
            Ok(bytes) => bytes,
            Err(e) => {
                self.events.emit(Event::SpoolProblem {
                    queue_id: Some(id.clone()),
                    doing: "cannot read the message to attach to its report",
                    error: e.to_string(),
                });
                return false;
            }
        };
        let bounce_id = QueueId::new();
        let dsn = bounce::build(
            kind,
            &self.hostname,
            env,
            &original,
            rcpts,
            if env.trusted_origin {
                self.config().delivery.bounce_attach.into()
            } else {
                bounce::Attach::Summary
            },
            &bounce_id,
        );
        let written = super::local_mail::submit(
            super::local_mail::Queueing {
                store: &*self.store,
                spool: &self.spool,
                queue: Some(&self.handle),
            },
            super::local_mail::LocalMail {
                id: &bounce_id,
                hostname: &self.hostname,
                to: &env.sender,
                message: dsn,
                smtputf8: env.smtputf8,
            },
        )
        .await;
        match written {
            Ok(()) => {
                self.events.emit(Event::ReportQueued {
                    queue_id: id.clone(),
                    report_id: bounce_id.clone(),
                    to: env.sender.clone(),
                    kind: match kind {
                        ReportKind::Failed => events::ReportKind::Bounce,
                        ReportKind::Delayed => events::ReportKind::DelayNotice,
                    },
                    recipients: rcpts.len(),
                });
                true
            }
            Err(e) => {
                self.events.emit(Event::SpoolProblem {
                    queue_id: Some(id.clone()),
                    doing: "cannot queue delivery report",
                    error: e.to_string(),
                });
                false
            }
        }
    }
}

/// The recipients in `status`, with their last results (or our own words when
/// no attempt recorded one), for a delivery report.
fn to_report(
    state: &MessageState,
    status: RecipientStatus,
    fallback_status: EnhancedStatus,
    fallback_text: &str,
) -> Vec<ReportedRecipient> {
    state
        .recipients
        .iter()
        .filter(|r| r.status == status)
        .map(|r| ReportedRecipient {
            address: r.address.clone(),
            result: r.result_or(AttemptResult::local(
                Stage::Queue,
                fallback_status,
                fallback_text,
            )),
        })
        .collect()
}

/// What routing may look at of a message: its sender, the AUTH name and
/// the address of the client that sent it (none for our own reports).
pub fn route_facts(env: &Envelope) -> RouteFacts<'_> {
    RouteFacts {
        sender: &env.sender,
        user: env.auth_user.as_deref(),
        client: env
            .client_ip
            .parse()
            .ok()
            .filter(|_| !env.sender.is_empty() || env.auth_user.is_some()),
    }
}

/// Whose mail a message is, as the guard counts sources: the AUTH user, else
/// the client address; None for our own reports (null sender).
fn source_of(env: &Envelope) -> Option<String> {
    if env.sender.is_empty() {
        return None;
    }
    env.auth_user
        .clone()
        .or_else(|| Some(env.client_ip.clone()))
}
