//! Delivery: our SMTP client, routing (MX, smart hosts, [[route]]), a
//! connection pool, and one attempt that yields a result per recipient.

pub mod client;
pub(crate) mod client_tls;
mod down;
mod downgrade;
mod pool;
pub mod result;
pub mod route;

pub use result::{AttemptResult, Stage};

use crate::config::{Config, NextHop, OutboundTls, SmarthostTls};
use crate::dns::Resolver;
use client::{ClientError, ConnectOptions, Outgoing, ServerReply, SmtpConnection, TlsMode};
use pool::Pool;
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
    },
}

impl Outcome {
    pub fn result(&self) -> &AttemptResult {
        match self {
            Outcome::Delivered(r) | Outcome::Failed(r) | Outcome::Deferred { result: r, .. } => r,
        }
    }
}

/// One message's recipients for one domain.
pub struct Job<'a> {
    pub queue_id: &'a str,
    pub domain: &'a str,
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
}

/// The delivery settings derived from one config.
struct Settings {
    config: Arc<Config>,
    verified_tls: Result<Arc<rustls::ClientConfig>, String>,
    helo: String,
}

impl Settings {
    fn from(config: Arc<Config>) -> Settings {
        let verified_tls = client_tls::verified(config.delivery.smarthost_ca_file.as_deref());
        let helo = config
            .delivery
            .helo_name
            .clone()
            .unwrap_or_else(|| config.hostname());
        Settings {
            config,
            verified_tls,
            helo,
        }
    }
}

impl Deliverer {
    pub fn new(config: Arc<Config>, resolver: Resolver) -> Deliverer {
        Deliverer {
            resolver,
            unverified_tls: client_tls::unverified(),
            pool: Pool::default(),
            down: down::DownHosts::new(down::down_for(&config.delivery.retry_schedule)),
            settings: std::sync::RwLock::new(Arc::new(Settings::from(config))),
            transcripts: std::sync::RwLock::new(None),
        }
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
            Arc::new(Settings::from(config));
    }

