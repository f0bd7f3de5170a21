//! The spam-through guard.
//!
//! NAT sentinel: a trusted address that presents many HELO names and many
//! sender domains within a window is not one office machine but the Internet
//! arriving through a router, NAT or proxy inside a trusted range; it loses
//! its trust (AUTH is needed from then on), the admin is alerted, and the
//! decision and its evidence are kept in `data_dir/guard.json` (across
//! restarts; `portcullis guard` lists and changes it).
//!
//! Flood hold (`flood.rs`): a source (address or user) that sends to far
//! more distinct recipient domains than its usual, or whose mail bounces a
//! lot, is a compromised device or password; its further mail is held in the
//! queue (or refused, or only logged). Delivery results reach it as events.

mod flood;

pub use flood::{Flood, Outcomes};

use crate::config::GuardConfig;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Sources and addresses watched at once before the oldest are forgotten.
const MAX_WATCHED: usize = 10_000;
/// Observations kept per watched address.
const MAX_SEEN: usize = 1_000;

/// Why an address lost its trust.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Untrusted {
    /// Seconds since the epoch.
    pub since: i64,
    pub evidence: String,
}

/// What survives a restart.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuardState {
    pub untrusted: BTreeMap<IpAddr, Untrusted>,
    /// Addresses an admin trusted again: the sentinel leaves them be.
    pub trusted_by_admin: BTreeSet<IpAddr>,
}

