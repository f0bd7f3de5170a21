//! One SMTP session: connection facts (peer, TLS, HELO, AUTH) and at most one
//! open transaction. Each verb is one function doing check → policy → act and
//! producing a reply. Sessions run over any `Io`, so tests can use in-memory pipes.

mod auth;

mod data;
mod envelope;
mod greeting;
mod incoming;
mod received;
mod transaction;

#[cfg(test)]
mod tests;

use crate::app::Context;

use crate::config::ListenerKind;
use crate::events::{CloseReason, Event};
use crate::smtp::command::{self, Command, Unparsed};
use crate::smtp::reply::{self, Reply};
use crate::smtp::stream::{Line, SmtpStream, StreamError};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, warn};
use transaction::Transaction;

/// SASL lines may be longer than commands (RFC 4954 4: 12288 octets).
const MAX_AUTH_LINE: usize = 12288;

static SESSION_COUNTER: AtomicU64 = AtomicU64::new(1);

/// What a verb asks the loop to do after its reply.
enum Flow {
    Continue,
    /// The reply is the last: the session ends, for this reason.
    Close(CloseReason),
}

struct Helo {
    name: String,
    extended: bool,
}

pub struct Session {
    ctx: Arc<Context>,
    id: u64,
    kind: ListenerKind,
    ip: IpAddr,
    stream: SmtpStream,
    helo: Option<Helo>,
    user: Option<String>,
    tx: Option<Transaction>,
    errors: u32,
    /// Tells when the server comes under stress, so a waiting read is cut short.
    stress: tokio::sync::watch::Receiver<bool>,
    /// Failed AUTH attempts in this session; each one is answered more slowly.
    auth_failures: u32,
    /// Failed AUTH attempts from this address lately, across sessions.
    ip_auth_failures: u32,
    /// This session's failures got the address banned: close after the reply.
    banned: bool,
    /// The listener offers STARTTLS (its `offer_starttls`).
    listener_offers_starttls: bool,
    /// Commands that did nothing (NOOP, RSET, VRFY, EXPN, HELP) since the
    /// last accepted message.
    junk: u32,
    /// When the client last sent a command that does something: under
    /// stress, junk commands do not keep a session alive.
    last_useful: Instant,
    /// The load balancer that sent the PROXY header naming this client.
    via_proxy: Option<IpAddr>,
    /// The client's address and port, as the transcript names it.
    peer: SocketAddr,
    /// What the anti-spam checks found so far.
    check_facts: crate::policy::CheckFacts,
    /// The DNS lists and reverse DNS, asked as soon as the client connected.
    connect_lookups: Option<tokio::task::JoinHandle<crate::checks::ConnectFindings>>,
    messages: u32,
    ends_at: Instant,
    shutdown: CancellationToken,
}

impl Session {
    pub fn new(
        ctx: Arc<Context>,
        kind: ListenerKind,
        peer: SocketAddr,
        stream: SmtpStream,
        shutdown: CancellationToken,
    ) -> Session {
        let ends_at = Instant::now() + ctx.config.server.session_timeout.get();
        let stress = ctx.limits.watch_stress();
        Session {
            ctx,
            id: SESSION_COUNTER.fetch_add(1, Ordering::Relaxed),
            kind,
            ip: peer.ip().to_canonical(),
            stream,
            helo: None,
            user: None,
            tx: None,
            errors: 0,
            stress,
            auth_failures: 0,
            ip_auth_failures: 0,
            banned: false,
            listener_offers_starttls: true,
            junk: 0,
            last_useful: Instant::now(),
            via_proxy: None,
            peer,
            check_facts: crate::policy::CheckFacts::default(),
            connect_lookups: None,
            messages: 0,
            ends_at,
            shutdown,
        }
    }

    /// A deadline `d` from now, but never past the end of the session.
    fn deadline(&self, d: Duration) -> Instant {
        (Instant::now() + d).min(self.ends_at)
    }

