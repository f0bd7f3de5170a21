//! DATA and BDAT: decode the message into the spool writer, then make it
//! durable before the 250. A disk problem is a 4xx and the client keeps the
//! message. No file I/O happens on the async threads (see `Incoming`).

use super::incoming::Incoming;
use super::received::{ReceivedFacts, received_header};
use super::{Flow, Session};
use crate::events::{CloseReason, Event, MessageRefusal};
use crate::smtp::data::{DataDecoder, Mode, Progress};
use crate::smtp::reply::{self, Reply};
use crate::smtp::stream::StreamError;
use crate::spool::{ContentInfo, Envelope, EnvelopeRecipient, Origin, QueueId, SpoolWriter};
use std::io;
use tokio::time::Instant;

type Outcome = Result<Option<(Reply, Flow)>, StreamError>;

const BARE_NEWLINE_IN_CHUNK: Reply = Reply::new(
    554,
    "5.6.11",
    "Bare CR or LF in message data; lines must end with CRLF",
);
const NUL_IN_CHUNK: Reply = Reply::new(
    554,
    "5.6.0",
    "NUL byte in message data is not allowed (BINARYMIME is not offered)",
);

/// How reading message data ended.
enum DataEnd {
    Complete,
    /// A byte the smuggling defence refuses (bare CR/LF or NUL).
    Forbidden(Progress),
    Timeout,
}

/// The reply and the refusal for a refused byte in DATA (the connection is closed after it).
fn forbidden_in_data(p: Progress) -> (Reply, MessageRefusal) {
    match p {
        Progress::Nul => (reply::NUL_IN_DATA, MessageRefusal::NulByte),
        _ => (reply::BARE_NEWLINE, MessageRefusal::BareNewline),
    }
}

impl Session {
    pub(super) async fn data(&mut self) -> Outcome {
        let Some(tx) = &self.tx else {
            return Ok(Some((reply::BAD_SEQUENCE_MAIL, Flow::Continue)));
        };
        if tx.bdat.is_some() {
            return Ok(Some((reply::BDAT_AFTER_DATA_MIX, Flow::Continue)));
        }
        if tx.recipients.is_empty() {
            return Ok(Some((reply::NO_VALID_RECIPIENTS, Flow::Continue)));
        }
        // Content before the 354 is a protocol error RFC 2920 forbids.
        let early_content = self.stream.has_buffered_input();
        if let Err(reason) = self.ctx.policy.data(&self.facts(), early_content).verdict {
            let reply = reason.reply();
            self.emit(Event::DataRefused {
                session: self.id,
                client: self.ip,
                reason,
            });
            self.tx = None;
            return Ok(Some((reply, Flow::Close(CloseReason::MessageRefused))));
        }
        let mut msg = self.start_message(Mode::Dot);
        self.send(&reply::START_DATA).await?;
        let data_deadline = self.deadline(self.ctx.config.server.data_timeout.get());
        let end = loop {
            let deadline = self.data_block_deadline().min(data_deadline);
            let (consumed, progress) = match self.stream.peek_some(deadline).await {
                Ok(input) => msg.feed(input),
                Err(StreamError::Timeout) => break DataEnd::Timeout,
                Err(e) => return Err(e),
            };
            self.stream.consume(consumed);
            msg.spill_if_needed().await;
            match progress {
                Progress::More => {}
                Progress::End => break DataEnd::Complete,
                Progress::BareNewline | Progress::Nul => break DataEnd::Forbidden(progress),
            }
        };
        match end {
            DataEnd::Timeout => {
                self.refused(&msg.queue_id, MessageRefusal::Timeout, "DATA");
                self.tx = None;
                Ok(Some((reply::TIMEOUT, Flow::Close(CloseReason::TimedOut))))
            }
            DataEnd::Forbidden(p) => {
                let (reply, refusal) = forbidden_in_data(p);
                self.refused(&msg.queue_id, refusal, "DATA; closing");
                self.tx = None;
                Ok(Some((reply, Flow::Close(CloseReason::MessageRefused))))
            }
            DataEnd::Complete => Ok(Some((self.finish_message(msg).await, Flow::Continue))),
        }
    }

