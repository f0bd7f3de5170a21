//! Reviewing a candidate configuration: the same validation and audit as
//! `check-config` and `audit`, and the refusals of the Settings page — a
//! risk the current file does not have (an open relay, the router trusted,
//! an invalid key), turning on `allow_open_relay` (a decision for the file
//! only), locking the saving admin out of the page, or a change a reload
//! cannot apply.

use crate::config::Config;
use crate::diagnostics::audit::{self, Finding, Machine, Severity};

/// What the review found.
pub struct Review {
    /// The candidate, when it parses.
    pub config: Option<Config>,
    /// Every finding, the gravest first.
    pub findings: Vec<Finding>,
    /// The findings that forbid saving it.
    pub refusals: Vec<Finding>,
}

impl Review {
    pub fn ok(&self) -> bool {
        self.refusals.is_empty()
    }
}

fn refusal(key: &str, message: String, fix: &str) -> Finding {
    Finding {
        severity: Severity::Risk,
        key: key.to_string(),
        message,
        fix: fix.to_string(),
    }
}

/// Reviews `text` as the next configuration, saved by `user`, against
/// `current` (what runs now).
pub fn review(text: &str, current: &Config, user: &str, machine: &Machine) -> Review {
    let config: Config = match toml::from_str(text) {
        Ok(c) => c,
        Err(e) => {
            let f = refusal(
                "toml",
                crate::config::parse_error_text(&e, text),
                "correct the line the message names",
            );
            return Review {
                config: None,
                findings: vec![f.clone()],
                refusals: vec![f],
            };
        }
    };
    let findings = audit::audit(&config, machine);
    let known: Vec<(String, String)> = audit::audit(current, machine)
        .into_iter()
        .filter(|f| f.severity == Severity::Risk)
        .map(|f| (f.key, f.message))
        .collect();
    // A risk the running file already has is not this change's doing.
    let mut refusals: Vec<Finding> = findings
        .iter()
        .filter(|f| f.severity == Severity::Risk)
        .filter(|f| !known.contains(&(f.key.clone(), f.message.clone())))
        .cloned()
        .collect();
    if config.relay.allow_open_relay && !current.relay.allow_open_relay {
        refusals.push(refusal(
            "relay.allow_open_relay",
            "turning on allow_open_relay is a decision for the configuration file, not the page"
                .into(),
            "leave it off; if you truly run a relay for everyone, set it in the file itself",
        ));
    }
    lock_out(&config, current, user, &mut refusals);
    if config.server.data_dir != current.server.data_dir {
        refusals.push(refusal(
            "server.data_dir",
            "the data directory cannot change while the server runs".into(),
            "change it in the file and restart the server",
        ));
    }
    if config.server.node_id != current.server.node_id {
        refusals.push(refusal(
            "server.node_id",
            "the node id cannot change while the server runs".into(),
            "change it in the file and restart the server",
        ));
    }
    let mut all = findings;
    for r in &refusals {
        if !all.iter().any(|f| f.key == r.key && f.message == r.message) {
            all.push(r.clone());
        }
    }
    all.sort_by_key(|f| std::cmp::Reverse(f.severity));
    Review {
        config: Some(config),
        findings: all,
        refusals,
    }
}

/// The admin saving must still reach the page and log in afterwards.
fn lock_out(config: &Config, current: &Config, user: &str, out: &mut Vec<Finding>) {
    if config.admin.address.is_none() && current.admin.address.is_some() {
        out.push(refusal(
            "admin.address",
            "removing it turns the admin page off at the next restart: you would lock yourself out"
                .into(),
            "keep admin.address; turn the page off in the file itself if you mean to",
        ));
    }
    if !config.admin.users.iter().any(|u| u == user) {
        out.push(refusal(
            "admin.users",
            format!("{user:?} is not in the new list: you would lock yourself out of the page"),
            "keep your own name in admin.users",
        ));
    }
    let users = crate::users::UserDb::new(config.users_file());
    if !matches!(users.hash_and_generation(user), Ok((Some(_), _))) {
        out.push(refusal(
            "auth.users_file",
            format!(
                "{user:?} has no password in {}: you could not log in again",
                config.users_file().display()
            ),
            "keep a users file that holds your login",
        ));
    }
}
