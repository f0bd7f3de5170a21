//! The staged decision: connect → HELO → AUTH → MAIL → RCPT → DATA, each a pure call
//! over one set of client facts, returning a typed verdict and the steps that
//! led to it (OpenSMTPD's ruleset_match is the model). The session gathers the
//! facts and asks; `explain`, the audit and the self-test ask exactly the same
//! functions, so there is one copy of the rules.

use super::{CheckFacts, Lookup, Policy, RefuseReason};
use crate::config::OnDnsError;
use crate::config::{ListenerKind, NetworkAuth};
use crate::smtp::address::{Domain, Mailbox, Path};
use crate::smtp::reply::Reply;
use serde::Serialize;
use std::net::IpAddr;

/// What is known of the client at the moment of a decision.
#[derive(Debug, Clone)]
pub struct ClientFacts {
    pub ip: IpAddr,
    pub listener: ListenerKind,
    /// The session runs over TLS (STARTTLS done, or an smtps listener).
    pub tls: bool,
    /// The authenticated user name, if any.
    pub user: Option<String>,
    /// The HELO/EHLO name, once given.
    pub helo: Option<String>,
    /// What the anti-spam checks found so far.
    pub checks: CheckFacts,
    /// The envelope sender of the open transaction (`local@domain`; empty for `<>`).
    pub sender: Option<String>,
    /// The guard's NAT sentinel withdrew this address's trust.
    pub distrusted: bool,
    /// ... and did so moments ago (`guard.nat_tempfail`): relaying without
    /// AUTH is deferred (451) rather than refused while the admin looks.
    pub distrusted_recently: bool,
    /// The open transaction's MAIL asked for SMTPUTF8: UTF-8 addresses may follow.
    pub smtputf8: bool,
}

impl ClientFacts {
    pub fn new(ip: IpAddr, listener: ListenerKind) -> ClientFacts {
        ClientFacts {
            ip: ip.to_canonical(),
            listener,
            tls: listener == ListenerKind::Smtps,
            user: None,
            helo: None,
            checks: CheckFacts::default(),
            sender: None,
            distrusted: false,
            distrusted_recently: false,
            smtputf8: false,
        }
    }
}

/// The stage of the SMTP dialogue a decision belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    Connect,
    Helo,
    Auth,
    Mail,
    Rcpt,
    Data,
}

/// Where an accepted recipient's mail goes, and on what grounds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// To one of our inbound domains: anyone who may connect may send it.
    Inbound,
    /// Elsewhere: relaying, which this client may do.
    Relay(RelayBasis),
}

/// Why a client may relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayBasis {
    /// It authenticated as this user.
    Authenticated(String),
    /// It connects from a trusted network (`auth = "none"`): the range, when
    /// a configured one decided.
    TrustedNetwork(Option<crate::config::IpRange>),
}

impl std::fmt::Display for RelayBasis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RelayBasis::Authenticated(user) => write!(f, "authenticated as {user}"),
            RelayBasis::TrustedNetwork(Some(r)) => {
                write!(f, "trusted network {r} (auth = \"none\")")
            }
            RelayBasis::TrustedNetwork(None) => f.write_str("trusted network"),
        }
    }
}

/// An accepted recipient: the mailbox to queue and its route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub mailbox: Mailbox,
    pub route: Route,
}

impl Accepted {
    pub fn is_relayed(&self) -> bool {
        matches!(self.route, Route::Relay(_))
    }
}

/// What the guard's flood hold does with a recipient of a flooding source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FloodVerdict {
    /// Goes on (a domain the source usually sends to, or `mode = "log"`).
    Proceed,
    /// Accepted, and the message held in the queue until released.
    Hold,
    /// Refused with 451.
    Refuse,
}

/// One step of a decision, in words, for logs and `explain`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Step {
    pub stage: Stage,
    pub text: String,
}

/// A verdict (`Ok(T)` accepts) and how it was reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision<T> {
    pub verdict: Result<T, RefuseReason>,
    pub steps: Vec<Step>,
}

impl<T> Decision<T> {
    pub fn is_accept(&self) -> bool {
        self.verdict.is_ok()
    }

    /// The reply to a refusal.
    pub fn refusal_reply(&self) -> Option<Reply> {
        self.verdict.as_ref().err().map(RefuseReason::reply)
    }
}

/// Collects steps while a stage is decided.
struct Trace {
    stage: Stage,
    steps: Vec<Step>,
}