impl GuardState {
    pub fn load(path: &std::path::Path) -> GuardState {
        std::fs::read(path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// Replaces the state file atomically and durably (an admin's `guard
    /// trust` must survive a crash as surely as the decision it undoes).
    pub fn save(&self, path: &std::path::Path) -> std::io::Result<()> {
        let json = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        crate::fsio::replace(path, &json, crate::fsio::NewFile::PRIVATE)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Seen {
    Helo { name: String, public: bool },
    Sender(String),
}

/// Where the guard's decisions are kept: a file in `data_dir` now; a store
/// several nodes share later, without the rest noticing. The running server
/// is its one writer (`portcullis guard` asks it through the control
/// socket, and writes the file itself only when no server runs).
pub trait GuardStore: Send + Sync {
    /// The state as stored now.
    fn load(&self) -> GuardState;
    /// Replaces the stored state (synced).
    fn save(&self, state: &GuardState) -> std::io::Result<()>;
}

/// `data_dir/guard.json`, replaced atomically and synced.
pub struct FileStore(pub PathBuf);

impl GuardStore for FileStore {
    fn load(&self) -> GuardState {
        GuardState::load(&self.0)
    }
    fn save(&self, state: &GuardState) -> std::io::Result<()> {
        state.save(&self.0)
    }
}

pub struct Guard {
    /// The thresholds; a reload replaces them (what was seen is kept).
    config: std::sync::RwLock<GuardConfig>,
    /// None: decisions live in memory only (tests, tools).
    store: Option<Box<dyn GuardStore>>,
    /// The state, read from the store at first use (None until then).
    state: Mutex<Option<GuardState>>,
    sentinel: Mutex<HashMap<IpAddr, Watched>>,
    floods: flood::FloodWatch,
    /// Addresses whose decision changed here since the cluster last took
    /// them (None: not in a cluster, nothing is kept).
    shared_changes: Mutex<Option<BTreeSet<IpAddr>>>,
}

/// What the guard decided about one address, as the nodes share it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    pub untrusted: Option<Untrusted>,
    pub trusted_by_admin: bool,
}

impl Guard {
    pub fn new(config: GuardConfig, data_dir: Option<PathBuf>) -> Guard {
        Guard {
            config: std::sync::RwLock::new(config),
            store: data_dir
                .map(|d| Box::new(FileStore(d.join("guard.json"))) as Box<dyn GuardStore>),
            state: Mutex::new(None),
            sentinel: Mutex::new(HashMap::new()),
            floods: flood::FloodWatch::default(),
            shared_changes: Mutex::new(None),
        }
    }

    /// From now on, keeps which decisions change and which recipient
    /// domains each source writes to, for the other nodes.
    pub fn share_changes(&self) {
        self.shared_changes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert_with(BTreeSet::new);
        self.floods.share_observations();
    }

    /// The (source, recipient domain) pairs seen here since the last call.
    pub fn take_shared_observations(&self) -> Vec<(String, String)> {
        self.floods.take_observations()
    }

    /// A recipient domain another node saw `source` write to.
    pub fn observe_elsewhere(&self, source: &str, domain: &str) {
        self.floods
            .observe_elsewhere(&self.config(), source, domain)
    }

    /// The delivery outcomes of each source whose outcomes changed here
    /// since the last call (within this node's window).
    pub fn take_shared_outcomes(&self) -> Vec<(String, Outcomes)> {
        self.floods.take_outcomes()
    }

    /// Another node's outcomes of `source`'s mail, counting for `counts_for`.
    pub fn outcomes_elsewhere(
        &self,
        source: &str,
        node: i16,
        outcomes: Outcomes,
        counts_for: std::time::Duration,
    ) {
        self.floods
            .outcomes_elsewhere(&self.config(), source, node, outcomes, counts_for)
    }

    /// The fate of one recipient of `source`'s mail (`failed`: it bounced).
    pub fn record_outcome(&self, source: &str, failed: bool) {
        self.floods.record_outcome(&self.config(), source, failed)
    }

    /// The flood window: how long a shared observation counts.
    pub fn flood_window(&self) -> std::time::Duration {
        self.config().flood_window.get()
    }

    /// The decisions changed here since the last call.
    pub fn take_shared_changes(&self) -> Vec<(IpAddr, Decision)> {
        let changed = match self
            .shared_changes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_mut()
        {
            Some(changed) => std::mem::take(changed),
            None => return Vec::new(),
        };
        self.with_state(|s| {
            changed
                .into_iter()
                .map(|ip| (ip, Self::decision_in(s, ip)))
                .collect()
        })
    }

    fn decision_in(state: &GuardState, ip: IpAddr) -> Decision {
        Decision {
            untrusted: state.untrusted.get(&ip).cloned(),
            trusted_by_admin: state.trusted_by_admin.contains(&ip),
        }
    }

    /// Takes a decision another node made (kept here, not sent back).
    pub fn adopt(&self, ip: IpAddr, decision: Decision) {
        if self.with_state(|s| Self::decision_in(s, ip) == decision) {
            return;
        }
        let untrusted = decision.untrusted.is_some();
        self.change(|s| {
            match decision.untrusted {
                Some(u) => s.untrusted.insert(ip, u),
                None => s.untrusted.remove(&ip),
            };
            if decision.trusted_by_admin {
                s.trusted_by_admin.insert(ip);
            } else {
                s.trusted_by_admin.remove(&ip);
            }
        });
        if untrusted {
            self.sentinel
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&ip);
        }
    }

    fn changed_here(&self, ip: IpAddr) {
        if let Some(changed) = self
            .shared_changes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_mut()
        {
            changed.insert(ip);
        }
    }

    fn config(&self) -> GuardConfig {
        self.config
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Takes reloaded thresholds.
    pub fn reconfigure(&self, config: GuardConfig) {
        *self.config.write().unwrap_or_else(|p| p.into_inner()) = config;
    }

    /// The state, read from the store the first time.
    fn with_state<T>(&self, f: impl FnOnce(&mut GuardState) -> T) -> T {
        let mut cached = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let state = cached.get_or_insert_with(|| {
            self.store
                .as_ref()
                .map(|store| store.load())
                .unwrap_or_default()
        });
        f(state)
    }

    /// Changes the state and saves it before anyone sees it again: saves
    /// never overtake each other (trust and untrust are rare; the sync is
    /// worth the short wait).
    fn change(&self, f: impl FnOnce(&mut GuardState)) {
        self.with_state(|state| {
            f(state);
            if let Some(store) = &self.store
                && let Err(e) = store.save(state)
            {
                tracing::error!(error = %e, "cannot record the guard's state");
            }
        })
    }

    /// Whether the sentinel withdrew this address's trust.
    pub fn is_untrusted(&self, ip: IpAddr) -> bool {
        self.with_state(|s| s.untrusted.contains_key(&ip))
    }

    /// When the sentinel (or an admin) withdrew this address's trust, in
    /// Unix seconds.
    pub fn untrusted_since(&self, ip: IpAddr) -> Option<i64> {
        self.with_state(|s| s.untrusted.get(&ip).map(|u| u.since))
    }

    /// Whether the address lost its trust less than `nat_tempfail` ago:
    /// its relay attempts are answered 451 (retried) rather than 554 then,
    /// so that an office host taken for a NAT loses no mail while the
    /// admin looks.
    pub fn untrusted_recently(&self, ip: IpAddr) -> bool {
        let grace = self.config().nat_tempfail.get().as_secs() as i64;
        self.untrusted_since(ip)
            .is_some_and(|since| chrono::Utc::now().timestamp() - since < grace)
    }

    /// Records a HELO name of a trusted address. Reserved names (RFC 2606,
    /// RFC 6761: .test, .example, .invalid, .localhost, example.com…) are
    /// what test tools and sample configs say, never Internet traffic: not
    /// counted.
    pub fn observe_helo(&self, ip: IpAddr, name: &str) -> Option<String> {
        if is_reserved_name(name) {
            return None;
        }
        self.observe(
            ip,
            Seen::Helo {
                name: name.to_lowercase(),
                public: looks_public(name),
            },
        )
    }

    /// Records an envelope sender domain of a trusted address (reserved
    /// domains are not counted, as for HELO).
    pub fn observe_sender(&self, ip: IpAddr, domain: &str) -> Option<String> {
        if is_reserved_name(domain) {
            return None;
        }
        self.observe(ip, Seen::Sender(domain.to_lowercase()))
    }

    /// Records what a trusted address presented; the evidence when this
    /// made it lose its trust.
    fn observe(&self, ip: IpAddr, seen: Seen) -> Option<String> {
        if self.with_state(|s| s.trusted_by_admin.contains(&ip) || s.untrusted.contains_key(&ip)) {
            return None;
        }
        let now = Instant::now();
        let config = self.config();
        let window = config.nat_window.get();
        let evidence = {
            let mut watch = self.sentinel.lock().unwrap_or_else(|p| p.into_inner());
            if watch.len() >= MAX_WATCHED {
                watch.retain(|_, w| {
                    w.recent
                        .back()
                        .is_some_and(|(t, _)| now.duration_since(*t) < window)
                });
            }
            let watched = watch.entry(ip).or_default();
            // A name first seen before this window is familiar: a web server's
            // sites or an app's domains come back, hour after hour, while the
            // Internet behind a NAT keeps bringing names never seen before.
            watched.note_first_sighting(&seen, now);
            let Watched {
                recent: q,
                first_seen,
            } = watched;
            // Only the latest sighting of each name counts: an office that
            // always says the same keeps a short list, cheap to scan.
            if let Some(old) = q.iter().position(|(_, s)| *s == seen) {
                q.remove(old);
            }
            q.push_back((now, seen));
            while q
                .front()
                .is_some_and(|(t, _)| now.duration_since(*t) >= window)
                || q.len() > MAX_SEEN
            {
                q.pop_front();
            }
            let mut helos = BTreeSet::new();
            let mut public = BTreeSet::new();
            let mut senders = BTreeSet::new();
            let novel = q
                .iter()
                .filter(|(_, s)| !familiar(first_seen, s, now, window))
                .map(|(_, s)| s);
            for s in novel {
                match s {
                    Seen::Helo { name, public: p } => {
                        helos.insert(name.clone());
                        if *p {
                            public.insert(name.clone());
                        }
                    }
                    Seen::Sender(d) => {
                        senders.insert(d.clone());
                    }
                }
            }
            let c = &config;
            let tripped = helos.len() >= c.nat_helo_names
                && (senders.len() >= c.nat_sender_domains || public.len() >= c.nat_public_helos);
            if !tripped {
                return None;
            }
            let sample =
                |set: &BTreeSet<String>| set.iter().take(5).cloned().collect::<Vec<_>>().join(", ");
            format!(
                "within {}: {} HELO names ({} of them public: {}), {} sender domains ({})",
                c.nat_window,
                helos.len(),
                public.len(),
                sample(&public),
                senders.len(),
                sample(&senders)
            )
        };
        self.untrust(ip, &evidence);
        Some(evidence)
    }

    /// Withdraws trust (the sentinel, or an admin).
    pub fn untrust(&self, ip: IpAddr, evidence: &str) {
        self.change(|s| {
            s.trusted_by_admin.remove(&ip);
            s.untrusted.insert(
                ip,
                Untrusted {
                    since: chrono::Utc::now().timestamp(),
                    evidence: evidence.to_string(),
                },
            );
        });
        self.sentinel
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&ip);
        self.changed_here(ip);
    }

    /// Trusts again, and remembers that an admin said so.
    pub fn trust(&self, ip: IpAddr) {
        self.change(|s| {
            s.untrusted.remove(&ip);
            s.trusted_by_admin.insert(ip);
        });
        self.changed_here(ip);
    }

    pub fn state(&self) -> GuardState {
        self.with_state(|s| s.clone())
    }

    /// Records a relayed recipient domain of `source`; Some while the
    /// source is flooding (see `flood.rs`).
    pub fn observe_recipient(&self, source: &str, domain: &str) -> Option<Flood> {
        self.floods
            .observe_recipient(&self.config(), source, domain)
    }
}

/// Delivery results teach the flood hold which sources' mail bounces.
impl crate::events::Subscriber for Guard {
    fn on_event(&self, event: &crate::events::Event) {
        use crate::events::{DeliveryState, Event};
        if let Event::Delivery {
            source: Some(source),
            state,
            ..
        } = event
        {
            match state {
                DeliveryState::Delivered => self.record_outcome(source, false),
                DeliveryState::Failed => self.record_outcome(source, true),
                DeliveryState::Deferred | DeliveryState::Expired => {}
            }
        }
    }
}

/// What the sentinel remembers of one trusted address.
#[derive(Default)]
struct Watched {
    /// The names seen within the window, each at its latest sighting.
    recent: VecDeque<(Instant, Seen)>,
    /// When each name was first seen (at most MAX_FAMILIAR, oldest dropped).
    first_seen: HashMap<Seen, Instant>,
}

/// Names remembered per address for familiarity.
const MAX_FAMILIAR: usize = 256;

impl Watched {
    fn note_first_sighting(&mut self, seen: &Seen, now: Instant) {
        if self.first_seen.contains_key(seen) {
            return;
        }
        if self.first_seen.len() >= MAX_FAMILIAR
            && let Some(oldest) = self
                .first_seen
                .iter()
                .min_by_key(|(_, t)| **t)
                .map(|(s, _)| s.clone())
        {
            self.first_seen.remove(&oldest);
        }
        self.first_seen.insert(seen.clone(), now);
    }
}

/// Seen already before the current window.
fn familiar(
    first_seen: &HashMap<Seen, Instant>,
    seen: &Seen,
    now: Instant,
    window: Duration,
) -> bool {
    first_seen
        .get(seen)
        .is_some_and(|first| now.duration_since(*first) >= window)
}

/// Names reserved for tests, documentation and local use (RFC 2606, RFC
/// 6761): no Internet mail server or sender uses them.
pub fn is_reserved_name(name: &str) -> bool {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    const RESERVED_TLDS: &[&str] = &["test", "example", "invalid", "localhost"];
    const RESERVED_DOMAINS: &[&str] = &["example.com", "example.net", "example.org"];
    let tld = name.rsplit('.').next().unwrap_or_default();
    RESERVED_TLDS.contains(&tld)
        || RESERVED_DOMAINS
            .iter()
            .any(|d| name == *d || name.ends_with(&format!(".{d}")))
}

/// A HELO name an Internet mail server would give: a dotted name under a
/// public-looking top-level domain, not an address literal or a LAN suffix.
pub fn looks_public(name: &str) -> bool {
    let name = name.trim_end_matches('.').to_lowercase();
    if name.starts_with('[') || name.parse::<IpAddr>().is_ok() {
        return false;
    }
    let Some((_, tld)) = name.rsplit_once('.') else {
        return false;
    };
    const LOCAL: &[&str] = &[
        "local",
        "lan",
        "home",
        "internal",
        "localdomain",
        "corp",
        "intranet",
        "localhost",
        "arpa",
        "private",
    ];
    tld.len() >= 2 && tld.chars().all(|c| c.is_ascii_alphabetic()) && !LOCAL.contains(&tld)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_names() {
        assert!(looks_public("mail.example.com"));
        assert!(
            !looks_public("printer.lan") && !looks_public("PC-12") && !looks_public("[10.0.0.1]")
        );
    }

    #[test]
    fn one_machine_keeps_its_trust_and_a_crowd_loses_it() {
        let dir = tempfile::tempdir().unwrap();
        let g = Guard::new(GuardConfig::default(), Some(dir.path().to_path_buf()));
        let office: IpAddr = "192.168.1.40".parse().unwrap();
        for _ in 0..100 {
            assert!(g.observe_helo(office, "pc40.office.lan").is_none());
            assert!(g.observe_sender(office, "office.example").is_none());
        }
        let router: IpAddr = "192.168.1.1".parse().unwrap();
        let mut tripped = None;
        for i in 0..60 {
            tripped = tripped.or(g.observe_helo(router, &format!("mx{i}.sender{i}.com")));
            tripped = tripped.or(g.observe_sender(router, &format!("sender{i}.com")));
        }
        assert!(tripped.unwrap().contains("HELO names"));
        assert!(g.is_untrusted(router) && !g.is_untrusted(office));
        // Kept across a restart; an admin can trust it again.
        let again = Guard::new(GuardConfig::default(), Some(dir.path().to_path_buf()));
        assert!(again.is_untrusted(router));
        again.trust(router);
        assert!(!again.is_untrusted(router));
        assert!(
            again.observe_helo(router, "a.b.com").is_none(),
            "an admin's word holds"
        );
    }

    #[test]
    fn reserved_names_are_never_counted() {
        for name in [
            "relay.test",
            "mx.example",
            "host.invalid",
            "localhost",
            "a.localhost",
            "example.com",
            "mail.example.org",
            "EXAMPLE.NET.",
        ] {
            assert!(is_reserved_name(name), "{name}");
        }
        for name in [
            "mail.example.de",
            "examplecom.com",
            "test.com",
            "contoso.com",
        ] {
            assert!(!is_reserved_name(name), "{name}");
        }
        let g = Guard::new(GuardConfig::default(), None);
        let admin: IpAddr = "192.168.1.5".parse().unwrap();
        for i in 0..200 {
            assert!(g.observe_helo(admin, &format!("host{i}.test")).is_none());
            assert!(
                g.observe_sender(admin, &format!("d{i}.example.com"))
                    .is_none()
            );
        }
        assert!(!g.is_untrusted(admin));
    }

    #[test]
    fn a_web_server_with_several_sites_keeps_its_trust() {
        let g = Guard::new(GuardConfig::default(), None);
        let web: IpAddr = "192.168.1.20".parse().unwrap();
        // Seven sites, each saying its own name and sending as its own domain, round after round.
        for _round in 0..20 {
            for site in 0..7 {
                assert!(
                    g.observe_helo(web, &format!("www.site{site}.com"))
                        .is_none()
                );
                assert!(g.observe_sender(web, &format!("site{site}.com")).is_none());
            }
        }
        assert!(!g.is_untrusted(web));
    }

    #[test]
    fn familiar_names_do_not_count_again() {
        let config = GuardConfig {
            nat_window: crate::config::ConfigDuration(Duration::from_millis(30)),
            ..GuardConfig::default()
        };
        let g = Guard::new(config, None);
        let host: IpAddr = "192.168.1.21".parse().unwrap();
        // Eleven sites, then after the window eleven more of the same plus
        // one new: the old ones are familiar, so only one name is new.
        for site in 0..11 {
            assert!(
                g.observe_helo(host, &format!("www.site{site}.com"))
                    .is_none()
            );
            assert!(g.observe_sender(host, &format!("site{site}.com")).is_none());
        }
        std::thread::sleep(Duration::from_millis(40));
        for site in 0..12 {
            assert!(
                g.observe_helo(host, &format!("www.site{site}.com"))
                    .is_none()
            );
            assert!(g.observe_sender(host, &format!("site{site}.com")).is_none());
        }
        assert!(!g.is_untrusted(host));
    }

    #[test]
    fn a_fresh_decision_is_recent_and_a_later_one_is_not() {
        let g = Guard::new(GuardConfig::default(), None);
        let ip: IpAddr = "192.168.1.1".parse().unwrap();
        assert!(!g.untrusted_recently(ip));
        g.untrust(ip, "test");
        assert!(g.untrusted_recently(ip));
        let g = Guard::new(
            GuardConfig {
                nat_tempfail: crate::config::ConfigDuration::secs(0),
                ..GuardConfig::default()
            },
            None,
        );
        g.untrust(ip, "test");
        assert!(g.is_untrusted(ip) && !g.untrusted_recently(ip));
    }

    #[test]
    fn what_one_writer_saved_is_what_the_next_one_reads() {
        let dir = tempfile::tempdir().unwrap();
        let server = std::sync::Arc::new(Guard::new(
            GuardConfig::default(),
            Some(dir.path().to_path_buf()),
        ));
        // Admin commands racing each other: each save holds the state's
        // lock, so the file ends as the memory does.
        let threads: Vec<_> = (0..8u8)
            .map(|i| {
                let g = std::sync::Arc::clone(&server);
                std::thread::spawn(move || {
                    let ip = IpAddr::from([192, 168, 1, i]);
                    g.untrust(ip, "untrusted by an admin");
                    if i % 2 == 0 {
                        g.trust(ip);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let next = Guard::new(GuardConfig::default(), Some(dir.path().to_path_buf()));
        assert_eq!(next.state(), server.state());
        assert_eq!(next.state().untrusted.len(), 4);
        assert_eq!(next.state().trusted_by_admin.len(), 4);
    }
}
