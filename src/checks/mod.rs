//! The anti-spam checks at run time: DNS black and white lists, reverse DNS,
//! HELO and sender-domain lookups, rate counters and bans, and recipient
//! verification. They gather facts (`policy::CheckFacts`); the staged policy
//! decides. One resolver for the whole server, the `[dns]` one.

pub mod dns_lists;
pub mod lookups;
pub mod recipients;

use crate::config::{Config, HeloCheck, ReverseDnsCheck, SenderDomainCheck, VerifyRecipients};
use crate::counters::{Counters, MemoryCounters};
use crate::delivery::Deliverer;
use crate::dns::Resolver;
use crate::events::{Event, Events};
use crate::policy::{ListFindings, Lookup, RateFacts};
use dns_lists::DnsLists;
use recipients::{CalloutCache, RecipientList};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

const HOUR: Duration = Duration::from_secs(3600);

/// What the connect-time lookups found.
#[derive(Debug, Clone, Default)]
pub struct ConnectFindings {
    pub lists: Option<ListFindings>,
    pub reverse_dns: Option<Lookup>,
    /// How long the lookups took together.
    pub elapsed: Duration,
}

pub struct Checks {
    config: Config,
    resolver: Option<Resolver>,
    pub dns_lists: Option<DnsLists>,
    pub counters: Arc<dyn Counters>,
    recipients: Option<RecipientList>,
    callouts: CalloutCache,
    deliverer: Option<Arc<Deliverer>>,
}

impl Checks {
    pub fn new(config: &Config, resolver: Option<Resolver>) -> Checks {
        let c = &config.checks;
        let dns_lists = resolver
            .clone()
            .filter(|_| !c.dnsbl.is_empty() || !c.dnswl.is_empty())
            .map(|r| DnsLists::new(r, &c.dnsbl, &c.dnswl));
        let recipients = match (
            config.relay.verify_recipients,
            &config.relay.valid_recipients_file,
        ) {
            (VerifyRecipients::List, Some(path)) => Some(RecipientList::new(path.clone())),
            _ => None,
        };
        Checks {
            config: config.clone(),
            deliverer: resolver
                .clone()
                .map(|r| Arc::new(Deliverer::new(Arc::new(config.clone()), r))),
            resolver,
            dns_lists,
            counters: Arc::new(MemoryCounters::new()),
            recipients,
            callouts: CalloutCache::new(
                config.relay.callout_cache_positive.get(),
                config.relay.callout_cache_negative.get(),
            ),
        }
    }

    /// The checks for a reloaded config, keeping the resolver, the counters
    /// and the bans.
    /// The same checks counting with `counters` (a cluster's shared ones).
    pub fn counting_with(&self, counters: Arc<dyn Counters>) -> Checks {
        let mut fresh = Checks::new(&self.config, self.resolver.clone());
        fresh.counters = counters;
        fresh
    }

    pub fn reloaded(&self, config: &Config) -> Checks {
        let mut fresh = Checks::new(config, self.resolver.clone());
        fresh.counters = Arc::clone(&self.counters);
        fresh
    }

    /// The server's resolver, when DNS is set up.
    pub fn resolver(&self) -> Option<&Resolver> {
        self.resolver.as_ref()
    }

    fn dns_timeout(&self) -> Duration {
        self.config.checks.dns_timeout.get()
    }

    /// The lookups that only need the client's address, started as soon as it connects.
    pub fn start_connect_lookups(
        &self,
        ip: IpAddr,
    ) -> Option<tokio::task::JoinHandle<ConnectFindings>> {
        let lists = self.dns_lists.clone();
        let rdns = self.config.checks.reverse_dns;
        let resolver = self.resolver.clone()?;
        if lists.is_none() && rdns == ReverseDnsCheck::Off {
            return None;
        }
        let deadline = self.dns_timeout();
        Some(tokio::spawn(async move {
            let started = std::time::Instant::now();
            let lists_f = async {
                match &lists {
                    Some(l) => Some(l.check(ip, deadline).await),
                    None => None,
                }
            };
            let rdns_f = async {
                match rdns {
                    ReverseDnsCheck::Off => None,
                    mode => Some(
                        lookups::within(deadline, lookups::reverse_dns(&resolver, ip, mode)).await,
                    ),
                }
            };
            let (lists, reverse_dns) = tokio::join!(lists_f, rdns_f);
            ConnectFindings {
                lists,
                reverse_dns,
                elapsed: started.elapsed(),
            }
        }))
    }

    pub async fn helo(&self, name: &str, ip: IpAddr) -> Option<Lookup> {
        let mode = self.config.checks.helo_lookup;
        let resolver = self.resolver.as_ref()?;
        if mode == HeloCheck::Off {
            return None;
        }
        Some(lookups::within(self.dns_timeout(), lookups::helo(resolver, name, ip, mode)).await)
    }

