//! Delivery end to end over loopback: a test DNS server with MX/A records
//! pointing at 127.0.0.x sinks, real SMTP both ways.

use crate::support::client::SmtpClient;
use crate::support::dns::TestDns;
use crate::support::server::TestServer;
use crate::support::sink::{Behaviour, Sink, tls_config};
use crate::support::tls::TestCa;
use crate::support::{WAIT, run_with_timeout, strip_received};
use std::time::Duration;

/// A port number free on 127.0.0.1, used on other 127.0.0.x addresses for every MX sink of a test.
fn shared_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn config(dns: &TestDns, delivery: &str) -> String {
    // Quick retries unless the test sets its own schedule.
    let retry = if delivery.contains("retry_schedule") {
        ""
    } else {
        "retry_schedule = [\"1s\"]\n"
    };
    format!(
        "{}\n[[network]]\nrange = \"127.0.0.0/24\"\nauth = \"none\"\n[relay]\ninbound_domains = [\"example.lan\"]\n[delivery]\n{retry}{delivery}\n",
        dns.config()
    )
}

/// `config` with next hops on `port` and one retry an hour: a test sees
/// the first attempt and nothing after it.
fn hourly_retries(dns: &TestDns, port: u16) -> String {
    config(dns, &format!("mx_port = {port}\nretry_schedule = [\"1h\"]"))
}

/// What most of these tests start with: a DNS server of their own and one
/// port shared by every next hop, each on its own 127.0.0.x address.
struct Rig {
    dns: TestDns,
    port: u16,
}

impl Rig {
    async fn new() -> Rig {
        Rig {
            dns: TestDns::start().await,
            port: shared_port(),
        }
    }

    /// A sink at `ip` on the shared port.
    async fn sink(&self, ip: &str, behaviour: Behaviour) -> Sink {
        Sink::start(ip, self.port, behaviour).await
    }

    /// The server, delivering to MX hosts on the shared port, with
    /// `delivery` added to its `[delivery]` section.
    async fn server(&self, delivery: &str) -> TestServer {
        let keys = format!("mx_port = {}\n{delivery}", self.port);
        TestServer::start(&config(&self.dns, &keys)).await
    }

    /// The server with one retry an hour (see `hourly_retries`).
    async fn server_hourly(&self) -> TestServer {
        TestServer::start(&hourly_retries(&self.dns, self.port)).await
    }
}

async fn submit(server: &TestServer, from: &str, to: &[&str], body: &[u8]) -> String {
    let mut c = SmtpClient::greeted(server.addr(), "127.0.0.2", "submit.test").await;
    let r = c.send_mail(from, to, body).await;
    assert_eq!(r.code, 250, "{r:?}");
    c.expect("QUIT", 221).await;
    r.text().rsplit(' ').next().unwrap().to_string()
}