impl Trace {
    fn new(stage: Stage) -> Trace {
        Trace {
            stage,
            steps: Vec::new(),
        }
    }
    fn note(&mut self, text: impl Into<String>) {
        self.steps.push(Step {
            stage: self.stage,
            text: text.into(),
        });
    }
    fn accept<T>(mut self, value: T, why: impl Into<String>) -> Decision<T> {
        self.note(why);
        Decision {
            verdict: Ok(value),
            steps: self.steps,
        }
    }
    fn refuse<T>(mut self, reason: RefuseReason) -> Decision<T> {
        self.note(format!("refused: {reason}"));
        Decision {
            verdict: Err(reason),
            steps: self.steps,
        }
    }
}

impl Policy {
    /// Before the banner: the connection filter.
    pub fn connect(&self, client: &ClientFacts) -> Decision<()> {
        let mut t = Trace::new(Stage::Connect);
        t.note(format!(
            "client {} on a {} listener",
            client.ip,
            client.listener.name()
        ));
        let access = self.access.check(client.ip);
        if !access.allowed {
            return t.refuse(RefuseReason::Filtered {
                rule: access.reason,
            });
        }
        t.note(access.reason);
        let m = self.networks.lookup(client.ip);
        for s in m.trace {
            t.note(s);
        }
        t.accept((), "connection accepted")
    }

    /// HELO/EHLO. No rule refuses a name yet; the stage exists so that checks
    /// on it have their place.
    pub fn helo(&self, _client: &ClientFacts, name: &str) -> Decision<()> {
        Trace::new(Stage::Helo).accept((), format!("HELO name {name:?} accepted"))
    }

    /// Whether AUTH may be used here: only where passwords cannot be sniffed
    /// (TLS, loopback) unless the admin allowed plaintext.
    pub fn auth(&self, client: &ClientFacts) -> Decision<()> {
        let t = Trace::new(Stage::Auth);
        if client.tls {
            t.accept((), "AUTH offered: the session is encrypted")
        } else if client.ip.is_loopback() {
            t.accept((), "AUTH offered: the client is on loopback")
        } else if self.allow_plaintext_auth {
            t.accept((), "AUTH offered in clear: auth.allow_plaintext = true")
        } else {
            t.refuse(RefuseReason::AuthNeedsTls)
        }
    }

    /// MAIL FROM: listener rules, then the sender.
    pub fn mail(&self, client: &ClientFacts, sender: &Path) -> Decision<()> {
        let mut t = Trace::new(Stage::Mail);
        if client.listener.requires_auth() {
            match &client.user {
                None => return t.refuse(RefuseReason::ListenerNeedsAuth),
                Some(u) => t.note(format!(
                    "{} listener: authenticated as {u}",
                    client.listener.name()
                )),
            }
        }
        if *sender == Path::Postmaster {
            return t.refuse(RefuseReason::SenderNeedsDomain);
        }
        if let Path::Mailbox(m) = sender
            && self
                .lists
                .reject_senders
                .iter()
                .any(|p| p.matches(&m.to_string()))
        {
            return t.refuse(RefuseReason::RejectedSender);
        }
        if let Err(reason) = self.judge_checks(client, &mut t) {
            return t.refuse(reason);
        }
        if let Err(reason) = self.judge_message_rate(client, &mut t) {
            return t.refuse(reason);
        }
        if let Err(reason) = self.judge_login_sender(client, sender, &mut t) {
            return t.refuse(reason);
        }
        t.accept((), "sender accepted")
    }

