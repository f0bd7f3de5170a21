//! The log writer: one readable line per event, through `tracing`. Events of
//! a session are emitted inside its span, which already names the session,
//! the client and the listener, so those fields are not repeated here.

use super::{ConnectionRefusal, DeliveryState, Event, Subscriber};
use tracing::{debug, error, info, warn};

pub struct LogWriter;

impl Subscriber for LogWriter {
    fn on_event(&self, event: &Event) {
        match event {
            Event::ConnectionOpened {
                tls,
                via_proxy: Some(proxy),
                ..
            } => info!(tls, proxy = %proxy, "connect (through a PROXY-protocol load balancer)"),
            Event::ConnectionOpened { tls, .. } => info!(tls, "connect"),
            Event::ConnectionRefused {
                client,
                listener,
                refusal,
            } => match refusal {
                ConnectionRefusal::Policy { reason } => {
                    warn!(client = %client, listener = listener.name(), reason = %reason, "connection refused")
                }
                ConnectionRefusal::TooManyConnections => {
                    warn!(client = %client, listener = listener.name(), "connection refused: server.max_connections reached")
                }
                ConnectionRefusal::TooManyFromAddress => {
                    warn!(client = %client, listener = listener.name(), "connection refused: server.max_connections_per_ip reached")
                }
                ConnectionRefusal::Banned => {
                    warn!(client = %client, listener = listener.name(), "connection refused: banned after too many failed logins")
                }
                ConnectionRefusal::Pregreet => {
                    warn!(client = %client, listener = listener.name(), "connection refused: talked before the greeting")
                }
                ConnectionRefusal::TooFast => {
                    warn!(client = %client, listener = listener.name(), "connection refused: server.max_connection_rate_per_ip reached")
                }
                ConnectionRefusal::NotAProxy => {
                    warn!(client = %client, listener = listener.name(), "connection refused: not a proxy allowed on this PROXY-protocol listener (proxy_from)")
                }
                ConnectionRefusal::BadProxyHeader => {
                    warn!(client = %client, listener = listener.name(), "connection refused: bad or missing PROXY header")
                }
                ConnectionRefusal::TlsHandshake => {
                    warn!(client = %client, listener = listener.name(), "connection refused: the TLS handshake failed or timed out")
                }
            },
            Event::ConnectionClosed {
                messages,
                errors,
                reason,
                ..
            } => info!(messages, errors, reason = %reason, "disconnect"),
            Event::TlsEstablished {
                version, cipher, ..
            } => info!(version = %version, cipher = %cipher, "STARTTLS established"),
            Event::AuthSucceeded { user, .. } => info!(user = %user, "AUTH succeeded"),
            Event::AdminLogin {
                client,
                user,
                succeeded: true,
                ..
            } => info!(client = %client, user = %user, "admin login"),
            Event::AdminLogin {
                client,
                user,
                failures,
                ..
            } => warn!(client = %client, user = %user, failures, "admin login failed"),
            Event::Reload {
                applied: true,
                detail,
            } => info!("configuration reloaded: {detail}"),
            Event::Reload { detail, .. } => {
                error!("reload refused, still running on the previous configuration: {detail}")
            }
            Event::AddressBanned {
                client,
                failures,
                prefix_failures,
                prefix,
            } => warn!(
                client = %client,
                failures,
                prefix_failures,
                prefix = prefix.as_deref().unwrap_or("-"),
                "address banned after too many failed logins (portcullis ban lift {client} undoes it)"
            ),
            Event::AccountLocked { user, client } => warn!(
                user = %user,
                client = %client,
                "ACCOUNT UNDER ATTACK: many failed logins for {user} from several places; its logins from outside the trusted networks are refused for the ban window (its owner can still log in from the LAN)"
            ),
            Event::AuthFailed { user, failures, .. } => {
                warn!(user = %user, failures, "AUTH failed: bad user name or password")
            }
            Event::MailRefused { reason, .. } => {
                warn!(reason = %reason, reply = %reason.reply(), "MAIL refused")
            }
            Event::RcptAccepted { to, why, .. } => info!(to = %to, reason = %why, "RCPT accepted"),
            Event::RcptRefused {
                from,
                to,
                user,
                reason,
                ..
            } => {
                warn!(from = %from, to = %to, user = user.as_deref(), reason = %reason, reply = %reason.reply(), "RCPT refused")
            }
            Event::DataRefused { reason, .. } => {
                warn!(reason = %reason, reply = %reason.reply(), "DATA refused")
            }
            Event::MessageAccepted {
                queue_id,
                from,
                rcpts,
                size,
                tls,
                user,
                ..
            } => info!(
                queue_id = %queue_id,
                from = %from,
                rcpts,
                size,
                tls,
                user = user.as_deref(),
                "message accepted"
            ),
            Event::MessageRefused {
                queue_id,
                refusal,
                detail,
                ..
            } => warn!(queue_id = %queue_id, detail = %detail, "message refused: {refusal}"),
            Event::Delivery {
                queue_id,
                to,
                state,
                result,
                counted,
                next_attempt,
                queued_seconds,
                ..
            } => match state {
                DeliveryState::Delivered => {
                    info!(queue_id = %queue_id, to = %to, result = %result, delay = %format_args!("{queued_seconds:.3}s"), "recipient delivered")
                }
                // Our credentials refused: nothing will go out until the admin acts.
                DeliveryState::Deferred if result.stage == crate::attempt::Stage::Auth => {
                    warn!(queue_id = %queue_id, to = %to, stage = ?result.stage, result = %result, counted, next = %rfc3339(*next_attempt), "recipient deferred: the next hop refused our credentials (the PROFILE line says what to do)")
                }
                DeliveryState::Deferred => {
                    info!(queue_id = %queue_id, to = %to, stage = ?result.stage, result = %result, counted, next = %rfc3339(*next_attempt), "recipient deferred")
                }
                DeliveryState::Failed => {
                    warn!(queue_id = %queue_id, to = %to, stage = ?result.stage, result = %result, "recipient failed permanently")
                }
                DeliveryState::Expired => {
                    warn!(queue_id = %queue_id, to = %to, result = %result, "recipient expired")
                }
            },
            Event::ReportQueued {
                queue_id,
                report_id,
                to,
                kind,
                recipients,
            } => {
                info!(queue_id = %queue_id, report_id = %report_id, to = %to, kind = ?kind, recipients, "delivery report queued")
            }
            // Every recipient delivered: their "recipient delivered" lines
            // already say so; a line of its own only when some failed.
            Event::MessageFinished {
                queue_id,
                failed: 0,
                ..
            } => {
                debug!(queue_id = %queue_id, failed = 0, "message done, removed from the queue")
            }
            Event::MessageFinished {
                queue_id,
                failed,
                unreported,
            } => {
                if *unreported > 0 {
                    warn!(queue_id = %queue_id, failed = unreported, "no bounce: the sender is the null address");
                }
                info!(queue_id = %queue_id, failed, "message done, removed from the queue")
            }
            Event::GuardUntrusted { client, evidence } => error!(
                client = %client,
                evidence = %evidence,
                "GUARD: {client} is in a trusted range but carries many clients' traffic (a router, NAT or proxy?); it must authenticate from now on. `portcullis guard trust {client}` undoes this"
            ),
            Event::FloodDetected {
                source,
                recipient_domains,
                action,
                reason,
            } => error!(
                source = %source,
                recipient_domains,
                reason = %reason,
                "GUARD: {source} looks like a flood ({reason}; a compromised device or password?); its mail is {action}. `portcullis queue release --source {source}` or `queue delete --source {source}`"
            ),
            Event::ZoneHealth {
                zone,
                problem: Some(p),
                ..
            } => {
                error!(zone = %zone, "DNS list zone set aside: it {p}; mail is judged without it until it recovers")
            }
            Event::ZoneHealth { zone, .. } => info!(zone = %zone, "DNS list zone healthy"),
            Event::ProfileProblem {
                profile,
                problem,
                advice,
                result,
                until,
            } => {
                error!(profile = %profile, problem = %problem, result = %result, until = %rfc3339(Some(*until)), "PROFILE {profile}: {advice}; its mail waits (never bounced for this)")
            }
            Event::ProfileRecovered { profile } => {
                info!(profile = %profile, "profile {profile} delivers again")
            }
            Event::DnsCheck { check, seconds } => {
                tracing::debug!(check, seconds, "DNS check done")
            }
            Event::MessageHeld {
                queue_id,
                source,
                recipients,
                ..
            } => {
                warn!(queue_id = %queue_id, source = %source, recipients = recipients.len(), "message held by the guard; `portcullis queue release --source {source}` sends it")
            }
            Event::SelfTestFinished {
                listener,
                relayed,
                tests,
            } => {
                if relayed.is_empty() {
                    info!(listener = %listener, tests, "open-relay self-test passed")
                } else {
                    error!(listener = %listener, tests, relayed = %relayed.join(", "), "OPEN-RELAY SELF-TEST: {} of {tests} attempts were relayed", relayed.len())
                }
            }
            Event::Alert {
                alert,
                rule,
                state,
                detail,
                ..
            } => match state {
                super::AlertState::Firing => error!(alert, rule, "ALERT {alert}: {detail}"),
                super::AlertState::Resolved => {
                    info!(alert, rule, "alert {alert} resolved: {detail}")
                }
            },
            Event::NotificationsDropped {
                webhook,
                count,
                reason,
            } => warn!(webhook = %webhook, count, "webhook notifications dropped: {reason}"),
            Event::SettingsChanged {
                user,
                client,
                before,
                after,
                change,
                restored,
            } => {
                warn!(user = %user, client = %client, before = %before, after = %after, change, restored = restored.as_deref(), "configuration changed from the admin page and reloaded")
            }
            Event::UsersChanged {
                by,
                client,
                user,
                action,
            } => {
                warn!(by = %by, client = %client, user = %user, action, "users file changed from the admin page")
            }
            // Start-up and shutdown are logged by the server in its own words.
            Event::ServerStarted { .. } | Event::ServerStopping { .. } => {}
            Event::SpoolProblem {
                queue_id: Some(id),
                doing,
                error,
            } => error!(queue_id = %id, error = %error, "{doing}"),
            Event::SpoolProblem {
                queue_id: None,
                doing,
                error,
            } => error!(error = %error, "{doing}"),
            Event::QueueCommand {
                command,
                messages,
                error,
            } => info!(command, messages, error = error.as_deref(), "queue command"),
        }
    }
}

/// A Unix time as RFC 3339 ("2026-12-04T21:30:00Z"), as the log's own stamps.
fn rfc3339(t: Option<i64>) -> String {
    t.map(super::rfc3339)
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "-".into())
}
