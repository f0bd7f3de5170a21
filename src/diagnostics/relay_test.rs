//! The open-relay test battery: full SMTP transactions that try every known
//! way of getting a stranger's mail relayed — foreign and spoofed senders, the
//! percent hack, bang paths, source routes, quoted local parts, IP literals,
//! trailing dots, case and unqualified forms, postmaster variants, with and
//! without STARTTLS, and a recipient named in the headers only. Each test
//! goes up to the message and its final dot, carrying a unique token, so a
//! relayed test message can be recognised where it lands. One host per run:
//! a self-test, not a scanner.

use super::probe::{Answer, Probe};
use serde::Serialize;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// The default recipient: a reserved name (RFC 2606) that can never be delivered.
pub const DEFAULT_TO: &str = "relay-test@portcullis-relay-test.example";
pub const DEFAULT_FROM: &str = "relay-tester@portcullis-relay-test.example";

#[derive(Debug, Clone)]
pub struct Options {
    pub target: SocketAddr,
    /// The host as the admin named it (for TLS and the report).
    pub host: String,
    pub from: String,
    pub to: String,
    pub helo: String,
    pub source_ip: Option<IpAddr>,
    /// Every test over STARTTLS (the battery also runs one test each way regardless).
    pub starttls: bool,
    pub timeout: Duration,
    /// End each test with RSET once the recipient is accepted, before DATA:
    /// for a target on this machine, whose queue must not fill with test
    /// messages to be delivered. An accepted recipient is the verdict then.
    pub stop_before_data: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Refused,
    Relayed,
    Error,
}

#[derive(Debug, Clone, Serialize)]
pub struct TestResult {
    pub name: String,
    pub verdict: Verdict,
    pub commands: Vec<String>,
    pub replies: Vec<String>,
    /// Why the verdict, in words.
    pub note: String,
    /// The token carried by the test message.
    pub token: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub host: String,
    pub server_name: String,
    pub tests: Vec<TestResult>,
    pub relayed: usize,
    pub refused: usize,
    pub errors: usize,
}

impl Report {
    /// 0 when everything was refused, 1 when anything relayed, 2 when some test could not run.
    pub fn exit_code(&self) -> i32 {
        if self.relayed > 0 {
            1
        } else if self.errors > 0 {
            2
        } else {
            0
        }
    }
}

/// One attempt: the envelope, how it is sent, and whether acceptance means relaying.
struct Case {
    name: String,
    from: String,
    to: String,
    starttls: bool,
    /// The envelope recipient is the server's own postmaster; the foreign
    /// recipient is named only in the To: header.
    header_only: bool,
}

/// What the battery needs to know about the server, learnt from its banner.
struct Target {
    name: String,
    domain: String,
    ip: IpAddr,
    starttls: bool,
}

/// Runs the whole battery against one server.
pub async fn run(opts: &Options) -> Report {
    run_reporting(opts, &|_| {}).await
}

/// Runs the battery, handing each test's result to `on_test` as soon as it is known.
pub async fn run_reporting(opts: &Options, on_test: &(dyn Fn(&TestResult) + Sync)) -> Report {
    let report = battery_report(opts, on_test).await;
    if report.server_name.is_empty() {
        // Turned away before the battery: the one result was not announced yet.
        report.tests.iter().for_each(on_test);
    }
    report
}

