//! HELO, EHLO (with the capability list) and STARTTLS.

use super::{Flow, Helo, Session};
use crate::events::Event;
use crate::smtp::reply::{self, Reply};
use crate::smtp::stream::StreamError;
use tracing::warn;

impl Session {
    pub(super) fn helo(&mut self, name: String, extended: bool) -> Reply {
        self.tx = None;
        if self.trusted()
            && let Some(evidence) = self.ctx.guard.observe_helo(self.ip, &name)
        {
            self.emit(crate::events::Event::GuardUntrusted {
                client: self.ip,
                evidence,
            });
        }
        let greeting = format!("{} greets {} [{}]", self.ctx.hostname, name, self.ip);
        self.helo = Some(Helo { name, extended });
        if !extended {
            return Reply::with_text(250, "", greeting);
        }
        let mut lines = vec![
            greeting,
            "PIPELINING".to_string(),
            format!("SIZE {}", self.ctx.config.server.max_message_size),
            "8BITMIME".to_string(),
            "ENHANCEDSTATUSCODES".to_string(),
            "SMTPUTF8".to_string(),
            "CHUNKING".to_string(),
        ];
        if self.ctx.tls.is_some() && self.stream.tls().is_none() && self.starttls_offered() {
            lines.push("STARTTLS".into());
        }
        if self.auth_allowed_here() {
            lines.push("AUTH PLAIN LOGIN".into());
        }
        lines.push("HELP".into());
        Reply::with_text(250, "", lines.join("\n"))
    }

    /// Whether the policy lets AUTH be used on this connection.
    pub(super) fn auth_allowed_here(&self) -> bool {
        self.ctx.policy.auth(&self.facts()).is_accept()
    }

    pub(super) async fn starttls(&mut self) -> Result<Option<(Reply, Flow)>, StreamError> {
        if self.stream.tls().is_some() {
            return Ok(Some((reply::TLS_ALREADY, Flow::Continue)));
        }
        let Some(acceptor) = self.ctx.tls.clone() else {
            return Ok(Some((reply::TLS_UNAVAILABLE, Flow::Continue)));
        };
        if !self.starttls_offered() {
            return Ok(Some((reply::STARTTLS_NOT_OFFERED, Flow::Continue)));
        }
        self.send(&reply::READY_FOR_TLS).await?;
        let deadline = self.write_deadline();
        if let Err(e) = self.stream.upgrade(&acceptor, deadline).await {
            warn!(error = %e, "TLS handshake failed");
            return Err(e);
        }
        // RFC 3207 4.2: forget everything learnt before TLS.
        self.helo = None;
        self.user = None;
        self.tx = None;
        if let Some(tls) = self.stream.tls() {
            self.emit(Event::TlsEstablished {
                session: self.id,
                client: self.ip,
                version: tls.version.clone(),
                cipher: tls.cipher.clone(),
            });
        }
        Ok(None)
    }
}
