//! What may be asked on the control socket, and what is answered.

use crate::guard::GuardState;
use crate::queue::{QueueAnswer, QueueCommand, QueueStats};
use serde::{Deserialize, Serialize};
use std::net::IpAddr;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Command {
    /// List, show, hold, release, retry, delete: the queue manager's.
    Queue(QueueCommand),
    /// The NAT sentinel's trust decisions (the server is their one writer).
    Guard(GuardCommand),
    /// Addresses banned after failed logins (kept in the server's memory).
    Bans(BanCommand),
    /// Read the configuration, users and certificates again.
    Reload,
    /// Whether the server runs, since when, on which listeners, with what queue.
    Status,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "lowercase")]
pub enum GuardCommand {
    List,
    /// An admin trusts an address again.
    Trust {
        ip: IpAddr,
    },
    /// An admin takes an address's trust.
    Untrust {
        ip: IpAddr,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "lowercase")]
pub enum BanCommand {
    List,
    /// Ends an address's ban (and forgets its failed logins).
    Lift {
        ip: IpAddr,
    },
}

impl Command {
    /// A short name for messages ("queue hold", "reload").
    pub fn name(&self) -> String {
        match self {
            Command::Queue(q) => format!("queue {}", q.name()),
            Command::Guard(_) => "guard".into(),
            Command::Bans(_) => "ban".into(),
            Command::Reload => "reload".into(),
            Command::Status => "status".into(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Answer {
    Queue(QueueAnswer),
    Guard { state: GuardState },
    Bans { bans: Vec<Ban> },
    Lifted { ip: IpAddr, was_banned: bool },
    Reloaded { message: String },
    Status(Box<Status>),
    Error { message: String },
}

impl Answer {
    pub fn error(message: impl Into<String>) -> Answer {
        Answer::Error {
            message: message.into(),
        }
    }
}

/// One banned address and the seconds its ban has left.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ban {
    pub ip: IpAddr,
    pub seconds_left: u64,
}

impl Ban {
    /// A ban with `left` to run, said in whole seconds (at least one: a ban
    /// in force never shows as over).
    pub fn new(ip: IpAddr, left: std::time::Duration) -> Ban {
        Ban {
            ip,
            seconds_left: left.as_secs().max(1),
        }
    }
}

/// `Command::Status`: the running server as its operator asks after it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub version: String,
    pub pid: u32,
    pub node_id: u8,
    pub hostname: String,
    /// When the server started (unix seconds).
    pub started_at: i64,
    /// The config file in force (None: the embedded default).
    pub config_file: Option<String>,
    /// "ADDRESS (kind)" for every listener bound now.
    pub listeners: Vec<String>,
    pub connections: usize,
    pub queue: QueueStats,
}
