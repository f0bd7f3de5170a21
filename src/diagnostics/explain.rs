//! `explain`: the path the server would take for one client and envelope,
//! stage by stage — connection filter, network range, exclusions, listener
//! kind, AUTH, the sender, each recipient — with the final verdict and the
//! exact reply, computed by the server's own parser and staged policy.

use crate::config::{Config, ListenerKind};
use crate::policy::{ClientFacts, Policy, Stage, Step};
use crate::smtp::command::{self, Command, Unparsed};
use crate::smtp::reply::{self, Reply};
use serde::Serialize;
use std::net::{IpAddr, SocketAddr};

/// The client and envelope to explain.
#[derive(Debug, Clone)]
pub struct Question {
    pub ip: IpAddr,
    /// The listener the client connects to; the first configured one when absent.
    pub listener: Option<SocketAddr>,
    pub helo: String,
    /// Authenticate as this user (the password is taken to be right).
    pub auth: Option<String>,
    /// STARTTLS done before AUTH and MAIL.
    pub tls: bool,
    /// MAIL FROM carries SMTPUTF8 (UTF-8 addresses allowed).
    pub smtputf8: bool,
    pub from: String,
    pub to: Vec<String>,
    /// What the anti-spam checks found (see `gather`); empty when not looked up.
    pub checks: crate::policy::CheckFacts,
    /// Recipient verification, per recipient of `to`.
    pub recipient_checks: Vec<Option<crate::policy::Lookup>>,
}

