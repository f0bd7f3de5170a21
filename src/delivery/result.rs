//! The delivery code's ways of making an `AttemptResult` (defined in the
//! leaf module `attempt`): from a next hop's reply, from a decision of ours
//! about a next hop, and from what the SMTP client ran into.

use super::client::{ClientError, ServerReply};
use crate::attempt::EnhancedStatus;
use crate::attempt::split_enhanced;
pub use crate::attempt::{AttemptResult, Stage, TlsPolicyKind, TlsPolicyOutcome};

impl AttemptResult {
    /// A reply of the next hop `remote` at `stage`.
    pub fn reply(stage: Stage, reply: &ServerReply, remote: &str) -> AttemptResult {
        let text = reply.text.replace('\n', " / ");
        let (enhanced, rest) = split_enhanced(&text);
        AttemptResult {
            stage,
            code: Some(reply.code),
            enhanced,
            remote: Some(remote.to_string()),
            remote_ip: None,
            tls_policy: None,
            text: rest,
        }
    }

    /// Our own decision about sending to `next_hop` (it lacks SMTPUTF8, its
    /// SIZE is too small): no reply code and no remote, so that a report
    /// never presents it as the next hop's answer; the hop is named in the text.
    pub fn local_about(stage: Stage, decided: &ServerReply, next_hop: &str) -> AttemptResult {
        let (enhanced, rest) = split_enhanced(&decided.text);
        let enhanced = enhanced.unwrap_or(if decided.is_permanent() {
            EnhancedStatus::new(5, 0, 0)
        } else {
            EnhancedStatus::new(4, 0, 0)
        });
        AttemptResult::local(
            stage,
            enhanced,
            format!("{rest} (decided here, next hop {next_hop})"),
        )
    }

    /// What the SMTP client ran into with `remote`.
    pub fn client_error(e: &ClientError, remote: &str) -> AttemptResult {
        if let ClientError::Rejected { stage, reply } = e {
            return AttemptResult::reply(stage.stage(), reply, remote);
        }
        let (stage, enhanced) = match e {
            ClientError::Connect { .. } => (Stage::Connect, EnhancedStatus::new(4, 4, 1)),
            ClientError::Timeout(step) => (step.stage(), EnhancedStatus::new(4, 4, 2)),
            ClientError::Io(_) => (Stage::Session, EnhancedStatus::new(4, 4, 2)),
            ClientError::Protocol(_) => (Stage::Session, EnhancedStatus::new(4, 5, 0)),
            ClientError::TlsUnavailable(_) | ClientError::TlsFailed(_) => {
                (Stage::StartTls, EnhancedStatus::new(4, 7, 5))
            }
            ClientError::AuthUnavailable(_) => (Stage::Auth, EnhancedStatus::new(4, 7, 0)),
            ClientError::Rejected { .. } => unreachable!("handled above"),
        };
        AttemptResult {
            stage,
            code: None,
            enhanced: Some(enhanced),
            remote: Some(remote.to_string()),
            remote_ip: None,
            tls_policy: None,
            text: e.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::client::Step;

    #[test]
    fn replies_become_fields() {
        let r = AttemptResult::reply(
            Stage::RcptTo,
            &ServerReply {
                code: 550,
                text: "5.1.1 <x@y>: no such user".into(),
                step: Step::RcptTo,
                local: false,
            },
            "mx.example.net",
        );
        assert_eq!(r.code, Some(550));
        assert_eq!(r.enhanced.map(|e| e.to_string()).as_deref(), Some("5.1.1"));
        assert_eq!(r.text, "<x@y>: no such user");
        assert!(r.is_permanent());
        assert_eq!(
            r.to_string(),
            "550 5.1.1 <x@y>: no such user (from mx.example.net)"
        );
        let bare = AttemptResult::reply(
            Stage::Data,
            &ServerReply {
                code: 451,
                text: "try later".into(),
                step: Step::EndOfData,
                local: false,
            },
            "h",
        );
        assert_eq!(
            (bare.status().to_string(), bare.enhanced),
            ("4.0.0".into(), None)
        );
    }

    #[test]
    fn client_errors_name_their_stage() {
        let e = ClientError::Rejected {
            stage: Step::MailFrom,
            reply: ServerReply {
                code: 553,
                text: "5.7.1 sender refused".into(),
                step: Step::MailFrom,
                local: false,
            },
        };
        let r = AttemptResult::client_error(&e, "smart.example");
        assert_eq!((r.stage, r.code), (Stage::MailFrom, Some(553)));
        let r = AttemptResult::client_error(&ClientError::Timeout(Step::EndOfData), "h");
        assert_eq!(
            (r.stage, r.enhanced.map(|e| e.to_string())),
            (Stage::Data, Some("4.4.2".to_string()))
        );
    }
}
