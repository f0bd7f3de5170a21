//! The per-recipient relay rule: may this client send to this recipient?

use super::Policy;
use crate::config::{ListenerKind, NetworkAuth};
use crate::smtp::address::{Domain, Mailbox, Path};
use crate::smtp::reply::Reply;
use std::net::IpAddr;

/// What is known of the client when a recipient is judged.
#[derive(Debug, Clone)]
pub struct ClientFacts {
    pub ip: IpAddr,
    /// The authenticated user name, if any.
    pub user: Option<String>,
    pub listener: ListenerKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayVerdict {
    /// Accept this recipient; `mailbox` is the final destination to queue.
    Accept {
        mailbox: Mailbox,
        reason: String,
        trace: Vec<String>,
    },
    Refuse {
        reply: Reply,
        reason: String,
        trace: Vec<String>,
    },
}

/// Whether this client may relay (send to domains that are not ours), and why.
fn may_relay(
    policy: &Policy,
    client: &ClientFacts,
    trace: &mut Vec<String>,
) -> Result<String, (Reply, String)> {
    let m = policy.networks.lookup(client.ip);
    trace.extend(m.trace.iter().cloned());
    match (m.auth, &client.user) {
        (NetworkAuth::Deny, _) => Err((
            Reply::new(
                554,
                "5.7.1",
                "Relay access denied: your network may not relay through this server",
            ),
            "client network has auth = \"deny\"".into(),
        )),
        (_, Some(user)) => Ok(format!("authenticated as {user}")),
        (NetworkAuth::None, None) => Ok(match m.range {
            Some(r) => format!("trusted network {r} (auth = \"none\")"),
            None => "trusted network".into(),
        }),
        (NetworkAuth::Required, None) => Err((
            Reply::new(
                554,
                "5.7.1",
                "Relay access denied: authenticate first to send to other domains",
            ),
            "not authenticated and the client network requires AUTH to relay".into(),
        )),
    }
}

fn is_inbound(policy: &Policy, mailbox: &Mailbox) -> bool {
    matches!(&mailbox.domain, Domain::Name(d) if policy.inbound_domains.contains(d))
}

/// Decides one recipient. Source routes are already stripped by the parser,
/// so `path` names the final destination.
pub fn decide_recipient(policy: &Policy, client: &ClientFacts, path: &Path) -> RelayVerdict {
    let mut trace = Vec::new();
    let mailbox = match path {
        Path::Null => {
            return RelayVerdict::Refuse {
                reply: Reply::new(553, "5.1.3", "Recipient address rejected: empty address"),
                reason: "null recipient".into(),
                trace,
            };
        }
        Path::Postmaster => match &policy.postmaster_domain {
            Some(d) => {
                trace.push(format!(
                    "<postmaster> goes to postmaster@{d} (first inbound domain)"
                ));
                Mailbox {
                    local: "postmaster".into(),
                    domain: Domain::Name(d.clone()),
                }
            }
            None => {
                return RelayVerdict::Refuse {
                    reply: Reply::new(
                        550,
                        "5.1.1",
                        "No local postmaster: this relay has no inbound domains",
                    ),
                    reason: "<postmaster> with no inbound domain configured".into(),
                    trace,
                };
            }
        },
        Path::Mailbox(m) => m.clone(),
    };

    if is_inbound(policy, &mailbox) {
        trace.push(format!("{} is an inbound domain", mailbox.domain));
        if let Some(form) = mailbox.hidden_route() {
            trace.push(format!(
                "local part uses {form}, which could route to another destination"
            ));
            return match may_relay(policy, client, &mut trace) {
                Ok(why) => {
                    trace.push(format!("allowed: the client may relay anyway ({why})"));
                    RelayVerdict::Accept {
                        mailbox,
                        reason: why,
                        trace,
                    }
                }
                Err((_, why)) => RelayVerdict::Refuse {
                    reply: Reply::with_text(
                        550,
                        "5.7.1",
                        format!(
                            "Address form not accepted: {form} could route to another destination"
                        ),
                    ),
                    reason: format!("hidden route ({form}); {why}"),
                    trace,
                },
            };
        }
        return RelayVerdict::Accept {
            mailbox,
            reason: "inbound domain".into(),
            trace,
        };
    }

    trace.push(format!(
        "{} is not an inbound domain: this is relaying",
        mailbox.domain
    ));
    match may_relay(policy, client, &mut trace) {
        Ok(why) => RelayVerdict::Accept {
            mailbox,
            reason: why,
            trace,
        },
        Err((reply, why)) => RelayVerdict::Refuse {
            reply,
            reason: why,
            trace,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::smtp::address::parse_path;

    fn policy() -> Policy {
        Policy::from_config(
            &Config::parse(
                r#"
                [[network]]
                range = "192.168.1.0/24"
                auth = "none"
                exclude = ["192.168.1.1"]
                [[network]]
                range = "10.0.0.0/8"
                auth = "required"
                [[network]]
                range = "172.16.0.0/12"
                auth = "deny"
                [relay]
                inbound_domains = ["Example.LAN"]
                "#,
                "t",
            )
            .unwrap(),
        )
    }

    fn verdict(ip: &str, user: Option<&str>, rcpt: &str) -> bool {
        let client = ClientFacts {
            ip: ip.parse().unwrap(),
            user: user.map(str::to_string),
            listener: ListenerKind::Smtp,
        };
        let (path, _) = parse_path(rcpt, true).unwrap();
        matches!(
            decide_recipient(&policy(), &client, &path),
            RelayVerdict::Accept { .. }
        )
    }

    #[test]
    fn matrix() {
        // (client, user, recipient, accepted?)
        let cases = [
            ("192.168.1.20", None, "<x@elsewhere.example>", true),
            ("192.168.1.1", None, "<x@elsewhere.example>", false),
            ("192.168.1.1", Some("bob"), "<x@elsewhere.example>", true),
            ("10.1.1.1", None, "<x@elsewhere.example>", false),
            ("10.1.1.1", Some("bob"), "<x@elsewhere.example>", true),
            ("172.16.1.1", Some("bob"), "<x@elsewhere.example>", false),
            ("203.0.113.9", None, "<x@elsewhere.example>", false),
            ("203.0.113.9", Some("bob"), "<x@elsewhere.example>", true),
            ("203.0.113.9", None, "<x@example.lan>", true),
            ("203.0.113.9", None, "<x@EXAMPLE.lan.>", true),
            ("172.16.1.1", None, "<x@example.lan>", true),
        ];
        for (ip, user, rcpt, expect) in cases {
            assert_eq!(verdict(ip, user, rcpt), expect, "{ip} {user:?} {rcpt}");
        }
    }

    #[test]
    fn hidden_destinations_never_relay_for_outsiders() {
        for rcpt in [
            "<victim%elsewhere.example@example.lan>",
            "<elsewhere.example!victim@example.lan>",
            "<\"victim@elsewhere.example\"@example.lan>",
            "<@example.lan:victim@elsewhere.example>",
            "<victim@[192.0.2.1]>",
            "<victim@example.lan.evil.example>",
        ] {
            assert!(!verdict("203.0.113.9", None, rcpt), "{rcpt}");
            assert!(!verdict("192.168.1.1", None, rcpt), "{rcpt}");
        }
        assert!(verdict(
            "192.168.1.20",
            None,
            "<victim%elsewhere.example@example.lan>"
        ));
    }
}
