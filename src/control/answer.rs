//! The running server's side of the control socket: each command handed to
//! the one owner of what it touches.

use super::commands::{Answer, Ban, BanCommand, Command, GuardCommand, Status};
use crate::app::{BoundListeners, CurrentContext, ReloadHandle};
use crate::queue::{QueueAnswer, QueueCommand, QueueHandle};
use std::path::PathBuf;

/// What the control socket reaches in a running server.
pub struct ServerSide {
    pub queue: QueueHandle,
    pub reload: ReloadHandle,
    /// The context in force: bans live in its counters and trust in its
    /// guard, both shared by every reloaded context.
    pub current: CurrentContext,
    /// The listeners bound now (a reload may change them).
    pub listeners: BoundListeners,
    pub started_at: i64,
    pub config_file: Option<PathBuf>,
}

impl ServerSide {
    pub async fn answer(&self, command: Command) -> Answer {
        match command {
            Command::Queue(cmd) => Answer::Queue(self.queue.command(cmd).await),
            Command::Guard(cmd) => self.guard(cmd),
            Command::Bans(cmd) => self.bans(cmd),
            Command::Reload => match self.reload.reload().await {
                Ok(message) => Answer::Reloaded { message },
                Err(e) => Answer::error(e),
            },
            Command::Status => self.status().await,
        }
    }

    fn guard(&self, cmd: GuardCommand) -> Answer {
        let ctx = self.current.get();
        let guard = &ctx.guard;
        match cmd {
            GuardCommand::List => {}
            GuardCommand::Trust { ip } => {
                guard.trust(ip);
                tracing::warn!(client = %ip, "trusted again by an admin (guard trust)");
            }
            GuardCommand::Untrust { ip } => {
                guard.untrust(ip, "untrusted by an admin");
                tracing::warn!(client = %ip, "trust taken by an admin (guard untrust)");
            }
        }
        Answer::Guard {
            state: guard.state(),
        }
    }

    fn bans(&self, cmd: BanCommand) -> Answer {
        let checks = &self.current.get().checks;
        match cmd {
            BanCommand::List => Answer::Bans {
                bans: checks
                    .bans()
                    .into_iter()
                    .map(|(ip, left)| Ban::new(ip, left))
                    .collect(),
            },
            BanCommand::Lift { ip } => {
                let was_banned = checks.lift_ban(ip);
                tracing::warn!(client = %ip, was_banned, "ban lifted by an admin");
                Answer::Lifted { ip, was_banned }
            }
        }
    }

    async fn status(&self) -> Answer {
        let queue = match self.queue.command(QueueCommand::Stats).await {
            QueueAnswer::Stats { stats } => stats,
            QueueAnswer::Error { message } => return Answer::error(message),
            _ => return Answer::error("the queue did not answer with its counts"),
        };
        let ctx = self.current.get();
        Answer::Status(Box::new(Status {
            version: env!("CARGO_PKG_VERSION").to_string(),
            pid: std::process::id(),
            node_id: ctx.config.node_id(),
            hostname: ctx.hostname.clone(),
            started_at: self.started_at,
            config_file: self.config_file.as_ref().map(|p| p.display().to_string()),
            listeners: self.listeners.describe(),
            connections: ctx.limits.active(),
            queue,
        }))
    }
}
