//! What a webhook receives for an event: the notification kind, an id for
//! de-duplication and the JSON body (`{"id", "event", "time", …fields}`).
//! Message notifications have ids made from the message, the recipient and
//! the attempt, so an event emitted again after a crash (the delivery was
//! retried) carries the id it had the first time.

use crate::attempt::AttemptResult;
use crate::events::{DeliveryState, Event, rfc3339};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// One notification, ready for the outbox.
#[derive(Debug, Clone)]
pub struct Notification {
    pub kind: &'static str,
    pub id: String,
    pub body: String,
}

/// The notification kind an event makes, if any (cheap: no body is built).
pub fn kind_of(event: &Event) -> Option<&'static str> {
    Some(match event {
        Event::MessageAccepted { .. } => "accepted",
        Event::Delivery {
            state: DeliveryState::Delivered,
            ..
        } => "delivered",
        Event::Delivery {
            state: DeliveryState::Deferred,
            counted,
            ..
        } => {
            if !counted {
                return None;
            }
            "deferred"
        }
        Event::Delivery { .. } => "bounced",
        Event::MessageHeld { .. } => "held",
        Event::Alert { .. } => "alert",
        Event::RcptRefused { .. } => "refused",
        Event::AddressBanned { .. } => "banned",
        Event::ProfileProblem { .. } => "profile_problem",
        Event::ProfileRecovered { .. } => "profile_recovered",
        Event::Reload { .. } => "reload",
        Event::SpoolProblem { .. } => "spool_problem",
        Event::ServerStarted { .. } => "server_started",
        Event::ServerStopping { .. } => "server_stopping",
        _ => return None,
    })
}

/// The notification an event makes (none for most events).
pub fn notification_of(event: &Event, now: i64) -> Option<Notification> {
    let (kind, id, fields) = match event {
        Event::MessageAccepted {
            queue_id,
            from,
            rcpts,
            size,
            client,
            user,
            tls,
            ..
        } => (
            "accepted",
            stable_id(&[queue_id.as_str(), "accepted"]),
            json!({
                "queue_id": queue_id.as_str(),
                "sender": from,
                "recipients": rcpts,
                "size": size,
                "client": client.to_string(),
                "user": user,
                "tls": tls,
            }),
        ),
        Event::Delivery {
            queue_id,
            from,
            to,
            state,
            result,
            counted,
            attempts,
            next_attempt,
            queued_seconds,
            source,
            ..
        } => {
            let kind = match state {
                DeliveryState::Delivered => "delivered",
                // A deferral without an attempt (the next hop is known to
                // be down) is not news: the attempt before it was told.
                DeliveryState::Deferred if !counted => return None,
                DeliveryState::Deferred => "deferred",
                DeliveryState::Failed | DeliveryState::Expired => "bounced",
            };
            let attempt = attempts.to_string();
            let id = match state {
                DeliveryState::Deferred => stable_id(&[queue_id.as_str(), to, kind, &attempt]),
                _ => stable_id(&[queue_id.as_str(), to, kind]),
            };
            let mut fields = json!({
                "queue_id": queue_id.as_str(),
                "sender": from,
                "recipient": to,
                "source": source,
                "attempts": attempts,
                "queued_seconds": queued_seconds.round(),
                "result": result_json(result),
            });
            if *state == DeliveryState::Deferred {
                fields["next_attempt"] = json!(next_attempt.map(rfc3339));
            }
            if matches!(state, DeliveryState::Failed | DeliveryState::Expired) {
                fields["reason"] = json!(if *state == DeliveryState::Expired {
                    "expired"
                } else {
                    "failed"
                });
            }
            (kind, id, fields)
        }
        Event::MessageHeld {
            queue_id,
            from,
            recipients,
            source,
        } => (
            "held",
            stable_id(&[queue_id.as_str(), "held"]),
            json!({
                "queue_id": queue_id.as_str(),
                "sender": from,
                "recipients": recipients,
                "source": source,
                "release": format!("portcullis queue release --source {source}"),
            }),
        ),
        Event::Alert {
            alert,
            rule,
            state,
            detail,
            since,
            ..
        } => (
            "alert",
            random_id(),
            json!({
                "alert": alert,
                "rule": rule,
                "state": state,
                "detail": detail,
                "since": rfc3339(*since),
            }),
        ),
        Event::RcptRefused {
            client,
            from,
            to,
            user,
            reason,
            ..
        } => (
            "refused",
            random_id(),
            json!({
                "client": client.to_string(),
                "sender": from,
                "recipient": to,
                "user": user,
                "reason": reason.name(),
                "reply": reason.reply().to_string(),
            }),
        ),
        Event::AddressBanned {
            client,
            failures,
            prefix,
            ..
        } => (
            "banned",
            random_id(),
            json!({"client": client.to_string(), "failures": failures, "prefix": prefix}),
        ),
        Event::ProfileProblem {
            profile,
            problem,
            advice,
            result,
            until,
        } => (
            "profile_problem",
            random_id(),
            json!({
                "profile": profile,
                "problem": problem,
                "advice": advice,
                "result": result_json(result),
                "until": rfc3339(*until),
            }),
        ),
        Event::ProfileRecovered { profile } => (
            "profile_recovered",
            random_id(),
            json!({ "profile": profile }),
        ),
        Event::Reload { applied, detail } => (
            "reload",
            random_id(),
            json!({"applied": applied, "detail": detail}),
        ),
        Event::SpoolProblem {
            queue_id,
            doing,
            error,
        } => (
            "spool_problem",
            random_id(),
            json!({"queue_id": queue_id.as_ref().map(|q| q.as_str()), "doing": doing, "error": error}),
        ),
        Event::ServerStarted { version, listeners } => (
            "server_started",
            random_id(),
            json!({"version": version, "listeners": listeners}),
        ),
        Event::ServerStopping { active } => {
            ("server_stopping", random_id(), json!({"active": active}))
        }
        _ => return None,
    };
    let mut body = json!({"id": id, "event": kind, "time": rfc3339(now)});
    if let (Value::Object(body), Value::Object(fields)) = (&mut body, fields) {
        body.extend(fields);
    }
    Some(Notification {
        kind,
        id,
        body: body.to_string(),
    })
}

