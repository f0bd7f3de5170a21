//! The server's own commands on the control socket (the queue answers the
//! rest): reload, the bans that failed logins earn, and the guard's state
//! (of which the running server is the one writer).

use super::reload::{CurrentContext, ReloadHandle};
use crate::queue::{Ban, QueueAnswer, QueueCommand, ServerControl};
use std::future::Future;
use std::pin::Pin;

/// Answers reload and ban commands for the running server.
pub struct ServerCommands {
    pub reload: ReloadHandle,
    /// The context in force; bans live in its counters, which every
    /// reloaded context shares.
    pub current: CurrentContext,
}

impl ServerControl for ServerCommands {
    fn answer(&self, cmd: QueueCommand) -> Pin<Box<dyn Future<Output = QueueAnswer> + Send + '_>> {
        Box::pin(async move {
            match cmd {
                QueueCommand::Reload => match self.reload.reload().await {
                    Ok(message) => QueueAnswer::Reloaded { message },
                    Err(e) => QueueAnswer::error(e),
                },
                QueueCommand::Bans => QueueAnswer::Bans {
                    bans: self
                        .current
                        .get()
                        .checks
                        .bans()
                        .into_iter()
                        .map(|(ip, left)| Ban::new(ip, left))
                        .collect(),
                },
                QueueCommand::LiftBan { ip } => {
                    let was_banned = self.current.get().checks.lift_ban(ip);
                    tracing::warn!(client = %ip, was_banned, "ban lifted by an admin");
                    QueueAnswer::Lifted { ip, was_banned }
                }
                QueueCommand::GuardList => QueueAnswer::Guard {
                    state: self.current.get().guard.state(),
                },
                QueueCommand::GuardTrust { ip } => {
                    let guard = &self.current.get().guard;
                    guard.trust(ip);
                    tracing::warn!(client = %ip, "trusted again by an admin (guard trust)");
                    QueueAnswer::Guard {
                        state: guard.state(),
                    }
                }
                QueueCommand::GuardUntrust { ip } => {
                    let guard = &self.current.get().guard;
                    guard.untrust(ip, "untrusted by an admin");
                    tracing::warn!(client = %ip, "trust taken by an admin (guard untrust)");
                    QueueAnswer::Guard {
                        state: guard.state(),
                    }
                }
                other => QueueAnswer::error(format!("{} is the queue's command", other.name())),
            }
        })
    }
}
