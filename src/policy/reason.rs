//! Why the policy refuses: a typed reason per rule, and the one place where
//! each reason becomes its SMTP reply. Logs, events, metrics labels and
//! `explain` all read the same value.

use crate::smtp::reply::{self, Reply};
use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RefuseReason {
    /// The connection filter (`[access]`) keeps this client out.
    Filtered {
        rule: String,
    },
    /// Relaying needs AUTH from this client (a `required` range, an excluded
    /// address, or no range at all).
    NeedsAuth,
    /// The guard took this trusted address's trust moments ago (it looked
    /// like a NAT): relaying without AUTH is deferred while the admin looks.
    TrustWithdrawnRecently,
    /// The client's range has auth = "deny": it never relays.
    NetworkDenied,
    /// A submission or smtps listener takes mail only after AUTH.
    ListenerNeedsAuth,
    /// AUTH would expose the password: no TLS, not loopback, plaintext not allowed.
    AuthNeedsTls,
    /// A local part that could route to a second destination, from a client
    /// that may not relay.
    HiddenRoute {
        form: &'static str,
    },
    /// `<postmaster>` as a sender, which names no domain.
    SenderNeedsDomain,
    NullRecipient,
    /// A UTF-8 recipient in a transaction whose MAIL did not ask for SMTPUTF8.
    Utf8NeedsSmtputf8,
    /// `<postmaster>` as a recipient, but no inbound domain receives it.
    NoPostmaster,
    /// Listed on DNS black lists (the first zone named).
    Dnsbl {
        zone: String,
        reason: Option<String>,
        count: usize,
    },
    /// No reverse DNS, or one that does not resolve back.
    ReverseDns {
        detail: String,
    },
    /// The HELO name does not resolve (to the client).
    Helo {
        detail: String,
    },
    /// The sender's domain cannot receive mail.
    SenderDomain {
        detail: String,
    },
    /// A check could not get its DNS answer, and on_dns_error = "tempfail".
    DnsTempfail {
        check: &'static str,
        detail: String,
    },
    /// `[lists] reject_senders`.
    RejectedSender,
    /// `[lists] reject_recipients`.
    RejectedRecipient,
    /// `[lists] allow_senders` is set and does not name this sender.
    SenderNotAllowed,
    /// Recipient verification says there is no such user.
    UnknownRecipient {
        detail: String,
    },
    /// Recipient verification could not get an answer now.
    RecipientUnverified {
        detail: String,
    },
    /// A `[limits]` rate was reached.
    RateLimited {
        limit: &'static str,
        per_hour: u64,
    },
    /// Message content sent before the 354 by a client neither trusted nor authenticated.
    UnauthPipelining,
    /// A `[[policy]]` rule's `allowed_senders` does not name this sender.
    PolicySender {
        rule: usize,
        allowed: String,
    },
    /// A `[[policy]]` rule's `allowed_recipient_domains` does not name this domain.
    PolicyRecipient {
        rule: usize,
        allowed: String,
    },
    /// A `[[policy]]` rule's `messages_per_hour` was reached.
    PolicyRate {
        rule: usize,
        per_hour: u64,
    },
}

