//! Delivery: our SMTP client, routing (MX, smart hosts, [[route]]), a
//! connection pool, and one attempt that yields a result per recipient.

pub mod client;
pub mod dane;
pub mod down;
mod downgrade;
pub mod graph;
pub mod mta_sts;
pub mod pacing;
mod pool;
mod profile;
pub mod provider;
pub mod result;
pub mod rewrite;
pub mod route;
pub mod tls_policy;
mod transport;

pub use result::{AttemptResult, Stage};

use crate::attempt::EnhancedStatus;
use crate::config::{Config, NextHop, OutboundTls, SmarthostTls};
use crate::dns::Resolver;
use client::{
    ClientError, ConnectOptions, Credentials, Outgoing, ServerReply, SmtpConnection, TlsMode,
};
use pool::Pool;
use result::{TlsPolicyKind, TlsPolicyOutcome};
use route::{Destination, RouteError};
use std::net::SocketAddr;
use std::sync::Arc;
use tracing::{debug, info, warn};

/// What a callout learnt of a recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CalloutAnswer {
    /// The next hop accepts mail for it.
    Takes,
    /// The next hop refuses it for good (5xx at RCPT).
    NoSuchRecipient,
    /// No next hop could say (why, in words): down, DNS trouble, a 4xx.
    Unknown(String),
}

/// What became of one recipient in one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Delivered(AttemptResult),
    /// Bounce.
    Failed(AttemptResult),
    /// Try again later; `counts` is false when our own side is the trouble
    /// (DNS, no route to the network), which does not use up the retry schedule.
    /// `known_down` is true when no server was tried because every address
    /// is remembered as down: nothing new was learnt.
    Deferred {
        result: AttemptResult,
        counts: bool,
        known_down: bool,
        /// Not before this time (Unix seconds): a provider said when, or
        /// the profile rests until then.
        retry_at: Option<i64>,
    },
}

impl Outcome {
    pub fn result(&self) -> &AttemptResult {
        match self {
            Outcome::Delivered(r) | Outcome::Failed(r) | Outcome::Deferred { result: r, .. } => r,
        }
    }

    /// Tried again later, not a known-down skip.
    pub fn deferred(result: AttemptResult, counts: bool, retry_at: Option<i64>) -> Outcome {
        Outcome::Deferred {
            result,
            counts,
            known_down: false,
            retry_at,
        }
    }

    pub fn result_mut(&mut self) -> &mut AttemptResult {
        match self {
            Outcome::Delivered(r) | Outcome::Failed(r) | Outcome::Deferred { result: r, .. } => r,
        }
    }
}

/// One message's recipients for one destination.
pub struct Job<'a> {
    pub queue_id: &'a str,
    pub destination: &'a Destination,
    /// From a trusted or authenticated source: its mail may carry our DKIM
    /// signature (a stranger's never does).
    pub may_sign: bool,
    pub message: Outgoing<'a>,
}

pub struct Deliverer {
    /// What the config says, replaced as a whole on reload.
    settings: std::sync::RwLock<Arc<Settings>>,
    resolver: Resolver,
    unverified_tls: Arc<rustls::ClientConfig>,
    pool: Pool,
    /// Next hops that just failed to answer: skipped until they may be back.
    down: down::DownHosts,
    /// Outbound conversations are written here too, when transcripts are
    /// kept (a reload may change where).
    transcripts: std::sync::RwLock<Option<Arc<crate::transcript::Transcripts>>>,
    /// OAuth2 tokens of the profiles that use them.
    tokens: crate::oauth::Tokens,
    /// Profiles resting after an authentication or quota refusal.
    resting: provider::Resting,
    /// Where profile problems are told (the log, the dashboard, alerts).
    events: Option<crate::events::Events>,
    /// When tokens were last checked for renewal (Unix seconds).
    last_token_check: std::sync::atomic::AtomicI64,
    /// TLS report counts (`[delivery] tls_rpt`), when the server keeps them.
    tls_reports: Option<Arc<crate::tlsrpt::Collector>>,
    /// The profiles' quota ledgers (saved across restarts by the server).
    ledger: Arc<dyn crate::counters::Counters>,
    /// Makes a quota's check-and-record one step.
    ledger_lock: std::sync::Mutex<()>,
}