    pub async fn sender_domain(&self, domain: &str) -> Option<Lookup> {
        let resolver = self.resolver.as_ref()?;
        if self.config.checks.sender_domain == SenderDomainCheck::Off {
            return None;
        }
        Some(lookups::within(self.dns_timeout(), lookups::sender_domain(resolver, domain)).await)
    }

    /// Whether mail for `address` in an inbound domain may be taken.
    pub async fn verify_recipient(&self, domain: &str, address: &str) -> Option<Lookup> {
        match self.config.relay.verify_recipients {
            VerifyRecipients::Off => None,
            VerifyRecipients::List => {
                let list = self.recipients.as_ref()?;
                Some(match list.contains(address) {
                    Ok(true) => Lookup::Pass("in relay.valid_recipients_file".into()),
                    Ok(false) => Lookup::Fail("not in relay.valid_recipients_file".into()),
                    Err(e) => Lookup::DnsError(e),
                })
            }
            VerifyRecipients::Callout => {
                if let Some(known) = self.callouts.get(address) {
                    return Some(known);
                }
                let deliverer = self.deliverer.as_ref()?;
                use crate::delivery::CalloutAnswer;
                let answer = match deliverer.callout(domain, address).await {
                    CalloutAnswer::Takes => Lookup::Pass("the next hop takes it (callout)".into()),
                    CalloutAnswer::NoSuchRecipient => {
                        Lookup::Fail("the next hop has no such user (callout)".into())
                    }
                    CalloutAnswer::Unknown(why) => Lookup::DnsError(why),
                };
                self.callouts.put(address, &answer);
                Some(answer)
            }
        }
    }

    /// Messages and recipients counted in the last hour.
    pub fn rates(&self, ip: IpAddr, user: Option<&str>) -> RateFacts {
        let l = &self.config.limits;
        let under_policy = self
            .policy_rate_key(ip, user)
            .map_or(0, |key| self.counters.count(&key, HOUR));
        if l.messages_per_hour_per_ip.is_none()
            && l.messages_per_hour_per_user.is_none()
            && l.recipients_per_hour_per_ip.is_none()
        {
            return RateFacts {
                messages_under_policy: under_policy,
                ..RateFacts::default()
            };
        }
        RateFacts {
            messages_under_policy: under_policy,
            messages_from_ip: self.counters.count(&format!("msg-ip:{ip}"), HOUR),
            messages_from_user: user
                .map_or(0, |u| self.counters.count(&format!("msg-user:{u}"), HOUR)),
            recipients_from_ip: self.counters.count(&format!("rcpt-ip:{ip}"), HOUR),
        }
    }

    /// The counter of the client's `[[policy]]` rule, when it limits
    /// messages: per login, or per address for a rule without `user`.
    fn policy_rate_key(&self, ip: IpAddr, user: Option<&str>) -> Option<String> {
        let (i, rule) = self.config.login_policy(user, Some(ip))?;
        rule.messages_per_hour?;
        Some(match user.filter(|_| !rule.user.is_empty()) {
            Some(u) => format!("msg-policy:{i}:user:{u}"),
            None => format!("msg-policy:{i}:ip:{ip}"),
        })
    }

    /// Counts an accepted message (only for the limits that are set).
    pub fn count_message(&self, ip: IpAddr, user: Option<&str>) {
        if let Some(key) = self.policy_rate_key(ip, user) {
            self.counters.add(&key, HOUR);
        }
        let l = &self.config.limits;
        if l.messages_per_hour_per_ip.is_some() {
            self.counters.add(&format!("msg-ip:{ip}"), HOUR);
        }
        if let (Some(u), Some(_)) = (user, l.messages_per_hour_per_user) {
            self.counters.add(&format!("msg-user:{u}"), HOUR);
        }
    }

    /// Counts an accepted recipient (only when its limit is set).
    pub fn count_recipient(&self, ip: IpAddr) {
        if self.config.limits.recipients_per_hour_per_ip.is_some() {
            self.counters.add(&format!("rcpt-ip:{ip}"), HOUR);
        }
    }