    pub(super) async fn bdat(&mut self, size: u64, last: bool) -> Outcome {
        let refusal = match &self.tx {
            None => Some(reply::BAD_SEQUENCE_MAIL),
            Some(tx) if tx.recipients.is_empty() => Some(reply::BDAT_NEEDS_RCPT),
            Some(_) => None,
        };
        if let Some(r) = refusal {
            // The chunk must still be read so that its octets are not taken for commands.
            return Ok(Some(match self.discard_chunk(size).await? {
                true => (r, Flow::Continue),
                false => (reply::TIMEOUT, Flow::Close(CloseReason::TimedOut)),
            }));
        }
        let mut msg = match self.tx.as_mut().and_then(|t| t.bdat.take()) {
            Some(m) => m,
            None => self.start_message(Mode::Raw),
        };
        let max = self.ctx.config.server.max_message_size;
        if size > max.saturating_sub(msg.decoder.size()) {
            // Reading a chunk we will refuse anyway could take forever (the size
            // may be 2^64-1), and skipping it unread would run its octets as
            // commands: refuse and close.
            self.refused(
                &msg.queue_id,
                MessageRefusal::TooBig,
                &format!("BDAT chunk of {size} octets; closing"),
            );
            self.tx = None;
            return Ok(Some((
                reply::BDAT_TOO_BIG,
                Flow::Close(CloseReason::MessageRefused),
            )));
        }
        let s = &self.ctx.config.server;
        let chunk_deadline = self.deadline(s.data_timeout.get());
        let mut remaining = size;
        // The first refused byte; after it the rest of the chunk is read and dropped.
        let mut forbidden: Option<Progress> = None;
        while remaining > 0 {
            let deadline: Instant = self.data_block_deadline().min(chunk_deadline);
            let (n, progress) = match self.stream.peek_some(deadline).await {
                Ok(input) => {
                    let n = input
                        .len()
                        .min(usize::try_from(remaining).unwrap_or(usize::MAX));
                    let progress = if forbidden.is_some() {
                        Progress::More
                    } else {
                        msg.feed(&input[..n]).1
                    };
                    (n, progress)
                }
                Err(StreamError::Timeout) => {
                    self.refused(&msg.queue_id, MessageRefusal::Timeout, "BDAT");
                    self.tx = None;
                    return Ok(Some((reply::TIMEOUT, Flow::Close(CloseReason::TimedOut))));
                }
                Err(e) => return Err(e),
            };
            self.stream.consume(n);
            remaining -= n as u64;
            if matches!(progress, Progress::BareNewline | Progress::Nul) {
                forbidden.get_or_insert(progress);
            }
            msg.spill_if_needed().await;
        }
        if forbidden.is_none() && last && msg.finish_chunks() == Progress::BareNewline {
            forbidden = Some(Progress::BareNewline);
        }
        if let Some(p) = forbidden {
            let (reply, refusal) = match p {
                Progress::Nul => (NUL_IN_CHUNK, MessageRefusal::NulByte),
                _ => (BARE_NEWLINE_IN_CHUNK, MessageRefusal::BareNewline),
            };
            self.refused(&msg.queue_id, refusal, "BDAT");
            self.tx = None;
            return Ok(Some((reply, Flow::Continue)));
        }
        if msg.decoder.too_big() {
            let size = msg.decoder.size().to_string();
            self.refused(&msg.queue_id, MessageRefusal::TooBig, &size);
            self.tx = None;
            return Ok(Some((reply::MESSAGE_TOO_BIG, Flow::Continue)));
        }
        if !last {
            if let Some(tx) = self.tx.as_mut() {
                tx.bdat = Some(msg);
            }
            return Ok(Some((
                Reply::with_text(250, "2.0.0", format!("{size} octets received")),
                Flow::Continue,
            )));
        }
        Ok(Some((self.finish_message(msg).await, Flow::Continue)))
    }

    /// Reads `size` octets and drops them. Returns false when the client was too slow.
    async fn discard_chunk(&mut self, size: u64) -> Result<bool, StreamError> {
        let s = &self.ctx.config.server;
        let chunk_deadline = self.deadline(s.data_timeout.get());
        let mut remaining = size;
        while remaining > 0 {
            let deadline: Instant = self.data_block_deadline().min(chunk_deadline);
            let n = match self.stream.peek_some(deadline).await {
                Ok(input) => input
                    .len()
                    .min(usize::try_from(remaining).unwrap_or(usize::MAX)),
                Err(StreamError::Timeout) => return Ok(false),
                Err(e) => return Err(e),
            };
            self.stream.consume(n);
            remaining -= n as u64;
        }
        Ok(true)
    }

