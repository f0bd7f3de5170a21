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

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecipientState {
    pub address: String,
    pub status: RecipientStatus,
    pub attempts: u32,
    /// Seconds since the epoch of the next attempt, when queued.
    pub next_attempt: Option<i64>,
    /// The last attempt's result in words, as `queue show` prints it.
    pub last_error: Option<String>,
    /// The same as fields (stage, reply code, enhanced status, next hop).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_result: Option<AttemptResult>,
}

impl RecipientState {
    /// Records what an attempt found.
    pub fn record(&mut self, result: AttemptResult) {
        self.last_error = Some(result.to_string());
        self.last_result = Some(result);
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
                    last_error: None,
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

    pub fn has_queued(&self) -> bool {
        self.recipients
            .iter()
            .any(|r| r.status == RecipientStatus::Queued)
    }
}