/// Waits (bounded) until the queue is empty.
async fn queue_drains(server: &TestServer) -> bool {
    let start = std::time::Instant::now();
    while start.elapsed() < WAIT {
        if server.queued().is_empty() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// Waits (bounded) until the first recipient of `id` has a recorded attempt; returns its state.
async fn first_attempt(server: &TestServer, id: &str) -> portcullis::spool::RecipientState {
    let start = std::time::Instant::now();
    loop {
        let s = server.spool().load(&crate::support::qid(id)).unwrap().state;
        if s.recipients[0].last_error().is_some() {
            return s.recipients[0].clone();
        }
        assert!(start.elapsed() < WAIT, "no attempt recorded for {id}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swaks_to_portcullis_to_sink_byte_exact() {
    let rig = Rig::new().await;
    let sink = rig.sink("127.0.0.20", Behaviour::accept_all()).await;
    rig.dns.mx("example.net", 10, "mx1.example.net");
    rig.dns.host("mx1.example.net", "127.0.0.20");
    let server = rig.server("").await;

    let body = b"From: a@client.test\r\nTo: b@example.net\r\nSubject: end to end\r\n\r\nline one\r\n.dot line\r\nlast line";
    let path = server.dir.path().join("e2e.eml");
    std::fs::write(&path, body).unwrap();
    let server_arg = server.addr().to_string();
    let (ok, out, err) = tokio::task::block_in_place(|| {
        run_with_timeout(
            std::process::Command::new("swaks").args([
                "--server",
                &server_arg,
                "--local-interface",
                "127.0.0.2",
                "--from",
                "a@client.test",
                "--to",
                "b@example.net",
                "--data",
                &path.display().to_string(),
                "--timeout",
                "15",
            ]),
            WAIT,
        )
    });
    assert!(ok, "{out}{err}");
    let got = sink.wait_for(1, WAIT).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].from, "a@client.test");
    assert_eq!(got[0].rcpts, vec!["b@example.net".to_string()]);
    let mut expected = body.to_vec();
    expected.extend_from_slice(b"\r\n");
    assert_eq!(
        strip_received(&got[0].data),
        expected.as_slice(),
        "byte-exact plus our Received:"
    );
    assert!(String::from_utf8_lossy(&got[0].data).starts_with("Received: from "));
    assert!(
        queue_drains(&server).await,
        "delivered mail leaves the queue"
    );
    assert!(
        !got[0].tls,
        "the sink offers no STARTTLS, so opportunistic TLS sends in clear"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mx_preferences_and_failover() {
    let rig = Rig::new().await;
    // mx1: nothing listens (connection refused); mx2: answers 421; mx3 takes the mail.
    let _mx2 = rig
        .sink(
            "127.0.0.31",
            Behaviour {
                banner: Some((421, "4.3.2 busy")),
                ..Default::default()
            },
        )
        .await;
    let mx3 = rig.sink("127.0.0.32", Behaviour::accept_all()).await;
    rig.dns.mx("failover.example", 10, "mx1.failover.example");
    rig.dns.mx("failover.example", 20, "mx2.failover.example");
    rig.dns.mx("failover.example", 30, "mx3.failover.example");
    rig.dns.host("mx1.failover.example", "127.0.0.30");
    rig.dns.host("mx2.failover.example", "127.0.0.31");
    rig.dns.host("mx3.failover.example", "127.0.0.32");
    let server = rig.server("").await;
    submit(
        &server,
        "a@client.test",
        &["x@failover.example", "y@failover.example"],
        b"Subject: failover\r\n\r\nx\r\n",
    )
    .await;
    assert_eq!(mx3.addr.port(), rig.port);
    let got = mx3.wait_for(1, WAIT).await;
    assert_eq!(got.len(), 1, "one transaction for both recipients");
    assert_eq!(got[0].rcpts.len(), 2);
    assert!(queue_drains(&server).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_servers_down_defers_then_delivers_once_one_comes_up() {
    let rig = Rig::new().await;
    rig.dns.mail_domain("later.example", "127.0.0.40");
    let server = rig.server("").await;
    let id = submit(
        &server,
        "a@client.test",
        &["x@later.example"],
        b"Subject: later\r\n\r\nx\r\n",
    )
    .await;
    let r = &first_attempt(&server, &id).await;
    assert_eq!(r.status, portcullis::spool::RecipientStatus::Queued);
    assert!(
        r.last_error()
            .as_deref()
            .unwrap_or_default()
            .contains("127.0.0.40"),
        "{r:?}"
    );
    assert!(r.next_attempt.is_some());
    let sink = rig.sink("127.0.0.40", Behaviour::accept_all()).await;
    let got = sink.wait_for(1, WAIT).await;
    assert_eq!(got.len(), 1, "delivered once the server came up");
    assert!(queue_drains(&server).await);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(sink.messages().len(), 1, "and only once");
}

/// Parses the DSN of a bounce: (Action, Status, Final-Recipient) lines.
fn dsn_fields(data: &[u8]) -> (String, String, String) {
    let text = String::from_utf8_lossy(data).into_owned();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|| panic!("no {name} in DSN:\n{text}"))
    };
    (
        field("Action:"),
        field("Status:"),
        field("Final-Recipient:"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_failure_bounces_to_the_sender_and_null_sender_gets_none() {
    let rig = Rig::new().await;
    let dest = rig
        .sink(
            "127.0.0.50",
            Behaviour {
                reject_rcpt: vec![("nobody", 550, "5.1.1 no such user here")],
                ..Behaviour::accept_all()
            },
        )
        .await;
    let senders_mx = rig.sink("127.0.0.51", Behaviour::accept_all()).await;
    rig.dns.mail_domain("dest.example", "127.0.0.50");
    rig.dns.mail_domain("sender.example", "127.0.0.51");
    let server = rig.server("").await;
    let original = b"Subject: will bounce\r\nMessage-ID: <orig@sender.example>\r\n\r\nhello\r\n";
    submit(
        &server,
        "alice@sender.example",
        &["nobody@dest.example", "somebody@dest.example"],
        original,
    )
    .await;

    let bounces = senders_mx.wait_for(1, WAIT).await;
    assert_eq!(bounces.len(), 1, "one bounce");
    let b = &bounces[0];
    assert_eq!(b.from, "", "bounces come from the null sender");
    assert_eq!(b.rcpts, vec!["alice@sender.example".to_string()]);
    let (action, status, rcpt) = dsn_fields(&b.data);
    assert_eq!(
        (action.as_str(), status.as_str(), rcpt.as_str()),
        ("failed", "5.1.1", "rfc822; nobody@dest.example")
    );
    let text = String::from_utf8_lossy(&b.data);
    assert!(text.contains("report-type=delivery-status"), "{text}");
    assert!(
        text.contains("Remote-MTA: dns; mx.dest.example\r\n"),
        "{text}"
    );
    assert!(
        text.contains("Diagnostic-Code: smtp; 550 5.1.1 no such user here\r\n"),
        "the diagnostic comes from the recorded reply: {text}"
    );
    assert!(
        text.contains("Message-ID: <orig@sender.example>"),
        "the original is attached"
    );
    assert!(
        !text.contains("Final-Recipient: rfc822; somebody@dest.example"),
        "the delivered recipient is not reported"
    );
    assert_eq!(
        dest.messages().len(),
        1,
        "the good recipient got the message"
    );
    assert!(queue_drains(&server).await);

    // A message from the null sender that fails: no bounce at all.
    submit(
        &server,
        "",
        &["nobody@dest.example"],
        b"Subject: from null\r\n\r\nx\r\n",
    )
    .await;
    assert!(queue_drains(&server).await, "the failed message is removed");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        senders_mx.messages().len(),
        1,
        "no bounce to the null sender"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn null_mx_and_missing_domains_bounce_at_once() {
    let rig = Rig::new().await;
    let senders_mx = rig.sink("127.0.0.55", Behaviour::accept_all()).await;
    rig.dns.mail_domain("sender.example", "127.0.0.55");
    rig.dns.null_mx("nomail.example");
    let server = rig.server("").await;
    submit(
        &server,
        "alice@sender.example",
        &["x@nomail.example"],
        b"Subject: a\r\n\r\nx\r\n",
    )
    .await;
    submit(
        &server,
        "alice@sender.example",
        &["x@does-not-exist.example"],
        b"Subject: b\r\n\r\nx\r\n",
    )
    .await;
    let bounces = senders_mx.wait_for(2, WAIT).await;
    assert_eq!(bounces.len(), 2);
    let mut statuses: Vec<String> = bounces.iter().map(|b| dsn_fields(&b.data).1).collect();
    statuses.sort();
    assert_eq!(statuses, ["5.1.10", "5.1.2"]);
    assert!(queue_drains(&server).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_bounces_with_4_4_7() {
    let rig = Rig::new().await;
    let senders_mx = rig.sink("127.0.0.57", Behaviour::accept_all()).await;
    rig.dns.mail_domain("sender.example", "127.0.0.57");
    rig.dns.mail_domain("down.example", "127.0.0.58"); // nothing listens there
    let server = rig.server("max_queue_lifetime = \"3s\"").await;
    submit(
        &server,
        "alice@sender.example",
        &["x@down.example"],
        b"Subject: expires\r\n\r\nx\r\n",
    )
    .await;
    let bounces = senders_mx.wait_for(1, WAIT).await;
    assert_eq!(bounces.len(), 1, "an expiry bounce arrives");
    let (action, status, _) = dsn_fields(&bounces[0].data);
    assert_eq!((action.as_str(), status.as_str()), ("failed", "4.4.7"));
    assert!(String::from_utf8_lossy(&bounces[0].data).contains("expired"));
    assert!(queue_drains(&server).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smarthost_failover_with_starttls_and_auth() {
    let dns = TestDns::start().await;
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::generate(dir.path());
    let port = shared_port();
    // The first smart host refuses connections; the second needs STARTTLS and AUTH.
    let smarthost = Sink::start(
        "127.0.0.61",
        port,
        Behaviour {
            tls: Some(tls_config(&ca)),
            require_auth: Some(("office@example.com".into(), "s3cret pass".into())),
            ..Behaviour::accept_all()
        },
    )
    .await;
    let pass = dir.path().join("smarthost.pass");
    std::fs::write(&pass, "s3cret pass\n").unwrap();
    let delivery = format!(
        "mode = \"smarthost\"\nsmarthost = [\"127.0.0.60:{port}\", \"relay.test:{port}\"]\nsmarthost_tls = \"starttls\"\nsmarthost_user = \"office@example.com\"\nsmarthost_password_file = \"{}\"\nsmarthost_ca_file = \"{}\"\n",
        pass.display(),
        ca.ca_file(dir.path()).display()
    );
    dns.host("relay.test", "127.0.0.61");
    let server = TestServer::start(&config(&dns, &delivery)).await;
    submit(
        &server,
        "a@client.test",
        &["far@anywhere.example"],
        b"Subject: via smarthost\r\n\r\nx\r\n",
    )
    .await;
    let got = smarthost.wait_for(1, WAIT).await;
    assert_eq!(got.len(), 1, "delivered through the second smart host");
    assert!(got[0].tls, "over STARTTLS");
    assert_eq!(
        got[0].auth,
        Some(("office@example.com".to_string(), "s3cret pass".to_string()))
    );
    assert!(queue_drains(&server).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn required_tls_and_missing_auth_never_send_in_clear() {
    let rig = Rig::new().await;
    let port = rig.port;
    let plain = rig.sink("127.0.0.65", Behaviour::accept_all()).await;
    rig.dns.mail_domain("plain.example", "127.0.0.65");
    let server = rig.server("outbound_tls = \"required\"").await;
    let id = submit(
        &server,
        "a@client.test",
        &["x@plain.example"],
        b"Subject: secret\r\n\r\nx\r\n",
    )
    .await;
    let err = first_attempt(&server, &id)
        .await
        .last_error()
        .unwrap_or_default();
    assert!(err.contains("TLS required"), "{err}");
    assert!(plain.messages().is_empty(), "nothing was sent in clear");
    server.stop().await;

    // A smart host that does not offer AUTH when credentials are configured: deferred, never sent.
    let dir = tempfile::tempdir().unwrap();
    let pass = dir.path().join("p");
    std::fs::write(&pass, "pw").unwrap();
    let no_auth = rig.sink("127.0.0.66", Behaviour::accept_all()).await;
    let delivery = format!(
        "mode = \"smarthost\"\nsmarthost = \"127.0.0.66:{port}\"\nsmarthost_tls = \"none\"\nsmarthost_user = \"u\"\nsmarthost_password_file = \"{}\"\n",
        pass.display()
    );
    let server = TestServer::start(&config(&rig.dns, &delivery)).await;
    let id = submit(
        &server,
        "a@client.test",
        &["x@anywhere.example"],
        b"Subject: auth\r\n\r\nx\r\n",
    )
    .await;
    let err = first_attempt(&server, &id)
        .await
        .last_error()
        .unwrap_or_default();
    assert!(err.contains("AUTH required"), "{err}");
    assert!(
        no_auth.messages().is_empty(),
        "never a silent unauthenticated send"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_and_dns_failures() {
    let rig = Rig::new().await;
    let port = rig.port;
    let office = rig.sink("127.0.0.70", Behaviour::accept_all()).await;
    rig.dns.silent("broken-rig.dns.example");
    let server = TestServer::start(&format!(
        "{}\n[[route]]\ndomain = \"example.lan\"\nhost = \"127.0.0.70:{port}\"\n",
        config(&rig.dns, "")
    ))
    .await;
    submit(
        &server,
        "a@client.test",
        &["boss@example.lan"],
        b"Subject: routed\r\n\r\nx\r\n",
    )
    .await;
    assert_eq!(
        office.wait_for(1, WAIT).await.len(),
        1,
        "[[route]] sends example.lan to the office server"
    );
    let id = submit(
        &server,
        "a@client.test",
        &["x@broken-rig.dns.example"],
        b"Subject: dns\r\n\r\nx\r\n",
    )
    .await;
    let r = first_attempt(&server, &id).await;
    assert_eq!(
        r.status,
        portcullis::spool::RecipientStatus::Queued,
        "a DNS failure is temporary"
    );
    assert_eq!(r.attempts, 0, "and does not count against the schedule");
    assert!(rig.dns.queries_for("broken-rig.dns.example") > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_delay_notice_while_retries_go_on() {
    let rig = Rig::new().await;
    let senders_mx = rig.sink("127.0.0.75", Behaviour::accept_all()).await;
    rig.dns.mail_domain("sender.example", "127.0.0.75");
    rig.dns.mail_domain("slow.example", "127.0.0.76"); // nothing listens there
    let server = rig.server("delay_warning = \"2s\"").await;
    let id = submit(
        &server,
        "alice@sender.example",
        &["x@slow.example"],
        b"Subject: slow\r\n\r\nx\r\n",
    )
    .await;
    let notices = senders_mx.wait_for(1, WAIT).await;
    assert_eq!(notices.len(), 1, "a delay notice arrives");
    let (action, status, rcpt) = dsn_fields(&notices[0].data);
    assert_eq!(
        (action.as_str(), rcpt.as_str()),
        ("delayed", "rfc822; x@slow.example")
    );
    assert!(status.starts_with("4."), "{status}");
    assert_eq!(notices[0].from, "");
    // Retries go on, the message stays queued, and no second notice comes.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(senders_mx.messages().len(), 1, "only one delay notice");
    let state = server
        .spool()
        .load(&crate::support::qid(&id))
        .unwrap()
        .state;
    assert!(state.delay_warned && state.has_queued());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_message_streams_through_byte_exact() {
    let rig = Rig::new().await;
    let sink = rig.sink("127.0.0.78", Behaviour::accept_all()).await;
    rig.dns.mail_domain("big.example", "127.0.0.78");
    let server = rig.server("").await;
    // 3 MB of lines of varying length, many starting with a dot, so that dots
    // fall on every side of the 64 KB chunks the delivery streams in.
    let mut body = b"Subject: big\r\n\r\n".to_vec();
    let mut i = 0usize;
    while body.len() < 3_000_000 {
        let len = 1 + (i * 7919) % 200;
        if i.is_multiple_of(3) {
            body.push(b'.');
        }
        body.extend(std::iter::repeat_n(b'a' + (i % 26) as u8, len));
        body.extend_from_slice(b"\r\n");
        i += 1;
    }
    let mut wire = Vec::with_capacity(body.len() + body.len() / 50);
    for line in body.split_inclusive(|&b| b == b'\n') {
        if line.starts_with(b".") {
            wire.push(b'.');
        }
        wire.extend_from_slice(line);
    }
    submit(&server, "a@client.test", &["x@big.example"], &wire).await;
    let got = sink.wait_for(1, WAIT).await;
    assert_eq!(got.len(), 1);
    assert_eq!(
        strip_received(&got[0].data),
        body.as_slice(),
        "3 MB delivered byte-exact"
    );
    assert!(queue_drains(&server).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hold_release_and_retry_act_on_the_running_server() {
    let rig = Rig::new().await;
    rig.dns.mail_domain("retry.example", "127.0.0.79");
    // A long retry interval: only `queue retry` can bring the next attempt forward.
    let server = rig.server_hourly().await;
    let config_path = server.dir.path().join("cli.toml");
    std::fs::write(&config_path, toml::to_string(&server.config).unwrap()).unwrap();
    let cli = |args: &[&str]| {
        let (ok, out, err) = tokio::task::block_in_place(|| {
            run_with_timeout(
                std::process::Command::new(crate::support::server::binary())
                    .args(args)
                    .arg("--config")
                    .arg(&config_path),
                WAIT,
            )
        });
        assert!(ok, "{args:?}: {out}{err}");
    };
    let id = submit(
        &server,
        "a@client.test",
        &["x@retry.example"],
        b"Subject: retry\r\n\r\nx\r\n",
    )
    .await;
    let r = first_attempt(&server, &id).await;
    assert!(
        r.next_attempt.unwrap() > chrono::Utc::now().timestamp() + 3000,
        "next attempt an hour away: {r:?}"
    );

    let sink = rig.sink("127.0.0.79", Behaviour::accept_all()).await;
    cli(&["queue", "hold", &id]);
    cli(&["queue", "retry", &id]);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        sink.messages().is_empty(),
        "a held message is not delivered, even when due"
    );
    cli(&["queue", "release", &id]);
    let got = sink.wait_for(1, WAIT).await;
    assert_eq!(
        got.len(),
        1,
        "released and due: delivered within seconds, not in an hour"
    );
    assert!(queue_drains(&server).await);
}

/// A next hop that refuses connections is a failure like any other: the
/// attempt counts (so retries back off), and the state records where it
/// stopped as fields.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connection_counts_as_an_attempt() {
    let rig = Rig::new().await;
    rig.dns.mail_domain("refusing.example", "127.0.0.86"); // nothing listens there
    let server = rig.server_hourly().await;
    let id = submit(
        &server,
        "a@client.test",
        &["x@refusing.example"],
        b"Subject: refused\r\n\r\nx\r\n",
    )
    .await;
    let r = first_attempt(&server, &id).await;
    assert_eq!(
        r.attempts, 1,
        "a refused connection is a counted attempt: {r:?}"
    );
    assert!(
        r.next_attempt.unwrap() > chrono::Utc::now().timestamp() + 3000,
        "so the next try follows the schedule: {r:?}"
    );
    let result = r.last_result.expect("the result is recorded as fields");
    assert_eq!(result.stage, portcullis::delivery::Stage::Connect);
    assert_eq!(result.remote.as_deref(), Some("mx.refusing.example"));
    assert_eq!(result.remote_ip, Some("127.0.0.86".parse().unwrap()));
    assert_eq!(result.code, None, "nobody replied");
}

/// What the server knows of a message, asked over its control socket.
fn shown(server: &TestServer, id: &str) -> portcullis::queue::MessageDetail {
    let cmd = portcullis::queue::QueueCommand::Show {
        id: portcullis::spool::QueueId::parse(id).unwrap(),
        body: false,
    };
    match portcullis::control::ask_queue(&server.data_dir(), &cmd, Duration::from_secs(5)).unwrap()
    {
        portcullis::queue::QueueAnswer::Show { message } => *message,
        other => panic!("{other:?}"),
    }
}

/// While a next hop is remembered as down, its mail is deferred without a
/// connection attempt, and those deferrals are not one state write each:
/// the server knows them at once, the files catch up in a batch (here at
/// shutdown), and a real attempt is still written at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deferrals_of_a_host_known_down_are_written_in_a_batch() {
    let rig = Rig::new().await;
    rig.dns.mail_domain("dead.example", "127.0.0.87"); // nothing listens there
    let data = tempfile::tempdir().unwrap();
    let server = TestServer::start_at(
        &hourly_retries(&rig.dns, rig.port),
        Some(&data.path().join("data")),
    )
    .await;
    let body = b"Subject: down\r\n\r\nx\r\n";
    let first = submit(&server, "a@client.test", &["x@dead.example"], body).await;
    let tried = first_attempt(&server, &first).await;
    assert_eq!(tried.attempts, 1, "the real attempt is written at once");

    let mut later = Vec::new();
    for _ in 0..5 {
        later.push(submit(&server, "a@client.test", &["y@dead.example"], body).await);
    }
    for id in &later {
        let start = std::time::Instant::now();
        loop {
            let r = shown(&server, id).state.recipients[0].clone();
            if r.last_error().is_some() {
                assert_eq!(r.attempts, 1, "a skip still backs off: {r:?}");
                assert!(r.next_attempt.unwrap() > chrono::Utc::now().timestamp() + 3000);
                break;
            }
            assert!(start.elapsed() < WAIT, "{id} was never deferred");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let on_disk = server.spool().load(&crate::support::qid(id)).unwrap().state;
        assert!(
            on_disk.recipients[0].last_error().is_none(),
            "a deferral without an attempt is not written at once: {on_disk:?}"
        );
    }

    let spool = server.spool();
    server.stop().await;
    for id in &later {
        let r = spool
            .load(&crate::support::qid(id))
            .unwrap()
            .state
            .recipients[0]
            .clone();
        assert_eq!(r.attempts, 1, "written at shutdown: {r:?}");
        assert!(
            r.last_error()
                .as_deref()
                .unwrap_or("")
                .contains("127.0.0.87"),
            "with the remembered reason: {r:?}"
        );
    }
}

/// What a scripted next hop saw: each message's Subject line as it
/// arrived, and how many connections it took.
#[derive(Default)]
struct HopLog {
    subjects: Vec<String>,
    connections: usize,
}

/// How a scripted next hop misbehaves on each connection.
#[derive(Clone, Copy)]
enum HopScript {
    /// Takes messages normally until the n-th, whose content it reads
    /// before hanging up without replying.
    HangUpAt(usize),
    /// After n messages it has lost track of the session and answers every
    /// MAIL, RCPT and DATA with 503, as a server that still holds a
    /// transaction open would.
    OutOfSequenceAfter(usize),
}

/// Starts, on `ip:port`, a next hop that follows `script`.
async fn start_scripted_hop(
    ip: &str,
    port: u16,
    script: HopScript,
) -> std::sync::Arc<std::sync::Mutex<HopLog>> {
    let listener = tokio::net::TcpListener::bind((ip, port)).await.unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(HopLog::default()));
    tokio::spawn(scripted_hop(listener, script, seen.clone()));
    seen
}

/// A next hop that hangs up after the `hang_up_at`-th message's content.
async fn start_hanging_hop(
    ip: &str,
    port: u16,
    hang_up_at: usize,
) -> std::sync::Arc<std::sync::Mutex<HopLog>> {
    start_scripted_hop(ip, port, HopScript::HangUpAt(hang_up_at)).await
}

async fn scripted_hop(
    listener: tokio::net::TcpListener,
    script: HopScript,
    seen: std::sync::Arc<std::sync::Mutex<HopLog>>,
) {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    for _ in 0..4 {
        let Ok(Ok((tcp, _))) = tokio::time::timeout(WAIT, listener.accept()).await else {
            return;
        };
        seen.lock().unwrap().connections += 1;
        let seen = seen.clone();
        tokio::spawn(async move {
            let (r, mut w) = tcp.into_split();
            let mut r = BufReader::new(r);
            let _ = w.write_all(b"220 hop.test ESMTP\r\n").await;
            let mut messages = 0;
            let mut line = String::new();
            loop {
                line.clear();
                match tokio::time::timeout(WAIT, r.read_line(&mut line)).await {
                    Ok(Ok(n)) if n > 0 => {}
                    _ => return,
                }
                let verb = line.trim_end().to_ascii_uppercase();
                let confused = matches!(script, HopScript::OutOfSequenceAfter(n) if messages >= n);
                let in_transaction = ["MAIL", "RCPT", "DATA"].iter().any(|v| verb.starts_with(v));
                if confused && in_transaction {
                    let _ = w
                        .write_all(b"503 5.5.1 Error: nested MAIL command\r\n")
                        .await;
                } else if verb.starts_with("EHLO") {
                    let _ = w.write_all(b"250-hop.test\r\n250 PIPELINING\r\n").await;
                } else if verb == "DATA" {
                    let _ = w.write_all(b"354 go on\r\n").await;
                    let mut body = String::new();
                    loop {
                        let mut l = String::new();
                        match tokio::time::timeout(WAIT, r.read_line(&mut l)).await {
                            Ok(Ok(n)) if n > 0 => {}
                            _ => return,
                        }
                        if l == ".\r\n" {
                            break;
                        }
                        body.push_str(&l);
                    }
                    if let Some(marker) = body.lines().find(|l| l.starts_with("Subject: ")) {
                        seen.lock().unwrap().subjects.push(marker.to_string());
                    }
                    messages += 1;
                    if matches!(script, HopScript::HangUpAt(n) if messages == n) {
                        return; // the content is here, the reply never comes
                    }
                    let _ = w.write_all(b"250 2.0.0 queued\r\n").await;
                } else if verb == "QUIT" {
                    let _ = w.write_all(b"221 bye\r\n").await;
                    return;
                } else {
                    let _ = w.write_all(b"250 ok\r\n").await;
                }
            }
        });
    }
}

/// A pooled connection that fails after the message content was written is
/// not followed by the same message on a fresh connection at once: the next
/// hop may have taken it (no reply is not a refusal), so it is deferred to
/// the retry schedule instead of being sent twice in a row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_connection_lost_after_the_content_is_not_retried_at_once() {
    let rig = Rig::new().await;
    rig.dns.mail_domain("hangup.example", "127.0.0.87");
    let seen = start_hanging_hop("127.0.0.87", rig.port, 2).await;
    let server = rig.server_hourly().await;
    submit(
        &server,
        "a@client.test",
        &["x@hangup.example"],
        b"Subject: first\r\n\r\nx\r\n",
    )
    .await;
    assert!(
        queue_drains(&server).await,
        "the first message is delivered"
    );
    // Within the pool's idle time: the second message takes the same connection.
    let id = submit(
        &server,
        "a@client.test",
        &["x@hangup.example"],
        b"Subject: second\r\n\r\nx\r\n",
    )
    .await;
    let r = first_attempt(&server, &id).await;
    assert_eq!(
        r.status,
        portcullis::spool::RecipientStatus::Queued,
        "{r:?}"
    );
    assert_eq!(r.attempts, 1, "{r:?}");
    // Give a wrong retry on a fresh connection time to show itself.
    tokio::time::sleep(Duration::from_millis(500)).await;
    {
        let seen = seen.lock().unwrap();
        assert_eq!(
            seen.subjects,
            ["Subject: first", "Subject: second"],
            "the second message reached the hop once"
        );
        assert_eq!(seen.connections, 1, "no fresh connection for it");
    }
    server.stop().await;
}

/// Nor is it sent to the destination's next MX at once: the first one may
/// have taken it before the connection was lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_lost_at_the_first_mx_is_not_sent_to_the_second_at_once() {
    let rig = Rig::new().await;
    let seen = start_hanging_hop("127.0.0.88", rig.port, 1).await;
    let mx2 = rig.sink("127.0.0.89", Behaviour::accept_all()).await;
    rig.dns.mx("lost.example", 10, "mx1.lost.example");
    rig.dns.mx("lost.example", 20, "mx2.lost.example");
    rig.dns.host("mx1.lost.example", "127.0.0.88");
    rig.dns.host("mx2.lost.example", "127.0.0.89");
    let server = rig.server_hourly().await;
    let id = submit(
        &server,
        "a@client.test",
        &["x@lost.example"],
        b"Subject: lost\r\n\r\nx\r\n",
    )
    .await;
    let r = first_attempt(&server, &id).await;
    assert_eq!(
        r.status,
        portcullis::spool::RecipientStatus::Queued,
        "{r:?}"
    );
    assert_eq!(r.attempts, 1, "{r:?}");
    let result = r.last_result.expect("the result is recorded");
    assert_eq!(result.remote.as_deref(), Some("mx1.lost.example"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(seen.lock().unwrap().subjects, ["Subject: lost"]);
    assert!(mx2.messages().is_empty(), "the second MX got nothing");
    server.stop().await;
}

/// A reused connection whose next hop answers 503 (it thinks a transaction
/// is still open) is no verdict on the message: it goes on a fresh
/// connection at once and is delivered, never bounced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_503_on_a_reused_connection_sends_the_message_on_a_fresh_one() {
    let rig = Rig::new().await;
    rig.dns.mail_domain("confused.example", "127.0.0.86");
    let seen = start_scripted_hop("127.0.0.86", rig.port, HopScript::OutOfSequenceAfter(1)).await;
    let server = rig.server_hourly().await;
    submit(
        &server,
        "a@client.test",
        &["x@confused.example"],
        b"Subject: first\r\n\r\nx\r\n",
    )
    .await;
    assert!(
        queue_drains(&server).await,
        "the first message is delivered"
    );
    // Within the pool's idle time: the second message meets the confused connection.
    submit(
        &server,
        "a@client.test",
        &["x@confused.example"],
        b"Subject: second\r\n\r\nx\r\n",
    )
    .await;
    assert!(queue_drains(&server).await, "the second message is done");
    let seen = seen.lock().unwrap();
    assert_eq!(
        seen.subjects,
        ["Subject: first", "Subject: second"],
        "the second message was delivered, not bounced"
    );
    assert_eq!(seen.connections, 2, "on a fresh connection");
}

/// A next hop without 8BITMIME never gets 8-bit octets (RFC 6152 3): the
/// 8-bit body goes as quoted-printable and the 8-bit Subject as RFC 2047
/// encoded-words, and MAIL carries no BODY=8BITMIME.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_bit_mail_is_converted_for_a_seven_bit_next_hop() {
    let rig = Rig::new().await;
    let old = rig
        .sink(
            "127.0.0.85",
            Behaviour {
                seven_bit_only: true,
                ..Behaviour::accept_all()
            },
        )
        .await;
    rig.dns.mail_domain("old.example", "127.0.0.85");
    let server = rig.server("").await;
    let mut c = SmtpClient::greeted(server.addr(), "127.0.0.2", "submit.test").await;
    c.expect("MAIL FROM:<a@client.test> BODY=8BITMIME", 250)
        .await;
    c.expect("RCPT TO:<x@old.example>", 250).await;
    c.expect("DATA", 354).await;
    c.send_raw("Subject: Grüße\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\nSchöne Grüße aus Köln\r\n.\r\n".as_bytes())
        .await;
    assert_eq!(c.read_reply().await.code, 250);
    let got = old.wait_for(1, WAIT).await;
    assert_eq!(got.len(), 1);
    let m = &got[0];
    assert!(
        m.data.is_ascii(),
        "8-bit octets reached a 7-bit server: {:?}",
        String::from_utf8_lossy(&m.data)
    );
    assert!(
        !m.mail_line.to_ascii_uppercase().contains("BODY=8BITMIME"),
        "{}",
        m.mail_line
    );
    let text = String::from_utf8_lossy(&m.data);
    assert!(
        text.contains("Content-Transfer-Encoding: quoted-printable\r\n"),
        "{text}"
    );
    assert!(!text.contains("Content-Transfer-Encoding: 8bit"), "{text}");
    assert!(text.contains("Subject: =?utf-8?B?R3LDvMOfZQ==?="), "{text}");
    assert!(
        text.contains("Sch=C3=B6ne Gr=C3=BC=C3=9Fe aus K=C3=B6ln\r\n"),
        "{text}"
    );
    assert!(queue_drains(&server).await);
}

/// A failure decided here (the next hop lacks SMTPUTF8, which the message
/// needs) is reported as ours: no Remote-MTA, no "Diagnostic-Code: smtp;"
/// as if the next hop had said it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locally_decided_failure_is_not_reported_as_the_next_hops_reply() {
    let rig = Rig::new().await;
    let dest = rig.sink("127.0.0.83", Behaviour::accept_all()).await;
    let senders_mx = rig
        .sink(
            "127.0.0.84",
            Behaviour {
                smtputf8: true,
                ..Behaviour::accept_all()
            },
        )
        .await;
    rig.dns.mail_domain("dest.example", "127.0.0.83");
    rig.dns.mail_domain("sender.example", "127.0.0.84");
    let server = rig.server("").await;
    let mut c = SmtpClient::greeted(server.addr(), "127.0.0.2", "submit.test").await;
    c.expect("MAIL FROM:<alice@sender.example> SMTPUTF8", 250)
        .await;
    c.expect("RCPT TO:<müller@dest.example>", 250).await;
    c.expect("DATA", 354).await;
    c.send_raw(b"Subject: utf8\r\n\r\nhello\r\n.\r\n").await;
    assert_eq!(c.read_reply().await.code, 250);
    let bounces = senders_mx.wait_for(1, WAIT).await;
    assert_eq!(bounces.len(), 1, "one bounce");
    let (action, status, _) = dsn_fields(&bounces[0].data);
    assert_eq!((action.as_str(), status.as_str()), ("failed", "5.6.7"));
    let text = String::from_utf8_lossy(&bounces[0].data);
    assert!(!text.contains("Remote-MTA:"), "{text}");
    assert!(!text.contains("Diagnostic-Code: smtp;"), "{text}");
    assert!(text.contains("does not support SMTPUTF8"), "{text}");
    assert!(dest.messages().is_empty(), "nothing reached the next hop");
}

/// A hostile next hop (or a man in the middle) puts replies after its 220
/// to STARTTLS, in clear: they are thrown away, never read as answers
/// inside TLS; the message goes through the real TLS conversation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_injected_before_the_tls_handshake_are_discarded() {
    let dns = TestDns::start().await;
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::generate(dir.path());
    let port = shared_port();
    let hop = Sink::start(
        "127.0.0.82",
        port,
        Behaviour {
            tls: Some(tls_config(&ca)),
            starttls_injection: Some("554 5.7.0 injected refusal\r\n554 5.7.0 injected again\r\n"),
            ..Behaviour::accept_all()
        },
    )
    .await;
    dns.mail_domain("tls.example", "127.0.0.82");
    let server = TestServer::start(&config(&dns, &format!("mx_port = {port}"))).await;
    submit(
        &server,
        "a@client.test",
        &["x@tls.example"],
        b"Subject: tls\r\n\r\nx\r\n",
    )
    .await;
    let got = hop.wait_for(1, WAIT).await;
    assert_eq!(got.len(), 1, "delivered despite the injected replies");
    assert!(got[0].tls, "inside TLS");
    assert!(queue_drains(&server).await);
}