    /// A deadline for waiting on the client, cut to `server.stress_timeout`
    /// while the server is under stress (a flood of slow clients must not
    /// keep the slots for minutes).
    fn wait_deadline(&self, d: Duration) -> Instant {
        let d = if self.ctx.limits.stressed() {
            d.min(self.ctx.config.server.stress_timeout.get())
        } else {
            d
        };
        self.deadline(d)
    }

    /// Until when the next command line must have arrived. Under stress a
    /// client has `stress_timeout` from its last useful command, however
    /// many NOOPs it sends meanwhile.
    fn command_deadline(&self) -> Instant {
        let wait = self.wait_deadline(self.ctx.config.server.command_timeout.get());
        if self.ctx.limits.stressed() {
            wait.min(self.last_useful + self.ctx.config.server.stress_timeout.get())
        } else {
            wait
        }
    }

    /// Counts a command that does nothing; the reply that closes the
    /// session once there were too many.
    fn junk_command(&mut self) -> Option<Reply> {
        self.junk += 1;
        let mut limit = self.ctx.config.server.max_junk_commands.max(1);
        if self.ctx.limits.stressed() {
            limit = (limit / 10).max(1);
        }
        (self.junk > limit).then(|| {
            warn!(
                junk = self.junk,
                "too many commands that do nothing; closing"
            );
            reply::TOO_MUCH_JUNK
        })
    }

    /// Until when the next piece of message data must have arrived.
    fn data_block_deadline(&self) -> Instant {
        self.wait_deadline(self.ctx.config.server.data_block_timeout.get())
    }

    fn write_deadline(&self) -> Instant {
        self.deadline(self.ctx.config.server.command_timeout.get())
    }

    async fn send(&mut self, reply: &Reply) -> Result<(), StreamError> {
        let deadline = self.write_deadline();
        self.stream.send(reply, deadline).await
    }

    /// Runs the session to its end. Never panics on input; errors end the
    /// session. Everything logged meanwhile carries the session's span
    /// (id, client, listener).
    /// Follows the listener's `offer_starttls`.
    pub fn offering_starttls(mut self, offer: bool) -> Session {
        self.listener_offers_starttls = offer;
        self
    }

    /// The client came through this load balancer (a PROXY header).
    pub fn via_proxy(mut self, proxy: Option<IpAddr>) -> Session {
        self.via_proxy = proxy;
        self
    }

    /// Whether STARTTLS is offered in this session (the listener and the
    /// client's range may hide it).
    fn starttls_offered(&self) -> bool {
        self.ctx
            .policy
            .offers_starttls(self.ip, self.listener_offers_starttls)
    }

    pub async fn run(self) {
        let span = tracing::info_span!("session", id = self.id, client = %self.ip, listener = self.kind.name());
        self.run_in_span().instrument(span).await
    }

