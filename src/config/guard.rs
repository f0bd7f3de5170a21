//! `[guard]`: the run-time defences that configuration alone cannot give —
//! the NAT sentinel and the outbound flood hold.

use super::ConfigDuration;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum GuardMode {
    /// Accept a flood's mail but hold it in the queue (the sender learns nothing).
    #[default]
    Hold,
    /// Answer 451 4.7.1 to the flood's recipients.
    Refuse,
    /// Only log and alert.
    Log,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct GuardConfig {
    /// What to do with an outbound flood.
    pub mode: GuardMode,
    /// The sentinel's window over what a trusted address presents.
    pub nat_window: ConfigDuration,
    /// Distinct HELO names from one trusted address within the window that,
    /// with `nat_sender_domains` (or `nat_public_helos`), cost it its trust.
    /// A PC, printer or app server uses one or two names for years.
    pub nat_helo_names: usize,
    /// Distinct envelope sender domains within the window (see nat_helo_names).
    /// An office machine sends as one or a few domains.
    pub nat_sender_domains: usize,
    /// HELO names that are fully qualified public names, within the window:
    /// LAN machines say their local name; Internet mail servers say public ones.
    pub nat_public_helos: usize,
    /// For this long after the sentinel took an address's trust, its relay
    /// attempts get 451 4.7.1 (the mail is retried) instead of 554, so that
    /// an office host taken for a NAT loses nothing while the admin looks.
    pub nat_tempfail: ConfigDuration,
    /// The flood hold's window.
    pub flood_window: ConfigDuration,
    /// Distinct recipient domains one source may send to within the window
    /// before its mail is held: the sign of a flood is spread, not volume
    /// (an app server's thousands of messages to one domain are normal).
    pub flood_recipient_domains: usize,
    /// A source that usually reaches many domains (a newsletter host) may
    /// reach this many times its learnt usual spread per window.
    pub flood_baseline_factor: f64,
    /// The allowance never grows beyond this, whatever was learnt.
    pub flood_recipient_domains_max: usize,
    /// Permanent failures of a source's recipients within the window that,
    /// at `flood_failure_rate` of its outcomes or more, mark a flood (spam to
    /// harvested addresses bounces). 0 turns this off.
    pub flood_min_failures: u32,
    /// The share of failed recipients (0 to 1) that, with enough failures, marks a flood.
    pub flood_failure_rate: f64,
}

impl Default for GuardConfig {
    fn default() -> Self {
        GuardConfig {
            mode: GuardMode::Hold,
            nat_window: ConfigDuration::secs(600),
            // A web server with a dozen sites, each saying its own name and
            // sending as its own domain, keeps its trust; the Internet behind
            // a NAT brings new names by the dozen.
            nat_helo_names: 12,
            nat_sender_domains: 12,
            nat_public_helos: 10,
            nat_tempfail: ConfigDuration::secs(4 * 3600),
            flood_window: ConfigDuration::secs(600),
            flood_recipient_domains: 30,
            flood_baseline_factor: 3.0,
            flood_recipient_domains_max: 500,
            flood_min_failures: 20,
            flood_failure_rate: 0.5,
        }
    }
}
