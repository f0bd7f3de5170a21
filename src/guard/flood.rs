//! The flood hold's bookkeeping, per source (client address or AUTH user):
//! the distinct recipient domains written to within the window, a learnt
//! baseline of that spread, and the fate of the source's deliveries.
//!
//! A source is flooding when, within the window:
//! - it reaches more distinct recipient domains than its allowance: the
//!   larger of `flood_recipient_domains` and `flood_baseline_factor` times
//!   its usual spread per window, never above `flood_recipient_domains_max`
//!   (volume alone never counts: an app server's thousands of messages to
//!   one domain are normal); or
//! - its mail bounces: at least `flood_min_failures` recipients failed
//!   permanently and they are at least `flood_failure_rate` of its outcomes
//!   (spam to harvested addresses bounces; a real sender's mail mostly does not).
//!
//! The baseline is an exponential average of the spread per window. A
//! window with a flood teaches it only up to the allowance then in force and
//! at a quarter of the usual rate: a sender that is really wide (a newsletter
//! host) earns its allowance after a window or two, while an attacker who
//! keeps flooding raises it by about a tenth per window, alerted and held
//! all along, and never beyond `flood_recipient_domains_max`.

use crate::config::GuardConfig;
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Sources watched at once before the idle ones are forgotten.
const MAX_SOURCES: usize = 10_000;
/// Distinct domains remembered per source and window.
const MAX_DOMAINS: usize = 10_000;
/// Weight of the newest window in the baseline.
const LEARNING_RATE: f64 = 0.2;
/// The same, for a window that held a flood.
const FLOOD_LEARNING_RATE: f64 = 0.05;

/// A flood was found: the source and what gave it away.
#[derive(Debug, Clone, PartialEq)]
pub struct Flood {
    pub source: String,
    /// Distinct recipient domains within the window.
    pub domains: usize,
    /// True the first time in a window (alert once).
    pub new: bool,
    /// Why, in words.
    pub reason: String,
    /// The recipient's domain is one the source wrote to in earlier, quiet
    /// windows: its usual mail, which goes on while the new domains are
    /// held (an outsider making an office application mail addresses of
    /// his choosing must not stop the application's real mail).
    pub usual_domain: bool,
}

/// Domains remembered per source as its usual ones.
const MAX_USUAL: usize = 1_000;
/// How long a usual domain is remembered without being written to.
const USUAL_FOR: Duration = Duration::from_secs(30 * 86_400);

#[derive(Debug)]
struct Source {
    /// Each recipient domain and when it was last written to.
    domains: HashMap<String, Instant>,
    /// The current tumbling window, for the baseline.
    window_start: Instant,
    flooded_this_window: bool,
    /// Usual distinct domains per window; None until one window ended.
    baseline: Option<f64>,
    /// When the last alert was given.
    alerted: Option<Instant>,
    /// Delivery outcomes within the current outcome window.
    outcomes_start: Instant,
    outcomes: Outcomes,
    /// In a cluster: each other node's outcomes of this source's mail
    /// within its window, until the time they stop counting.
    outcomes_elsewhere: HashMap<i16, (Outcomes, Instant)>,
    /// Set when its mail bounces too much: when, and the evidence.
    bouncing: Option<(Instant, String)>,
    last_seen: Instant,
    /// Domains written to in earlier windows without a flood, and when last.
    usual: HashMap<String, Instant>,
}

impl Source {
    fn new(now: Instant) -> Source {
        Source {
            domains: HashMap::new(),
            window_start: now,
            flooded_this_window: false,
            baseline: None,
            alerted: None,
            outcomes_start: now,
            outcomes: Outcomes::default(),
            outcomes_elsewhere: HashMap::new(),
            bouncing: None,
            last_seen: now,
            usual: HashMap::new(),
        }
    }

    /// Ends the tumbling window when its time is up, learning from it.
    fn roll(&mut self, c: &GuardConfig, now: Instant) {
        if now.duration_since(self.window_start) < c.flood_window.get() {
            return;
        }
        let mut spread = self
            .domains
            .values()
            .filter(|t| **t >= self.window_start)
            .count() as f64;
        let rate = if self.flooded_this_window {
            spread = spread.min(self.allowance(c) as f64);
            FLOOD_LEARNING_RATE
        } else {
            // A quiet window's domains are the source's usual ones.
            self.usual.retain(|_, t| now.duration_since(*t) < USUAL_FOR);
            for (d, t) in &self.domains {
                if *t >= self.window_start
                    && (self.usual.len() < MAX_USUAL || self.usual.contains_key(d))
                {
                    self.usual.insert(d.clone(), *t);
                }
            }
            LEARNING_RATE
        };
        self.baseline = Some(match self.baseline {
            None => spread,
            Some(b) => b + rate * (spread - b),
        });
        self.window_start = now;
        self.flooded_this_window = false;
    }