impl RefuseReason {
    /// The SMTP reply for this reason.
    pub fn reply(&self) -> Reply {
        match self {
            RefuseReason::Filtered { .. } => reply::CONNECTION_FILTERED,
            RefuseReason::NeedsAuth => Reply::new(
                554,
                "5.7.1",
                "Relay access denied: authenticate first to send to other domains",
            ),
            RefuseReason::NetworkDenied => Reply::new(
                554,
                "5.7.1",
                "Relay access denied: your network may not relay through this server",
            ),
            RefuseReason::TrustWithdrawnRecently => Reply::new(
                451,
                "4.7.1",
                "Relaying from this address is suspended for now: it looked like many clients behind one address (NAT); try again later or authenticate",
            ),
            RefuseReason::Utf8NeedsSmtputf8 => Reply::new(
                553,
                "5.6.7",
                "UTF-8 recipient needs MAIL FROM with SMTPUTF8",
            ),
            RefuseReason::ListenerNeedsAuth => reply::AUTH_REQUIRED,
            RefuseReason::AuthNeedsTls => reply::AUTH_NEEDS_TLS,
            RefuseReason::HiddenRoute { form } => Reply::with_text(
                550,
                "5.7.1",
                format!("Address form not accepted: {form} could route to another destination"),
            ),
            RefuseReason::SenderNeedsDomain => {
                Reply::new(553, "5.1.7", "Sender address rejected: needs a domain")
            }
            RefuseReason::NullRecipient => {
                Reply::new(553, "5.1.3", "Recipient address rejected: empty address")
            }
            RefuseReason::NoPostmaster => Reply::new(
                550,
                "5.1.1",
                "No local postmaster: this relay has no inbound domains",
            ),
            RefuseReason::Dnsbl { zone, reason, .. } => Reply::with_text(
                554,
                "5.7.1",
                match reason {
                    Some(r) => format!("Service unavailable; client blocked using {zone}: {r}"),
                    None => format!("Service unavailable; client blocked using {zone}"),
                },
            ),
            RefuseReason::ReverseDns { detail } => {
                Reply::with_text(550, "5.7.25", format!("Reverse DNS check failed: {detail}"))
            }
            RefuseReason::Helo { detail } => {
                Reply::with_text(550, "5.7.1", format!("HELO name check failed: {detail}"))
            }
            RefuseReason::SenderDomain { detail } => {
                Reply::with_text(550, "5.1.8", format!("Sender address rejected: {detail}"))
            }
            RefuseReason::DnsTempfail { check, .. } => Reply::with_text(
                451,
                "4.4.3",
                format!("Temporary DNS failure during the {check} check; try again later"),
            ),
            RefuseReason::RejectedSender => {
                Reply::new(550, "5.7.1", "Sender address rejected: not accepted here")
            }
            RefuseReason::RejectedRecipient => Reply::new(
                550,
                "5.7.1",
                "Recipient address rejected: not accepted here",
            ),
            RefuseReason::SenderNotAllowed => Reply::new(
                550,
                "5.7.1",
                "Sender address rejected: this sender may not send mail through this relay",
            ),
            RefuseReason::UnknownRecipient { .. } => Reply::new(
                550,
                "5.1.1",
                "Recipient address rejected: no such user here",
            ),
            RefuseReason::RecipientUnverified { .. } => Reply::new(
                451,
                "4.4.3",
                "Recipient cannot be verified now; try again later",
            ),
            RefuseReason::UnauthPipelining => reply::UNAUTH_PIPELINING,
            RefuseReason::RateLimited { limit, per_hour } => Reply::with_text(
                450,
                "4.7.1",
                format!("Rate limit reached ({per_hour} {limit} an hour); try again later"),
            ),
            RefuseReason::PolicySender { rule, allowed } => Reply::with_text(
                550,
                "5.7.1",
                format!(
                    "Sender address rejected: not allowed for this login (policy[{rule}].allowed_senders: {allowed})"
                ),
            ),
            RefuseReason::PolicyRecipient { rule, allowed } => Reply::with_text(
                550,
                "5.7.1",
                format!(
                    "Recipient address rejected: this login may send only to {allowed} (policy[{rule}].allowed_recipient_domains)"
                ),
            ),
            RefuseReason::PolicyRate { rule, per_hour } => Reply::with_text(
                450,
                "4.7.1",
                format!(
                    "Rate limit reached ({per_hour} messages an hour, policy[{rule}].messages_per_hour); try again later"
                ),
            ),
        }
    }

    /// A short stable name, for metrics labels and log fields.
    pub fn name(&self) -> &'static str {
        match self {
            RefuseReason::Filtered { .. } => "filtered",
            RefuseReason::NeedsAuth => "needs_auth",
            RefuseReason::TrustWithdrawnRecently => "trust_withdrawn",
            RefuseReason::NetworkDenied => "network_denied",
            RefuseReason::ListenerNeedsAuth => "listener_needs_auth",
            RefuseReason::AuthNeedsTls => "auth_needs_tls",
            RefuseReason::HiddenRoute { .. } => "hidden_route",
            RefuseReason::SenderNeedsDomain => "sender_needs_domain",
            RefuseReason::NullRecipient => "null_recipient",
            RefuseReason::Utf8NeedsSmtputf8 => "utf8_needs_smtputf8",
            RefuseReason::NoPostmaster => "no_postmaster",
            RefuseReason::Dnsbl { .. } => "dnsbl",
            RefuseReason::ReverseDns { .. } => "reverse_dns",
            RefuseReason::Helo { .. } => "helo",
            RefuseReason::SenderDomain { .. } => "sender_domain",
            RefuseReason::DnsTempfail { .. } => "dns_tempfail",
            RefuseReason::RejectedSender => "rejected_sender",
            RefuseReason::RejectedRecipient => "rejected_recipient",
            RefuseReason::SenderNotAllowed => "sender_not_allowed",
            RefuseReason::UnknownRecipient { .. } => "unknown_recipient",
            RefuseReason::RecipientUnverified { .. } => "recipient_unverified",
            RefuseReason::RateLimited { .. } => "rate_limited",
            RefuseReason::UnauthPipelining => "unauth_pipelining",
            RefuseReason::PolicySender { .. } => "policy_sender",
            RefuseReason::PolicyRecipient { .. } => "policy_recipient",
            RefuseReason::PolicyRate { .. } => "policy_rate",
        }
    }
}