    /// A new message with our Received: header first (in memory: no I/O yet).
    fn start_message(&self, mode: Mode) -> Incoming {
        let queue_id = QueueId::new();
        let mut writer: SpoolWriter = self.ctx.spool.begin(&queue_id);
        writer.write(self.received_header(&queue_id).as_bytes());
        if let Some(header) = self.redirect_header() {
            writer.write(header.as_bytes());
        }
        let s = &self.ctx.config.server;
        let bare_newline =
            self.ctx
                .policy
                .bare_newline(self.ip, self.trusted_origin(), s.bare_newline);
        let decoder = DataDecoder::new(
            mode,
            bare_newline,
            s.nul_in_data,
            s.max_message_size,
            s.max_text_line,
        );
        Incoming::new(queue_id, writer, decoder)
    }
    /// Where this login's mail goes instead of its recipients (`[[policy]] redirect_to`).
    fn redirect_target(&self) -> Option<(String, String)> {
        let facts = self.facts();
        let (_, rule) = self.ctx.policy.login_rule(&facts)?;
        let to = rule.redirect_to.clone()?;
        Some((to, rule.redirect_header().to_string()))
    }

    /// The header that keeps the original recipients of a redirected
    /// message, one address per folded line.
    fn redirect_header(&self) -> Option<String> {
        let (_, name) = self.redirect_target()?;
        let tx = self.tx.as_ref()?;
        let originals: Vec<String> = tx.recipients.iter().map(|m| m.to_string()).collect();
        Some(format!("{name}: {}\r\n", originals.join(",\r\n\t")))
    }

    fn received_header(&self, queue_id: &str) -> String {
        let tx = self.tx.as_ref();
        let single = tx
            .filter(|t| t.recipients.len() == 1)
            .map(|t| t.recipients[0].to_string());
        received_header(&ReceivedFacts {
            helo: self.helo.as_ref().map_or("unknown", |h| h.name.as_str()),
            ip: self.ip,
            hostname: &self.ctx.hostname,
            extended: self.helo.as_ref().is_some_and(|h| h.extended),
            tls: self.stream.tls(),
            authenticated: self.user.is_some(),
            smtputf8: tx.is_some_and(|t| t.params.smtputf8),
            queue_id,
            single_recipient: single,
        })
    }

    fn refused(&self, queue_id: &QueueId, refusal: MessageRefusal, detail: &str) {
        self.emit(Event::MessageRefused {
            session: self.id,
            client: self.ip,
            queue_id: queue_id.clone(),
            refusal,
            detail: detail.to_string(),
        });
    }

