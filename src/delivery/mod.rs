//! Delivery: our SMTP client, routing (MX, smart hosts, [[route]]), a
//! connection pool, and one attempt that yields a result per recipient.

pub mod client;
mod client_tls;
mod pool;
pub mod route;

use crate::config::{Config, OutboundTls, SmarthostTls};
use crate::dns::Resolver;
use client::{ClientError, ConnectOptions, Outgoing, ServerReply, SmtpConnection, TlsMode};
use pool::Pool;
use route::{Destination, RouteError};
use std::net::SocketAddr;
use std::sync::Arc;
use tracing::{info, warn};

/// What became of one recipient in one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Delivered {
        host: String,
        reply: String,
    },
    /// Bounce. The text starts with the reply or enhanced code.
    Failed {
        reason: String,
        remote: Option<String>,
    },
    /// Try again later; `counts` is false for DNS trouble or an unreachable
    /// network, which do not use up the retry schedule.
    Deferred {
        reason: String,
        counts: bool,
    },
}

/// One message's recipients for one domain.
pub struct Job<'a> {
    pub queue_id: &'a str,
    pub domain: &'a str,
    pub message: Outgoing<'a>,
}

pub struct Deliverer {
    pub config: Arc<Config>,
    resolver: Resolver,
    verified_tls: Result<Arc<rustls::ClientConfig>, String>,
    unverified_tls: Arc<rustls::ClientConfig>,
    pool: Pool,
    helo: String,
}

impl Deliverer {
    pub fn new(config: Arc<Config>, resolver: Resolver) -> Deliverer {
        let verified_tls = client_tls::verified(config.delivery.smarthost_ca_file.as_deref());
        let helo = config
            .delivery
            .helo_name
            .clone()
            .unwrap_or_else(|| config.hostname());
        Deliverer {
            resolver,
            verified_tls,
            unverified_tls: client_tls::unverified(),
            pool: Pool::default(),
            helo,
            config,
        }
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
        let d = &self.config.delivery;
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
        host: &str,
        smarthost_auth: &Option<(String, String)>,
    ) -> Result<ConnectOptions, String> {
        let d = &self.config.delivery;
        let (tls, auth) = if dest.is_smarthost() {
            let cfg = if d.smarthost_verify {
                self.verified_tls.clone()?
            } else {
                Arc::clone(&self.unverified_tls)
            };
            let tls = match d.smarthost_tls {
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
            helo: self.helo.clone(),
            server_name: host.to_string(),
            tls,
            auth,
            connect_timeout: d.connect_timeout.get(),
            reply_timeout: d.reply_timeout.get(),
            data_timeout: d.data_timeout.get(),
        })
    }

    /// One attempt for a job: tries every host and address in order until one takes the message.
    pub async fn deliver(&self, job: &Job<'_>) -> Vec<Outcome> {
        let all = |o: Outcome| vec![o; job.message.recipients.len()];
        let dest = match route::destination(job.domain, &self.config) {
            Ok(d) => d,
            Err(e) => return all(route_failure(e)),
        };
        let hosts = match route::hosts(&dest, &self.config, &self.resolver).await {
            Ok(h) => h,
            Err(e) => return all(route_failure(e)),
        };
        let msg = &job.message;
        let smarthost_auth = if dest.is_smarthost() {
            match self.smarthost_auth().await {
                Ok(a) => a,
                Err(e) => {
                    return all(Outcome::Deferred {
                        reason: format!("4.3.5 {e}"),
                        counts: true,
                    });
                }
            }
        } else {
            None
        };
        let mut last_error = String::from("4.4.1 no server to try");
        let mut reached = false;
        for hop in &hosts {
            let opts = match self.options(&dest, &hop.host, &smarthost_auth) {
                Ok(o) => o,
                Err(e) => {
                    return all(Outcome::Deferred {
                        reason: format!("4.3.5 {e}"),
                        counts: true,
                    });
                }
            };
            let addrs = match self.resolver.addresses(&hop.host).await {
                Ok(a) if !a.is_empty() => a,
                Ok(_) => {
                    last_error = format!("4.4.4 {} has no address", hop.host);
                    continue;
                }
                Err(e) => {
                    last_error = format!("4.4.3 address lookup for {}: {e}", hop.host);
                    continue;
                }
            };
            for ip in addrs {
                let addr = SocketAddr::new(ip, hop.port);
                match self.try_address(job, msg, &hop.host, addr, &opts).await {
                    Ok(outcomes) => return outcomes,
                    Err((e, connected)) => {
                        reached |= connected;
                        warn!(queue_id = %job.queue_id, to = %job.message.recipients.join(","), host = %hop.host, ip = %ip, error = %e, "delivery attempt failed; trying the next server");
                        if e.is_permanent() && !e.try_next_host() {
                            return all(Outcome::Failed {
                                reason: e.to_string(),
                                remote: Some(hop.host.clone()),
                            });
                        }
                        last_error = format!("4.4.1 {}[{ip}]: {e}", hop.host);
                        if !e.try_next_host() {
                            return all(Outcome::Deferred {
                                reason: last_error,
                                counts: true,
                            });
                        }
                    }
                }
            }
        }
        all(Outcome::Deferred {
            reason: last_error,
            counts: reached,
        })
    }

