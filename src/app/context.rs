//! What every session shares: the config, the policy built from it, TLS,
//! users and the spool. Built once at start.

use super::limits::{ConnectionLimits, LimitSettings};
use crate::config::Config;
use crate::credentials::CredentialChecker;
use crate::policy::Policy;
use crate::spool::Spool;
use crate::users::UserDb;
use std::sync::Arc;

pub struct Context {
    pub config: Config,
    pub hostname: String,
    pub policy: Policy,
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// Password checks, bounded in number and abandoned when the client leaves.
    pub credentials: Arc<CredentialChecker>,
    pub spool: Spool,
    /// Where the session's facts go (the log, and whoever subscribes).
    pub events: crate::events::Events,
    /// The NAT sentinel and flood hold (state kept in data_dir).
    pub guard: Arc<crate::guard::Guard>,
    /// The anti-spam checks: DNS lists, lookups, counters and bans.
    pub checks: std::sync::Arc<crate::checks::Checks>,
    /// Connection slots; sessions read whether the server is under stress.
    pub limits: std::sync::Arc<ConnectionLimits>,
    /// Where accepted messages are made durable (the spool, through the
    /// queue store's `accept`).
    pub store: Arc<dyn crate::queue::QueueStore>,
    /// Where to announce newly accepted messages (absent in protocol-only tests).
    pub queue: Option<crate::queue::QueueHandle>,
    /// SMTP transcripts (`[log] transcript`), when kept.
    pub transcripts: Option<Arc<crate::transcript::Transcripts>>,
    /// The webhooks' notifier (absent in protocol-only tests).
    pub notifier: Option<Arc<crate::notify::Notifier>>,
}

impl Context {
    /// The way our own mail (alert notices, TLS reports) enters the queue.
    pub fn queueing(&self) -> crate::queue::local_mail::Queueing<'_> {
        crate::queue::local_mail::Queueing {
            store: &*self.store,
            spool: &self.spool,
            queue: self.queue.as_ref(),
        }
    }

    /// Whether `ip` is a trusted network's client whose trust the guard has
    /// not withdrawn: one answer for sessions, connection admission and the
    /// admin page's logins.
    pub fn trusts(&self, ip: std::net::IpAddr) -> bool {
        self.policy.trusts(ip, self.guard.is_untrusted(ip))
    }

    /// `resolver`: the server's one resolver (shared with delivery), if DNS
    /// is set up; `events` and `guard` are shared with the queue and the
    /// other subscribers.
    pub fn new(
        config: Config,
        tls: Option<Arc<rustls::ServerConfig>>,
        spool: Spool,
        resolver: Option<crate::dns::Resolver>,
        events: crate::events::Events,
        guard: Arc<crate::guard::Guard>,
    ) -> Context {
        // New message files are published in batches (one directory sync each).
        let spool = spool.with_committer();
        Context {
            hostname: config.hostname(),
            policy: Policy::from_config(&config),
            tls: tls.map(tokio_rustls::TlsAcceptor::from),
            credentials: Arc::new(CredentialChecker::new(UserDb::new(config.users_file()))),
            store: Arc::new(spool.clone()),
            spool,
            events,
            guard,
            checks: std::sync::Arc::new(crate::checks::Checks::new(&config, resolver)),
            limits: ConnectionLimits::new(LimitSettings {
                max_total: config.server.max_connections,
                max_per_ip: config.server.max_connections_per_ip,
                reserved: config.server.reserved_connections(),
                rate_per_ip: config.server.max_connection_rate_per_ip,
            }),
            config,
            queue: None,
            transcripts: None,
            notifier: None,
        }
    }

    /// The context for a reloaded config: new rules, TLS and checks; the
    /// same spool, queue, events, connection slots, counters and bans (a
    /// reload must not forgive a banned address), and the same password
    /// checker unless the users file moved.
    pub fn reloaded(&self, config: Config, tls: Option<Arc<rustls::ServerConfig>>) -> Context {
        let credentials = if config.users_file() == self.config.users_file() {
            Arc::clone(&self.credentials)
        } else {
            Arc::new(CredentialChecker::new(UserDb::new(config.users_file())))
        };
        Context {
            hostname: config.hostname(),
            policy: Policy::from_config(&config),
            tls: tls.map(tokio_rustls::TlsAcceptor::from),
            credentials,
            store: Arc::clone(&self.store),
            spool: self.spool.clone(),
            events: self.events.clone(),
            guard: Arc::clone(&self.guard),
            checks: Arc::new(self.checks.reloaded(&config)),
            limits: Arc::clone(&self.limits),
            queue: self.queue.clone(),
            transcripts: self.transcripts.clone(),
            notifier: self.notifier.clone(),
            config,
        }
    }
}
