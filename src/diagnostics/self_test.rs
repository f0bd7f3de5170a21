//! The open-relay self-test at start (`[diagnostics] self_test_on_start`):
//! the relay-test battery against our own smtp listeners, from a local
//! address the policy does not trust, as a stranger would try. Test messages
//! a faulty setup let through are deleted from the queue again.

use super::relay_test::{self, DEFAULT_FROM, DEFAULT_TO, Options, Report, Verdict};
use crate::app::Context;
use crate::config::ListenerKind;
use crate::policy::{ClientFacts, Policy};
use crate::queue::{QueueCommand, QueueHandle, Selector};
use crate::spool::QueueId;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;
use tracing::{error, info};

/// Tests every smtp listener. Err when the server relayed for a stranger and
/// the configuration does not say that is meant.
pub async fn run(
    ctx: &Context,
    listeners: &[(SocketAddr, ListenerKind)],
    queue: &QueueHandle,
) -> Result<(), String> {
    for &(addr, kind) in listeners {
        if kind != ListenerKind::Smtp {
            continue; // submission and smtps take nothing without AUTH
        }
        let Some((report, source)) = test_listener(ctx, addr, kind, queue, &|_| {}).await else {
            info!(listener = %addr, "open-relay self-test skipped: no local address outside the trusted networks to test from");
            continue;
        };
        judge(&report, addr, source, ctx.config.relay.allow_open_relay)?;
    }
    Ok(())
}

/// The battery against one of our listeners from a local address the
/// policy does not trust (None: there is none), each result handed to
/// `on_test` as it comes; test messages that got through are deleted.
pub async fn test_listener(
    ctx: &Context,
    addr: SocketAddr,
    kind: ListenerKind,
    queue: &QueueHandle,
    on_test: &(dyn Fn(&relay_test::TestResult) + Sync),
) -> Option<(Report, IpAddr)> {
    let target = SocketAddr::new(reachable(addr.ip()), addr.port());
    let source = untrusted_source(&ctx.policy, target.ip(), kind)?;
    {
        let opts = Options {
            target,
            host: target.ip().to_string(),
            from: DEFAULT_FROM.into(),
            to: DEFAULT_TO.into(),
            helo: "self-test.portcullis-relay-test.example".into(),
            source_ip: Some(source),
            starttls: false,
            timeout: Duration::from_secs(10),
            // Whole transactions, as a stranger would send them; whatever
            // got through is deleted below.
            stop_before_data: false,
        };
        let report = relay_test::run_reporting(&opts, on_test).await;
        // Alerts (open_relay) and the log learn the outcome as a fact.
        ctx.events.emit(crate::events::Event::SelfTestFinished {
            listener: addr,
            relayed: report
                .tests
                .iter()
                .filter(|t| t.verdict == Verdict::Relayed)
                .map(|t| t.name.clone())
                .collect(),
            tests: report.tests.len(),
        });
        // Whatever got through must not be delivered.
        for id in accepted_test_messages(&report) {
            queue
                .command(QueueCommand::Delete {
                    select: Selector::Id(id),
                })
                .await;
        }
        Some((report, source))
    }
}

/// Logs the verdict; Err when something relayed and that is not allowed.
fn judge(
    report: &Report,
    addr: SocketAddr,
    source: IpAddr,
    allow_open_relay: bool,
) -> Result<(), String> {
    let relayed: Vec<&str> = report
        .tests
        .iter()
        .filter(|t| t.verdict == Verdict::Relayed)
        .map(|t| t.name.as_str())
        .collect();
    if relayed.is_empty() {
        info!(
            listener = %addr,
            source = %source,
            refused = report.refused,
            could_not_run = report.errors,
            "open-relay self-test passed: every relay attempt from a stranger's address was refused"
        );
        return Ok(());
    }
    let what = format!(
        "OPEN-RELAY SELF-TEST FAILED on {addr}: from {source}, {} of {} attempts were relayed ({})",
        relayed.len(),
        report.tests.len(),
        relayed.join(", ")
    );
    if allow_open_relay {
        error!("{what} (relay.allow_open_relay = true, so serving goes on)");
        Ok(())
    } else {
        Err(what)
    }
}

