//! What a candidate configuration changes for real traffic: `explain` for a
//! few sample clients — the LAN, the router, an Internet address, a logged-in
//! user, and any address the admin names — under the running configuration
//! and under the candidate, side by side.

use crate::config::{Config, NetworkAuth};
use crate::diagnostics::explain::{self, Question, Verdict};
use serde::Serialize;
use std::net::IpAddr;

/// An Internet address for the sample (documentation range, RFC 5737).
const INTERNET: &str = "203.0.113.7";

#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub verdict: Verdict,
    pub reply: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// Who the sample is ("the router 192.168.1.1").
    pub client: String,
    pub ip: IpAddr,
    pub auth: Option<String>,
    pub before: Outcome,
    pub after: Outcome,
    pub changed: bool,
}

fn ask(config: &Config, ip: IpAddr, auth: Option<&str>) -> Outcome {
    let q = Question {
        ip,
        listener: None,
        helo: "client.example".into(),
        auth: auth.map(str::to_string),
        tls: auth.is_some(),
        smtputf8: false,
        from: "someone@example.com".into(),
        to: vec!["someone@example.net".into()],
        checks: Default::default(),
        recipient_checks: Vec::new(),
    };
    let e = explain::explain(config, &q);
    Outcome {
        verdict: e.verdict,
        reply: e.reply,
    }
}

/// A host address inside the first trusted range of either config.
fn lan_sample(configs: [&Config; 2]) -> Option<IpAddr> {
    configs
        .iter()
        .flat_map(|c| c.network.iter())
        .filter(|n| n.auth == NetworkAuth::None)
        .map(|n| n.range.net())
        .find(|r| r.prefix_len() < r.max_prefix_len())
        .and_then(|r| r.hosts().nth(9))
}

/// The samples, each before and after. `extra`: addresses the admin typed.
pub fn preview(
    before: &Config,
    after: &Config,
    gateways: &[IpAddr],
    user: Option<&str>,
    extra: &[IpAddr],
) -> Vec<Row> {
    let mut samples: Vec<(String, IpAddr, Option<String>)> = Vec::new();
    if let Some(ip) = lan_sample([before, after]) {
        samples.push((format!("a LAN client {ip}"), ip, None));
    }
    for g in gateways {
        samples.push((format!("the router {g}"), *g, None));
    }
    let internet: IpAddr = INTERNET.parse().expect("literal");
    samples.push((format!("an Internet address {internet}"), internet, None));
    if let Some(u) = user {
        samples.push((
            format!("{u} logged in from the Internet"),
            internet,
            Some(u.to_string()),
        ));
    }
    for ip in extra {
        samples.push((format!("{ip}"), *ip, None));
    }
    samples
        .into_iter()
        .map(|(client, ip, auth)| {
            let b = ask(before, ip, auth.as_deref());
            let a = ask(after, ip, auth.as_deref());
            Row {
                changed: b.verdict != a.verdict || b.reply != a.reply,
                client,
                ip,
                auth,
                before: b,
                after: a,
            }
        })
        .collect()
}