    fn allowance(&self, c: &GuardConfig) -> usize {
        let learnt = self
            .baseline
            .map_or(0, |b| (b * c.flood_baseline_factor).ceil() as usize);
        c.flood_recipient_domains
            .max(learnt)
            .min(c.flood_recipient_domains_max)
    }
}

/// How a source's mail fared within a window: recipients delivered, and
/// recipients failed permanently (bounced).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Outcomes {
    pub delivered: u32,
    pub failed: u32,
}

/// Recipient domains (and sources with new outcomes) noted for the other
/// nodes of a cluster, at most (beyond, the newest are not shared until the
/// next round takes them).
const MAX_SHARED: usize = 100_000;

/// What this node saw since the cluster last took it.
#[derive(Default)]
struct ForOtherNodes {
    /// (source, recipient domain) pairs.
    pairs: HashSet<(String, String)>,
    /// Sources whose delivery outcomes changed.
    outcomes: HashSet<String>,
}

#[derive(Default)]
pub struct FloodWatch {
    sources: Mutex<HashMap<String, Source>>,
    /// In a cluster: what the other nodes are to learn (None: not in a
    /// cluster, nothing is kept).
    shared: Mutex<Option<ForOtherNodes>>,
}

impl FloodWatch {
    /// Records a relayed recipient domain of `source`; Some while the
    /// source is flooding. Cost per call: the source's distinct domains, not
    /// its volume.
    pub fn observe_recipient(&self, c: &GuardConfig, source: &str, domain: &str) -> Option<Flood> {
        if let Some(shared) = self.shared().as_mut()
            && shared.pairs.len() < MAX_SHARED
        {
            shared
                .pairs
                .insert((source.to_string(), domain.to_lowercase()));
        }
        self.with_source(c, source, |s, now, window| {
            s.observe(c, source, domain, now, window)
        })
    }

    fn shared(&self) -> std::sync::MutexGuard<'_, Option<ForOtherNodes>> {
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// From now on, keeps the recipient domains seen and the sources whose
    /// outcomes changed, for the other nodes.
    pub fn share_observations(&self) {
        self.shared().get_or_insert_with(Default::default);
    }

    /// The (source, domain) pairs seen here since the last call.
    pub fn take_observations(&self) -> Vec<(String, String)> {
        self.shared()
            .as_mut()
            .map(|s| std::mem::take(&mut s.pairs).into_iter().collect())
            .unwrap_or_default()
    }

    /// The outcomes within this node's window of each source whose
    /// outcomes changed here since the last call.
    pub fn take_outcomes(&self) -> Vec<(String, Outcomes)> {
        let changed = self
            .shared()
            .as_mut()
            .map(|s| std::mem::take(&mut s.outcomes))
            .unwrap_or_default();
        let sources = self.sources.lock().unwrap_or_else(|p| p.into_inner());
        changed
            .into_iter()
            .filter_map(|source| {
                let outcomes = sources.get(&source)?.outcomes;
                Some((source, outcomes))
            })
            .collect()
    }

    /// Another node's outcomes of `source`'s mail within its window: they
    /// count with this node's for `counts_for`, and may show the source's
    /// mail bouncing.
    pub fn outcomes_elsewhere(
        &self,
        c: &GuardConfig,
        source: &str,
        node: i16,
        outcomes: Outcomes,
        counts_for: Duration,
    ) {
        self.with_source(c, source, |s, now, _| {
            if s.outcomes_elsewhere.len() < usize::from(u8::MAX)
                || s.outcomes_elsewhere.contains_key(&node)
            {
                s.outcomes_elsewhere
                    .insert(node, (outcomes, now + counts_for));
            }
            s.judge_outcomes(c, now);
        })
    }

    /// A recipient domain another node saw `source` write to: it counts
    /// towards the source's spread here (a sender spread over the nodes is
    /// judged by all it does), and the next observation here judges it.
    pub fn observe_elsewhere(&self, c: &GuardConfig, source: &str, domain: &str) {
        self.with_source(c, source, |s, now, window| s.note(c, domain, now, window))
    }