    /// Connects to every smart host as a delivery would (TLS, AUTH), says
    /// what each one did, and hangs up without sending anything. For `doctor`.
    pub async fn probe_smarthosts(&self) -> Vec<(String, Result<String, String>)> {
        let dest = Destination::SmartHosts(self.config().delivery.smarthost.clone());
        let auth = match self.smarthost_auth().await {
            Ok(a) => a,
            Err(e) => {
                return self
                    .config()
                    .delivery
                    .smarthost
                    .iter()
                    .map(|h| (format!("{}:{}", h.host, h.port), Err(e.clone())))
                    .collect();
            }
        };
        let mut out = Vec::new();
        for hop in &self.config().delivery.smarthost {
            let name = format!("{}:{}", hop.host, hop.port);
            let result = async {
                let opts = self.options(&dest, hop, &auth)?;
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
                    .map_err(|e| e.to_string())?;
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
            out.push((name, result));
        }
        out
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
            Destination::SmartHosts(_) => Destination::Mx(domain.to_string()),
            other => other,
        };
        let hosts = route::hosts(&dest, &self.config(), &self.resolver)
            .await
            .map_err(|e| format!("{e:?}"))?;
        let mut last = String::from("no next hop to ask");
        for hop in hosts.iter().take(3) {
            let opts = self.options(&dest, hop, &None)?;
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

    /// Forgets which next hops seemed down, so the next attempts knock again.
    pub fn forget_down_hosts(&self) {
        self.down.forget_all();
    }

    pub async fn sweep_idle(&self) {
        self.pool.sweep().await;
    }

    pub async fn close_idle(&self) {
        self.pool.close_all().await;
    }

    /// The smart-host credentials, read once per attempt (the password file may
    /// change while the server runs) and without blocking the async threads.
    async fn smarthost_auth(&self) -> Result<Option<(String, String)>, String> {
        let d = &self.config().delivery;
        let (Some(user), Some(path)) = (&d.smarthost_user, &d.smarthost_password_file) else {
            return Ok(None);
        };
        let pass = tokio::fs::read_to_string(path)
            .await
            .map_err(|e| format!("delivery.smarthost_password_file {}: {e}", path.display()))?;
        Ok(Some((
            user.clone(),
            pass.trim_end_matches(['\r', '\n']).to_string(),
        )))
    }

    /// TLS and AUTH for a connection to `host` of `dest`.
    fn options(
        &self,
        dest: &Destination,
        hop: &NextHop,
        smarthost_auth: &Option<(String, String)>,
    ) -> Result<ConnectOptions, String> {
        let d = &self.config().delivery;
        let host = hop.host.as_str();
        let (tls, auth) = if dest.is_smarthost() {
            let cfg = if d.smarthost_verify {
                self.settings().verified_tls.clone()?
            } else {
                Arc::clone(&self.unverified_tls)
            };
            let tls = match hop.tls_or(d.smarthost_tls) {
                SmarthostTls::Starttls => TlsMode::Required(cfg),
                SmarthostTls::Implicit => TlsMode::Implicit(cfg),
                SmarthostTls::Opportunistic => TlsMode::Opportunistic(cfg),
                SmarthostTls::None => TlsMode::None,
            };
            (tls, smarthost_auth.clone())
        } else {
            let cfg = Arc::clone(&self.unverified_tls);
            let tls = match d.outbound_tls {
                OutboundTls::Opportunistic => TlsMode::Opportunistic(cfg),
                OutboundTls::Required => TlsMode::Required(cfg),
                OutboundTls::None => TlsMode::None,
            };
            (tls, None)
        };
        Ok(ConnectOptions {
            helo: self.settings().helo.clone(),
            server_name: host.to_string(),
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
        })
    }

    /// One attempt for a job: tries every host and address in order until one takes the message.
    pub async fn deliver(&self, job: &Job<'_>) -> Vec<Outcome> {
        let all = |o: Outcome| vec![o; job.message.recipients.len()];
        let deferred = |result: AttemptResult, counts: bool, known_down: bool| {
            all(Outcome::Deferred {
                result,
                counts,
                known_down,
            })
        };
        let local = |text: String| AttemptResult::local(Stage::Queue, "4.3.5", text);
        let dest = match route::destination(job.domain, &self.config()) {
            Ok(d) => d,
            Err(e) => return all(route_failure(e)),
        };
        let hosts = match route::hosts(&dest, &self.config(), &self.resolver).await {
            Ok(h) => h,
            Err(e) => return all(route_failure(e)),
        };
        let msg = &job.message;
        let smarthost_auth = if dest.is_smarthost() {
            match self.smarthost_auth().await {
                Ok(a) => a,
                Err(e) => return deferred(local(e), true, false),
            }
        } else {
            None
        };
        let mut last = AttemptResult::local(Stage::Routing, "4.4.1", "no server to try");
        // Whether the attempt tells us anything about the destination: a host
        // answered, refused or timed out. Our own network down does not count.
        let mut counts = false;
        // Whether anything new was learnt (a server tried, a lookup that
        // failed), or every address was skipped as remembered down.
        let mut learnt = false;
        let mut skipped = false;
        let hop_count = hosts.len();
        for (hop_index, hop) in hosts.iter().enumerate() {
            let opts = match self.options(&dest, hop, &smarthost_auth) {
                Ok(o) => o,
                Err(e) => return deferred(local(e), true, false),
            };
            let addrs = match self.resolver.addresses(&hop.host).await {
                Ok(a) if !a.is_empty() => a,
                Ok(_) => {
                    last = AttemptResult::local(
                        Stage::Dns,
                        "4.4.4",
                        format!("{} has no address", hop.host),
                    );
                    learnt = true;
                    continue;
                }
                Err(e) => {
                    last = AttemptResult::local(
                        Stage::Dns,
                        "4.4.3",
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
                let e = match self.try_address(job, msg, &hop.host, addr, &opts).await {
                    Ok(outcomes) => return outcomes,
                    Err(e) => e,
                };
                let result = AttemptResult::client_error(&e, &hop.host).with_ip(ip);
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
                warn!(queue_id = %job.queue_id, to = %job.message.recipients.join(","), host = %hop.host, ip = %ip, error = %e, "delivery attempt failed; {next}");
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
            opts.auth.as_ref().map_or("", |a| a.0.as_str())
        );
        let started = std::time::Instant::now();
        let mut conn = None;
        if let Some(mut pooled) = self.pool.take(&key) {
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
                Err(e) if pooled.sent_data() => return Ok(lost_after_content(job, host, addr, &e)),
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
                        return Ok(lost_after_content(job, host, addr, &e));
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
        for (rcpt, (reply, outcome)) in job
            .message
            .recipients
            .iter()
            .zip(replies.iter().zip(&outcomes))
        {
            let result = match outcome {
                Outcome::Delivered(_) => "delivered",
                Outcome::Failed(_) => "failed",
                Outcome::Deferred { .. } => "deferred",
            };
            // The queue logs each recipient's outcome; this is the attempt's detail.
            debug!(queue_id = %job.queue_id, to = %rcpt, host = %host, ip = %addr.ip(), tls = %tls, reply = %reply, delay_ms = started.elapsed().as_millis() as u64, "{result}");
        }
        self.pool_for_reuse(key, conn).await;
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
    host: &str,
    addr: SocketAddr,
    e: &ClientError,
) -> Vec<Outcome> {
    warn!(queue_id = %job.queue_id, to = %job.message.recipients.join(","), host = %host, ip = %addr.ip(), error = %e, "delivery attempt failed after the content was sent (the next hop may have the message); deferred, no other server tried now");
    let result = AttemptResult::client_error(e, host).with_ip(addr.ip());
    vec![
        Outcome::Deferred {
            result,
            counts: true,
            known_down: false,
        };
        job.message.recipients.len()
    ]
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
        }
    }
}

fn route_failure(e: RouteError) -> Outcome {
    match e {
        RouteError::Permanent(result) => Outcome::Failed(result),
        RouteError::Temporary(result) => Outcome::Deferred {
            result,
            counts: false,
            known_down: false,
        },
    }
}