/// Where to reach a listener bound to the unspecified address: loopback.
fn reachable(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
        other => other,
    }
}

/// A local address to test from that the policy lets connect but does not
/// trust: for an IPv4 target, any of 127.0.0.2-254 (this machine reaches its
/// own addresses from loopback ones too), else the target's own address.
pub fn untrusted_source(policy: &Policy, target: IpAddr, kind: ListenerKind) -> Option<IpAddr> {
    let loopback_seats = (2..=254u8).map(|n| IpAddr::V4(Ipv4Addr::new(127, 0, 0, n)));
    let candidates: Vec<IpAddr> = match target {
        IpAddr::V4(v4) if v4.is_loopback() => loopback_seats.collect(),
        IpAddr::V4(_) => std::iter::once(target).chain(loopback_seats).collect(),
        other => vec![other],
    };
    candidates.into_iter().find(|&ip| {
        !policy.is_trusted(ip) && policy.connect(&ClientFacts::new(ip, kind)).is_accept()
    })
}

/// The test messages the server queued (relayed ones, and the one for its
/// own postmaster), by the queue ID in each final reply: to be deleted.
pub fn accepted_test_messages(report: &Report) -> Vec<QueueId> {
    // The reply to the final dot is followed by the one to RSET: look at each.
    report
        .tests
        .iter()
        .filter_map(|t| {
            t.replies
                .iter()
                .rev()
                .filter(|r| r.starts_with('2'))
                .find_map(|r| queued_id(r))
        })
        .collect()
}

/// The queue ID in "250 2.0.0 Ok: queued as ID".
fn queued_id(reply: &str) -> Option<QueueId> {
    reply.rsplit(' ').next().and_then(QueueId::parse)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diagnostics::relay_test::TestResult;

    fn report(verdicts: &[Verdict]) -> Report {
        let tests: Vec<TestResult> = verdicts
            .iter()
            .map(|&verdict| TestResult {
                name: format!("{verdict:?}"),
                verdict,
                commands: Vec::new(),
                replies: Vec::new(),
                note: String::new(),
                token: String::new(),
            })
            .collect();
        Report {
            host: "h".into(),
            server_name: "h".into(),
            relayed: verdicts.iter().filter(|v| **v == Verdict::Relayed).count(),
            refused: verdicts.iter().filter(|v| **v == Verdict::Refused).count(),
            errors: 0,
            tests,
        }
    }

    #[test]
    fn a_relay_stops_the_server_unless_allowed() {
        let addr: SocketAddr = "127.0.0.1:25".parse().unwrap();
        let source: IpAddr = "127.0.0.2".parse().unwrap();
        let closed = report(&[Verdict::Refused, Verdict::Refused]);
        assert!(judge(&closed, addr, source, false).is_ok());
        let open = report(&[Verdict::Refused, Verdict::Relayed]);
        let err = judge(&open, addr, source, false).unwrap_err();
        assert!(
            err.contains("1 of 2 attempts were relayed (Relayed)"),
            "{err}"
        );
        assert!(judge(&open, addr, source, true).is_ok());
    }

    #[test]
    fn accepted_test_messages_are_found_before_the_rset_reply() {
        let mut r = report(&[Verdict::Relayed, Verdict::Refused]);
        r.tests[0].replies = vec![
            "220 relay.test".into(),
            "250 2.0.0 Ok: queued as 0660F51D07EB16000000".into(),
            "250 2.0.0 Ok".into(),
        ];
        r.tests[1].replies = vec![
            "220 relay.test".into(),
            "554 5.7.1 Relay access denied".into(),
        ];
        let ids = accepted_test_messages(&r);
        assert_eq!(ids.len(), 1);
        assert_eq!(ids[0].to_string(), "0660F51D07EB16000000");
    }

    #[test]
    fn queue_ids_come_from_the_final_reply() {
        assert!(queued_id("250 2.0.0 Ok: queued as 0660F51D07EB16000000").is_some());
        assert!(queued_id("554 5.7.1 Relay access denied").is_none());
    }
}
