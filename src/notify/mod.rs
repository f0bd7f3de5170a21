//! Webhooks (`[[webhook]]`): the notifier is an event subscriber that turns
//! the events a webhook asked for into signed JSON notifications, keeps each
//! in that webhook's durable outbox (`data_dir/webhooks/NAME/`) before the
//! emitter goes on, and has one sender task per webhook post them. The
//! relay's mail never waits for a receiver: a full outbox drops its oldest
//! notifications (counted), never a message.

mod outbox;
mod payload;
mod sender;
pub mod signature;

pub use outbox::Outbox;
pub use payload::{Notification, kind_of, notification_of};

use crate::config::{Config, WebhookConfig};
use crate::events::{Event, Events, Subscriber};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use tokio_util::sync::CancellationToken;
use tracing::{error, warn};

struct Webhook {
    config: WebhookConfig,
    outbox: Arc<Outbox>,
    target: Arc<RwLock<Arc<sender::Target>>>,
    stop: CancellationToken,
}

pub struct Notifier {
    data_dir: PathBuf,
    resolver: crate::dns::Resolver,
    webhooks: RwLock<HashMap<String, Arc<Webhook>>>,
    metrics: Option<Arc<crate::metrics::Metrics>>,
    /// The fan-out this notifier is part of (to report drops), set once it exists.
    events: OnceLock<Events>,
    stop: CancellationToken,
    /// Serialises `configure` (start and reloads).
    configuring: Mutex<()>,
}

impl Notifier {
    pub fn new(
        data_dir: PathBuf,
        resolver: crate::dns::Resolver,
        metrics: Option<Arc<crate::metrics::Metrics>>,
    ) -> Notifier {
        Notifier {
            data_dir,
            resolver,
            webhooks: RwLock::new(HashMap::new()),
            metrics,
            events: OnceLock::new(),
            stop: CancellationToken::new(),
            configuring: Mutex::new(()),
        }
    }

    /// The outbox directory of a webhook.
    pub fn outbox_dir(data_dir: &std::path::Path, name: &str) -> PathBuf {
        data_dir.join("webhooks").join(name)
    }

    /// Takes the webhooks of `config` (at start and on every reload): new
    /// ones get their outbox and sender, changed ones their new target,
    /// removed ones stop (their outbox stays on disk for a later return).
    /// Must run inside the runtime. Errors name the key.
    pub fn configure(&self, config: &Config, events: &Events) -> Result<(), String> {
        let _once = self.configuring.lock().unwrap_or_else(|p| p.into_inner());
        let _ = self.events.set(events.clone());
        let mut targets = Vec::new();
        for (i, w) in config.webhook.iter().enumerate() {
            targets.push((w, target_of(w, i, &self.resolver)?));
        }
        let mut webhooks = self.webhooks.write().unwrap_or_else(|p| p.into_inner());
        let mut next = HashMap::new();
        for (w, target) in targets {
            let hook = match webhooks.remove(&w.name) {
                Some(old) if old.config.outbox_max_bytes == w.outbox_max_bytes => {
                    *old.target.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(target);
                    Arc::new(Webhook {
                        config: w.clone(),
                        outbox: Arc::clone(&old.outbox),
                        target: Arc::clone(&old.target),
                        stop: old.stop.clone(),
                    })
                }
                old => {
                    if let Some(old) = old {
                        old.stop.cancel();
                    }
                    self.start(w, target)?
                }
            };
            next.insert(w.name.clone(), hook);
        }
        for (_, gone) in webhooks.drain() {
            gone.stop.cancel();
        }
        *webhooks = next;
        Ok(())
    }

    fn start(&self, w: &WebhookConfig, target: sender::Target) -> Result<Arc<Webhook>, String> {
        let dir = Self::outbox_dir(&self.data_dir, &w.name);
        let outbox = Outbox::open(&dir, w.outbox_max_bytes).map_err(|e| {
            format!(
                "webhook {:?}: cannot open its outbox {}: {e}",
                w.name,
                dir.display()
            )
        })?;
        let hook = Arc::new(Webhook {
            config: w.clone(),
            outbox: Arc::new(outbox),
            target: Arc::new(RwLock::new(Arc::new(target))),
            stop: self.stop.child_token(),
        });
        let sender = sender::Sender {
            outbox: Arc::clone(&hook.outbox),
            target: Arc::clone(&hook.target),
            events: self.events.get().cloned().unwrap_or_default(),
            metrics: self.metrics.clone(),
        };
        tokio::spawn(sender.run(hook.stop.clone()));
        Ok(hook)
    }

