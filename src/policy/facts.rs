//! What the checks found, handed to the staged policy as plain data: the
//! session (or `explain`) does the lookups, the policy only reads them.

/// The answer of one DNS-based check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// Passed, with what was found.
    Pass(String),
    /// Failed for sure, with why.
    Fail(String),
    /// The DNS could not answer (timeout, SERVFAIL).
    DnsError(String),
}

/// What the DNS black and white lists said of the client.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListFindings {
    /// The first white list that lists the client.
    pub whitelisted: Option<String>,
    /// Black lists that list it: zone and the reason it gives (TXT).
    pub listed: Vec<(String, Option<String>)>,
    /// Zones that could not be asked.
    pub failed: Vec<String>,
}

/// Counts the rate limits are judged by (within the last hour).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RateFacts {
    pub messages_from_ip: u64,
    pub messages_from_user: u64,
    pub recipients_from_ip: u64,
    /// Messages counted under the client's `[[policy]]` rule (per login,
    /// or per address for a network rule), when it has `messages_per_hour`.
    pub messages_under_policy: u64,
}

/// Everything the checks found about a client so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckFacts {
    pub lists: Option<ListFindings>,
    pub reverse_dns: Option<Lookup>,
    pub helo: Option<Lookup>,
    pub sender_domain: Option<Lookup>,
    /// For the recipient being judged: what recipient verification found.
    pub recipient: Option<Lookup>,
    pub rates: RateFacts,
}