async fn battery_report(opts: &Options, on_test: &(dyn Fn(&TestResult) + Sync)) -> Report {
    let target = match learn(opts).await {
        Ok(Ok(t)) => t,
        Ok(Err(banner)) if banner.code >= 500 => {
            return Report {
                host: opts.host.clone(),
                server_name: String::new(),
                tests: vec![TestResult {
                    name: "connect".into(),
                    verdict: Verdict::Refused,
                    commands: Vec::new(),
                    replies: vec![banner.to_string()],
                    note: "the server does not let this client in at all, so nothing can be relayed from here".into(),
                    token: String::new(),
                }],
                relayed: 0,
                refused: 1,
                errors: 0,
            };
        }
        Ok(Err(banner)) => {
            return error_report(
                opts,
                format!("the server cannot take the connection now: {banner}"),
            );
        }
        Err(e) => return error_report(opts, format!("cannot talk to {}: {e}", opts.target)),
    };
    let mut tests = Vec::new();
    for case in battery(opts, &target) {
        let result = attempt(opts, &target, &case).await;
        on_test(&result);
        tests.push(result);
    }
    let count = |v| {
        tests
            .iter()
            .filter(|t: &&TestResult| t.verdict == v)
            .count()
    };
    Report {
        host: opts.host.clone(),
        server_name: target.name.clone(),
        relayed: count(Verdict::Relayed),
        refused: count(Verdict::Refused),
        errors: count(Verdict::Error),
        tests,
    }
}

fn error_report(opts: &Options, note: String) -> Report {
    Report {
        host: opts.host.clone(),
        server_name: String::new(),
        tests: vec![TestResult {
            name: "connect".into(),
            verdict: Verdict::Error,
            commands: Vec::new(),
            replies: Vec::new(),
            note,
            token: String::new(),
        }],
        relayed: 0,
        refused: 0,
        errors: 1,
    }
}

/// Connects once to learn the server's name and whether it offers STARTTLS;
/// the banner when the server turns us away.
async fn learn(opts: &Options) -> std::io::Result<Result<Target, Answer>> {
    let (mut probe, banner) =
        Probe::connect(opts.target, &opts.host, opts.source_ip, opts.timeout).await?;
    if !banner.positive() {
        return Ok(Err(banner));
    }
    let name = banner
        .text
        .split_whitespace()
        .next()
        .unwrap_or(&opts.host)
        .trim_end_matches('.')
        .to_lowercase();
    let ehlo = probe.command(&format!("EHLO {}", opts.helo)).await?;
    let starttls = ehlo.positive() && ehlo.text.to_ascii_uppercase().contains("STARTTLS");
    probe.quit().await;
    // The server's mail domain: its name without the host label, when it has one.
    let domain = match name.split_once('.') {
        Some((_, rest)) if rest.contains('.') => rest.to_string(),
        _ => name.clone(),
    };
    Ok(Ok(Target {
        name,
        domain,
        ip: opts.target.ip(),
        starttls,
    }))
}

fn literal(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => format!("[{v4}]"),
        IpAddr::V6(v6) => format!("[IPv6:{v6}]"),
    }
}

