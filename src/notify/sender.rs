//! Sending one webhook's outbox: POSTs signed bodies to the receiver, a few
//! at a time while it answers, one probe at a time with a growing pause
//! while it does not. A 2xx ends a notification; anything else (a redirect
//! is not followed) is tried again: the first retry within 30 s, then
//! doubling, for `retry_for`.

use super::outbox::{Outbox, Pending, Slot};
use super::signature;
use crate::events::{Event, Events};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Posts at once while the receiver answers.
const IN_FLIGHT: usize = 4;

/// Where and how to post; replaced as a whole on reload.
pub struct Target {
    pub name: String,
    pub url: reqwest::Url,
    pub client: reqwest::Client,
    /// The signing key, or why it could not be read (nothing is sent then:
    /// an unsigned post to a receiver that expects a signature is a forgery).
    pub secret: Option<Result<Vec<u8>, String>>,
    pub retry_for: Duration,
}

/// When a notification that failed `attempts` times is tried again.
pub fn retry_delay(attempts: u32) -> Duration {
    let secs = 10u64.saturating_mul(1 << attempts.saturating_sub(1).min(12));
    Duration::from_secs(secs.min(1800))
}

/// How long the whole webhook rests after `failures` failures in a row.
pub fn pause_after(failures: u32) -> Duration {
    let secs = 5u64.saturating_mul(1 << failures.saturating_sub(1).min(12));
    Duration::from_secs(secs.min(300))
}

pub struct Sender {
    pub outbox: Arc<Outbox>,
    pub target: Arc<std::sync::RwLock<Arc<Target>>>,
    pub events: Events,
    pub metrics: Option<Arc<crate::metrics::Metrics>>,
}

impl Sender {
    fn target(&self) -> Arc<Target> {
        Arc::clone(&self.target.read().unwrap_or_else(|p| p.into_inner()))
    }

    pub async fn run(self, stop: CancellationToken) {
        let mut posts: JoinSet<(Slot, Result<(), String>)> = JoinSet::new();
        let mut failures = 0u32;
        let mut paused_until: Option<tokio::time::Instant> = None;
        let mut sync = tokio::time::interval(Duration::from_secs(1));
        sync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let now = crate::clock::unix_now();
            let paused = paused_until.is_some_and(|t| tokio::time::Instant::now() < t);
            // While the receiver fails, one probe at a time.
            let room = if failures > 0 {
                usize::from(posts.is_empty())
            } else {
                IN_FLIGHT - posts.len()
            };
            let mut wait = Duration::from_secs(60);
            if paused {
                wait = paused_until
                    .map(|t| t.saturating_duration_since(tokio::time::Instant::now()))
                    .unwrap_or_default();
            } else if room > 0 {
                let (batch, next) = self.outbox.take_due(now, room);
                let target = self.target();
                for (slot, p) in batch {
                    let target = Arc::clone(&target);
                    posts.spawn(async move { (slot, post(&target, &p).await) });
                }
                if let Some(next) = next {
                    wait = Duration::from_secs((next - now).clamp(0, 60) as u64);
                }
            }
            tokio::select! {
                _ = stop.cancelled() => break,
                Some(joined) = posts.join_next(), if !posts.is_empty() => {
                    let Ok((slot, outcome)) = joined else { continue };
                    self.settle(slot, outcome, &mut failures, &mut paused_until);
                }
                _ = self.outbox.wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
                _ = sync.tick() => {
                    if let Err(e) = self.outbox.sync() {
                        warn!(webhook = %self.target().name, error = %e, "cannot sync the webhook outbox");
                    }
                    if let Some(m) = &self.metrics {
                        m.webhook_pending(&self.target().name, self.outbox.pending());
                    }
                }
            }
        }
        // What was in flight stays in the outbox: sent again next time.
        posts.abort_all();
        let _ = self.outbox.sync();
    }

    fn settle(
        &self,
        slot: Slot,
        outcome: Result<(), String>,
        failures: &mut u32,
        paused_until: &mut Option<tokio::time::Instant>,
    ) {
        let target = self.target();
        match outcome {
            Ok(()) => {
                if *failures > 0 {
                    info!(webhook = %target.name, "webhook receiver answers again");
                }
                *failures = 0;
                *paused_until = None;
                if let Err(e) = self.outbox.done(slot) {
                    warn!(webhook = %target.name, error = %e, "cannot record a sent notification (it may be sent again)");
                }
                if let Some(m) = &self.metrics {
                    m.webhook_sent(&target.name);
                }
            }
            Err(why) => {
                *failures += 1;
                *paused_until = Some(tokio::time::Instant::now() + pause_after(*failures));
                let now = crate::clock::unix_now();
                let attempts = self.outbox.attempts_of(slot) + 1;
                let retry_at = now + retry_delay(attempts).as_secs() as i64;
                let cut = now - target.retry_for.as_secs() as i64;
                warn!(webhook = %target.name, attempts, error = %why, "webhook notification not taken; tried again later");
                match self.outbox.failed(slot, retry_at, cut) {
                    Ok(true) => self.events.emit(Event::NotificationsDropped {
                        webhook: target.name.clone(),
                        count: 1,
                        reason: "the receiver did not take it within retry_for",
                    }),
                    Ok(false) => {}
                    Err(e) => {
                        warn!(webhook = %target.name, error = %e, "cannot record a dropped notification")
                    }
                }
            }
        }
    }
}

/// One POST. The error never names the URL (webhook URLs often carry a token).
async fn post(target: &Target, p: &Pending) -> Result<(), String> {
    let mut request = target
        .client
        .post(target.url.clone())
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header("X-Portcullis-Id", &p.id)
        .header("X-Portcullis-Event", &p.kind)
        .body(p.body.to_string());
    match &target.secret {
        Some(Ok(key)) => {
            let t = crate::clock::unix_now();
            request = request.header(
                signature::HEADER,
                signature::header_value(key, t, p.body.as_bytes()),
            );
        }
        Some(Err(why)) => return Err(why.clone()),
        None => {}
    }
    match request.send().await {
        Ok(response) if response.status().is_success() => Ok(()),
        Ok(response) => Err(format!("the receiver answered HTTP {}", response.status())),
        Err(e) => Err(describe(e.without_url())),
    }
}

fn describe(e: reqwest::Error) -> String {
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else {
        "failed"
    };
    format!("{what}: {}", crate::tls::error_chain(&e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_retry_is_within_30_seconds_and_later_ones_grow() {
        assert!(retry_delay(1) <= Duration::from_secs(30));
        assert!(pause_after(1) <= Duration::from_secs(30));
        assert!(retry_delay(3) > retry_delay(2));
        assert_eq!(retry_delay(40), Duration::from_secs(1800));
        assert_eq!(pause_after(40), Duration::from_secs(300));
    }
}