/// The delivery settings derived from one config.
struct Settings {
    config: Arc<Config>,
    helo: String,
    /// Every profile with its TLS settings, by name.
    profiles: std::collections::HashMap<String, profile::Ready>,
    /// The `[[dkim]]` keys.
    dkim: Arc<crate::dkim::Signers>,
    /// MTA-STS policies (`[delivery] mta_sts = "on"`).
    sts: Option<Arc<mta_sts::StsPolicies>>,
    /// The web PKI (plus `tls_ca_file`) for MX hosts under an MTA-STS policy.
    webpki: Result<Arc<rustls::client::WebPkiServerVerifier>, String>,
}

impl Settings {
    fn from(config: Arc<Config>, resolver: &Resolver) -> Settings {
        let helo = config
            .delivery
            .helo_name
            .clone()
            .unwrap_or_else(|| config.hostname());
        let profiles = config
            .profiles()
            .into_iter()
            .map(|p| (p.name.clone(), profile::Ready::new(p, resolver)))
            .collect();
        let (dkim, problems) = crate::dkim::Signers::from_config(&config.dkim);
        for p in problems {
            tracing::error!("{p}; mail of that domain goes unsigned");
        }
        let d = &config.delivery;
        let sts = d.mta_sts.is_on().then(|| {
            Arc::new(mta_sts::StsPolicies::new(
                resolver.clone(),
                d.tls_ca_file.as_deref(),
                Some(config.server.data_dir.join("mta-sts.json")),
            ))
        });
        let webpki =
            crate::client_tls::webpki_verifier(d.tls_ca_file.as_deref(), "delivery.tls_ca_file");
        Settings {
            config,
            helo,
            profiles,
            dkim: Arc::new(dkim),
            sts,
            webpki,
        }
    }
}

impl Deliverer {
    pub fn new(config: Arc<Config>, resolver: Resolver) -> Deliverer {
        Deliverer {
            resolver: resolver.clone(),
            unverified_tls: crate::client_tls::unverified(),
            pool: Pool::default(),
            down: down::DownHosts::new(down::down_for(&config.delivery.retry_schedule)),
            settings: std::sync::RwLock::new(Arc::new(Settings::from(config, &resolver))),
            transcripts: std::sync::RwLock::new(None),
            tokens: crate::oauth::Tokens::new(resolver.clone()),
            resting: provider::Resting::default(),
            events: None,
            last_token_check: std::sync::atomic::AtomicI64::new(0),
            ledger: Arc::new(crate::counters::MemoryCounters::new()),
            tls_reports: None,
            ledger_lock: std::sync::Mutex::new(()),
        }
    }

    /// Keeps the profiles' quota counts in `ledger` (one that survives restarts).
    pub fn with_ledger(mut self, ledger: Arc<dyn crate::counters::Counters>) -> Deliverer {
        self.ledger = ledger;
        self
    }

    /// Where sessions under a TLS policy are counted for TLS reports.
    pub fn with_tls_reports(mut self, reports: Arc<crate::tlsrpt::Collector>) -> Deliverer {
        self.tls_reports = Some(reports);
        self
    }

    /// A profile's use of its quota now, in words (the dashboard).
    pub fn quota_usage(&self, profile: &crate::config::Profile) -> Vec<String> {
        pacing::usage(
            &*self.ledger,
            &profile.name,
            &profile.quota,
            crate::clock::unix_now(),
        )
    }

    /// Tells profile problems (a refused login, a spent quota) as events.
    pub fn with_events(mut self, events: crate::events::Events) -> Deliverer {
        self.events = Some(events);
        self
    }

    /// Records every outbound conversation in `transcripts`.
    pub fn with_transcripts(
        self,
        transcripts: Option<Arc<crate::transcript::Transcripts>>,
    ) -> Deliverer {
        self.set_transcripts(transcripts);
        self
    }

    /// Where the next conversations are recorded (a reload changed it).
    pub fn set_transcripts(&self, transcripts: Option<Arc<crate::transcript::Transcripts>>) {
        *self.transcripts.write().unwrap_or_else(|p| p.into_inner()) = transcripts;
    }

