//! How a prepared transaction leaves through a smart-host profile: a
//! `Transport` hands it to the next hop and returns one `Outcome` (carrying
//! its `AttemptResult`) per recipient. SMTP to the profile's hosts and
//! Microsoft Graph's sendMail today; another HTTP API is one more
//! implementation. Everything before (quota, overflow, rewrite, DKIM) and
//! after (what a provider's refusal means for the profile) is the
//! profile's, the same for every transport.

use super::client::{Credentials, Outgoing};
use super::graph::{self, GraphAnswer};
use super::profile::{Ready, deferred, local};
use super::provider::{self, Problem, ProblemKind};
use super::result::{AttemptResult, Stage};
use super::{Deliverer, Job, Outcome, Settings};
use crate::attempt::EnhancedStatus;
use crate::clock::unix_now;
use std::future::Future;
use std::pin::Pin;
use tracing::warn;

/// One transaction ready to leave: the job, the profile with its clients,
/// the message as it goes (rewritten and signed), the settings in force.
pub(super) struct Sending<'a> {
    pub job: &'a Job<'a>,
    pub ready: &'a Ready,
    pub msg: &'a Outgoing<'a>,
    pub settings: &'a Settings,
}

pub(super) trait Transport: Sync {
    /// Sends, and says what became of each recipient (in order). A refused
    /// OAuth2 token is fetched again once; credentials that cannot be had
    /// rest the profile.
    fn send<'a>(
        &'a self,
        deliverer: &'a Deliverer,
        sending: Sending<'a>,
    ) -> Pin<Box<dyn Future<Output = Vec<Outcome>> + Send + 'a>>;
}

/// The transport a profile's `transport` names.
pub(super) fn of(kind: crate::config::Transport) -> &'static dyn Transport {
    match kind {
        crate::config::Transport::Smtp => &Smtp,
        crate::config::Transport::Graph => &Graph,
    }
}

/// SMTP to the profile's hosts, in order (failover), with its TLS and AUTH.
struct Smtp;

impl Transport for Smtp {
    fn send<'a>(
        &'a self,
        d: &'a Deliverer,
        sending: Sending<'a>,
    ) -> Pin<Box<dyn Future<Output = Vec<Outcome>> + Send + 'a>> {
        let Sending {
            job,
            ready,
            msg,
            settings,
        } = sending;
        Box::pin(async move {
            let p = &ready.profile;
            let count = msg.recipients.len();
            let mut auth = match d.credentials(ready, &settings.config).await {
                Ok(a) => a,
                Err(e) => return d.no_credentials(p, e, count),
            };
            let mut refreshed = false;
            loop {
                let outcomes = d
                    .deliver_to_hosts(job, &p.hosts, msg, |hop| {
                        d.profile_options(ready, hop, &auth, settings)
                    })
                    .await;
                // A refused token is refreshed once and the delivery tried again.
                if let (false, Some(Credentials::Bearer { token, .. })) = (refreshed, &auth)
                    && outcomes.iter().any(|o| o.result().stage == Stage::Auth)
                {
                    warn!(profile = %p.name, "the next hop refused the OAuth2 token; fetching a new one and trying once more");
                    d.tokens.refused(p, token).await;
                    refreshed = true;
                    auth = match d.credentials(ready, &settings.config).await {
                        Ok(a) => a,
                        Err(e) => return d.no_credentials(p, e, count),
                    };
                    continue;
                }
                return outcomes;
            }
        })
    }
}

/// Microsoft Graph's sendMail for the profile's mailbox, with its token.
struct Graph;

impl Transport for Graph {
    fn send<'a>(
        &'a self,
        d: &'a Deliverer,
        sending: Sending<'a>,
    ) -> Pin<Box<dyn Future<Output = Vec<Outcome>> + Send + 'a>> {
        let Sending {
            ready,
            msg,
            settings,
            ..
        } = sending;
        let config = &settings.config;
        Box::pin(async move {
            let p = &ready.profile;
            let count = msg.recipients.len();
            let http = match &ready.http {
                Ok(h) => h.clone(),
                Err(e) => return vec![deferred(local(e.clone()), true, None); count],
            };
            let content = match super::content_of(msg).await {
                Ok(c) => c,
                Err(e) => return vec![deferred(local(e), true, None); count],
            };
            let user = p.user.clone().unwrap_or_default();
            let mut refreshed = false;
            loop {
                let token = match d.credentials(ready, config).await {
                    Ok(Some(Credentials::Bearer { token, .. })) => token,
                    Ok(_) => {
                        return vec![
                            deferred(
                                local(format!(
                                    "profile {:?} sends with Graph but has no OAuth2 settings",
                                    p.name
                                )),
                                false,
                                None
                            );
                            count
                        ];
                    }
                    Err(e) => return d.no_credentials(p, e, count),
                };
                let answer =
                    graph::send_mail(&http, &p.graph_url, &user, &token, &content, msg.recipients)
                        .await;
                let now = unix_now();
                return match answer {
                    GraphAnswer::Sent => {
                        let host = reqwest::Url::parse(&p.graph_url)
                            .ok()
                            .and_then(|u| u.host_str().map(String::from));
                        let result = AttemptResult {
                            stage: Stage::Data,
                            code: None,
                            enhanced: Some(EnhancedStatus::new(2, 0, 0)),
                            remote: host,
                            remote_ip: None,
                            tls_policy: None,
                            text: format!("accepted by Microsoft Graph sendMail as {user}"),
                        };
                        vec![Outcome::Delivered(result); count]
                    }
                    GraphAnswer::TokenRefused(_) if !refreshed => {
                        warn!(profile = %p.name, "Graph refused the OAuth2 token; fetching a new one and trying once more");
                        d.tokens.refused(p, &token).await;
                        refreshed = true;
                        continue;
                    }
                    GraphAnswer::TokenRefused(r) | GraphAnswer::NotAllowed(r) => {
                        let problem = Problem {
                            kind: ProblemKind::Auth,
                            advice: provider::credentials_advice(p),
                            rest: None,
                        };
                        let until = d.rest(p, &problem, &r);
                        vec![deferred(r, false, Some(until)); count]
                    }
                    GraphAnswer::Throttled(r, after) => {
                        let problem = Problem {
                            kind: ProblemKind::Quota,
                            advice: format!(
                                "Microsoft Graph throttles profile {:?} (HTTP 429); mail waits as Graph asks",
                                p.name
                            ),
                            rest: Some(after.unwrap_or(60).clamp(1, 86_400)),
                        };
                        let until = d.rest(p, &problem, &r);
                        vec![deferred(r, false, Some(until)); count]
                    }
                    GraphAnswer::Temporary(r, after) => {
                        vec![deferred(r, true, after.map(|s| now + s.clamp(1, 86_400))); count]
                    }
                    GraphAnswer::Permanent(r) => vec![Outcome::Failed(r); count],
                };
            }
        })
    }
}
