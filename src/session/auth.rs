//! AUTH PLAIN and LOGIN (RFC 4954, RFC 4616).

use super::{MAX_AUTH_LINE, Session};
use crate::credentials::CheckResult;
use crate::events::Event;
use crate::smtp::reply::{self, Reply};
use crate::smtp::sasl::{Answer, decode_answer, login_credentials, parse_plain};
use crate::smtp::stream::{Line, StreamError};
use std::time::Duration;
use tracing::{error, warn};

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
        if let Err(reason) = self.ctx.policy.auth(&self.facts()).verdict {
            return Ok(reason.reply());
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
        self.check_credentials(user, password).await
    }

    async fn check_credentials(
        &mut self,
        user: String,
        password: String,
    ) -> Result<Reply, StreamError> {
        // An account guessed at from many places is closed to logins from
        // outside for a while, before any password is hashed: the budget
        // stays with clients under no suspicion, and its owner can still
        // log in from a trusted network.
        if !self.trusted()
            && let Some(left) = self.ctx.checks.account_locked(&user)
        {
            warn!(user = %user, left_seconds = left.as_secs(), "AUTH refused: this account is locked to logins from outside after many failures");
            return Ok(reply::ACCOUNT_LOCKED);
        }
        // A client that hangs up while its check waits for a turn gives its turn away.
        let result = tokio::select! {
            r = self.ctx.credentials.check(&user, password) => r,
            e = self.stream.closed() => return Err(e),
        };
        let reply = match result {
            CheckResult::Valid => {
                self.emit(Event::AuthSucceeded {
                    session: self.id,
                    client: self.ip,
                    user: user.clone(),
                });
                self.user = Some(user);
                return Ok(reply::AUTH_OK);
            }
            CheckResult::Invalid => {
                self.auth_failures += 1;
                let failure = self.ctx.checks.auth_failed(self.ip, self.trusted(), &user);
                // The delay grows with the failures of the address's whole
                // prefix: rotating addresses does not reset it.
                let counted = failure.from_ip.max(failure.from_prefix);
                self.ip_auth_failures = u32::try_from(counted).unwrap_or(u32::MAX);
                failure.report(&self.ctx.events, self.ip, &user);
                if failure.banned {
                    self.banned = true;
                    return Ok(reply::BANNED);
                }
                self.emit(Event::AuthFailed {
                    session: self.id,
                    client: self.ip,
                    user,
                    failures: self.auth_failures,
                });
                reply::AUTH_FAILED
            }
            CheckResult::Busy => {
                warn!(user = %user, "AUTH refused for now: too many password checks running and waiting");
                return Ok(reply::AUTH_BUSY);
            }
            CheckResult::Unavailable(e) => {
                error!(error = %e, "AUTH check failed (users file unreadable?)");
                return Ok(reply::AUTH_TEMP_FAILURE);
            }
        };
        // Each failure costs the client more time before its answer: counted
        // in the session, and from the address across sessions.
        let brake = failure_delay(self.auth_failures.max(self.ip_auth_failures));
        tokio::select! {
            _ = tokio::time::sleep(brake) => {}
            e = self.stream.closed() => return Err(e),
        }
        Ok(reply)
    }

    /// Sends a 334 challenge and reads the answer.
    async fn challenge(&mut self, prompt: &str) -> Result<Answer, StreamError> {
        self.send(&Reply::with_text(334, "", prompt.to_string()))
            .await?;
        let deadline = self.command_deadline();
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
        Ok(answer.into_data().and_then(|data| parse_plain(&data)))
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
        Ok(login_credentials(user, pass))
    }
}

/// The pause before answering the `failures`-th failed AUTH of a session:
/// half a second, doubling each time, at most eight seconds.
fn failure_delay(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(4);
    Duration::from_millis(500 << doublings)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_delay_grows_and_is_capped() {
        let secs: Vec<f64> = (1..=7).map(|n| failure_delay(n).as_secs_f64()).collect();
        assert_eq!(secs, [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0]);
    }
}
