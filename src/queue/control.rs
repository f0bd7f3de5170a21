//! The queue's control API: typed commands that the queue manager handles in
//! its own loop (it alone writes queue state), and their answers. The control
//! socket carries them as JSON lines; the CLI without a running server applies
//! the very same commands to an index it loads itself.

use crate::spool::{Envelope, MessageState, QueueId};
use serde::{Deserialize, Serialize};

/// Which messages a command acts on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Selector {
    Id(QueueId),
    All,
    /// Every message that came from this client IP or authenticated user.
    Source(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "lowercase")]
pub enum QueueCommand {
    List,
    Show {
        id: QueueId,
        /// Also the message's body (the admin page asks for it on demand only).
        #[serde(default)]
        body: bool,
    },
    /// Counts for metrics and the dashboard, without listing every message.
    Stats,
    Hold {
        select: Selector,
    },
    Release {
        select: Selector,
    },
    Retry {
        select: Selector,
    },
    Delete {
        select: Selector,
    },
}

impl QueueCommand {
    pub fn name(&self) -> &'static str {
        match self {
            QueueCommand::List => "list",
            QueueCommand::Stats => "stats",
            QueueCommand::Show { .. } => "show",
            QueueCommand::Hold { .. } => "hold",
            QueueCommand::Release { .. } => "release",
            QueueCommand::Retry { .. } => "retry",
            QueueCommand::Delete { .. } => "delete",
        }
    }

    /// The messages a changing command (hold, release, retry, delete)
    /// selects; None for the commands that change nothing.
    pub fn selector(&self) -> Option<&Selector> {
        match self {
            QueueCommand::Hold { select }
            | QueueCommand::Release { select }
            | QueueCommand::Retry { select }
            | QueueCommand::Delete { select } => Some(select),
            QueueCommand::List | QueueCommand::Show { .. } | QueueCommand::Stats => None,
        }
    }
}

/// One line of `queue list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageSummary {
    pub id: QueueId,
    pub received_at: i64,
    pub size: u64,
    pub sender: String,
    pub recipients: Vec<String>,
    pub client_ip: String,
    pub auth_user: Option<String>,
    pub held: bool,
    /// A delivery attempt (or a state write) is running right now.
    pub in_flight: bool,
    pub next_attempt: Option<i64>,
    pub queued: usize,
    pub delivered: usize,
    pub failed: usize,
    /// Each recipient's state: attempts, next retry, last error.
    #[serde(default)]
    pub states: Vec<crate::spool::RecipientState>,
    /// In a cluster: the node that holds it (None: no live node does; it
    /// is taken at the next claim). Absent on a single node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<u8>,
}

/// One word for where a message stands, the same in `queue list`, `queue
/// show`, the admin page and the API: held (an admin or the flood hold
/// stopped it), delivering (an attempt runs now), deferred (tried, waiting
/// for its next attempt), queued (not tried yet), failed (nothing left to
/// deliver; its bounce is owed or sent).
pub fn message_state(
    held: bool,
    in_flight: bool,
    recipients: &[crate::spool::RecipientState],
) -> &'static str {
    use crate::spool::RecipientStatus;
    let waiting = recipients
        .iter()
        .filter(|r| r.status == RecipientStatus::Queued)
        .count();
    if held {
        "held"
    } else if in_flight {
        "delivering"
    } else if waiting == 0 && !recipients.is_empty() {
        "failed"
    } else if recipients.iter().any(|r| r.tried()) {
        "deferred"
    } else {
        "queued"
    }
}

/// One word for where a recipient stands, in the same vocabulary:
/// queued, deferred, delivered, failed.
pub fn recipient_state(r: &crate::spool::RecipientState) -> &'static str {
    use crate::spool::RecipientStatus;
    match r.status {
        RecipientStatus::Delivered => "delivered",
        RecipientStatus::Failed => "failed",
        RecipientStatus::Queued if r.tried() => "deferred",
        RecipientStatus::Queued => "queued",
    }
}

impl MessageSummary {
    /// The summary of a message as its envelope and state say.
    pub fn of(
        id: &QueueId,
        e: &crate::spool::Envelope,
        state: &crate::spool::MessageState,
        held: bool,
        in_flight: bool,
    ) -> MessageSummary {
        use crate::spool::RecipientStatus;
        let count = |s: RecipientStatus| state.recipients.iter().filter(|r| r.status == s).count();
        MessageSummary {
            id: id.clone(),
            received_at: e.received_at,
            size: e.size,
            sender: e.sender.clone(),
            recipients: e.recipients.iter().map(|r| r.address.clone()).collect(),
            client_ip: e.client_ip.clone(),
            auth_user: e.auth_user.clone(),
            held,
            in_flight,
            next_attempt: state.next_due(),
            queued: count(RecipientStatus::Queued),
            delivered: count(RecipientStatus::Delivered),
            failed: count(RecipientStatus::Failed),
            states: state.recipients.clone(),
            node: None,
        }
    }

    /// See `message_state`.
    pub fn state_word(&self) -> &'static str {
        message_state(self.held, self.in_flight, &self.states)
    }
}

impl MessageDetail {
    /// See `message_state`.
    pub fn state_word(&self) -> &'static str {
        message_state(self.state.held, self.in_flight, &self.state.recipients)
    }
}

/// `queue show`: everything known about one message.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MessageDetail {
    pub envelope: Envelope,
    pub state: MessageState,
    pub in_flight: bool,
    /// The message's header section, as spooled.
    pub headers: String,
    /// The body (from the empty line on), when asked for; cut at `BODY_SHOWN`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
}

/// The most of a body `Show { body: true }` returns.
pub const BODY_SHOWN: u64 = 1 << 20;

/// `QueueCommand::Stats`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueStats {
    pub messages: usize,
    pub held: usize,
    /// Recipients still waiting for delivery.
    pub recipients_queued: usize,
    /// When the oldest queued message was received (unix seconds).
    pub oldest_received_at: Option<i64>,
    /// A cluster node's: the whole shared queue, this node's messages
    /// included (the figures above are this node's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<Box<QueueStats>>,
    /// A cluster node's: why the shared queue could not be counted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_error: Option<String>,
}

impl QueueStats {
    /// These counts and `other`'s together.
    pub fn plus(&self, other: &QueueStats) -> QueueStats {
        QueueStats {
            messages: self.messages + other.messages,
            held: self.held + other.held,
            recipients_queued: self.recipients_queued + other.recipients_queued,
            oldest_received_at: match (self.oldest_received_at, other.oldest_received_at) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            },
            cluster: None,
            cluster_error: None,
        }
    }
}

/// What a changing command did to one message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Changed {
    pub id: QueueId,
    pub result: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "answer", rename_all = "lowercase")]
pub enum QueueAnswer {
    List { messages: Vec<MessageSummary> },
    Show { message: Box<MessageDetail> },
    Stats { stats: QueueStats },
    Changed { changed: Vec<Changed> },
    Error { message: String },
}

impl QueueAnswer {
    pub fn error(message: impl Into<String>) -> QueueAnswer {
        QueueAnswer::Error {
            message: message.into(),
        }
    }
}
