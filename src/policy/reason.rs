//! Why the policy refuses: a typed reason per rule, and the one place where
//! each reason becomes its SMTP reply. Logs, events, metrics labels and
//! `explain` all read the same value.

use crate::smtp::reply::{self, Reply};
use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum RefuseReason {
    /// The connection filter (`[access]`) keeps this client out.
    Filtered {
        rule: String,
    },
    /// Relaying needs AUTH from this client (a `required` range, an excluded
    /// address, or no range at all).
    NeedsAuth,
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
    /// `<postmaster>` as a recipient, but no inbound domain receives it.
    NoPostmaster,
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
        }
    }

    /// A short stable name, for metrics labels and log fields.
    pub fn name(&self) -> &'static str {
        match self {
            RefuseReason::Filtered { .. } => "filtered",
            RefuseReason::NeedsAuth => "needs_auth",
            RefuseReason::NetworkDenied => "network_denied",
            RefuseReason::ListenerNeedsAuth => "listener_needs_auth",
            RefuseReason::AuthNeedsTls => "auth_needs_tls",
            RefuseReason::HiddenRoute { .. } => "hidden_route",
            RefuseReason::SenderNeedsDomain => "sender_needs_domain",
            RefuseReason::NullRecipient => "null_recipient",
            RefuseReason::NoPostmaster => "no_postmaster",
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
            RefuseReason::NoPostmaster => {
                f.write_str("<postmaster> with no inbound domain configured")
            }
        }
    }
}