/// Does the lookups the server would do for this client and envelope (DNS
/// lists, reverse DNS, HELO, sender domain, recipient verification) with the
/// configured resolver, and puts what they found into the question.
pub async fn gather(config: &Config, q: &mut Question) {
    let resolver = crate::dns::Resolver::from_config(&config.dns).ok();
    let checks = crate::checks::Checks::new(config, resolver);
    let ip = q.ip.to_canonical();
    if let Some(pending) = checks.start_connect_lookups(ip)
        && let Ok(found) = pending.await
    {
        q.checks.lists = found.lists;
        q.checks.reverse_dns = found.reverse_dns;
    }
    q.checks.helo = checks.helo(&q.helo, ip).await;
    if let Ok(Command::Mail {
        path: crate::smtp::address::Path::Mailbox(m),
        ..
    }) = command::parse(&mail_line(q))
        && let crate::smtp::address::Domain::Name(d) = &m.domain
    {
        q.checks.sender_domain = checks.sender_domain(d).await;
    }
    let policy = Policy::from_config(config);
    q.recipient_checks.clear();
    for to in &q.to {
        let found = match command::parse(&format!("RCPT TO:{}", bracketed(to))) {
            Ok(Command::Rcpt {
                path: crate::smtp::address::Path::Mailbox(m),
            }) if policy.is_inbound(&m) => {
                checks
                    .verify_recipient(&m.domain.to_string(), &m.to_string())
                    .await
            }
            _ => None,
        };
        q.recipient_checks.push(found);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Accept,
    Refuse,
}

#[derive(Debug, Clone, Serialize)]
pub struct Explanation {
    pub verdict: Verdict,
    /// The reply that ends it: the refusal, or the last recipient's 250.
    pub reply: String,
    pub steps: Vec<Step>,
    /// Where each accepted recipient's mail would go, and why.
    pub routes: Vec<RouteChoice>,
}

/// The next hop of one recipient, as delivery would choose it now.
#[derive(Debug, Clone, Serialize)]
pub struct RouteChoice {
    pub recipient: String,
    /// "profile \"m365\"", "host relay.lan:25", "MX of example.org".
    pub destination: String,
    /// The profile's name, when it goes through one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    pub why: String,
}

/// Answers the question with the server's own code.
pub fn explain(config: &Config, q: &Question) -> Explanation {
    let policy = Policy::from_config(config);
    let mut steps = Vec::new();
    let note = |steps: &mut Vec<Step>, stage, text: String| steps.push(Step { stage, text });
    let kind = listener_kind(config, q.listener, &mut steps);
    let mut facts = ClientFacts::new(q.ip, kind);
    facts.tls |= q.tls;
    facts.smtputf8 = q.smtputf8;
    facts.checks = q.checks.clone();
    let refuse = |steps: Vec<Step>, r: Reply| Explanation {
        verdict: Verdict::Refuse,
        reply: r.to_wire().trim_end().to_string(),
        steps,
        routes: Vec::new(),
    };

    let connect = policy.connect(&facts);
    steps.extend(connect.steps.iter().cloned());
    if let Some(r) = connect.refusal_reply() {
        return refuse(steps, r);
    }
    if kind == ListenerKind::Smtps {
        note(
            &mut steps,
            Stage::Connect,
            "implicit TLS (smtps listener)".into(),
        );
    } else if q.tls {
        note(
            &mut steps,
            Stage::Connect,
            "the client starts TLS with STARTTLS".into(),
        );
    }
    match command::parse(&format!("EHLO {}", q.helo)) {
        Ok(_) => steps.extend(policy.helo(&facts, &q.helo).steps),
        Err(Unparsed::Reply(r)) => return refuse(steps, r),
        Err(Unparsed::Http) => return refuse(steps, reply::HTTP_REFUSED),
    }
    if let Some(user) = &q.auth {
        let auth = policy.auth(&facts);
        steps.extend(auth.steps.iter().cloned());
        match auth.refusal_reply() {
            Some(r) => note(
                &mut steps,
                Stage::Auth,
                format!(
                    "AUTH as {user} would be answered {}; going on unauthenticated",
                    r.to_wire().trim_end()
                ),
            ),
            None => match user_known(config, user) {
                Ok(true) => {
                    note(
                        &mut steps,
                        Stage::Auth,
                        format!("authenticated as {user} (password taken as right)"),
                    );
                    facts.user = Some(user.clone());
                }
                Ok(false) => note(
                    &mut steps,
                    Stage::Auth,
                    format!(
                        "no user {user} in the users file: AUTH would fail (535 5.7.8); going on unauthenticated"
                    ),
                ),
                Err(e) => note(
                    &mut steps,
                    Stage::Auth,
                    format!("users file unreadable ({e}): AUTH would fail (454 4.7.0)"),
                ),
            },
        }
    }

    let sender = match command::parse(&mail_line(q)) {
        Ok(Command::Mail { path, .. }) => path,
        Ok(_) => return refuse(steps, reply::SYNTAX_ERROR),
        Err(Unparsed::Reply(r)) => {
            note(
                &mut steps,
                Stage::Mail,
                format!("the sender does not parse: {}", r.text),
            );
            return refuse(steps, r);
        }
        Err(Unparsed::Http) => return refuse(steps, reply::HTTP_REFUSED),
    };
    facts.sender = Some(match &sender {
        crate::smtp::address::Path::Mailbox(m) => m.to_string(),
        _ => String::new(),
    });
    let mail = policy.mail(&facts, &sender);
    steps.extend(mail.steps.iter().cloned());
    if let Some(r) = mail.refusal_reply() {
        return refuse(steps, r);
    }

    let mut last = reply::RECIPIENT_OK;
    let mut routes = Vec::new();
    for (i, to) in q.to.iter().enumerate() {
        facts.checks.recipient = q.recipient_checks.get(i).cloned().flatten();
        let path = match command::parse(&format!("RCPT TO:{}", bracketed(to))) {
            Ok(Command::Rcpt { path }) => path,
            Ok(_) => return refuse(steps, reply::SYNTAX_ERROR),
            Err(Unparsed::Reply(r)) => {
                note(
                    &mut steps,
                    Stage::Rcpt,
                    format!("the recipient {to} does not parse: {}", r.text),
                );
                return refuse(steps, r);
            }
            Err(Unparsed::Http) => return refuse(steps, reply::HTTP_REFUSED),
        };
        let rcpt = policy.rcpt(&facts, &path);
        steps.extend(rcpt.steps.iter().cloned());
        if let Some(r) = rcpt.refusal_reply() {
            return refuse(steps, r);
        }
        last = reply::RECIPIENT_OK;
        let choice = route_of(config, &facts, to);
        note(
            &mut steps,
            Stage::Rcpt,
            format!(
                "{to} would be delivered to {} ({})",
                choice.destination, choice.why
            ),
        );
        routes.push(choice);
    }
    // The DATA stage, for a client that waits for the go-ahead (whether
    // content sent early would be refused is said in its step).
    let data = policy.data(&facts, false);
    steps.extend(data.steps.iter().cloned());
    if let Some(r) = data.refusal_reply() {
        return refuse(steps, r);
    }
    Explanation {
        verdict: Verdict::Accept,
        reply: last.to_wire().trim_end().to_string(),
        steps,
        routes,
    }
}

/// The route delivery would choose for `to` from this client and sender.
fn route_of(config: &Config, facts: &ClientFacts, to: &str) -> RouteChoice {
    use crate::delivery::route::{self, Destination, RouteFacts};
    let route_facts = RouteFacts {
        sender: facts.sender.as_deref().unwrap_or_default(),
        user: facts.user.as_deref(),
        client: Some(facts.ip),
    };
    match route::decide(to, &route_facts, config) {
        Ok(routed) => RouteChoice {
            recipient: to.to_string(),
            profile: match &routed.destination {
                Destination::Profile(name) => Some(name.clone()),
                _ => None,
            },
            destination: routed.destination.to_string(),
            why: routed.why,
        },
        Err(route::RouteError::Permanent(r) | route::RouteError::Temporary(r)) => RouteChoice {
            recipient: to.to_string(),
            destination: "nowhere".into(),
            profile: None,
            why: r.text,
        },
    }
}

/// The kind of the listener at `addr` (or the first one), noted as a step.
fn listener_kind(config: &Config, addr: Option<SocketAddr>, steps: &mut Vec<Step>) -> ListenerKind {
    let found = match addr {
        Some(a) => config.listener.iter().find(|l| l.address == a),
        None => config.listener.first(),
    };
    let (kind, text) = match (found, addr) {
        (Some(l), _) => (
            l.kind,
            format!("listener {} ({})", l.address, l.kind.name()),
        ),
        (None, Some(a)) => (
            ListenerKind::Smtp,
            format!("no listener at {a} in the config; judged as an smtp listener"),
        ),
        (None, None) => (
            ListenerKind::Smtp,
            "no listener configured; judged as an smtp listener".into(),
        ),
    };
    steps.push(Step {
        stage: Stage::Connect,
        text,
    });
    kind
}

fn user_known(config: &Config, user: &str) -> Result<bool, String> {
    crate::users::read_users(&config.users_file())
        .map(|u| u.contains_key(user))
        .map_err(|e| e.to_string())
}

/// The MAIL command the client would send.
fn mail_line(q: &Question) -> String {
    let utf8 = if q.smtputf8 { " SMTPUTF8" } else { "" };
    format!("MAIL FROM:{}{utf8}", bracketed(&q.from))
}

/// `a@b` → `<a@b>`; already bracketed paths (and `<>`) are kept as given.
fn bracketed(address: &str) -> String {
    let a = address.trim();
    if a.starts_with('<') {
        a.to_string()
    } else {
        format!("<{a}>")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config::parse(
            r#"
            [[listener]]
            address = "0.0.0.0:25"
            [[listener]]
            address = "0.0.0.0:587"
            kind = "submission"
            [[network]]
            range = "192.168.1.0/24"
            auth = "none"
            exclude = ["192.168.1.1"]
            [relay]
            inbound_domains = ["example.lan"]
            "#,
            "t",
        )
        .unwrap()
    }

    fn ask(ip: &str, listener: Option<&str>, to: &str) -> Explanation {
        explain(
            &config(),
            &Question {
                ip: ip.parse().unwrap(),
                listener: listener.map(|l| l.parse().unwrap()),
                helo: "client.example".into(),
                auth: None,
                tls: false,
                from: "a@client.example".into(),
                to: vec![to.into()],
                checks: Default::default(),
                recipient_checks: Vec::new(),
                smtputf8: false,
            },
        )
    }

    #[test]
    fn the_router_is_refused_and_the_reason_shows() {
        let e = ask("192.168.1.1", None, "x@far.example");
        assert_eq!(e.verdict, Verdict::Refuse);
        assert!(e.reply.starts_with("554 5.7.1"), "{}", e.reply);
        assert!(
            e.steps.iter().any(|s| s.text.contains("excluded")),
            "{:?}",
            e.steps
        );
        let e = ask("192.168.1.20", None, "x@far.example");
        assert_eq!(e.verdict, Verdict::Accept);
        assert!(e.reply.starts_with("250 2.1.5"));
    }

    #[test]
    fn submission_needs_auth_and_bad_addresses_get_the_parser_reply() {
        let e = ask("192.168.1.20", Some("0.0.0.0:587"), "x@far.example");
        assert_eq!(e.verdict, Verdict::Refuse);
        assert!(e.reply.starts_with("530 5.7.0"), "{}", e.reply);
        let e = ask("203.0.113.5", None, "not an address");
        assert_eq!(e.verdict, Verdict::Refuse);
        assert!(
            e.reply.starts_with("553") || e.reply.starts_with("501"),
            "{}",
            e.reply
        );
    }
}
