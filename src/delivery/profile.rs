//! Delivery through a smart-host profile: its quota and overflow, its
//! credentials (a password file read afresh, or an OAuth2 token), the
//! sender rewrite and DKIM, then its transport (`transport`: SMTP to its
//! hosts, or Microsoft Graph), and what a provider's refusal means for the
//! whole profile (see `provider`).

use super::client::{Credentials, Outgoing};
use super::provider::{self, Problem, ProblemKind, Rest};
use super::result::{AttemptResult, Stage};
use super::transport::Sending;
use super::{Deliverer, Job, Outcome, Settings};
use crate::attempt::EnhancedStatus;
use crate::clock::unix_now;
use crate::config::{Config, Profile, ProfileAuth};
use crate::events::Event;
use crate::oauth::TokenError;
use std::sync::Arc;

/// A profile with what its connections need, made once per config.
pub(super) struct Ready {
    pub profile: Profile,
    /// Verified TLS with the profile's trust anchors and client certificate.
    pub tls: Result<Arc<rustls::ClientConfig>, String>,
    /// HTTPS for Graph (token endpoints get their own, in `oauth`).
    pub http: Result<reqwest::Client, String>,
}

impl Ready {
    pub fn new(profile: Profile, resolver: &crate::dns::Resolver) -> Ready {
        let tls = crate::client_tls::verified_for(&profile);
        let http = if profile.transport == crate::config::Transport::Graph {
            crate::oauth::endpoint::http_client(&profile, resolver)
        } else {
            Err("not a Graph profile".into())
        };
        Ready { profile, tls, http }
    }
}

impl Deliverer {
    pub(super) async fn deliver_via_profile(&self, job: &Job<'_>, name: &str) -> Vec<Outcome> {
        self.via_profile(job, name, 0).await
    }