    /// Runs `f` on `source`'s record (made when new) under the lock, with
    /// the time and the window.
    fn with_source<T>(
        &self,
        c: &GuardConfig,
        source: &str,
        f: impl FnOnce(&mut Source, Instant, Duration) -> T,
    ) -> T {
        let now = Instant::now();
        let window = c.flood_window.get();
        let mut sources = self.sources.lock().unwrap_or_else(|p| p.into_inner());
        forget_idle(&mut sources, now, window);
        let s = sources
            .entry(source.to_string())
            .or_insert_with(|| Source::new(now));
        s.last_seen = now;
        f(s, now, window)
    }

    /// Records the fate of one recipient of `source`'s mail (`failed`: a
    /// permanent failure, which becomes a bounce).
    pub fn record_outcome(&self, c: &GuardConfig, source: &str, failed: bool) {
        if let Some(shared) = self.shared().as_mut()
            && shared.outcomes.len() < MAX_SHARED
        {
            shared.outcomes.insert(source.to_string());
        }
        self.with_source(c, source, |s, now, window| s.record(c, failed, now, window))
    }
}

impl Source {
    fn observe(
        &mut self,
        c: &GuardConfig,
        source: &str,
        domain: &str,
        now: Instant,
        window: Duration,
    ) -> Option<Flood> {
        self.roll(c, now);
        self.domains.retain(|_, t| now.duration_since(*t) < window);
        let domain = domain.to_lowercase();
        if self.domains.len() < MAX_DOMAINS || self.domains.contains_key(&domain) {
            self.domains.insert(domain.clone(), now);
        }
        let allowance = self.allowance(c);
        let reason = if self.domains.len() > allowance {
            format!(
                "{} recipient domains within {} (allowed {allowance}{})",
                self.domains.len(),
                c.flood_window,
                match self.baseline {
                    Some(b) => format!("; usual {b:.0}"),
                    None => String::new(),
                }
            )
        } else {
            match &self.bouncing {
                Some((since, why)) if now.duration_since(*since) < window => why.clone(),
                _ => return None,
            }
        };
        self.flooded_this_window = true;
        let new = self.alerted.is_none_or(|t| now.duration_since(t) >= window);
        if new {
            self.alerted = Some(now);
        }
        let usual_domain = match self.usual.get_mut(&domain) {
            Some(t) => {
                *t = now;
                true
            }
            None => false,
        };
        Some(Flood {
            source: source.to_string(),
            domains: self.domains.len(),
            new,
            reason,
            usual_domain,
        })
    }

    /// Counts `domain` within the window without judging.
    fn note(&mut self, c: &GuardConfig, domain: &str, now: Instant, window: Duration) {
        self.roll(c, now);
        self.domains.retain(|_, t| now.duration_since(*t) < window);
        let domain = domain.to_lowercase();
        if self.domains.len() < MAX_DOMAINS || self.domains.contains_key(&domain) {
            self.domains.insert(domain, now);
        }
    }

    fn record(&mut self, c: &GuardConfig, failed: bool, now: Instant, window: Duration) {
        if now.duration_since(self.outcomes_start) >= window {
            self.outcomes_start = now;
            self.outcomes = Outcomes::default();
        }
        if failed {
            self.outcomes.failed += 1;
        } else {
            self.outcomes.delivered += 1;
        }
        self.judge_outcomes(c, now);
    }

    /// Marks the source bouncing when its outcomes here and on the other
    /// nodes (those still counting) show it.
    fn judge_outcomes(&mut self, c: &GuardConfig, now: Instant) {
        self.outcomes_elsewhere.retain(|_, (_, until)| *until > now);
        let (mut failed, mut delivered) = (self.outcomes.failed, self.outcomes.delivered);
        for (o, _) in self.outcomes_elsewhere.values() {
            failed = failed.saturating_add(o.failed);
            delivered = delivered.saturating_add(o.delivered);
        }
        let total = failed.saturating_add(delivered);
        if c.flood_min_failures > 0
            && failed >= c.flood_min_failures
            && f64::from(failed) >= c.flood_failure_rate * f64::from(total)
        {
            self.bouncing = Some((
                now,
                format!(
                    "{failed} of its last {total} recipients failed permanently within {}",
                    c.flood_window
                ),
            ));
        }
    }
}

