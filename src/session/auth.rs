//! AUTH PLAIN and LOGIN (RFC 4954, RFC 4616).

use super::{MAX_AUTH_LINE, Session};
use crate::smtp::reply::{self, Reply};
use crate::smtp::stream::{Line, StreamError};
use crate::users::verify_password;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use tracing::{error, info, warn};

/// A client's answer to a SASL challenge.
enum Answer {
    Data(Vec<u8>),
    Cancelled,
    BadBase64,
}

impl Session {
    pub(super) async fn auth(
        &mut self,
        mechanism: &str,
        initial: Option<String>,
    ) -> Result<Reply, StreamError> {
        if self.helo.as_ref().is_none_or(|h| !h.extended) {
            return Ok(Reply::new(503, "5.5.1", "Send EHLO first"));
        }
        if self.user.is_some() {
            return Ok(reply::ALREADY_AUTHENTICATED);
        }
        if self.tx.is_some() {
            return Ok(reply::AUTH_DURING_MAIL);
        }
        if !self.auth_allowed_here() {
            return Ok(reply::AUTH_NEEDS_TLS);
        }
        let credentials = match mechanism {
            "PLAIN" => self.sasl_plain(initial).await?,
            "LOGIN" => self.sasl_login(initial).await?,
            _ => return Ok(reply::AUTH_MECHANISM_UNKNOWN),
        };
        let (user, password) = match credentials {
            Ok(c) => c,
            Err(r) => return Ok(r),
        };
        Ok(self.check_credentials(user, password).await)
    }

    async fn check_credentials(&mut self, user: String, password: String) -> Reply {
        // Reading the users file and hashing are blocking work: keep them off the async threads.
        let ctx = std::sync::Arc::clone(&self.ctx);
        let name = user.clone();
        let checked = tokio::task::spawn_blocking(move || {
            ctx.users
                .hash_of(&name)
                .map(|hash| hash.is_some_and(|h| verify_password(&password, &h)))
        })
        .await;
        match checked {
            Ok(Ok(true)) => {
                info!(session = self.id, client = %self.ip, user = %user, "AUTH succeeded");
                self.user = Some(user);
                reply::AUTH_OK
            }
            Ok(Ok(false)) => {
                warn!(session = self.id, client = %self.ip, user = %user, "AUTH failed: bad user name or password");
                reply::AUTH_FAILED
            }
            Ok(Err(e)) => {
                error!(session = self.id, client = %self.ip, error = %e, "users file unreadable");
                reply::AUTH_TEMP_FAILURE
            }
            Err(e) => {
                error!(session = self.id, client = %self.ip, error = %e, "AUTH check failed");
                reply::AUTH_TEMP_FAILURE
            }
        }
    }

    /// Sends a 334 challenge and reads the answer.
    async fn challenge(&mut self, prompt: &str) -> Result<Answer, StreamError> {
        self.send(&Reply::with_text(334, "", prompt.to_string()))
            .await?;
        let deadline = self.deadline(self.ctx.config.server.command_timeout.get());
        let line = match self.stream.read_line(MAX_AUTH_LINE, deadline).await? {
            Line::Text(l) => l,
            Line::TooLong => return Ok(Answer::BadBase64),
        };
        Ok(decode_answer(&line))
    }

    async fn sasl_plain(
        &mut self,
        initial: Option<String>,
    ) -> Result<Result<(String, String), Reply>, StreamError> {
        let answer = match initial {
            Some(i) => decode_answer(i.as_bytes()),
            None => self.challenge("").await?,
        };
        let data = match answer.into_data() {
            Ok(d) => d,
            Err(r) => return Ok(Err(r)),
        };
        // authzid NUL authcid NUL passwd
        let parts: Vec<&[u8]> = data.split(|&b| b == 0).collect();
        let bad = || Ok(Err(Reply::new(501, "5.5.2", "Malformed PLAIN response")));
        if parts.len() != 3 {
            return bad();
        }
        let (Ok(authz), Ok(user), Ok(pass)) = (
            std::str::from_utf8(parts[0]),
            std::str::from_utf8(parts[1]),
            std::str::from_utf8(parts[2]),
        ) else {
            return bad();
        };
        if !authz.is_empty() && authz != user {
            return Ok(Err(Reply::new(
                535,
                "5.7.8",
                "Acting as another user is not allowed",
            )));
        }
        Ok(Ok((user.to_string(), pass.to_string())))
    }

    async fn sasl_login(
        &mut self,
        initial: Option<String>,
    ) -> Result<Result<(String, String), Reply>, StreamError> {
        let user = match initial {
            Some(i) => decode_answer(i.as_bytes()),
            None => self.challenge("VXNlcm5hbWU6").await?,
        };
        let user = match user.into_data() {
            Ok(d) => d,
            Err(r) => return Ok(Err(r)),
        };
        let pass = match self.challenge("UGFzc3dvcmQ6").await?.into_data() {
            Ok(d) => d,
            Err(r) => return Ok(Err(r)),
        };
        match (String::from_utf8(user), String::from_utf8(pass)) {
            (Ok(u), Ok(p)) => Ok(Ok((u, p))),
            _ => Ok(Err(Reply::new(
                501,
                "5.5.2",
                "User name and password must be UTF-8",
            ))),
        }
    }
}

impl Answer {
    /// The decoded bytes, or the reply that ends the exchange.
    fn into_data(self) -> Result<Vec<u8>, Reply> {
        match self {
            Answer::Data(d) => Ok(d),
            Answer::Cancelled => Err(reply::AUTH_CANCELLED),
            Answer::BadBase64 => Err(reply::AUTH_BAD_BASE64),
        }
    }
}

fn decode_answer(line: &[u8]) -> Answer {
    let line = line.trim_ascii();
    if line == b"*" {
        return Answer::Cancelled;
    }
    if line == b"=" {
        return Answer::Data(Vec::new());
    }
    match B64.decode(line) {
        Ok(d) => Answer::Data(d),
        Err(_) => Answer::BadBase64,
    }
}
