//! The control socket, `data_dir/control.sock`: a Unix socket only its owner
//! may use. Each request is one JSON line naming the protocol version and a
//! `QueueCommand` (`{"v":1,"cmd":"hold","select":{"id":"…"}}`); each answer is
//! one JSON line (`{"v":1,"answer":"changed","changed":[…]}`). The server owns
//! the socket while it holds the data-dir lock; the CLI is its client.

use super::QueueHandle;
use super::control::{QueueAnswer, QueueCommand};
use serde::{Deserialize, Serialize};
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;
use tokio_util::sync::CancellationToken;
use tracing::warn;

pub const PROTOCOL_VERSION: u32 = 1;
/// The longest request line accepted.
const MAX_REQUEST: u64 = 64 * 1024;
/// Time a client has to send a request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Serialize, Deserialize)]
struct Request {
    v: u32,
    #[serde(flatten)]
    command: QueueCommand,
}

#[derive(Debug, Serialize, Deserialize)]
struct Response {
    v: u32,
    #[serde(flatten)]
    answer: QueueAnswer,
}

pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join("control.sock")
}

/// Binds the control socket, replacing one a stopped server left behind
/// (call only while holding the data-dir lock), readable by the owner only.
pub fn bind_control(data_dir: &Path) -> io::Result<UnixListener> {
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

/// What the control socket answers that is not the queue's: the server's
/// own commands (reload, bans). The server implements it, so that the queue
/// knows nothing of the server.
pub trait ServerControl: Send + Sync {
    fn answer(
        &self,
        cmd: QueueCommand,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = QueueAnswer> + Send + '_>>;
}

/// Answers requests until `shutdown`.
pub async fn serve_control(
    listener: UnixListener,
    handle: QueueHandle,
    server: Option<std::sync::Arc<dyn ServerControl>>,
    shutdown: CancellationToken,
) {
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
        let handle = handle.clone();
        let server = server.clone();
        tokio::spawn(async move {
            if let Err(e) = serve_client(stream, handle, server).await {
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
    handle: QueueHandle,
    server: Option<std::sync::Arc<dyn ServerControl>>,
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
        let answer = match serde_json::from_slice::<Request>(&line) {
            Ok(r) if r.v == PROTOCOL_VERSION && r.command.is_for_the_server() => match &server {
                Some(s) => s.answer(r.command).await,
                None => QueueAnswer::error(format!("this server cannot {}", r.command.name())),
            },
            Ok(r) if r.v == PROTOCOL_VERSION => handle.command(r.command).await,
            Ok(r) => QueueAnswer::error(format!(
                "control protocol version {} is not spoken here (this server speaks {PROTOCOL_VERSION})",
                r.v
            )),
            Err(e) => QueueAnswer::error(format!("bad request: {e}")),
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
pub fn request(
    data_dir: &Path,
    cmd: &QueueCommand,
    timeout: Duration,
) -> Result<QueueAnswer, ControlError> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::Selector;
    use crate::spool::QueueId;

    #[test]
    fn requests_are_versioned_json_lines() {
        let id = QueueId::parse("0123456789ABCDEF0123").unwrap();
        let text = serde_json::to_string(&Request {
            v: 1,
            command: QueueCommand::Hold {
                select: Selector::Id(id.clone()),
            },
        })
        .unwrap();
        assert_eq!(
            text,
            r#"{"v":1,"cmd":"hold","select":{"id":"0123456789ABCDEF0123"}}"#
        );
        let back: Request =
            serde_json::from_str(r#"{"v":1,"cmd":"retry","select":"all"}"#).unwrap();
        assert_eq!(
            back.command,
            QueueCommand::Retry {
                select: Selector::All
            }
        );
        assert!(serde_json::from_str::<Request>(r#"{"v":1,"cmd":"show","id":"../etc"}"#).is_err());
    }
}