    /// Sends on a pooled or new connection to `addr`. On failure, says whether the server was reached.
    async fn try_address(
        &self,
        job: &Job<'_>,
        msg: &Outgoing<'_>,
        host: &str,
        addr: SocketAddr,
        opts: &ConnectOptions,
    ) -> Result<Vec<Outcome>, (ClientError, bool)> {
        let key = format!(
            "{addr}|{host}|{}",
            opts.auth.as_ref().map_or("", |a| a.0.as_str())
        );
        let started = std::time::Instant::now();
        let mut conn = None;
        if let Some(mut pooled) = self.pool.take(&key) {
            match pooled.send(msg).await {
                Ok(replies) => conn = Some((pooled, replies)),
                // A pooled connection the server has since closed: open a new one.
                Err(ClientError::Io(_)) | Err(ClientError::Timeout(_)) => {}
                Err(e) => return Err((e, true)),
            }
        }
        let (conn, replies) = match conn {
            Some(c) => c,
            None => {
                let mut fresh = SmtpConnection::connect(addr, opts).await.map_err(|e| {
                    let reached = !matches!(e, ClientError::Connect(..));
                    (e, reached)
                })?;
                let replies = fresh.send(msg).await.map_err(|e| (e, true))?;
                (fresh, replies)
            }
        };
        let tls = conn.tls.clone().unwrap_or_else(|| "none".into());
        let outcomes: Vec<Outcome> = replies.iter().map(|r| reply_outcome(r, host)).collect();
        for (rcpt, (reply, outcome)) in job
            .message
            .recipients
            .iter()
            .zip(replies.iter().zip(&outcomes))
        {
            let result = match outcome {
                Outcome::Delivered { .. } => "delivered",
                Outcome::Failed { .. } => "failed",
                Outcome::Deferred { .. } => "deferred",
            };
            info!(queue_id = %job.queue_id, to = %rcpt, host = %host, ip = %addr.ip(), tls = %tls, reply = %reply, delay_ms = started.elapsed().as_millis() as u64, "{result}");
        }
        self.pool.put(key, conn);
        Ok(outcomes)
    }
}

fn reply_outcome(r: &ServerReply, host: &str) -> Outcome {
    if r.is_ok() {
        Outcome::Delivered {
            host: host.to_string(),
            reply: r.to_string(),
        }
    } else if r.is_permanent() {
        Outcome::Failed {
            reason: r.to_string(),
            remote: Some(host.to_string()),
        }
    } else {
        Outcome::Deferred {
            reason: r.to_string(),
            counts: true,
        }
    }
}

fn route_failure(e: RouteError) -> Outcome {
    match e {
        RouteError::Permanent(reason) => Outcome::Failed {
            reason,
            remote: None,
        },
        RouteError::Temporary(reason) => Outcome::Deferred {
            reason,
            counts: false,
        },
    }
}