fn result_json(r: &AttemptResult) -> Value {
    json!({
        "stage": crate::events::wire_name(&r.stage),
        "code": r.code,
        "enhanced": r.enhanced,
        "text": r.text,
        "remote": r.remote,
    })
}

/// The same parts always make the same id (32 hex digits).
fn stable_id(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0]);
    }
    hex(&h.finalize()[..16])
}

fn random_id() -> String {
    hex(&rand::random::<[u8; 16]>())
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attempt::Stage;
    use crate::spool::QueueId;

    fn delivery(state: DeliveryState, attempts: u32, counted: bool) -> Event {
        Event::Delivery {
            queue_id: QueueId::parse("0123456789ABCDEF0123").unwrap(),
            source: Some("app1".into()),
            from: "app@example.org".into(),
            to: "bob@example.net".into(),
            attempts,
            state,
            result: AttemptResult::local(
                Stage::Data,
                crate::attempt::EnhancedStatus::new(2, 0, 0),
                "ok",
            ),
            counted,
            next_attempt: Some(1_800_000_000),
            attempt_seconds: 0.1,
            queued_seconds: 2.0,
        }
    }

    #[test]
    fn a_delivery_is_the_same_notification_when_told_twice() {
        let a = notification_of(&delivery(DeliveryState::Delivered, 1, true), 10).unwrap();
        let b = notification_of(&delivery(DeliveryState::Delivered, 1, true), 99).unwrap();
        assert_eq!(a.kind, "delivered");
        assert_eq!(a.id, b.id);
        let v: Value = serde_json::from_str(&a.body).unwrap();
        assert_eq!(v["event"], "delivered");
        assert_eq!(v["id"], a.id.as_str());
        assert_eq!(v["queue_id"], "0123456789ABCDEF0123");
        assert_eq!(v["sender"], "app@example.org");
        assert_eq!(v["recipient"], "bob@example.net");
        assert_eq!(v["time"], "1970-01-01T00:00:10Z");
    }

    #[test]
    fn a_spool_problem_is_told_with_what_was_being_done() {
        let n = notification_of(
            &Event::SpoolProblem {
                queue_id: None,
                doing: "cannot record delivery states",
                error: "No space left on device".into(),
            },
            0,
        )
        .unwrap();
        assert_eq!(n.kind, "spool_problem");
        assert_eq!(
            kind_of(&Event::ServerStopping { active: 0 }),
            Some("server_stopping")
        );
        let v: Value = serde_json::from_str(&n.body).unwrap();
        assert_eq!(v["doing"], "cannot record delivery states");
        assert!(v["queue_id"].is_null());
    }

    #[test]
    fn each_counted_deferral_is_its_own_notification() {
        let one = notification_of(&delivery(DeliveryState::Deferred, 1, true), 0).unwrap();
        let two = notification_of(&delivery(DeliveryState::Deferred, 2, true), 0).unwrap();
        assert_ne!(one.id, two.id);
        assert!(notification_of(&delivery(DeliveryState::Deferred, 2, false), 0).is_none());
        let bounce = notification_of(&delivery(DeliveryState::Expired, 2, false), 0).unwrap();
        assert_eq!(bounce.kind, "bounced");
        let v: Value = serde_json::from_str(&bounce.body).unwrap();
        assert_eq!(v["reason"], "expired");
    }
}