    /// Through profile `name`: split by its `recipients_per_message`, each
    /// part paced by its quota, or handed to its overflow profile (at most
    /// `MAX_OVERFLOW` hops; check-config refuses loops) while it has no room.
    fn via_profile<'a>(
        &'a self,
        job: &'a Job<'a>,
        name: &'a str,
        depth: usize,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Vec<Outcome>> + Send + 'a>> {
        Box::pin(async move {
            let settings = self.settings();
            let count = job.message.recipients.len();
            let Some(ready) = settings.profiles.get(name) else {
                return vec![deferred(super::route::missing_profile(name), false, None); count];
            };
            let p = &ready.profile;
            let overflow = p.overflow.as_deref().filter(|_| depth < MAX_OVERFLOW);
            if let Some(rest) = self.resting.get(name, unix_now()) {
                if let (ProblemKind::Quota, Some(next)) = (rest.kind, overflow) {
                    return self.via_profile(job, next, depth + 1).await;
                }
                // Known broken: no connection, no token request, nothing learnt.
                return vec![
                    Outcome::Deferred {
                        result: rest.result,
                        counts: false,
                        known_down: true,
                        retry_at: Some(rest.until),
                    };
                    count
                ];
            }
            let per_message = p
                .quota
                .recipients_per_message
                .map_or(usize::MAX, |n| n.max(1) as usize);
            let mut outcomes = Vec::with_capacity(count);
            for chunk in job.message.recipients.chunks(per_message) {
                let part = Job {
                    queue_id: job.queue_id,
                    destination: job.destination,
                    may_sign: job.may_sign,
                    message: Outgoing {
                        recipients: chunk,
                        ..job.message
                    },
                };
                // A part before this one may have put the profile to rest.
                if let Some(rest) = self.resting.get(name, unix_now()) {
                    match (rest.kind, overflow) {
                        (ProblemKind::Quota, Some(next)) => {
                            outcomes.extend(self.via_profile(&part, next, depth + 1).await)
                        }
                        _ => outcomes.extend(vec![
                            deferred(rest.result, false, Some(rest.until));
                            chunk.len()
                        ]),
                    }
                    continue;
                }
                let room = super::pacing::reserve(
                    &*self.ledger,
                    &self.ledger_lock,
                    name,
                    &p.quota,
                    chunk.len() as u64,
                    unix_now(),
                );
                match (room, overflow) {
                    (Ok(()), _) => {
                        outcomes.extend(self.send_through(&part, ready, &settings).await)
                    }
                    (Err(_), Some(next)) => {
                        outcomes.extend(self.via_profile(&part, next, depth + 1).await)
                    }
                    (Err(full), None) => outcomes.extend(vec![held(p, &full); chunk.len()]),
                }
            }
            outcomes
        })
    }

    /// Sends one transaction through `ready`: the sender rewrite, then SMTP or Graph.
    async fn send_through(
        &self,
        job: &Job<'_>,
        ready: &Ready,
        settings: &Settings,
    ) -> Vec<Outcome> {
        let count = job.message.recipients.len();
        let p = &ready.profile;
        let rewritten = match &p.rewrite_sender {
            Some(address) => match super::content_of(&job.message).await {
                Ok(content) => Some((address.clone(), super::rewrite::rewrite(&content, address))),
                Err(e) => return vec![deferred(local(e), true, None); count],
            },
            None => None,
        };
        let msg = match &rewritten {
            Some((sender, content)) => Outgoing {
                sender,
                body_len: content.len() as u64,
                body_memory: Some(content),
                ..job.message
            },
            None => job.message,
        };
        // Signed after the rewrite, so the signature covers what is sent.
        let signed = match self.signed_content(job, &msg, settings).await {
            Ok(signed) => signed,
            Err(e) => return vec![deferred(local(e), true, None); count],
        };
        let msg = match &signed {
            Some(content) => Outgoing {
                body_len: content.len() as u64,
                body_memory: Some(content),
                ..msg
            },
            None => msg,
        };
        let sending = Sending {
            job,
            ready,
            msg: &msg,
            settings,
        };
        let outcomes = super::transport::of(p.transport).send(self, sending).await;
        self.judge(ready, outcomes)
    }

    /// The credentials a connection of `ready` logs in with.
    pub(super) async fn credentials(
        &self,
        ready: &Ready,
        config: &Config,
    ) -> Result<Option<Credentials>, TokenError> {
        let p = &ready.profile;
        let user = p.user.clone().unwrap_or_default();
        match p.auth {
            ProfileAuth::None => Ok(None),
            ProfileAuth::Password => {
                let Some(path) = &p.password_file else {
                    return Ok(None);
                };
                let password = tokio::fs::read_to_string(path)
                    .await
                    .map_err(|e| TokenError {
                        message: format!("{} {}: {e}", p.key_of("password_file"), path.display()),
                        needs_action: true,
                    })?;
                Ok(Some(Credentials::Password {
                    user,
                    password: password.trim_end_matches(['\r', '\n']).to_string(),
                }))
            }
            ProfileAuth::Xoauth2 => {
                let token = self
                    .tokens
                    .access_token(p, &config.oauth_token_file(&p.name))
                    .await?;
                Ok(Some(Credentials::Bearer { user, token }))
            }
        }
    }

    /// No credentials could be had (a token endpoint that refuses, an
    /// unreadable password file): the profile rests, its mail waits.
    pub(super) fn no_credentials(&self, p: &Profile, e: TokenError, count: usize) -> Vec<Outcome> {
        let result = AttemptResult::local(
            Stage::Auth,
            EnhancedStatus::new(4, 7, 0),
            format!(
                "profile {:?} has no credentials to log in with: {}",
                p.name, e.message
            ),
        );
        let problem = Problem {
            kind: ProblemKind::Auth,
            advice: format!(
                "{} ({})",
                e.message,
                if e.needs_action {
                    "someone must act: see `portcullis oauth status` and `portcullis doctor`"
                } else {
                    "tried again shortly"
                }
            ),
            rest: Some(if e.needs_action {
                provider::AUTH_REST
            } else {
                60
            }),
        };
        let until = self.rest(p, &problem, &result);
        vec![deferred(result, false, Some(until)); count]
    }

    /// Looks at an attempt's results for a profile-wide refusal: then the
    /// profile rests and none of this message's recipients bounce for it.
    fn judge(&self, ready: &Ready, outcomes: Vec<Outcome>) -> Vec<Outcome> {
        let p = &ready.profile;
        let found = outcomes.iter().find_map(|o| match o {
            Outcome::Delivered(_) => None,
            other => provider::classify(other.result(), p).map(|x| (x, other.result().clone())),
        });
        if let Some((problem, result)) = found {
            let rest_until = self.rest(p, &problem, &result);
            // A spent quota with an overflow profile: the next pass takes it there.
            let until = match (problem.kind, &p.overflow) {
                (ProblemKind::Quota, Some(_)) => unix_now() + 1,
                _ => rest_until,
            };
            return outcomes
                .into_iter()
                .map(|o| match o {
                    Outcome::Delivered(r) => Outcome::Delivered(r),
                    other => deferred(other.result().clone(), false, Some(until)),
                })
                .collect();
        }
        if outcomes.iter().any(|o| matches!(o, Outcome::Delivered(_))) && self.resting.end(&p.name)
        {
            self.emit(Event::ProfileRecovered {
                profile: p.name.clone(),
            });
        }
        outcomes
    }

    /// Puts `p` to rest for `problem`; returns until when.
    pub(super) fn rest(&self, p: &Profile, problem: &Problem, result: &AttemptResult) -> i64 {
        let seconds = problem.rest.unwrap_or(match problem.kind {
            ProblemKind::Auth => provider::AUTH_REST,
            ProblemKind::Quota => p.quota_backoff.as_secs() as i64,
        });
        let until = unix_now() + seconds.max(1);
        self.resting.start(
            &p.name,
            Rest {
                until,
                kind: problem.kind,
                result: result.clone(),
                advice: problem.advice.clone(),
            },
        );
        self.emit(Event::ProfileProblem {
            profile: p.name.clone(),
            problem: problem.kind.name().to_string(),
            advice: problem.advice.clone(),
            result: result.clone(),
            until,
        });
        until
    }

    fn emit(&self, event: Event) {
        match &self.events {
            Some(events) => events.emit(event),
            None => {
                use crate::events::Subscriber as _;
                crate::events::log::LogWriter.on_event(&event)
            }
        }
    }
}

/// At most this many overflow hops for one transaction.
const MAX_OVERFLOW: usize = 4;

/// A transaction our own pacing holds: it waits in the queue until the
/// window has room (never a bounce for our own quota).
fn held(p: &Profile, full: &super::pacing::Full) -> Outcome {
    Outcome::Deferred {
        result: AttemptResult::local(
            Stage::Queue,
            EnhancedStatus::new(4, 7, 0),
            format!(
                "held by profile {:?}'s quota ({}); sent when the window has room",
                p.name, full.limit
            ),
        ),
        counts: false,
        known_down: true,
        retry_at: Some(full.until),
    }
}

pub(super) fn local(text: String) -> AttemptResult {
    AttemptResult::local(Stage::Queue, EnhancedStatus::new(4, 3, 5), text)
}

pub(super) fn deferred(result: AttemptResult, counts: bool, retry_at: Option<i64>) -> Outcome {
    Outcome::deferred(result, counts, retry_at)
}