impl std::fmt::Display for RefuseReason {
    /// The reason in words, for the log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RefuseReason::Filtered { rule } => write!(f, "connection filter: {rule}"),
            RefuseReason::NeedsAuth => {
                f.write_str("not authenticated, and relaying from this address needs AUTH")
            }
            RefuseReason::TrustWithdrawnRecently => f.write_str(
                "the guard withdrew this trusted address's trust moments ago (it looked like a NAT): deferred while the admin checks; `portcullis guard trust IP` if it is one office host",
            ),
            RefuseReason::NetworkDenied => f.write_str("client network has auth = \"deny\""),
            RefuseReason::ListenerNeedsAuth => {
                f.write_str("this listener takes mail only after AUTH")
            }
            RefuseReason::AuthNeedsTls => {
                f.write_str("AUTH offered only over TLS or from loopback")
            }
            RefuseReason::HiddenRoute { form } => {
                write!(f, "hidden route ({form}) from a client that may not relay")
            }
            RefuseReason::SenderNeedsDomain => f.write_str("<postmaster> as a sender"),
            RefuseReason::NullRecipient => f.write_str("null recipient"),
            RefuseReason::Utf8NeedsSmtputf8 => {
                f.write_str("a UTF-8 recipient, but MAIL did not ask for SMTPUTF8")
            }
            RefuseReason::NoPostmaster => {
                f.write_str("<postmaster> with no inbound domain configured")
            }
            RefuseReason::Dnsbl {
                zone,
                reason,
                count,
            } => write!(
                f,
                "listed on {count} DNS black list(s), first {zone}{}",
                reason
                    .as_deref()
                    .map(|r| format!(" ({r})"))
                    .unwrap_or_default()
            ),
            RefuseReason::ReverseDns { detail } => write!(f, "reverse DNS: {detail}"),
            RefuseReason::Helo { detail } => write!(f, "HELO name: {detail}"),
            RefuseReason::SenderDomain { detail } => write!(f, "sender domain: {detail}"),
            RefuseReason::DnsTempfail { check, detail } => write!(
                f,
                "{check} check: DNS failure ({detail}); on_dns_error = \"tempfail\""
            ),
            RefuseReason::RejectedSender => f.write_str("sender listed in lists.reject_senders"),
            RefuseReason::RejectedRecipient => {
                f.write_str("recipient listed in lists.reject_recipients")
            }
            RefuseReason::SenderNotAllowed => {
                f.write_str("relayed mail from a sender not in lists.allow_senders")
            }
            RefuseReason::UnknownRecipient { detail } => {
                write!(f, "recipient verification: {detail}")
            }
            RefuseReason::RecipientUnverified { detail } => {
                write!(f, "recipient verification failed for now: {detail}")
            }
            RefuseReason::RateLimited { limit, per_hour } => {
                write!(f, "limits: {per_hour} {limit} an hour reached")
            }
            RefuseReason::UnauthPipelining => {
                f.write_str("message content sent before the 354 (unauthenticated pipelining)")
            }
            RefuseReason::PolicySender { rule, allowed } => write!(
                f,
                "sender not in policy[{rule}].allowed_senders ({allowed})"
            ),
            RefuseReason::PolicyRecipient { rule, allowed } => write!(
                f,
                "recipient domain not in policy[{rule}].allowed_recipient_domains ({allowed})"
            ),
            RefuseReason::PolicyRate { rule, per_hour } => write!(
                f,
                "policy[{rule}].messages_per_hour ({per_hour}) reached"
            ),
        }
    }
}