    fn settings(&self) -> Arc<Settings> {
        Arc::clone(&self.settings.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// The config deliveries follow now.
    pub fn config(&self) -> Arc<Config> {
        Arc::clone(&self.settings().config)
    }

    /// Takes a reloaded config: the next attempts follow its routes.
    pub fn reconfigure(&self, config: Arc<Config>) {
        *self.settings.write().unwrap_or_else(|p| p.into_inner()) =
            Arc::new(Settings::from(config, &self.resolver));
        // A reload is the admin's answer to a profile problem: try again.
        self.resting.clear();
    }

    /// Connects to every smart host of every profile as a delivery would
    /// (TLS, AUTH with a fresh token), says what each one did, and hangs up
    /// without sending anything. For `doctor`.
    pub async fn probe_smarthosts(&self) -> Vec<(String, Result<String, String>)> {
        let settings = self.settings();
        let mut names: Vec<&String> = settings.profiles.keys().collect();
        names.sort();
        let mut out = Vec::new();
        for name in names {
            let ready = &settings.profiles[name];
            let p = &ready.profile;
            if p.transport == crate::config::Transport::Graph {
                let result = self
                    .credentials(ready, &settings.config)
                    .await
                    .map(|_| format!("Graph at {}: a token was obtained", p.graph_url))
                    .map_err(|e| e.message);
                out.push((format!("profile {name}"), result));
                continue;
            }
            let auth = match self.credentials(ready, &settings.config).await {
                Ok(a) => a,
                Err(e) => {
                    out.push((format!("profile {name}"), Err(e.message)));
                    continue;
                }
            };
            for hop in &p.hosts {
                let label = format!("profile {name}: {}:{}", hop.host, hop.port);
                let result = async {
                    let opts = self.profile_options(ready, hop, &auth, &settings)?;
                    let addrs = self
                        .resolver
                        .addresses(&hop.host)
                        .await
                        .map_err(|e| e.to_string())?;
                    let ip = addrs
                        .first()
                        .ok_or_else(|| format!("{} has no address", hop.host))?;
                    let conn = SmtpConnection::connect(SocketAddr::new(*ip, hop.port), &opts)
                        .await
                        .map_err(|e| {
                            let said = AttemptResult::client_error(&e, &hop.host);
                            match provider::classify(&said, p) {
                                Some(problem) => format!("{e}: {}", problem.advice),
                                None => e.to_string(),
                            }
                        })?;
                    let tls = conn.tls.clone().unwrap_or_else(|| "no TLS".into());
                    let authed = if auth.is_some() {
                        ", credentials accepted"
                    } else {
                        ""
                    };
                    conn.quit().await;
                    Ok(format!("answers at {ip}, {tls}{authed}"))
                }
                .await;
                out.push((label, result));
            }
        }
        out
    }

    /// The profiles resting now (a refused login, a spent quota), with
    /// what the admin should do: for the dashboard and `doctor`.
    pub fn resting_profiles(&self) -> Vec<(String, provider::Rest)> {
        self.resting.all()
    }

    /// Recipient verification by callout: asks the next hop of `domain`
    /// ([[route]], else its MX) whether it takes mail for `address`.
    pub async fn callout(&self, domain: &str, address: &str) -> CalloutAnswer {
        match self.ask_next_hop(domain, address).await {
            Ok(true) => CalloutAnswer::Takes,
            Ok(false) => CalloutAnswer::NoSuchRecipient,
            Err(why) => CalloutAnswer::Unknown(why),
        }
    }

    async fn ask_next_hop(&self, domain: &str, address: &str) -> Result<bool, String> {
        let dest = route::destination(domain, &self.config()).map_err(|e| format!("{e:?}"))?;
        let dest = match dest {
            // A provider's smart host cannot say who exists at the destination.
            Destination::Profile(_) => Destination::Mx(domain.to_string()),
            other => other,
        };
        let hosts = route::hosts(&dest, &self.config(), &self.resolver)
            .await
            .map_err(|e| format!("{e:?}"))?;
        let mut last = String::from("no next hop to ask");
        for hop in hosts.iter().take(3) {
            let opts = self.options(hop);
            let Ok(addrs) = self.resolver.addresses(&hop.host).await else {
                continue;
            };
            for ip in addrs.into_iter().take(2) {
                match SmtpConnection::connect(SocketAddr::new(ip, hop.port), &opts).await {
                    Ok(mut conn) => {
                        let answer = conn.probe_recipient(address).await;
                        conn.quit().await;
                        match answer {
                            Ok(r) if r.is_ok() => return Ok(true),
                            Ok(r) if r.is_permanent() => return Ok(false),
                            Ok(r) => last = format!("{} answered {r}", hop.host),
                            Err(e) => last = format!("{}: {e}", hop.host),
                        }
                    }
                    Err(e) => last = format!("{}: {e}", hop.host),
                }
            }
        }
        Err(last)
    }

    /// The next hops remembered as down (a cluster shares them).
    pub fn down_hosts(&self) -> &down::DownHosts {
        &self.down
    }

    /// Forgets which next hops seemed down and which profiles rest, so the
    /// next attempts knock again.
    pub fn forget_down_hosts(&self) {
        self.down.forget_all();
        self.resting.clear();
    }

    /// Housekeeping every second: idle connections closed; every 30 s, the
    /// OAuth2 tokens about to expire renewed (in the background, so that a
    /// slow token endpoint never holds the queue).
    pub async fn sweep_idle(self: &Arc<Self>) {
        self.pool.sweep().await;
        let now = crate::clock::unix_now();
        let last = self
            .last_token_check
            .load(std::sync::atomic::Ordering::Relaxed);
        if now - last >= 30
            && self
                .last_token_check
                .compare_exchange(
                    last,
                    now,
                    std::sync::atomic::Ordering::Relaxed,
                    std::sync::atomic::Ordering::Relaxed,
                )
                .is_ok()
        {
            let me = Arc::clone(self);
            tokio::spawn(async move {
                let settings = me.settings();
                let due: Vec<_> = settings
                    .profiles
                    .values()
                    .filter(|r| r.profile.oauth.is_some())
                    .map(|r| {
                        (
                            r.profile.clone(),
                            settings.config.oauth_token_file(&r.profile.name),
                        )
                    })
                    .collect();
                me.tokens.refresh_due(&due).await;
            });
        }
    }

    pub async fn close_idle(&self) {
        self.pool.close_all().await;
    }

    /// TLS for a connection to `hop` of a [[route]], an MX or an address
    /// literal: opportunistic unless `outbound_tls` says otherwise, never AUTH.
    fn options(&self, hop: &NextHop) -> ConnectOptions {
        let settings = self.settings();
        let d = &settings.config.delivery;
        let cfg = Arc::clone(&self.unverified_tls);
        let tls = match d.outbound_tls {
            OutboundTls::Opportunistic => TlsMode::Opportunistic(cfg),
            OutboundTls::Required => TlsMode::Required(cfg),
            OutboundTls::None => TlsMode::None,
        };
        self.connect_options(&settings, hop, tls, None)
    }

    /// TLS and AUTH for a connection to `hop` of a profile.
    fn profile_options(
        &self,
        ready: &profile::Ready,
        hop: &NextHop,
        auth: &Option<Credentials>,
        settings: &Settings,
    ) -> Result<ConnectOptions, String> {
        let cfg = if ready.profile.verify {
            ready.tls.clone()?
        } else {
            Arc::clone(&self.unverified_tls)
        };
        let tls = match hop.tls_or(ready.profile.tls) {
            SmarthostTls::Starttls => TlsMode::Required(cfg),
            SmarthostTls::Implicit => TlsMode::Implicit(cfg),
            SmarthostTls::Opportunistic => TlsMode::Opportunistic(cfg),
            SmarthostTls::None => TlsMode::None,
        };
        Ok(self.connect_options(settings, hop, tls, auth.clone()))
    }

    fn connect_options(
        &self,
        settings: &Settings,
        hop: &NextHop,
        tls: TlsMode,
        auth: Option<Credentials>,
    ) -> ConnectOptions {
        let d = &settings.config.delivery;
        ConnectOptions {
            helo: settings.helo.clone(),
            server_name: hop.host.clone(),
            tls,
            auth,
            connect_timeout: d.connect_timeout.get(),
            reply_timeout: d.reply_timeout.get(),
            data_timeout: d.data_timeout.get(),
            transcripts: self
                .transcripts
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            policy: None,
        }
    }

    /// One attempt for a job: through its profile, or straight to the
    /// destination's hosts.
    pub async fn deliver(&self, job: &Job<'_>) -> Vec<Outcome> {
        match job.destination {
            Destination::Profile(name) => self.deliver_via_profile(job, name).await,
            _ => {
                let settings = self.settings();
                let hosts =
                    match route::hosts(job.destination, &settings.config, &self.resolver).await {
                        Ok(h) => h,
                        Err(e) => return vec![route_failure(e); job.message.recipients.len()],
                    };
                let signed = match self.signed_content(job, &job.message, &settings).await {
                    Ok(signed) => signed,
                    Err(e) => {
                        let result =
                            AttemptResult::local(Stage::Queue, EnhancedStatus::new(4, 3, 0), e);
                        return vec![
                            Outcome::deferred(result, true, None);
                            job.message.recipients.len()
                        ];
                    }
                };
                let msg = match &signed {
                    Some(content) => Outgoing {
                        body_len: content.len() as u64,
                        body_memory: Some(content),
                        ..job.message
                    },
                    None => job.message,
                };
                let Destination::Mx(domain) = job.destination else {
                    return self
                        .deliver_to_hosts(job, &hosts, &msg, |hop| Ok(self.options(hop)))
                        .await;
                };
                let plan = self.tls_plan(domain, &hosts, &settings).await;
                if plan.is_empty() {
                    return self
                        .deliver_to_hosts(job, &hosts, &msg, |hop| Ok(self.options(hop)))
                        .await;
                }
                self.deliver_under_policy(job, &hosts, &msg, &plan, &settings)
                    .await
            }
        }
    }

    /// The TLS policy facts of `domain`: its MTA-STS policy and its MX
    /// hosts' validated TLSA records, as far as the config asks for them.
    async fn tls_plan(
        &self,
        domain: &str,
        hosts: &[NextHop],
        settings: &Settings,
    ) -> tls_policy::DomainPlan {
        let mut plan = tls_policy::DomainPlan::none(domain);
        let config = &settings.config;
        let now = crate::clock::unix_now();
        if let Some(sts) = &settings.sts {
            let found = sts.lookup(domain, now).await;
            plan.sts = found.policy;
            plan.sts_problem = found.problem;
        }
        if config.delivery.dane.is_on() && config.dns.validating {
            let servers = dane::nameservers(&config.dns.nameservers);
            let wait = config
                .dns
                .timeout
                .map_or(std::time::Duration::from_secs(5), |t| t.get());
            for hop in hosts {
                let answer = dane::lookup(&servers, &hop.host, hop.port, wait).await;
                if answer != dane::Tlsa::Absent {
                    plan.tlsa.insert(hop.host.clone(), answer);
                }
            }
        }
        if let (Some((kind, why)), Some(reports)) = (&plan.sts_problem, &self.tls_reports)
            && config.delivery.tls_rpt
        {
            let key = plan.report_key(TlsPolicyKind::StsEnforce, "");
            reports.record(&key, Some((kind, why)), None, None);
        }
        plan
    }

    /// Delivery to `hosts` under `plan`: hosts the policy rules out are
    /// skipped, each connection's certificate is checked by the policy, and
    /// every attempt's outcome goes into its result and the TLS reports.
    async fn deliver_under_policy(
        &self,
        job: &Job<'_>,
        hosts: &[NextHop],
        msg: &Outgoing<'_>,
        plan: &tls_policy::DomainPlan,
        settings: &Settings,
    ) -> Vec<Outcome> {
        let count = msg.recipients.len();
        let webpki = match &settings.webpki {
            Ok(v) => Arc::clone(v),
            Err(e) => {
                let result =
                    AttemptResult::local(Stage::StartTls, EnhancedStatus::new(4, 7, 5), e.clone());
                return vec![Outcome::deferred(result, true, None); count];
            }
        };
        // Each host's plan once: what is skipped, and how the rest are checked.
        let mut usable = Vec::new();
        let mut skipped = Vec::new();
        let mut checked = std::collections::HashMap::new();
        for hop in hosts {
            match plan.for_host(&hop.host, &webpki) {
                tls_policy::HostPlan::Skip(outcome, key) => {
                    self.report_tls(&key, &outcome, Some(&hop.host), None);
                    skipped.push(outcome);
                }
                tls_policy::HostPlan::Checked(check, tls) => {
                    checked.insert(hop.host.clone(), (check, tls));
                    usable.push(hop.clone());
                }
                tls_policy::HostPlan::Plain => usable.push(hop.clone()),
            }
        }
        if usable.is_empty() {
            // Every MX host is ruled out: wait (RFC 8461 5: never send in
            // the clear or to an unlisted host; the queue retries).
            let outcome = skipped.into_iter().next();
            let text = outcome
                .as_ref()
                .map_or_else(|| "no MX host may be used".to_string(), |o| o.to_string());
            let mut result =
                AttemptResult::local(Stage::StartTls, EnhancedStatus::new(4, 7, 5), text);
            result.tls_policy = outcome.map(Box::new);
            return vec![Outcome::deferred(result, true, None); count];
        }
        self.deliver_to_hosts(job, &usable, msg, |hop| {
            let base = self.options(hop);
            Ok(match checked.get(&hop.host) {
                Some((check, tls)) => ConnectOptions {
                    tls: tls.clone(),
                    policy: Some(Arc::clone(check)),
                    ..base
                },
                None => base,
            })
        })
        .await
    }

    /// Counts one session under a TLS policy, when reports are kept.
    fn report_tls(
        &self,
        key: &crate::tlsrpt::PolicyKey,
        outcome: &TlsPolicyOutcome,
        mx: Option<&str>,
        ip: Option<std::net::IpAddr>,
    ) {
        if let Some(reports) = &self.tls_reports
            && self.settings().config.delivery.tls_rpt
        {
            let failure = outcome
                .failure
                .as_deref()
                .map(|kind| (kind, outcome.detail.as_str()));
            reports.record(key, failure, mx, ip);
        }
    }

    /// The message with its DKIM signatures on top, when it is to be signed
    /// (a trusted source, a From: domain with a key); None otherwise.
    async fn signed_content(
        &self,
        job: &Job<'_>,
        msg: &Outgoing<'_>,
        settings: &Settings,
    ) -> Result<Option<Vec<u8>>, String> {
        if !job.may_sign || settings.dkim.is_empty() {
            return Ok(None);
        }
        let content = content_of(msg).await?;
        let signers = Arc::clone(&settings.dkim);
        // Hashing a large body is CPU work: off the async threads.
        tokio::task::spawn_blocking(move || {
            signers.sign(&content).map(|mut signed| {
                signed.extend_from_slice(&content);
                signed
            })
        })
        .await
        .map_err(|e| format!("signing the message: {e}"))
    }

    /// Tries every host and address in order until one takes `msg`.
    async fn deliver_to_hosts(
        &self,
        job: &Job<'_>,
        hosts: &[NextHop],
        msg: &Outgoing<'_>,
        options: impl Fn(&NextHop) -> Result<ConnectOptions, String>,
    ) -> Vec<Outcome> {
        let all = |o: Outcome| vec![o; msg.recipients.len()];
        let deferred = |result: AttemptResult, counts: bool, known_down: bool| {
            all(Outcome::Deferred {
                result,
                counts,
                known_down,
                retry_at: None,
            })
        };
        let local =
            |text: String| AttemptResult::local(Stage::Queue, EnhancedStatus::new(4, 3, 5), text);
        let mut last = AttemptResult::local(
            Stage::Routing,
            EnhancedStatus::new(4, 4, 1),
            "no server to try",
        );
        // Whether the attempt tells us anything about the destination: a host
        // answered, refused or timed out. Our own network down does not count.
        let mut counts = false;
        // Whether anything new was learnt (a server tried, a lookup that
        // failed), or every address was skipped as remembered down.
        let mut learnt = false;
        let mut skipped = false;
        let hop_count = hosts.len();
        for (hop_index, hop) in hosts.iter().enumerate() {
            let opts = match options(hop) {
                Ok(o) => o,
                Err(e) => return deferred(local(e), true, false),
            };
            let addrs = match self.resolver.addresses(&hop.host).await {
                Ok(a) if !a.is_empty() => a,
                Ok(_) => {
                    last = AttemptResult::local(
                        Stage::Dns,
                        EnhancedStatus::new(4, 4, 4),
                        format!("{} has no address", hop.host),
                    );
                    learnt = true;
                    continue;
                }
                Err(e) => {
                    last = AttemptResult::local(
                        Stage::Dns,
                        EnhancedStatus::new(4, 4, 3),
                        format!("address lookup for {}: {e}", hop.host),
                    );
                    learnt = true;
                    continue;
                }
            };
            let last_hop = hop_index + 1 == hop_count;
            let address_count = addrs.len();
            for (ip_index, ip) in addrs.into_iter().enumerate() {
                let addr = SocketAddr::new(ip, hop.port);
                if let Some(known) = self.down.check(addr) {
                    // Tried moments ago and it did not answer: do not knock again yet.
                    counts = true;
                    skipped = true;
                    last = known;
                    continue;
                }
                learnt = true;
                let attempt = self.try_address(job, msg, &hop.host, addr, &opts).await;
                // Under a TLS policy, the attempt's verdict goes with its result.
                let policy = opts.policy.as_ref().map(|check| {
                    let outcome = check.outcome(attempt.as_ref().err());
                    self.report_tls(&check.report_key, &outcome, Some(&hop.host), Some(ip));
                    outcome
                });
                let e = match attempt {
                    Ok(mut outcomes) => {
                        if let Some(p) = &policy {
                            for o in &mut outcomes {
                                o.result_mut().tls_policy = Some(Box::new(p.clone()));
                            }
                        }
                        return outcomes;
                    }
                    Err(e) => e,
                };
                let mut result = AttemptResult::client_error(&e, &hop.host).with_ip(ip);
                result.tls_policy = policy.map(Box::new);
                if let ClientError::Connect { unreachable, .. } = &e {
                    counts |= !unreachable;
                    self.down.mark(addr, result.clone());
                } else {
                    counts = true;
                }
                let next = if !e.try_next_host() || (last_hop && ip_index + 1 == address_count) {
                    "no other server to try"
                } else {
                    "trying the next server"
                };
                warn!(queue_id = %job.queue_id, to = %msg.recipients.join(","), host = %hop.host, ip = %ip, error = %e, "delivery attempt failed; {next}");
                if !e.try_next_host() {
                    // The sender was refused: another server of the same destination will not differ.
                    return if e.is_permanent() {
                        all(Outcome::Failed(result))
                    } else {
                        deferred(result, true, false)
                    };
                }
                last = result;
            }
        }
        deferred(last, counts, skipped && !learnt)
    }

    /// Sends on a pooled or new connection to `addr`.
    async fn try_address(
        &self,
        job: &Job<'_>,
        msg: &Outgoing<'_>,
        host: &str,
        addr: SocketAddr,
        opts: &ConnectOptions,
    ) -> Result<Vec<Outcome>, ClientError> {
        let key = format!(
            "{addr}|{host}|{}",
            opts.auth.as_ref().map_or("", |a| a.user())
        );
        let started = std::time::Instant::now();
        let mut conn = None;
        let pooled = if opts.policy.is_some() {
            None
        } else {
            self.pool.take(&key)
        };
        if let Some(mut pooled) = pooled {
            match pooled.send(msg).await {
                // The next hop's idea of the session differs from ours (a
                // transaction it still holds, say): never a verdict on this
                // message; it goes on a fresh connection.
                Ok(replies)
                    if !pooled.sent_data()
                        && replies.iter().any(ServerReply::is_out_of_sequence) =>
                {
                    warn!(queue_id = %job.queue_id, host = %host, ip = %addr.ip(), "a reused connection answered 503 (bad sequence); trying a fresh connection");
                }
                Ok(replies) => conn = Some((pooled, replies)),
                Err(e) if pooled.sent_data() => {
                    return Ok(lost_after_content(job, msg, host, addr, &e));
                }
                Err(e) if e.is_out_of_sequence() => {
                    warn!(queue_id = %job.queue_id, host = %host, ip = %addr.ip(), error = %e, "a reused connection answered 503 (bad sequence); trying a fresh connection");
                }
                // A pooled connection the server has since closed: open a new one.
                Err(ClientError::Io(_)) | Err(ClientError::Timeout(_)) => {}
                Err(e) => return Err(e),
            }
        }
        let (conn, replies) = match conn {
            Some(c) => c,
            None => {
                let mut fresh = SmtpConnection::connect(addr, opts).await?;
                info!(host = %host, ip = %addr.ip(), tls = fresh.tls.as_deref().unwrap_or("none"), "next hop connected");
                match fresh.send(msg).await {
                    Ok(replies) => (fresh, replies),
                    Err(e) if fresh.sent_data() => {
                        return Ok(lost_after_content(job, msg, host, addr, &e));
                    }
                    Err(e) => return Err(e),
                }
            }
        };
        let tls = conn.tls.as_deref().unwrap_or("none");
        let outcomes: Vec<Outcome> = replies
            .iter()
            .map(|r| reply_outcome(r, host, addr.ip()))
            .collect();
        for (rcpt, (reply, outcome)) in msg.recipients.iter().zip(replies.iter().zip(&outcomes)) {
            let result = match outcome {
                Outcome::Delivered(_) => "delivered",
                Outcome::Failed(_) => "failed",
                Outcome::Deferred { .. } => "deferred",
            };
            // The queue logs each recipient's outcome; this is the attempt's detail.
            debug!(queue_id = %job.queue_id, to = %rcpt, host = %host, ip = %addr.ip(), tls = %tls, reply = %reply, delay_ms = started.elapsed().as_millis() as u64, "{result}");
        }
        if opts.policy.is_none() {
            self.pool_for_reuse(key, conn).await;
        }
        Ok(outcomes)
    }

    /// Keeps `conn` for the next message to the same next hop, with no
    /// transaction left open on it: a refused MAIL or a pipelined DATA
    /// answered with something other than 354 leaves the next hop holding
    /// the transaction, and the next MAIL would get "503 nested MAIL".
    /// A connection that cannot be reset is closed instead.
    async fn pool_for_reuse(&self, key: String, mut conn: SmtpConnection) {
        if conn.needs_reset()
            && let Err(e) = conn.reset().await
        {
            debug!(error = %e, "a connection could not be reset; not kept for reuse");
            return;
        }
        self.pool.put(key, conn);
    }
}

/// The connection failed after the message content was written: the next
/// hop may have taken it without our hearing the reply. Sending it again at
/// once, on a fresh connection or to another server of the destination,
/// could deliver it twice; it is deferred to the retry schedule instead.
fn lost_after_content(
    job: &Job<'_>,
    msg: &Outgoing<'_>,
    host: &str,
    addr: SocketAddr,
    e: &ClientError,
) -> Vec<Outcome> {
    warn!(queue_id = %job.queue_id, to = %msg.recipients.join(","), host = %host, ip = %addr.ip(), error = %e, "delivery attempt failed after the content was sent (the next hop may have the message); deferred, no other server tried now");
    let result = AttemptResult::client_error(e, host).with_ip(addr.ip());
    vec![Outcome::deferred(result, true, None); msg.recipients.len()]
}

/// A recipient's outcome from the reply to its RCPT (or to the data, for all).
fn reply_outcome(r: &ServerReply, host: &str, ip: std::net::IpAddr) -> Outcome {
    let result = if r.local {
        AttemptResult::local_about(r.step.stage(), r, host)
    } else {
        AttemptResult::reply(r.step.stage(), r, host).with_ip(ip)
    };
    if r.is_ok() {
        Outcome::Delivered(result)
    } else if r.is_permanent() && !r.is_out_of_sequence() {
        Outcome::Failed(result)
    } else {
        Outcome::Deferred {
            result,
            counts: true,
            known_down: false,
            retry_at: None,
        }
    }
}

/// A routing failure as the outcome of each recipient it concerns.
pub fn route_failure(e: RouteError) -> Outcome {
    match e {
        RouteError::Permanent(result) => Outcome::Failed(result),
        RouteError::Temporary(result) => Outcome::Deferred {
            result,
            counts: false,
            known_down: false,
            retry_at: None,
        },
    }
}

/// The message content as it is queued (from memory when the queue has it).
pub(crate) async fn content_of(msg: &Outgoing<'_>) -> Result<Vec<u8>, String> {
    if let Some(bytes) = msg.body_memory.filter(|b| b.len() as u64 == msg.body_len) {
        return Ok(bytes.to_vec());
    }
    let mut content = tokio::fs::read(msg.body_path)
        .await
        .map_err(|e| format!("reading the spooled message: {e}"))?;
    content.truncate(msg.body_len as usize);
    Ok(content)
}
