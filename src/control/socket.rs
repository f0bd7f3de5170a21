//! The control socket, `data_dir/control.sock`: a Unix socket only its owner
//! may use (mode 0600, and each peer's credentials are checked: the server's
//! own user or root). Each request is one JSON line naming the protocol
//! version and a `Command`
//! (`{"v":2,"command":{"queue":{"cmd":"hold","select":{"id":"…"}}}}`); each
//! answer is one JSON line (`{"v":2,"answer":{"queue":{"answer":"changed",…}}}`).
//! The server owns the socket while it holds the data-dir lock; the CLI is
//! its client.

use super::answer::ServerSide;
use super::commands::{Answer, Command};
use crate::queue::{QueueAnswer, QueueCommand};
use serde::{Deserialize, Serialize};
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// 2: commands grouped by owner (`queue`, `guard`, `bans`, `reload`, `status`).
pub const PROTOCOL_VERSION: u32 = 2;
/// The longest request line accepted.
const MAX_REQUEST: u64 = 64 * 1024;
/// Time a client has to send a request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Serialize, Deserialize)]
struct Request {
    v: u32,
    command: Command,
}

/// Read first, so that a client speaking another version hears so (rather
/// than that its command does not parse).
#[derive(Debug, Deserialize)]
struct Versioned {
    v: u32,
}

#[derive(Debug, Serialize, Deserialize)]
struct Response {
    v: u32,
    answer: Answer,
}

pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join("control.sock")
}

/// Binds the control socket, replacing one a stopped server left behind
/// (call only while holding the data-dir lock), readable by the owner only.
pub fn bind(data_dir: &Path) -> io::Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    let path = socket_path(data_dir);
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let listener = UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Answers requests until `shutdown`.
pub async fn serve(
    listener: UnixListener,
    server: std::sync::Arc<ServerSide>,
    shutdown: CancellationToken,
) {
    let allowed = [0, rustix::process::geteuid().as_raw()];
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((s, _)) => s,
                Err(e) => {
                    warn!(error = %e, "control socket accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        // The socket's mode already keeps others out; the peer's user is
        // checked too, so that a looser mode or a passed descriptor does not
        // open the server's controls.
        match stream.peer_cred() {
            Ok(cred) if allowed.contains(&cred.uid()) => {}
            Ok(cred) => {
                warn!(
                    uid = cred.uid(),
                    "control socket: refused a client of another user"
                );
                continue;
            }
            Err(e) => {
                warn!(error = %e, "control socket: cannot read the client's credentials");
                continue;
            }
        }
        let server = std::sync::Arc::clone(&server);
        tokio::spawn(async move {
            if let Err(e) = serve_client(stream, server).await {
                warn!(error = %e, "control socket client failed");
            }
        });
    }
    if let Ok(addr) = listener.local_addr()
        && let Some(path) = addr.as_pathname()
    {
        let _ = std::fs::remove_file(path);
    }
}

async fn serve_client(
    stream: tokio::net::UnixStream,
    server: std::sync::Arc<ServerSide>,
) -> io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    loop {
        let mut line = Vec::new();
        let n = tokio::time::timeout(
            REQUEST_TIMEOUT,
            (&mut reader).take(MAX_REQUEST).read_until(b'\n', &mut line),
        )
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no request in time"))??;
        if n == 0 {
            return Ok(());
        }
        let answer = match serde_json::from_slice::<Versioned>(&line) {
            Ok(r) if r.v != PROTOCOL_VERSION => Answer::error(format!(
                "control protocol version {} is not spoken here (this server speaks {PROTOCOL_VERSION})",
                r.v
            )),
            _ => match serde_json::from_slice::<Request>(&line) {
                Ok(r) => server.answer(r.command).await,
                Err(e) => Answer::error(format!("bad request: {e}")),
            },
        };
        let mut out = serde_json::to_vec(&Response {
            v: PROTOCOL_VERSION,
            answer,
        })
        .map_err(io::Error::other)?;
        out.push(b'\n');
        write.write_all(&out).await?;
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// Nobody listens on the socket: no server runs on this data dir.
    #[error("no server is running")]
    NoServer,
    #[error("control socket: {0}")]
    Failed(String),
}

/// Sends one command to the server running on `data_dir` (blocking; for the CLI).
pub fn request(data_dir: &Path, cmd: &Command, timeout: Duration) -> Result<Answer, ControlError> {
    use std::io::{BufRead, Write};
    let path = socket_path(data_dir);
    let stream = match std::os::unix::net::UnixStream::connect(&path) {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Err(ControlError::NoServer);
        }
        Err(e) => return Err(ControlError::Failed(format!("{}: {e}", path.display()))),
    };
    let failed = |e: io::Error| ControlError::Failed(e.to_string());
    stream.set_read_timeout(Some(timeout)).map_err(failed)?;
    stream.set_write_timeout(Some(timeout)).map_err(failed)?;
    let mut line = serde_json::to_vec(&Request {
        v: PROTOCOL_VERSION,
        command: cmd.clone(),
    })
    .map_err(|e| ControlError::Failed(e.to_string()))?;
    line.push(b'\n');
    (&stream).write_all(&line).map_err(failed)?;
    let mut reply = Vec::new();
    std::io::BufReader::new(&stream)
        .read_until(b'\n', &mut reply)
        .map_err(failed)?;
    let response: Response = serde_json::from_slice(&reply)
        .map_err(|e| ControlError::Failed(format!("unreadable answer: {e}")))?;
    Ok(response.answer)
}

/// Sends one queue command; the server's refusal comes back as the queue's
/// own error answer.
pub fn ask_queue(
    data_dir: &Path,
    cmd: &QueueCommand,
    timeout: Duration,
) -> Result<QueueAnswer, ControlError> {
    match request(data_dir, &Command::Queue(cmd.clone()), timeout)? {
        Answer::Queue(answer) => Ok(answer),
        Answer::Error { message } => Ok(QueueAnswer::Error { message }),
        other => Err(ControlError::Failed(format!(
            "unexpected answer to a queue command: {other:?}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::GuardCommand;
    use crate::queue::Selector;
    use crate::spool::QueueId;

    #[test]
    fn requests_are_versioned_json_lines() {
        let id = QueueId::parse("0123456789ABCDEF0123").unwrap();
        let text = serde_json::to_string(&Request {
            v: 2,
            command: Command::Queue(QueueCommand::Hold {
                select: Selector::Id(id.clone()),
            }),
        })
        .unwrap();
        assert_eq!(
            text,
            r#"{"v":2,"command":{"queue":{"cmd":"hold","select":{"id":"0123456789ABCDEF0123"}}}}"#
        );
        let back: Request =
            serde_json::from_str(r#"{"v":2,"command":{"queue":{"cmd":"retry","select":"all"}}}"#)
                .unwrap();
        assert_eq!(
            back.command,
            Command::Queue(QueueCommand::Retry {
                select: Selector::All
            })
        );
        let back: Request = serde_json::from_str(r#"{"v":2,"command":"reload"}"#).unwrap();
        assert_eq!(back.command, Command::Reload);
        let back: Request =
            serde_json::from_str(r#"{"v":2,"command":{"guard":{"cmd":"trust","ip":"10.0.0.9"}}}"#)
                .unwrap();
        assert_eq!(
            back.command,
            Command::Guard(GuardCommand::Trust {
                ip: "10.0.0.9".parse().unwrap()
            })
        );
        assert!(
            serde_json::from_str::<Request>(
                r#"{"v":2,"command":{"queue":{"cmd":"show","id":"../etc"}}}"#
            )
            .is_err()
        );
    }
}