    /// Counts a failed AUTH (or admin login) for `user` from `ip`: by
    /// address, by network prefix and by account. An address of a trusted
    /// network is counted and logged but not banned unless
    /// `limits.ban_trusted`: a typo'd password on the office LAN must not
    /// lock the office (and its admin) out of every listener for an hour.
    pub fn auth_failed(&self, ip: IpAddr, trusted: bool, user: &str) -> AuthFailure {
        let l = &self.config.limits;
        let window = l.ban_window.get();
        let from_ip = self.counters.add(&auth_failures_key(ip), window);
        let prefix = self.prefix_of(ip);
        let from_prefix = self.counters.add(&format!("authfail-net:{prefix}"), window);
        let mut failure = AuthFailure {
            from_ip,
            from_prefix,
            ..AuthFailure::default()
        };
        if trusted && !l.ban_trusted {
            return failure;
        }
        if l.auth_failures_before_ban > 0 && from_ip >= u64::from(l.auth_failures_before_ban) {
            self.counters.ban(ip, l.ban_duration.get());
            failure.banned = true;
        }
        if l.auth_failures_per_prefix > 0 && from_prefix >= u64::from(l.auth_failures_per_prefix) {
            self.counters
                .block(&format!("net:{prefix}"), l.ban_duration.get());
            failure.prefix_banned = Some(prefix);
            failure.banned = true;
        }
        let account = self
            .counters
            .add(&format!("authfail-user:{}", user.to_lowercase()), window);
        if l.auth_failures_per_account > 0
            && account >= u64::from(l.auth_failures_per_account)
            && self.account_locked(user).is_none()
        {
            self.counters
                .block(&format!("user:{}", user.to_lowercase()), window);
            failure.account_locked = true;
        }
        failure
    }

    /// The network prefix failed logins from `ip` are counted by.
    pub fn prefix_of(&self, ip: IpAddr) -> ipnet::IpNet {
        let l = &self.config.limits;
        let len = match ip {
            IpAddr::V4(_) => l.auth_prefix_v4.min(32),
            IpAddr::V6(_) => l.auth_prefix_v6.min(128),
        };
        ipnet::IpNet::new(ip, len)
            .map(|n| n.trunc())
            .unwrap_or_else(|_| ipnet::IpNet::from(ip))
    }

    /// Whether logins for `user` from outside the trusted networks are
    /// refused for now (many failures for it from many places), and how
    /// much longer.
    pub fn account_locked(&self, user: &str) -> Option<Duration> {
        self.counters
            .blocked(&format!("user:{}", user.to_lowercase()))
    }

    /// Banned: the address itself, or (for a client outside the trusted
    /// networks) its whole network prefix.
    pub fn banned_for(&self, ip: IpAddr, trusted: bool) -> Option<Duration> {
        self.counters.banned(ip).or_else(|| {
            if trusted {
                None
            } else {
                self.counters
                    .blocked(&format!("net:{}", self.prefix_of(ip)))
            }
        })
    }

    /// Every address banned now, with the time its ban has left.
    pub fn bans(&self) -> Vec<(IpAddr, Duration)> {
        self.counters.bans()
    }

    /// Ends `ip`'s ban (and its prefix's) and forgets their failed logins,
    /// so that the next typo does not ban it again at once. Whether it was banned.
    pub fn lift_ban(&self, ip: IpAddr) -> bool {
        self.counters.forget(&auth_failures_key(ip));
        let prefix = self.prefix_of(ip);
        self.counters.forget(&format!("authfail-net:{prefix}"));
        let net = format!("net:{prefix}");
        let prefix_was = self.counters.blocked(&net).is_some();
        if prefix_was {
            self.counters.block(&net, Duration::ZERO);
        }
        self.counters.lift(ip) | prefix_was
    }

    /// Tests the DNS list zones now and every `zone_health_interval`, until `stop`.
    pub async fn watch_zones(
        self: Arc<Self>,
        events: Events,
        stop: tokio_util::sync::CancellationToken,
    ) {
        let Some(lists) = self.dns_lists.clone() else {
            return;
        };
        let every = self
            .config
            .checks
            .zone_health_interval
            .get()
            .max(Duration::from_secs(10));
        loop {
            for change in lists.health_check(self.dns_timeout()).await {
                events.emit(Event::ZoneHealth {
                    zone: change.zone.clone(),
                    healthy: change.healthy,
                    problem: change.problem.clone(),
                });
            }
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = stop.cancelled() => return,
            }
        }
    }
}

/// What one failed login counted up to, and what it caused.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthFailure {
    /// Failures from this address within the ban window.
    pub from_ip: u64,
    /// Failures from its network prefix.
    pub from_prefix: u64,
    /// The address (or its prefix) is banned now.
    pub banned: bool,
    /// The prefix this failure banned.
    pub prefix_banned: Option<ipnet::IpNet>,
    /// This failure locked the account for logins from outside.
    pub account_locked: bool,
}

impl AuthFailure {
    /// Tells what this failure caused (an account locked, an address
    /// banned): the same events whether it was an SMTP AUTH or an admin login.
    pub fn report(&self, events: &Events, client: IpAddr, user: &str) {
        if self.account_locked {
            events.emit(Event::AccountLocked {
                user: user.to_string(),
                client,
            });
        }
        if self.banned {
            events.emit(Event::AddressBanned {
                client,
                failures: self.from_ip,
                prefix_failures: self.from_prefix,
                prefix: self.prefix_banned.map(|p| p.to_string()),
            });
        }
    }
}

fn auth_failures_key(ip: IpAddr) -> String {
    format!("authfail:{ip}")
}