    /// Stops every sender (at shutdown); what is unsent stays in the outboxes.
    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// Notifications waiting, by webhook (for the admin page and tests).
    pub fn pending(&self) -> Vec<(String, usize)> {
        let webhooks = self.webhooks.read().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<(String, usize)> = webhooks
            .iter()
            .map(|(name, w)| (name.clone(), w.outbox.pending()))
            .collect();
        out.sort();
        out
    }

    fn keep(&self, hook: &Webhook, n: &Notification) {
        let now = crate::clock::unix_now();
        match hook.outbox.append(&n.id, n.kind, now, &n.body) {
            Ok(None) => {}
            Ok(Some(overflow)) => self.report_drop(
                &hook.config.name,
                overflow.dropped,
                "the outbox reached outbox_max_bytes (the receiver has been away long)",
            ),
            Err(e) => {
                error!(webhook = %hook.config.name, error = %e, "cannot keep a notification in the webhook outbox");
                self.report_drop(&hook.config.name, 1, "the outbox could not be written");
            }
        }
    }

    fn report_drop(&self, webhook: &str, count: u64, reason: &'static str) {
        match self.events.get() {
            Some(events) => events.emit(Event::NotificationsDropped {
                webhook: webhook.to_string(),
                count,
                reason,
            }),
            None => warn!(webhook, count, "webhook notifications dropped: {reason}"),
        }
    }
}

impl Subscriber for Notifier {
    fn on_event(&self, event: &Event) {
        let webhooks = self.webhooks.read().unwrap_or_else(|p| p.into_inner());
        if webhooks.is_empty() {
            return;
        }
        let named = match event {
            Event::Alert { webhook, .. } => webhook.as_deref(),
            _ => None,
        };
        let kind = payload::kind_of(event);
        let mut notification = None;
        for hook in webhooks.values() {
            let wanted = kind.is_some_and(|k| hook.config.wants(k))
                || named == Some(hook.config.name.as_str());
            if !wanted {
                continue;
            }
            let n = notification
                .get_or_insert_with(|| notification_of(event, crate::clock::unix_now()));
            if let Some(n) = n {
                self.keep(hook, n);
            }
        }
    }
}

/// Where and how to post for one `[[webhook]]` (the `i`th).
fn target_of(
    w: &WebhookConfig,
    i: usize,
    resolver: &crate::dns::Resolver,
) -> Result<sender::Target, String> {
    let url =
        reqwest::Url::parse(&w.url).map_err(|e| format!("webhook[{i}].url: not a URL: {e}"))?;
    let tls =
        crate::client_tls::verified_with(w.ca_file.as_deref(), &format!("webhook[{i}].ca_file"))?;
    let client = reqwest::Client::builder()
        .use_preconfigured_tls((*tls).clone())
        .dns_resolver(crate::dns::for_http(resolver))
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(std::time::Duration::from_secs(5).min(w.timeout.get()))
        .timeout(w.timeout.get())
        .user_agent(concat!("Portcullis/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| format!("webhook[{i}]: cannot set up HTTP: {e}"))?;
    let secret = w.secret_file.as_ref().map(|path| {
        std::fs::read_to_string(path)
            .map_err(|e| format!("webhook[{i}].secret_file {}: {e}", path.display()))
            .and_then(|text| {
                let key = text.lines().next().unwrap_or("").trim().as_bytes().to_vec();
                if key.is_empty() {
                    Err(format!(
                        "webhook[{i}].secret_file {}: empty",
                        path.display()
                    ))
                } else {
                    Ok(key)
                }
            })
    });
    Ok(sender::Target {
        name: w.name.clone(),
        url,
        client,
        secret,
        retry_for: w.retry_for.get(),
    })
}
