//! MAIL and RCPT: open a transaction and decide every recipient.

use super::Session;
use super::transaction::Transaction;
use crate::events::Event;
use crate::policy::FloodVerdict;
use crate::smtp::address::Path;
use crate::smtp::command::MailParams;
use crate::smtp::reply::{self, Reply};
use tracing::{debug, warn};

impl Session {
    pub(super) async fn mail(&mut self, path: Path, params: MailParams) -> Reply {
        if self.helo.is_none() {
            return reply::BAD_SEQUENCE_HELO;
        }
        if self.tx.is_some() {
            return reply::NESTED_MAIL;
        }
        if self.trusted()
            && let Path::Mailbox(m) = &path
            && let Some(evidence) = self
                .ctx
                .guard
                .observe_sender(self.ip, &m.domain.to_string())
        {
            self.emit(Event::GuardUntrusted {
                client: self.ip,
                evidence,
            });
        }
        self.gather_mail_facts(&path).await;
        if let Err(reason) = self.ctx.policy.mail(&self.facts(), &path).verdict {
            let reply = reason.reply();
            self.emit(Event::MailRefused {
                session: self.id,
                client: self.ip,
                reason,
            });
            return reply;
        }
        if params
            .size
            .is_some_and(|s| s > self.ctx.config.server.max_message_size)
        {
            warn!(size = params.size, "MAIL refused: declared size too large");
            return reply::MESSAGE_TOO_BIG;
        }
        let tx = Transaction::new(path, params);
        // Debug only: "message accepted" (or the refusal of what follows)
        // names the sender again, and this line would double the log of a
        // busy relay.
        debug!(from = %tx.sender_text(), user = self.user.as_deref(), "MAIL accepted");
        self.tx = Some(tx);
        reply::SENDER_OK
    }

    /// The facts the MAIL stage reads: what the connect-time lookups found
    /// (awaited once), the HELO and sender-domain lookups, the rates.
    async fn gather_mail_facts(&mut self, sender: &Path) {
        let checks = std::sync::Arc::clone(&self.ctx.checks);
        self.check_facts.rates = checks.rates(self.ip, self.user.as_deref());
        if !self.checks_apply() {
            return;
        }
        if let Some(pending) = self.connect_lookups.take()
            && let Ok(found) = pending.await
        {
            self.emit_dns_check("connect", found.elapsed);
            self.check_facts.lists = found.lists;
            self.check_facts.reverse_dns = found.reverse_dns;
        }
        if self.check_facts.helo.is_none()
            && let Some(helo) = self.helo.as_ref().map(|h| h.name.clone())
        {
            let started = std::time::Instant::now();
            self.check_facts.helo = checks.helo(&helo, self.ip).await;
            if self.check_facts.helo.is_some() {
                self.emit_dns_check("helo", started.elapsed());
            }
        }
        let started = std::time::Instant::now();
        self.check_facts.sender_domain = match sender {
            Path::Mailbox(m) => match &m.domain {
                crate::smtp::address::Domain::Name(d) => checks.sender_domain(d).await,
                crate::smtp::address::Domain::Literal(_) => None,
            },
            _ => None,
        };
        if self.check_facts.sender_domain.is_some() {
            self.emit_dns_check("sender_domain", started.elapsed());
        }
    }

    fn emit_dns_check(&self, check: &'static str, took: std::time::Duration) {
        self.emit(crate::events::Event::DnsCheck {
            check,
            seconds: took.as_secs_f64(),
        });
    }

    pub(super) async fn rcpt(&mut self, path: Path) -> Reply {
        let max = self.ctx.config.server.max_recipients;
        self.check_facts.rates = self.ctx.checks.rates(self.ip, self.user.as_deref());
        self.check_facts.recipient = match &path {
            Path::Mailbox(m) if self.ctx.policy.is_inbound(m) => {
                let checks = std::sync::Arc::clone(&self.ctx.checks);
                checks
                    .verify_recipient(&m.domain.to_string(), &m.to_string())
                    .await
            }
            _ => None,
        };
        let client = self.facts();
        let Some(tx) = self.tx.as_mut() else {
            return reply::BAD_SEQUENCE_MAIL;
        };
        if tx.bdat.is_some() {
            return Reply::new(503, "5.5.1", "RCPT not allowed after BDAT has started");
        }
        if tx.rcpts_accepted >= max {
            return reply::TOO_MANY_RECIPIENTS;
        }
        let decision = self.ctx.policy.rcpt(&client, &path);
        let from = tx.sender_text();
        match decision.verdict {
            Ok(accepted) => {
                let why = decision
                    .steps
                    .last()
                    .map(|s| s.text.clone())
                    .unwrap_or_default();
                let to = accepted.mailbox.to_string();
                if accepted.is_relayed() {
                    let source = self.user.clone().unwrap_or_else(|| self.ip.to_string());
                    if let Some(flood) = self
                        .ctx
                        .guard
                        .observe_recipient(&source, &accepted.mailbox.domain.to_string())
                    {
                        if flood.new {
                            self.ctx.events.emit(Event::FloodDetected {
                                source: flood.source.clone(),
                                recipient_domains: flood.domains,
                                reason: flood.reason.clone(),
                                action: match self.ctx.policy.guard_mode {
                                    crate::config::GuardMode::Hold => "held in the queue",
                                    crate::config::GuardMode::Refuse => "refused (451 4.7.1)",
                                    crate::config::GuardMode::Log => "only logged",
                                },
                            });
                        }
                        // The source's usual domains go on: only mail to
                        // new ones is held or refused (see guard/flood.rs).
                        match self.ctx.policy.flood(flood.usual_domain) {
                            FloodVerdict::Proceed => {}
                            FloodVerdict::Hold => tx.hold = true,
                            FloodVerdict::Refuse => return reply::FLOOD_REFUSED,
                        }
                    }
                }
                tx.add_recipient(accepted.mailbox);
                self.ctx.checks.count_recipient(self.ip);
                self.emit(Event::RcptAccepted {
                    session: self.id,
                    client: self.ip,
                    from,
                    to,
                    why,
                });
                reply::RECIPIENT_OK
            }
            Err(reason) => {
                let to = match &path {
                    Path::Mailbox(m) => m.to_string(),
                    Path::Postmaster => "postmaster".into(),
                    Path::Null => String::new(),
                };
                let reply = reason.reply();
                self.emit(Event::RcptRefused {
                    session: self.id,
                    client: self.ip,
                    from,
                    to,
                    user: client.user,
                    reason,
                });
                reply
            }
        }
    }
}