/// The attempts, in order.
fn battery(opts: &Options, t: &Target) -> Vec<Case> {
    let (local, far) = opts
        .to
        .rsplit_once('@')
        .unwrap_or((&opts.to, "portcullis-relay-test.example"));
    let me = &t.name;
    let my_ip = literal(t.ip);
    let from = opts.from.as_str();
    let to = opts.to.as_str();
    let tls = opts.starttls;
    let case = |name: &str, from: &str, to: String| Case {
        name: name.to_string(),
        from: from.to_string(),
        to,
        starttls: tls,
        header_only: false,
    };
    let mut cases = vec![
        case("foreign sender to foreign recipient", from, to.to_string()),
        case("null sender", "", to.to_string()),
        case(
            "sender spoofing the server's domain",
            &format!("postmaster@{}", t.domain),
            to.to_string(),
        ),
        case(
            "sender spoofing the server's name",
            &format!("relay-tester@{me}"),
            to.to_string(),
        ),
        case(
            "sender spoofing the recipient's domain",
            &format!("relay-tester@{far}"),
            to.to_string(),
        ),
        case(
            "sender at the server's IP literal",
            &format!("relay-tester@{my_ip}"),
            to.to_string(),
        ),
        case(
            "recipient with a trailing dot",
            from,
            format!("{local}@{far}."),
        ),
        case(
            "recipient in upper case",
            from,
            format!("{}@{}", local.to_uppercase(), far.to_uppercase()),
        ),
        case("unqualified recipient", from, local.to_string()),
        case(
            "percent hack via the server's name",
            from,
            format!("{local}%{far}@{me}"),
        ),
        case(
            "percent hack via the server's IP literal",
            from,
            format!("{local}%{far}@{my_ip}"),
        ),
        case(
            "percent hack via the server's domain",
            from,
            format!("{local}%{far}@{}", t.domain),
        ),
        case("quoted address", from, format!("\"{local}@{far}\"")),
        case("quoted percent address", from, format!("\"{local}%{far}\"")),
        case(
            "quoted address at the server's name",
            from,
            format!("\"{local}@{far}\"@{me}"),
        ),
        case(
            "quoted address at the server's IP literal",
            from,
            format!("\"{local}@{far}\"@{my_ip}"),
        ),
        case(
            "double @ at the server's name",
            from,
            format!("{local}@{far}@{me}"),
        ),
        case(
            "double @ at the server's IP literal",
            from,
            format!("{local}@{far}@{my_ip}"),
        ),
        case(
            "source route via the server's name",
            from,
            format!("@{me}:{local}@{far}"),
        ),
        case(
            "source route via the server's IP literal",
            from,
            format!("@{my_ip}:{local}@{far}"),
        ),
        case(
            "source route through two hops",
            from,
            format!("@{me},@{my_ip}:{local}@{far}"),
        ),
        case("bang path", from, format!("{far}!{local}")),
        case(
            "bang path at the server's name",
            from,
            format!("{far}!{local}@{me}"),
        ),
        case(
            "bang path at the server's IP literal",
            from,
            format!("{far}!{local}@{my_ip}"),
        ),
        case(
            "recipient at a public IP literal",
            from,
            format!("{local}@[203.0.113.25]"),
        ),
        case(
            "recipient at the server's own IP literal",
            from,
            format!("{local}@{my_ip}"),
        ),
        case(
            "postmaster of the foreign domain",
            from,
            format!("postmaster@{far}"),
        ),
        case(
            "postmaster percent hack",
            from,
            format!("postmaster%{far}@{me}"),
        ),
        case("postmaster bang path", from, format!("{far}!postmaster")),
        Case {
            name: "recipient in the headers only".into(),
            from: from.to_string(),
            to: to.to_string(),
            starttls: tls,
            header_only: true,
        },
    ];
    // The first attempt the other way too: with STARTTLS when the battery runs
    // in clear and the server offers it, in clear when the battery runs over TLS.
    if tls || t.starttls {
        cases.push(Case {
            name: if tls {
                "foreign sender to foreign recipient, without STARTTLS".into()
            } else {
                "foreign sender to foreign recipient, over STARTTLS".into()
            },
            from: from.to_string(),
            to: to.to_string(),
            starttls: !tls,
            header_only: false,
        });
    }
    cases
}

async fn attempt(opts: &Options, t: &Target, case: &Case) -> TestResult {
    let token = format!("PCL-RELAY-TEST-{:016X}", rand::random::<u64>());
    let mut result = TestResult {
        name: case.name.clone(),
        verdict: Verdict::Error,
        commands: Vec::new(),
        replies: Vec::new(),
        note: String::new(),
        token: token.clone(),
    };
    let probe = match Probe::connect(opts.target, &opts.host, opts.source_ip, opts.timeout).await {
        Ok((probe, banner)) if banner.positive() => probe,
        Ok((probe, banner)) => {
            // 5xx: strangers are not let in at all. 4xx (busy, rate-limited): the
            // test could not run now.
            if banner.code >= 500 {
                result.note = format!("the server refuses the connection: {banner}");
                result.verdict = Verdict::Refused;
            } else {
                result.note = format!("the server cannot take the connection now: {banner}");
            }
            result.replies = probe.replies;
            return result;
        }
        Err(e) => {
            result.note = format!("cannot connect: {e}");
            return result;
        }
    };
    let (verdict, note, probe) = transaction(probe, opts, t, case, &token).await;
    result.verdict = verdict;
    result.note = note;
    result.commands = probe.commands.clone();
    result.replies = probe.replies.clone();
    probe.quit().await;
    result
}