    /// Checks the decoder's verdicts, then commits the message durably. Ends the transaction.
    async fn finish_message(&mut self, mut msg: Incoming) -> Reply {
        let queue_id = msg.queue_id.clone();
        let Some(tx) = self.tx.take() else {
            return reply::BAD_SEQUENCE_MAIL;
        };
        if msg.decoder.too_big() {
            let size = msg.decoder.size().to_string();
            self.refused(&queue_id, MessageRefusal::TooBig, &size);
            return reply::MESSAGE_TOO_BIG;
        }
        if msg.decoder.line_too_long() {
            self.refused(&queue_id, MessageRefusal::LineTooLong, "");
            return reply::TEXT_LINE_TOO_LONG;
        }
        let hops = msg.hops.hops();
        if hops + 1 > self.ctx.config.server.max_hops {
            self.refused(
                &queue_id,
                MessageRefusal::MailLoop,
                &format!("{hops} Received: headers"),
            );
            return reply::TOO_MANY_HOPS;
        }
        if let Some(e) = msg.write_error.take() {
            self.refused(&queue_id, MessageRefusal::SpoolFailed, &e.to_string());
            return spool_error_reply(&e);
        }
        let Some(mut writer) = msg.take_writer() else {
            return reply::SPOOL_FAILED;
        };
        let archive = &self.ctx.config.archive;
        let archived = archive.covers(self.ip, self.user.as_deref());
        if let (true, Some(dir)) = (archived, &archive.dir) {
            // Archived before it is accepted: an accepted message always is.
            let path = crate::archive::path_for(dir, &queue_id.to_string(), chrono::Utc::now());
            let copied = tokio::task::spawn_blocking(move || {
                let result = writer
                    .content()
                    .and_then(|content| crate::archive::write(&path, &content));
                (writer, result)
            })
            .await;
            match copied {
                Ok((w, Ok(()))) => writer = w,
                Ok((_, Err(e))) => {
                    self.refused(
                        &queue_id,
                        MessageRefusal::SpoolFailed,
                        &format!("archive: {e}"),
                    );
                    return reply::SPOOL_FAILED;
                }
                Err(_) => return reply::SPOOL_FAILED,
            }
        }
        let recipients = match self.redirect_target() {
            // Staging: everything to one mailbox; the originals are in the header.
            Some((to, _)) => vec![EnvelopeRecipient {
                domain: to
                    .rsplit_once('@')
                    .map(|(_, d)| crate::smtp::address::Domain::normalize(d))
                    .unwrap_or_default(),
                address: to,
            }],
            None => tx
                .recipients
                .iter()
                .map(|m| EnvelopeRecipient {
                    address: m.to_string(),
                    domain: m.domain.to_string(),
                })
                .collect(),
        };
        let mut recipients = recipients;
        if let (true, Some(to)) = (archived, &archive.to)
            && !recipients
                .iter()
                .any(|r| r.address.eq_ignore_ascii_case(to))
        {
            // The archive's copy: an envelope recipient only, no header names it.
            recipients.push(EnvelopeRecipient {
                domain: to
                    .rsplit_once('@')
                    .map(|(_, d)| crate::smtp::address::Domain::normalize(d))
                    .unwrap_or_default(),
                address: to.clone(),
            });
        }
        let envelope = Envelope::new(
            &queue_id,
            tx.sender_text(),
            recipients,
            Origin {
                client_ip: self.ip.to_string(),
                helo: self
                    .helo
                    .as_ref()
                    .map(|h| h.name.clone())
                    .unwrap_or_default(),
                auth_user: self.user.clone(),
                trusted: self.trusted_origin(),
            },
            ContentInfo {
                smtputf8: tx.params.smtputf8,
                eight_bit: tx.params.body == Some(crate::smtp::command::Body::EightBitMime),
                size: writer.body_len(),
            },
        );
        let mut envelope = envelope;
        envelope.hold = tx.hold;
        // A message the queue manager will deliver at once may go to the
        // shared journal; a held one, or one with no manager, gets a file.
        let deliver_now = self.ctx.queue.is_some() && !envelope.hold;
        match self
            .ctx
            .store
            .accept(writer, envelope.clone(), deliver_now)
            .await
        {
            Ok(queued) => {
                self.messages += 1;
                self.ctx.checks.count_message(self.ip, self.user.as_deref());
                if let Some(q) = &self.ctx.queue {
                    q.notify_queued(queue_id.clone(), queued);
                }
                self.emit(Event::MessageAccepted {
                    session: self.id,
                    client: self.ip,
                    queue_id: queue_id.clone(),
                    from: envelope.sender.clone(),
                    rcpts: envelope.recipients.len(),
                    size: envelope.size,
                    tls: self.stream.tls().is_some(),
                    user: self.user.clone(),
                });
                if envelope.hold {
                    self.emit(Event::MessageHeld {
                        queue_id: queue_id.clone(),
                        from: envelope.sender.clone(),
                        recipients: envelope
                            .recipients
                            .iter()
                            .map(|r| r.address.clone())
                            .collect(),
                        source: self.user.clone().unwrap_or_else(|| self.ip.to_string()),
                    });
                }
                Reply::with_text(250, "2.0.0", format!("Ok: queued as {queue_id}"))
            }
            Err(e) => {
                self.refused(&queue_id, MessageRefusal::SpoolFailed, &e.to_string());
                spool_error_reply(&e)
            }
        }
    }
}

fn spool_error_reply(e: &io::Error) -> Reply {
    if e.kind() == io::ErrorKind::StorageFull || e.raw_os_error() == Some(libc::ENOSPC) {
        reply::SPOOL_FULL
    } else {
        reply::SPOOL_FAILED
    }
}
