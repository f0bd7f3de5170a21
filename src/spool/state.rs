//! Delivery state per recipient; absent on disk until delivery first changes it.

use super::Envelope;
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
    pub last_error: Option<String>,
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
            held: false,
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
