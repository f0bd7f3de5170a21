//! The envelope kept with each spooled message.

use super::QueueId;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvelopeRecipient {
    /// The final destination address, as `local@domain`.
    pub address: String,
    /// The domain delivery routes on (lower case), or an address literal.
    pub domain: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    pub version: u32,
    pub id: String,
    /// Seconds since the epoch when the 250 was given.
    pub received_at: i64,
    /// The reverse path; empty for the null sender `<>`.
    pub sender: String,
    pub recipients: Vec<EnvelopeRecipient>,
    pub client_ip: String,
    pub helo: String,
    pub auth_user: Option<String>,
    pub smtputf8: bool,
    pub eight_bit: bool,
    /// Content size in octets (Received: header included).
    pub size: u64,
    /// Whether the client was trusted or authenticated. A bounce for mail
    /// from a stranger carries the headers only: otherwise anyone could make
    /// us deliver their content to any address by naming it as the sender.
    #[serde(default = "trusted_by_default")]
    pub trusted_origin: bool,
    /// Queued held (the guard saw a flood from its source): delivered only after `queue release`.
    #[serde(default)]
    pub hold: bool,
}

fn trusted_by_default() -> bool {
    true
}

/// Who handed a message to us.
#[derive(Debug, Clone)]
pub struct Origin {
    pub client_ip: String,
    pub helo: String,
    pub auth_user: Option<String>,
    /// A trusted network or an authenticated user.
    pub trusted: bool,
}

/// How the content is written.
#[derive(Debug, Clone, Copy)]
pub struct ContentInfo {
    pub smtputf8: bool,
    pub eight_bit: bool,
    /// Octets, Received: header included.
    pub size: u64,
}

impl Envelope {
    /// Whether `source` is the client's address or its login (`--source`).
    pub fn came_from(&self, source: &str) -> bool {
        self.client_ip == source || self.auth_user.as_deref() == Some(source)
    }

    /// The envelope of a message accepted now (by a session, or a report we write).
    pub fn new(
        id: &QueueId,
        sender: String,
        recipients: Vec<EnvelopeRecipient>,
        origin: Origin,
        content: ContentInfo,
    ) -> Envelope {
        Envelope {
            version: 1,
            id: id.to_string(),
            received_at: chrono::Utc::now().timestamp(),
            sender,
            recipients,
            client_ip: origin.client_ip,
            helo: origin.helo,
            auth_user: origin.auth_user,
            smtputf8: content.smtputf8,
            eight_bit: content.eight_bit,
            size: content.size,
            trusted_origin: origin.trusted,
            hold: false,
        }
    }

    #[cfg(test)]
    pub fn for_test(id: &str, sender: &str, rcpts: &[&str]) -> Envelope {
        Envelope {
            version: 1,
            id: id.to_string(),
            received_at: 0,
            sender: sender.to_string(),
            recipients: rcpts
                .iter()
                .map(|r| EnvelopeRecipient {
                    address: r.to_string(),
                    domain: r.rsplit('@').next().unwrap_or_default().to_string(),
                })
                .collect(),
            client_ip: "127.0.0.1".into(),
            helo: "test".into(),
            auth_user: None,
            smtputf8: false,
            eight_bit: false,
            size: 0,
            trusted_origin: true,
            hold: false,
        }
    }
}