/// Keeps the map bounded: sources idle for a window are forgotten first.
fn forget_idle(sources: &mut HashMap<String, Source>, now: Instant, window: Duration) {
    if sources.len() >= MAX_SOURCES {
        sources.retain(|_, s| now.duration_since(s.last_seen) < window);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ConfigDuration;

    fn config(window_ms: u64) -> GuardConfig {
        GuardConfig {
            flood_window: ConfigDuration(Duration::from_millis(window_ms)),
            ..GuardConfig::default()
        }
    }

    #[test]
    fn spread_is_a_flood_volume_is_not() {
        let c = GuardConfig::default();
        let w = FloodWatch::default();
        for _ in 0..2000 {
            assert!(w.observe_recipient(&c, "app", "customer.example").is_none());
        }
        let floods: Vec<Flood> = (0..300)
            .filter_map(|i| w.observe_recipient(&c, "pc", &format!("d{i}.example")))
            .collect();
        assert_eq!(floods.len(), 300 - 30);
        assert_eq!(floods.iter().filter(|f| f.new).count(), 1, "alerted once");
    }

    #[test]
    fn a_wide_sender_learns_its_own_allowance() {
        let c = config(40);
        let w = FloodWatch::default();
        // A newsletter host: 50 domains every window is its normal.
        let mut held = 0;
        for round in 0..6 {
            for i in 0..50 {
                if w.observe_recipient(&c, "news", &format!("r{round}-{i}.example"))
                    .is_some()
                {
                    held += 1;
                }
            }
            std::thread::sleep(Duration::from_millis(45));
        }
        // The first window is over the default allowance; later ones are not.
        assert!(held > 0 && held <= 20, "held {held}");
        let later = (0..60)
            .filter(|i| {
                w.observe_recipient(&c, "news", &format!("late{i}.example"))
                    .is_some()
            })
            .count();
        assert_eq!(later, 0, "60 domains is within 3x its usual 50");
        // Never beyond the absolute cap, whatever it learnt.
        let burst = (0..2000)
            .filter(|i| {
                w.observe_recipient(&c, "news", &format!("b{i}.example"))
                    .is_some()
            })
            .count();
        assert!(burst >= 2000 - c.flood_recipient_domains_max, "{burst}");
    }

    #[test]
    fn an_application_keeps_sending_its_usual_mail_during_a_flood() {
        let c = config(40);
        let w = FloodWatch::default();
        // A quiet window: the app writes to its three usual domains.
        for d in ["office.example", "partner.example", "bank.example"] {
            assert!(w.observe_recipient(&c, "app", d).is_none());
        }
        std::thread::sleep(Duration::from_millis(45));
        // An outsider makes it mail 40 domains of his choosing.
        let floods: Vec<Flood> = (0..40)
            .filter_map(|i| w.observe_recipient(&c, "app", &format!("victim{i}.example")))
            .collect();
        assert!(!floods.is_empty() && floods.iter().all(|f| !f.usual_domain));
        // Meanwhile its usual mail is recognised as such.
        let usual = w
            .observe_recipient(&c, "app", "partner.example")
            .expect("still flooding");
        assert!(usual.usual_domain);
        // A source without a quiet window behind it has no usual domains.
        let fresh: Vec<Flood> = (0..40)
            .filter_map(|i| w.observe_recipient(&c, "new", &format!("d{i}.example")))
            .collect();
        assert!(fresh.iter().all(|f| !f.usual_domain));
    }

    #[test]
    fn bouncing_mail_is_a_flood_too() {
        let c = GuardConfig::default();
        let w = FloodWatch::default();
        for _ in 0..(c.flood_min_failures - 1) {
            w.record_outcome(&c, "pc", true);
        }
        assert!(
            w.observe_recipient(&c, "pc", "one.example").is_none(),
            "not yet"
        );
        w.record_outcome(&c, "pc", true);
        let f = w
            .observe_recipient(&c, "pc", "one.example")
            .expect("bouncing");
        assert!(f.reason.contains("failed permanently"), "{}", f.reason);
        // A sender whose mail mostly arrives is not flagged by a few bounces.
        for i in 0..200 {
            w.record_outcome(&c, "app", i % 10 == 0);
        }
        assert!(w.observe_recipient(&c, "app", "x.example").is_none());
    }
}