    async fn run_in_span(mut self) {
        if let Some(t) = &self.ctx.transcripts {
            // The same session number as the log's, and the load balancer's
            // own address when a PROXY header named the client.
            let via = self
                .via_proxy
                .map(|p| format!(" via proxy {p}"))
                .unwrap_or_default();
            let tag = format!(
                "in {} {} session {}{via}",
                self.kind.name(),
                self.peer,
                self.id
            );
            self.stream.record_to(t.recorder_tagged(&tag, self.ip));
        }
        self.emit(Event::ConnectionOpened {
            session: self.id,
            client: self.ip,
            listener: self.kind,
            tls: self.stream.tls().is_some(),
            via_proxy: self.via_proxy,
        });
        if self.checks_apply() {
            self.connect_lookups = self.ctx.checks.start_connect_lookups(self.ip);
        }
        let result = match Box::pin(self.greet()).await {
            Ok(true) => self.command_loop().await,
            Ok(false) => Ok(CloseReason::TalkedFirst),
            Err(e) => Err(e),
        };
        let why = match result {
            Ok(why) => why,
            Err(StreamError::Timeout) => CloseReason::TimedOut,
            Err(StreamError::Closed) => CloseReason::ClientLeft,
            Err(StreamError::Io(e)) => CloseReason::Io(crate::tls::describe_io_error(&e)),
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        self.stream.shutdown(deadline).await;
        self.emit(Event::ConnectionClosed {
            session: self.id,
            client: self.ip,
            messages: self.messages,
            errors: self.errors,
            reason: why,
        });
    }

    /// The banner, after the pregreet wait for clients the checks concern.
    /// False when the client talked first and was refused.
    async fn greet(&mut self) -> Result<bool, StreamError> {
        let c = &self.ctx.config.checks;
        if c.pregreet == crate::config::PregreetCheck::Reject && self.checks_apply() {
            let wait = Instant::now() + c.pregreet_wait.get();
            if let Ok(early) = self.stream.peek_some(wait).await
                && !early.is_empty()
            {
                self.emit(Event::ConnectionRefused {
                    client: self.ip,
                    listener: self.kind,
                    refusal: crate::events::ConnectionRefusal::Pregreet,
                });
                self.send(&reply::PREGREET).await?;
                return Ok(false);
            }
        }
        let banner = Reply::with_text(
            220,
            "",
            format!("{} ESMTP Portcullis ready", self.ctx.hostname),
        );
        self.send(&banner).await?;
        Ok(true)
    }

    async fn command_loop(&mut self) -> Result<CloseReason, StreamError> {
        loop {
            let deadline = self.command_deadline();
            let line = tokio::select! {
                line = self.stream.read_line(MAX_AUTH_LINE, deadline) => line,
                // Stress began (or ended): wait again, with the new deadline.
                Ok(()) = self.stress.changed() => continue,
                _ = self.shutdown.cancelled(), if !self.stream.has_buffered_input() => {
                    self.send(&reply::SHUTTING_DOWN).await?;
                    return Ok(CloseReason::ShuttingDown);
                }
            };
            let line = match line {
                Ok(l) => l,
                Err(StreamError::Timeout) => {
                    warn!("timeout waiting for a command");
                    self.send(&reply::TIMEOUT).await?;
                    return Ok(CloseReason::TimedOut);
                }
                Err(e) => return Err(e),
            };
            let (reply, flow) = match line {
                Line::TooLong => {
                    info!("command line too long; refused");
                    (reply::LINE_TOO_LONG, Flow::Continue)
                }
                Line::Text(bytes) => match Box::pin(self.handle_line(bytes)).await? {
                    Some(outcome) => outcome,
                    None => continue,
                },
            };
            self.send(&reply).await?;
            if let Flow::Close(why) = flow {
                return Ok(why);
            }
            if reply.is_error() && counts_as_error(&reply) {
                self.errors += 1;
                if self.errors >= self.ctx.config.server.max_errors {
                    warn!(errors = self.errors, "too many errors; closing");
                    self.send(&reply::TOO_MANY_ERRORS).await?;
                    return Ok(CloseReason::TooManyErrors);
                }
            }
        }
    }

    /// Parses and runs one command line. `None` when the verb already replied itself.
    async fn handle_line(&mut self, bytes: Vec<u8>) -> Result<Option<(Reply, Flow)>, StreamError> {
        let Ok(text) = String::from_utf8(bytes) else {
            return Ok(Some((
                Reply::new(500, "5.5.2", "Command is not valid UTF-8"),
                Flow::Continue,
            )));
        };
        let is_auth_line = text
            .get(..5)
            .is_some_and(|v| v.eq_ignore_ascii_case("AUTH "));
        if !is_auth_line && text.len() + 2 > self.ctx.config.server.max_command_line {
            return Ok(Some((reply::LINE_TOO_LONG, Flow::Continue)));
        }
        let cmd = match command::parse(&text) {
            Ok(cmd) => cmd,
            Err(Unparsed::Http) => {
                warn!("HTTP request on the SMTP port; closing");
                return Ok(Some((
                    reply::HTTP_REFUSED,
                    Flow::Close(CloseReason::HttpRequest),
                )));
            }
            Err(Unparsed::Reply(r)) => {
                // Only a known verb is logged, never what followed it: a
                // refused line may be a password (sent after a refused AUTH)
                // or a terminal escape.
                info!(command = command::verb_name(&text), reply = %r, "command refused");
                return Ok(Some((r, Flow::Continue)));
            }
        };
        self.dispatch(cmd).await
    }

    /// The verbs that wait on the network or the disk run boxed: their state
    /// then exists only while they run, and an idle session stays small.
    async fn dispatch(&mut self, cmd: Command) -> Result<Option<(Reply, Flow)>, StreamError> {
        let junk = matches!(
            cmd,
            Command::Noop | Command::Rset | Command::Vrfy | Command::Expn | Command::Help
        );
        if junk {
            if let Some(closing) = self.junk_command() {
                return Ok(Some((
                    closing,
                    Flow::Close(CloseReason::TooManyJunkCommands),
                )));
            }
        } else {
            self.last_useful = Instant::now();
        }
        let message_ends = matches!(cmd, Command::Data | Command::Bdat { last: true, .. });
        let outcome = self.dispatch_verb(cmd).await?;
        if message_ends && matches!(&outcome, Some((r, _)) if r.code == 250) {
            self.junk = 0;
        }
        Ok(outcome)
    }

    async fn dispatch_verb(&mut self, cmd: Command) -> Result<Option<(Reply, Flow)>, StreamError> {
        let reply = match cmd {
            Command::Helo(name) => self.helo(name, false),
            Command::Ehlo(name) => self.helo(name, true),
            Command::Mail { path, params } => Box::pin(self.mail(path, params)).await,
            Command::Rcpt { path } => Box::pin(self.rcpt(path)).await,
            Command::Data => return Box::pin(self.data()).await,
            Command::Bdat { size, last } => return Box::pin(self.bdat(size, last)).await,
            Command::Rset => {
                self.tx = None;
                reply::RESET_OK
            }
            Command::Noop => reply::NOOP_OK,
            Command::Quit => {
                return Ok(Some((
                    Reply::with_text(
                        221,
                        "2.0.0",
                        format!("{} closing connection", self.ctx.hostname),
                    ),
                    Flow::Close(CloseReason::Quit),
                )));
            }
            Command::Vrfy => reply::VRFY_CANNOT,
            Command::Expn => reply::NOT_IMPLEMENTED,
            Command::Help => reply::HELP,
            Command::StartTls => return Box::pin(self.starttls()).await,
            Command::Auth { mechanism, initial } => {
                let reply = Box::pin(self.auth(&mechanism, initial)).await?;
                if self.banned {
                    return Ok(Some((reply, Flow::Close(CloseReason::Banned))));
                }
                reply
            }
        };
        Ok(Some((reply, Flow::Continue)))
    }

    fn emit(&self, event: Event) {
        self.ctx.events.emit(event);
    }

    /// What the policy needs to know of this client now.
    fn facts(&self) -> crate::policy::ClientFacts {
        crate::policy::ClientFacts {
            ip: self.ip,
            listener: self.kind,
            tls: self.stream.tls().is_some(),
            user: self.user.clone(),
            helo: self.helo.as_ref().map(|h| h.name.clone()),
            checks: self.check_facts.clone(),
            sender: self.tx.as_ref().map(|t| t.sender_text()),
            distrusted: self.ctx.guard.is_untrusted(self.ip),
            distrusted_recently: self.ctx.guard.untrusted_recently(self.ip),
            smtputf8: self.tx.as_ref().is_some_and(|t| t.params.smtputf8),
        }
    }

    /// A trusted network's client whose trust the guard has not withdrawn
    /// (the policy's answer).
    fn trusted(&self) -> bool {
        self.ctx.trusts(self.ip)
    }

    /// Whether the anti-spam checks concern this client now (the policy's answer).
    fn checks_apply(&self) -> bool {
        self.ctx.policy.checks_apply(&self.facts())
    }

    /// Whether this client's mail comes from a trusted origin (the policy's answer).
    fn trusted_origin(&self) -> bool {
        self.ctx.policy.trusted_origin(&self.facts())
    }
}

/// Replies that say "not now" to a well-behaved client do not count towards the error limit.
fn counts_as_error(r: &Reply) -> bool {
    r.enhanced != "4.5.3"
}
