//! Delivery state per recipient; absent on disk until delivery first changes it.

use super::Envelope;
use crate::attempt::AttemptResult;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RecipientStatus {
    /// Waiting for its next attempt.
    Queued,
    Delivered,
    /// Failed permanently (5xx or expired); a bounce is owed or sent.
    Failed,
}

/// One recipient's delivery state. Its JSON (state files, `queue show
/// --json`, the admin API) also carries `last_error`, the last result in
/// words, derived from `last_result` when written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "RecipientStateFile", from = "RecipientStateFile")]
pub struct RecipientState {
    pub address: String,
    pub status: RecipientStatus,
    pub attempts: u32,
    /// Seconds since the epoch of the next attempt, when queued.
    pub next_attempt: Option<i64>,
    /// The last attempt's result (stage, reply code, enhanced status, next hop).
    pub last_result: Option<AttemptResult>,
}

/// `RecipientState` as written: the derived `last_error` beside the fields.
#[derive(Serialize, Deserialize)]
struct RecipientStateFile {
    address: String,
    status: RecipientStatus,
    attempts: u32,
    next_attempt: Option<i64>,
    last_error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last_result: Option<AttemptResult>,
}

impl From<RecipientState> for RecipientStateFile {
    fn from(r: RecipientState) -> RecipientStateFile {
        RecipientStateFile {
            last_error: r.last_error(),
            address: r.address,
            status: r.status,
            attempts: r.attempts,
            next_attempt: r.next_attempt,
            last_result: r.last_result,
        }
    }
}

impl From<RecipientStateFile> for RecipientState {
    fn from(f: RecipientStateFile) -> RecipientState {
        // A state file written before results had fields keeps its words.
        let last_result = f.last_result.or_else(|| {
            f.last_error.map(|text| AttemptResult {
                stage: crate::attempt::Stage::Queue,
                code: None,
                enhanced: None,
                remote: None,
                remote_ip: None,
                tls_policy: None,
                text,
            })
        });
        RecipientState {
            address: f.address,
            status: f.status,
            attempts: f.attempts,
            next_attempt: f.next_attempt,
            last_result,
        }
    }
}

impl RecipientState {
    /// Records what an attempt found.
    pub fn record(&mut self, result: AttemptResult) {
        self.last_result = Some(result);
    }

    /// The last attempt's result in words, as `queue show` prints it.
    pub fn last_error(&self) -> Option<String> {
        self.last_result.as_ref().map(|r| r.to_string())
    }

    /// Whether an attempt was made or a result recorded.
    pub fn tried(&self) -> bool {
        self.attempts > 0 || self.last_result.is_some()
    }

    /// The last result, or `fallback` when there is none yet.
    pub fn result_or(&self, fallback: AttemptResult) -> AttemptResult {
        self.last_result.clone().unwrap_or(fallback)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageState {
    pub held: bool,
    /// A "delayed" notice has been sent for this message.
    #[serde(default)]
    pub delay_warned: bool,
    pub recipients: Vec<RecipientState>,
}

impl MessageState {
    /// The state of a message that was just accepted: every recipient due now.
    pub fn initial(envelope: &Envelope) -> MessageState {
        MessageState {
            held: envelope.hold,
            delay_warned: false,
            recipients: envelope
                .recipients
                .iter()
                .map(|r| RecipientState {
                    address: r.address.clone(),
                    status: RecipientStatus::Queued,
                    attempts: 0,
                    next_attempt: Some(envelope.received_at),
                    last_result: None,
                })
                .collect(),
        }
    }

    /// When the earliest queued recipient is due; None when held or nothing is queued.
    pub fn next_due(&self) -> Option<i64> {
        if self.held {
            return None;
        }
        self.recipients
            .iter()
            .filter(|r| r.status == RecipientStatus::Queued)
            .map(|r| r.next_attempt.unwrap_or(0))
            .min()
    }

    /// Every recipient still waiting becomes due at `now` (`queue retry`).
    pub fn make_due(&mut self, now: i64) {
        for r in self
            .recipients
            .iter_mut()
            .filter(|r| r.status == RecipientStatus::Queued)
        {
            r.next_attempt = Some(now);
        }
    }

    pub fn has_queued(&self) -> bool {
        self.recipients
            .iter()
            .any(|r| r.status == RecipientStatus::Queued)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attempt::Stage;

    fn queued(last_result: Option<AttemptResult>) -> RecipientState {
        RecipientState {
            address: "to@example.net".into(),
            status: RecipientStatus::Queued,
            attempts: 1,
            next_attempt: Some(1_000),
            last_result,
        }
    }

    #[test]
    fn the_written_state_carries_the_result_in_words_and_as_fields() {
        let result = AttemptResult {
            stage: Stage::RcptTo,
            code: Some(450),
            enhanced: crate::attempt::EnhancedStatus::parse("4.2.0"),
            remote: Some("mx.example.net".into()),
            remote_ip: None,
            tls_policy: None,
            text: "Mailbox busy".into(),
        };
        let state = queued(Some(result.clone()));
        let json: serde_json::Value = serde_json::to_value(&state).unwrap();
        assert_eq!(
            json["last_error"],
            "450 4.2.0 Mailbox busy (from mx.example.net)"
        );
        assert_eq!(json["last_result"]["code"], 450);
        let back: RecipientState = serde_json::from_value(json).unwrap();
        assert_eq!(back, state);
        let untried = serde_json::to_value(queued(None)).unwrap();
        assert!(untried["last_error"].is_null());
    }

    #[test]
    fn a_state_with_words_only_keeps_them() {
        let old = r#"{"address":"to@example.net","status":"queued","attempts":2,
            "next_attempt":5,"last_error":"421 try later"}"#;
        let state: RecipientState = serde_json::from_str(old).unwrap();
        assert_eq!(state.last_error().as_deref(), Some("421 try later"));
        assert!(state.tried());
    }
}