    /// The client's `[[policy]]` rule, for MAIL: its allowed senders and its rate.
    fn judge_login_sender(
        &self,
        client: &ClientFacts,
        sender: &Path,
        t: &mut Trace,
    ) -> Result<(), RefuseReason> {
        let Some((i, rule)) = self.login_rule(client) else {
            return Ok(());
        };
        t.note(format!("policy[{i}] applies ({})", rule.describe()));
        let address = match sender {
            Path::Mailbox(m) => m.to_string(),
            _ => String::new(),
        };
        if !rule.sender_allowed(&address, client.user.as_deref()) {
            return Err(RefuseReason::PolicySender {
                rule: i,
                allowed: rule
                    .allowed_senders
                    .iter()
                    .map(|r| r.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        if !rule.allowed_senders.is_empty() {
            t.note(format!("policy[{i}]: sender {address} allowed"));
        }
        if let Some(max) = rule.messages_per_hour {
            let sent = client.checks.rates.messages_under_policy;
            if sent >= max {
                return Err(RefuseReason::PolicyRate {
                    rule: i,
                    per_hour: max,
                });
            }
            t.note(format!("policy[{i}]: {sent} of {max} messages this hour"));
        }
        if let Some(to) = &rule.redirect_to {
            t.note(format!(
                "policy[{i}]: every recipient will be replaced by {to} (originals in {})",
                rule.redirect_header()
            ));
        }
        Ok(())
    }

    /// Whether the anti-spam checks concern this client: not when it
    /// authenticated or is trusted (unless `checks.skip_for_trusted` is off).
    pub fn checks_apply(&self, client: &ClientFacts) -> bool {
        self.checks_apply_traced(client, &mut Trace::new(Stage::Connect))
    }

    /// `checks_apply`, saying why in `t`.
    fn checks_apply_traced(&self, client: &ClientFacts, t: &mut Trace) -> bool {
        if !self.checks.skip_for_trusted {
            return true;
        }
        if let Some(u) = &client.user {
            t.note(format!("anti-spam checks skipped: authenticated as {u}"));
            return false;
        }
        if self.trusts(client.ip, client.distrusted) {
            t.note("anti-spam checks skipped: trusted network");
            return false;
        }
        true
    }

    /// The DNS-based checks' findings, in order: white and black lists,
    /// reverse DNS, HELO name, sender domain.
    fn judge_checks(&self, client: &ClientFacts, t: &mut Trace) -> Result<(), RefuseReason> {
        if !self.checks_apply_traced(client, t) {
            return Ok(());
        }
        let facts = &client.checks;
        let mut whitelisted = false;
        if let Some(lists) = &facts.lists {
            if let Some(zone) = &lists.whitelisted {
                t.note(format!(
                    "listed on the white list {zone}: black lists and reverse DNS skipped"
                ));
                whitelisted = true;
            } else if lists.listed.len() >= self.checks.dnsbl_threshold.max(1) as usize {
                let (zone, reason) = lists.listed[0].clone();
                return Err(RefuseReason::Dnsbl {
                    zone,
                    reason,
                    count: lists.listed.len(),
                });
            } else if !lists.failed.is_empty() {
                self.dns_error("dnsbl", &lists.failed.join(", "), t)?;
            } else if !self.checks.dnsbl.is_empty() {
                t.note(format!(
                    "not listed on {} black list(s)",
                    self.checks.dnsbl.len()
                ));
            }
        }
        if !whitelisted {
            self.judge_lookup("reverse DNS", &facts.reverse_dns, t, |detail| {
                RefuseReason::ReverseDns { detail }
            })?;
        }
        self.judge_lookup("HELO", &facts.helo, t, |detail| RefuseReason::Helo {
            detail,
        })?;
        self.judge_lookup("sender domain", &facts.sender_domain, t, |detail| {
            RefuseReason::SenderDomain { detail }
        })?;
        Ok(())
    }

    fn judge_lookup(
        &self,
        check: &'static str,
        found: &Option<Lookup>,
        t: &mut Trace,
        refuse: impl FnOnce(String) -> RefuseReason,
    ) -> Result<(), RefuseReason> {
        match found {
            None => Ok(()),
            Some(Lookup::Pass(what)) => {
                t.note(format!("{check} check passed: {what}"));
                Ok(())
            }
            Some(Lookup::Fail(why)) => Err(refuse(why.clone())),
            Some(Lookup::DnsError(e)) => self.dns_error(check, e, t),
        }
    }

    fn dns_error(
        &self,
        check: &'static str,
        detail: &str,
        t: &mut Trace,
    ) -> Result<(), RefuseReason> {
        match self.checks.on_dns_error {
            OnDnsError::Tempfail => Err(RefuseReason::DnsTempfail {
                check,
                detail: detail.to_string(),
            }),
            OnDnsError::Accept => {
                t.note(format!(
                    "{check} check: DNS failure ({detail}); passed, as on_dns_error = \"accept\""
                ));
                Ok(())
            }
        }
    }

    /// Whether rate limits count this client (trusted networks only when asked).
    fn limits_apply(&self, client: &ClientFacts) -> bool {
        self.limits.apply_to_trusted || !self.trusts(client.ip, client.distrusted)
    }

    fn judge_message_rate(&self, client: &ClientFacts, t: &mut Trace) -> Result<(), RefuseReason> {
        if !self.limits_apply(client) {
            return Ok(());
        }
        let rates = client.checks.rates;
        if let Some(max) = self.limits.messages_per_hour_per_ip
            && rates.messages_from_ip >= max
        {
            return Err(RefuseReason::RateLimited {
                limit: "messages from this address",
                per_hour: max,
            });
        }
        if let (Some(max), Some(_)) = (self.limits.messages_per_hour_per_user, &client.user)
            && rates.messages_from_user >= max
        {
            return Err(RefuseReason::RateLimited {
                limit: "messages from this user",
                per_hour: max,
            });
        }
        if self.limits.messages_per_hour_per_ip.is_some()
            || self.limits.messages_per_hour_per_user.is_some()
        {
            t.note(format!(
                "rate: {} messages from this address in the last hour",
                rates.messages_from_ip
            ));
        }
        Ok(())
    }

    /// RCPT TO: may this client send to this recipient? Source routes are
    /// already stripped by the parser, so `path` names the final destination.
    /// The accepted value is the mailbox to queue.
    pub fn rcpt(&self, client: &ClientFacts, path: &Path) -> Decision<Accepted> {
        let mut t = Trace::new(Stage::Rcpt);
        let mailbox = match path {
            Path::Null => return t.refuse(RefuseReason::NullRecipient),
            Path::Postmaster => match &self.postmaster_domain {
                Some(d) => {
                    t.note(format!(
                        "<postmaster> goes to postmaster@{d} (first inbound domain)"
                    ));
                    Mailbox {
                        local: "postmaster".into(),
                        domain: Domain::Name(d.clone()),
                    }
                }
                None => return t.refuse(RefuseReason::NoPostmaster),
            },
            Path::Mailbox(m) => m.clone(),
        };
        if mailbox.is_utf8() && !client.smtputf8 {
            return t.refuse(RefuseReason::Utf8NeedsSmtputf8);
        }
        if self
            .lists
            .reject_recipients
            .iter()
            .any(|p| p.matches(&mailbox.to_string()))
        {
            return t.refuse(RefuseReason::RejectedRecipient);
        }
        if let Some((i, rule)) = self.login_rule(client) {
            let domain = mailbox.domain.to_string().to_ascii_lowercase();
            if !rule.recipient_domain_allowed(&domain) {
                return t.refuse(RefuseReason::PolicyRecipient {
                    rule: i,
                    allowed: rule.allowed_recipient_domains.join(", "),
                });
            }
            if !rule.allowed_recipient_domains.is_empty() {
                t.note(format!("policy[{i}]: recipient domain {domain} allowed"));
            }
        }
        if self.limits_apply(client)
            && let Some(max) = self.limits.recipients_per_hour_per_ip
            && client.checks.rates.recipients_from_ip >= max
        {
            return t.refuse(RefuseReason::RateLimited {
                limit: "recipients from this address",
                per_hour: max,
            });
        }
        if self.is_inbound(&mailbox) {
            t.note(format!("{} is an inbound domain", mailbox.domain));
            match &client.checks.recipient {
                Some(Lookup::Fail(detail)) => {
                    return t.refuse(RefuseReason::UnknownRecipient {
                        detail: detail.clone(),
                    });
                }
                Some(Lookup::DnsError(detail)) => {
                    return t.refuse(RefuseReason::RecipientUnverified {
                        detail: detail.clone(),
                    });
                }
                Some(Lookup::Pass(what)) => t.note(format!("recipient verified: {what}")),
                None => {}
            }
            let Some(form) = mailbox.hidden_route() else {
                return t.accept(
                    Accepted {
                        mailbox,
                        route: Route::Inbound,
                    },
                    "accepted for an inbound domain",
                );
            };
            t.note(format!(
                "local part uses {form}, which could route to another destination"
            ));
            return match self.may_relay(client, &mut t) {
                // The domain is ours: its mail is inbound, whatever the form.
                Ok(why) => t.accept(
                    Accepted {
                        mailbox,
                        route: Route::Inbound,
                    },
                    format!("accepted: the client may relay anyway ({why})"),
                ),
                Err(_) => t.refuse(RefuseReason::HiddenRoute { form }),
            };
        }
        t.note(format!(
            "{} is not an inbound domain: this is relaying",
            mailbox.domain
        ));
        match self.may_relay(client, &mut t) {
            Ok(why) => {
                if !self.lists.allow_senders.is_empty()
                    && !client
                        .sender
                        .as_deref()
                        .is_some_and(|s| self.lists.allow_senders.iter().any(|p| p.matches(s)))
                {
                    return t.refuse(RefuseReason::SenderNotAllowed);
                }
                let why_text = format!("relay allowed: {why}");
                t.accept(
                    Accepted {
                        mailbox,
                        route: Route::Relay(why),
                    },
                    why_text,
                )
            }
            Err(reason) => t.refuse(reason),
        }
    }

    /// DATA (or the first BDAT): `early_content` says the client sent the
    /// message before the go-ahead, which RFC 2920 forbids; spam software
    /// does it, so a stranger doing it is refused when
    /// `checks.forbid_unauth_pipelining` is on.
    pub fn data(&self, client: &ClientFacts, early_content: bool) -> Decision<()> {
        let t = Trace::new(Stage::Data);
        if !self.checks.forbid_unauth_pipelining {
            return t.accept((), "DATA accepted");
        }
        if client.user.is_some() || self.trusts(client.ip, client.distrusted) {
            return t.accept(
                (),
                "DATA accepted (content before the go-ahead is tolerated from this client)",
            );
        }
        if early_content {
            return t.refuse(RefuseReason::UnauthPipelining);
        }
        t.accept(
            (),
            "DATA accepted (content sent before the 354 would be refused: checks.forbid_unauth_pipelining)",
        )
    }

    /// What the flood hold does with a recipient of a source the guard
    /// found flooding: mail to a domain the source usually sends to goes
    /// on; the rest as `guard.mode` says.
    pub fn flood(&self, usual_domain: bool) -> FloodVerdict {
        match self.guard_mode {
            _ if usual_domain => FloodVerdict::Proceed,
            crate::config::GuardMode::Hold => FloodVerdict::Hold,
            crate::config::GuardMode::Refuse => FloodVerdict::Refuse,
            crate::config::GuardMode::Log => FloodVerdict::Proceed,
        }
    }

    /// Whether `mailbox` is in one of our inbound domains.
    pub fn is_inbound(&self, mailbox: &Mailbox) -> bool {
        matches!(&mailbox.domain, Domain::Name(d) if self.inbound_domains.contains(d))
    }

    /// Whether this client may relay (send to domains that are not ours), and why.
    fn may_relay(&self, client: &ClientFacts, t: &mut Trace) -> Result<RelayBasis, RefuseReason> {
        let m = self.networks.lookup(client.ip);
        for s in m.trace {
            t.note(s);
        }
        let auth = if client.distrusted && m.auth == NetworkAuth::None {
            t.note("the guard withdrew this address's trust (it carried many clients' traffic): AUTH needed");
            NetworkAuth::Required
        } else {
            m.auth
        };
        match (auth, &client.user) {
            (NetworkAuth::Deny, _) => Err(RefuseReason::NetworkDenied),
            (_, Some(user)) => Ok(RelayBasis::Authenticated(user.clone())),
            (NetworkAuth::None, None) => Ok(RelayBasis::TrustedNetwork(m.range)),
            // Mail from an office host taken for a NAT is retried, not lost.
            (NetworkAuth::Required, None)
                if client.distrusted_recently && m.auth == NetworkAuth::None =>
            {
                Err(RefuseReason::TrustWithdrawnRecently)
            }
            (NetworkAuth::Required, None) => Err(RefuseReason::NeedsAuth),
        }
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

    fn client(ip: &str, user: Option<&str>, listener: ListenerKind) -> ClientFacts {
        let mut c = ClientFacts::new(ip.parse().unwrap(), listener);
        c.user = user.map(str::to_string);
        c
    }

    fn verdict(ip: &str, user: Option<&str>, rcpt: &str) -> bool {
        let (path, _) = parse_path(rcpt, true).unwrap();
        policy()
            .rcpt(&client(ip, user, ListenerKind::Smtp), &path)
            .is_accept()
    }

    fn route(ip: &str, user: Option<&str>, rcpt: &str) -> Route {
        let (path, _) = parse_path(rcpt, true).unwrap();
        policy()
            .rcpt(&client(ip, user, ListenerKind::Smtp), &path)
            .verdict
            .unwrap()
            .route
    }

    #[test]
    fn an_accepted_recipient_carries_its_route_and_basis() {
        assert_eq!(
            route("203.0.113.9", None, "<x@example.lan>"),
            Route::Inbound
        );
        assert_eq!(
            route("10.1.1.1", Some("bob"), "<x@elsewhere.example>"),
            Route::Relay(RelayBasis::Authenticated("bob".into()))
        );
        let Route::Relay(basis @ RelayBasis::TrustedNetwork(Some(_))) =
            route("192.168.1.20", None, "<x@elsewhere.example>")
        else {
            panic!("relayed on the trusted network's word");
        };
        assert_eq!(
            basis.to_string(),
            "trusted network 192.168.1.0/24 (auth = \"none\")"
        );
        // A hidden route in an inbound domain stays inbound mail.
        assert_eq!(
            route("192.168.1.20", None, "<x%y@example.lan>"),
            Route::Inbound
        );
    }

    #[test]
    fn the_data_stage_refuses_early_content_from_strangers_only() {
        let mut p = policy();
        p.checks.forbid_unauth_pipelining = true;
        let stranger = client("203.0.113.9", None, ListenerKind::Smtp);
        assert_eq!(
            p.data(&stranger, true).verdict,
            Err(RefuseReason::UnauthPipelining)
        );
        assert!(p.data(&stranger, false).is_accept());
        assert!(
            p.data(
                &client("203.0.113.9", Some("bob"), ListenerKind::Smtp),
                true
            )
            .is_accept()
        );
        let lan = client("192.168.1.20", None, ListenerKind::Smtp);
        assert!(p.data(&lan, true).is_accept());
        // Once the guard withdraws its trust, the LAN client is a stranger here too.
        let mut distrusted = lan.clone();
        distrusted.distrusted = true;
        assert!(!p.data(&distrusted, true).is_accept());
        p.checks.forbid_unauth_pipelining = false;
        assert!(p.data(&stranger, true).is_accept());
    }

    #[test]
    fn the_flood_hold_spares_usual_domains_and_follows_the_mode() {
        let mut p = policy();
        p.guard_mode = crate::config::GuardMode::Hold;
        assert_eq!(p.flood(true), FloodVerdict::Proceed);
        assert_eq!(p.flood(false), FloodVerdict::Hold);
        p.guard_mode = crate::config::GuardMode::Refuse;
        assert_eq!(p.flood(false), FloodVerdict::Refuse);
        p.guard_mode = crate::config::GuardMode::Log;
        assert_eq!(p.flood(false), FloodVerdict::Proceed);
    }

    #[test]
    fn trust_needs_the_network_and_the_guards_consent() {
        let p = policy();
        let lan: IpAddr = "192.168.1.20".parse().unwrap();
        assert!(p.trusts(lan, false));
        assert!(!p.trusts(lan, true));
        assert!(!p.trusts("192.168.1.1".parse().unwrap(), false), "excluded");
        let mut c = client("10.1.1.1", None, ListenerKind::Smtp);
        assert!(!p.trusted_origin(&c));
        c.user = Some("bob".into());
        assert!(p.trusted_origin(&c));
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

    #[test]
    fn reasons_are_typed_and_steps_explain_them() {
        let p = policy();
        let (path, _) = parse_path("<x@elsewhere.example>", true).unwrap();
        let d = p.rcpt(&client("192.168.1.1", None, ListenerKind::Smtp), &path);
        assert_eq!(d.verdict, Err(RefuseReason::NeedsAuth));
        assert_eq!(d.refusal_reply().unwrap().code, 554);
        assert!(
            d.steps.iter().any(|s| s.text.contains("excluded")),
            "{:?}",
            d.steps
        );
        let d = p.rcpt(
            &client("172.16.1.1", Some("bob"), ListenerKind::Smtp),
            &path,
        );
        assert_eq!(d.verdict, Err(RefuseReason::NetworkDenied));
    }

    #[test]
    fn listener_and_auth_stages() {
        let p = policy();
        let lan_submission = client("192.168.1.20", None, ListenerKind::Submission);
        assert_eq!(
            p.mail(&lan_submission, &Path::Null).verdict,
            Err(RefuseReason::ListenerNeedsAuth),
            "even a trusted client must authenticate on submission"
        );
        assert!(
            p.mail(
                &client("192.168.1.20", None, ListenerKind::Smtp),
                &Path::Null
            )
            .is_accept()
        );
        assert_eq!(
            p.auth(&client("203.0.113.9", None, ListenerKind::Smtp))
                .verdict,
            Err(RefuseReason::AuthNeedsTls)
        );
        assert!(
            p.auth(&client("203.0.113.9", None, ListenerKind::Smtps))
                .is_accept()
        );
        assert!(
            p.auth(&client("127.0.0.1", None, ListenerKind::Smtp))
                .is_accept()
        );
    }
}