/// EHLO, STARTTLS when asked, MAIL, RCPT, DATA, the message; the verdict and why.
async fn transaction(
    mut p: Probe,
    opts: &Options,
    t: &Target,
    case: &Case,
    token: &str,
) -> (Verdict, String, Probe) {
    macro_rules! step {
        ($e:expr) => {
            match $e.await {
                Ok(a) => a,
                Err(e) => return (Verdict::Error, format!("connection failed: {e}"), p),
            }
        };
    }
    let refused = |what: &str, a: &Answer| (Verdict::Refused, format!("{what} refused: {a}"));
    let ehlo = step!(p.command(&format!("EHLO {}", opts.helo)));
    if !ehlo.positive() {
        let helo = step!(p.command(&format!("HELO {}", opts.helo)));
        if !helo.positive() {
            let (v, n) = refused("HELO", &helo);
            return (v, n, p);
        }
    }
    if case.starttls {
        if !t.starttls {
            return (
                Verdict::Error,
                "the server does not offer STARTTLS".into(),
                p,
            );
        }
        let tls = step!(p.starttls());
        if tls.code != 220 {
            let (v, n) = refused("STARTTLS", &tls);
            return (v, n, p);
        }
        let ehlo = step!(p.command(&format!("EHLO {}", opts.helo)));
        if !ehlo.positive() {
            let (v, n) = refused("EHLO after STARTTLS", &ehlo);
            return (v, n, p);
        }
    }
    let mail = step!(p.command(&format!("MAIL FROM:<{}>", case.from)));
    if !mail.positive() {
        let (v, n) = refused("MAIL FROM", &mail);
        return (v, n, p);
    }
    let envelope_to = if case.header_only {
        format!("postmaster@{}", t.name)
    } else {
        case.to.clone()
    };
    let rcpt = step!(p.command(&format!("RCPT TO:<{envelope_to}>")));
    if !rcpt.positive() {
        let (v, n) = refused("RCPT TO", &rcpt);
        return (v, n, p);
    }
    if opts.stop_before_data {
        let _ = p.command("RSET").await;
        return if case.header_only {
            (
                Verdict::Refused,
                "the server's own postmaster was accepted (stopped there with RSET, nothing was queued); it relays only if the server re-routes by the To: header".into(),
                p,
            )
        } else {
            (
                Verdict::Relayed,
                format!(
                    "the server accepted {} from a stranger: it relays (the test stopped there with RSET, so nothing was queued)",
                    case.to
                ),
                p,
            )
        };
    }
    let data = step!(p.command("DATA"));
    if data.code != 354 {
        let (v, n) = refused("DATA", &data);
        return (v, n, p);
    }
    let content = test_message(opts, case, token);
    let done = step!(p.message(&content, &format!("(test message carrying {token}) .")));
    if !done.positive() {
        let (v, n) = refused("the message", &done);
        return (v, n, p);
    }
    let _ = p.command("RSET").await;
    if case.header_only {
        (
            Verdict::Refused,
            format!(
                "accepted for the server's own postmaster, not relayed by the envelope; it relays only if the server re-routes by the To: header (check whether {} received {token})",
                case.to
            ),
            p,
        )
    } else {
        (
            Verdict::Relayed,
            format!(
                "the server took a message for {} from a stranger: it relays (look for {token} there)",
                case.to
            ),
            p,
        )
    }
}

fn test_message(opts: &Options, case: &Case, token: &str) -> String {
    let date = chrono::Utc::now().to_rfc2822();
    format!(
        "From: <{from}>\r\nTo: <{to}>\r\nSubject: Portcullis open-relay test {token}\r\nDate: {date}\r\nMessage-ID: <{token}@portcullis-relay-test.example>\r\n\r\nThis message was sent by `portcullis relay-test` to check whether {host} relays mail for strangers.\r\nTest: {name}\r\nIf this message reached {to}, {host} is an open relay.\r\nToken: {token}",
        from = if case.from.is_empty() {
            "mailer-daemon@portcullis-relay-test.example"
        } else {
            &case.from
        },
        to = case.to,
        host = opts.host,
        name = case.name,
    )
}
