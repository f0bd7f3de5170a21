//! Postfix as the real downstream: its smtp-sink gets every message exactly
//! once, also when Portcullis is killed with -9 in the middle of a burst; a
//! real Postfix instance refuses recipients and takes the next message on
//! the same reused connection.

use crate::support::WAIT;
use crate::support::client::SmtpClient;
use crate::support::postfix_mta::PostfixMta;
use crate::support::server::{ProcessServer, TestServer, complete_config};
use crate::support::sink::{Behaviour, Sink};
use crate::support::tls::TestCa;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// smtp-sink writing one file per received message.
struct SmtpSink {
    child: Child,
    dir: PathBuf,
    addr: String,
}

impl SmtpSink {
    fn start(ip: &str, dir: &Path) -> SmtpSink {
        let dumps = dir.join("sink");
        std::fs::create_dir_all(&dumps).unwrap();
        let port = std::net::TcpListener::bind((ip, 0))
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("{ip}:{port}");
        let child = Command::new("smtp-sink")
            .args(["-u", "root", "-d"])
            .arg(format!("{}/%H%M%S.", dumps.display()))
            .args([&addr, "256"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("smtp-sink from the postfix package (./test.sh installs it)");
        let start = Instant::now();
        while std::net::TcpStream::connect(&addr).is_err() {
            assert!(start.elapsed() < WAIT, "smtp-sink did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        SmtpSink {
            child,
            dir: dumps,
            addr,
        }
    }

    /// How often each "Subject: burst N" arrived.
    fn subjects(&self) -> HashMap<String, usize> {
        let mut counts = HashMap::new();
        for entry in std::fs::read_dir(&self.dir).unwrap().flatten() {
            let Ok(text) = std::fs::read_to_string(entry.path()) else {
                continue;
            };
            if let Some(s) = text.lines().find_map(|l| l.strip_prefix("Subject: ")) {
                *counts.entry(s.to_string()).or_insert(0) += 1;
            }
        }
        counts
    }

    /// Waits (bounded) until `n` distinct subjects have arrived.
    async fn wait_distinct(&self, n: usize, limit: Duration) -> HashMap<String, usize> {
        let start = Instant::now();
        loop {
            let s = self.subjects();
            if s.len() >= n || start.elapsed() > limit {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn smarthost_config(sink: &SmtpSink) -> String {
    format!(
        "[[network]]\nrange = \"127.0.0.0/24\"\nauth = \"none\"\n[delivery]\nmode = \"smarthost\"\nsmarthost = \"{}\"\nsmarthost_tls = \"none\"\nretry_schedule = [\"1s\"]\n",
        sink.addr
    )
}

/// Sends `count` messages "Subject: burst N" (N from `first`) over `clients` parallel sessions.
async fn send_burst(addr: std::net::SocketAddr, first: usize, count: usize, clients: usize) {
    let mut tasks = Vec::new();
    for c in 0..clients {
        tasks.push(tokio::spawn(async move {
            let mut client = SmtpClient::greeted(addr, "127.0.0.2", "burst.test").await;
            for n in (first + c..first + count).step_by(clients) {
                let body = format!("Subject: burst {n}\r\n\r\nmessage number {n}\r\n");
                let r = client
                    .send_mail("burst@client.test", &["rcpt@far.example"], body.as_bytes())
                    .await;
                assert_eq!(r.code, 250, "{r:?}");
            }
            client.expect("QUIT", 221).await;
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_messages_reach_postfix_smtp_sink_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let sink = SmtpSink::start("127.0.0.80", dir.path());
    let server = TestServer::start(&smarthost_config(&sink)).await;
    send_burst(server.addr(), 0, 1000, 4).await;
    let got = sink.wait_distinct(1000, Duration::from_secs(120)).await;
    assert_eq!(got.len(), 1000, "every message arrived");
    let duplicates: usize = got.values().map(|n| n - 1).sum();
    assert_eq!(duplicates, 0, "and exactly once");
    let start = Instant::now();
    while !server.queued().is_empty() && start.elapsed() < WAIT {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(server.queued().is_empty(), "the queue is empty afterwards");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_a_delivery_burst_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let sink = SmtpSink::start("127.0.0.81", dir.path());
    let ca = TestCa::generate(dir.path());
    let config_path = dir.path().join("portcullis.toml");
    std::fs::write(
        &config_path,
        complete_config(&smarthost_config(&sink), dir.path(), &ca),
    )
    .unwrap();

    let total = 600;
    let mut server = ProcessServer::spawn(&config_path);
    // Submit while deliveries run; kill -9 once some have arrived.
    let senders: Vec<_> = (0..3)
        .map(|c| tokio::spawn(send_until_cut(server.addr, c, total, 3)))
        .collect();
    let start = Instant::now();
    while sink.subjects().len() < 50 && start.elapsed() < WAIT {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    server.kill9();
    let before_restart = sink.subjects().len();
    let mut acked = Vec::new();
    for s in senders {
        acked.extend(s.await.unwrap());
    }
    // Acknowledgements may trail deliveries by one message per connection.
    assert!(
        acked.len() >= 40,
        "the burst was under way when the server died"
    );

    let _server = ProcessServer::spawn(&config_path);
    let got = sink
        .wait_distinct(acked.len(), Duration::from_secs(120))
        .await;
    let duplicates: usize = got.values().map(|n| n - 1).sum();
    println!(
        "kill -9 burst: {} acknowledged, {before_restart} delivered before the kill, {} after restart, {duplicates} duplicate(s)",
        acked.len(),
        got.len()
    );
    for n in &acked {
        assert!(
            got.contains_key(&format!("burst {n}")),
            "acknowledged message {n} was lost"
        );
    }
    assert!(
        duplicates <= acked.len(),
        "duplicates are bounded by the messages in flight"
    );
}

/// Sends "burst N" messages until `total` or until the server goes away; returns the acknowledged N.
async fn send_until_cut(
    addr: std::net::SocketAddr,
    first: usize,
    total: usize,
    step: usize,
) -> Vec<usize> {
    let mut acked = Vec::new();
    let mut c = SmtpClient::connect(addr, "127.0.0.2").await;
    if c.cmd("EHLO burst.test").await.code != 250 {
        return acked;
    }
    for n in (first..total).step_by(step) {
        let body = "MAIL FROM:<burst@client.test>\r\nRCPT TO:<rcpt@far.example>\r\nDATA\r\n";
        if !c.try_send(body.as_bytes()).await {
            break;
        }
        let ok = matches!(c.try_read_reply().await, Some(r) if r.code == 250)
            & matches!(c.try_read_reply().await, Some(r) if r.code == 250)
            & matches!(c.try_read_reply().await, Some(r) if r.code == 354);
        if !ok
            || !c
                .try_send(format!("Subject: burst {n}\r\n\r\nmessage {n}\r\n.\r\n").as_bytes())
                .await
        {
            break;
        }
        match c.try_read_reply().await {
            Some(r) if r.code == 250 => acked.push(n),
            _ => break,
        }
    }
    acked
}

/// Portcullis routing office.test to a real Postfix (mailboxes alice and
/// bob) and lab.test to a recording sink; one try an hour, so that a
/// message that does not arrive at the first attempt shows.
async fn relay_to_office(postfix: &PostfixMta, lab: &Sink) -> TestServer {
    TestServer::start(&format!(
        "[[network]]\nrange = \"127.0.0.0/24\"\nauth = \"none\"\n[delivery]\nretry_schedule = [\"1h\"]\n\
         [[route]]\ndomain = \"office.test\"\nhost = \"{}\"\n[[route]]\ndomain = \"lab.test\"\nhost = \"{}\"\n",
        postfix.addr, lab.addr
    ))
    .await
}

async fn submit_one(server: &TestServer, from: &str, to: &str, subject: &str) {
    let mut c = SmtpClient::greeted(server.addr(), "127.0.0.2", "printer.lab.test").await;
    let body = format!("Subject: {subject}\r\n\r\n{subject}\r\n");
    let r = c.send_mail(from, &[to], body.as_bytes()).await;
    assert_eq!(r.code, 250, "{r:?}");
    c.expect("QUIT", 221).await;
}

async fn queue_empties(server: &TestServer) {
    let start = Instant::now();
    while !server.queued().is_empty() && start.elapsed() < WAIT {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(server.queued().is_empty(), "the queue empties");
}

/// A typo'd colleague's address, refused by Postfix with pipelined DATA
/// answered 554 (no valid recipients), must not leave the transaction open on
/// the pooled connection: the next valid message to the same server is
/// delivered, not bounced with "503 nested MAIL command".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_every_recipient_is_refused_postfix_takes_the_next_message_on_the_same_connection() {
    let dir = tempfile::tempdir().unwrap();
    let postfix = PostfixMta::start("127.0.0.120", "office.test", &["alice", "bob"], dir.path());
    let lab = Sink::start("127.0.0.121", 0, Behaviour::accept_all()).await;
    let server = relay_to_office(&postfix, &lab).await;

    submit_one(&server, "printer@lab.test", "alcie@office.test", "typo").await;
    queue_empties(&server).await;
    // Within the pooled connection's idle time: the same connection is reused.
    submit_one(&server, "printer@lab.test", "alice@office.test", "valid").await;
    let alice = postfix.wait_for("alice", 1, WAIT).await;
    assert_eq!(
        alice.len(),
        1,
        "the valid message arrived; Postfix log:\n{}",
        postfix.log()
    );
    assert!(alice[0].contains("Subject: valid"), "{}", alice[0]);
    queue_empties(&server).await;
    let bounces: Vec<_> = lab
        .messages()
        .into_iter()
        .filter(|m| m.from.is_empty())
        .collect();
    assert_eq!(bounces.len(), 1, "one bounce, for the typo only");
    let text = String::from_utf8_lossy(&bounces[0].data);
    assert!(text.contains("alcie@office.test"), "{text}");
    assert!(
        !text.contains("alice@office.test"),
        "the valid message did not bounce: {text}"
    );
    assert!(
        !postfix.log().contains("nested MAIL command"),
        "no MAIL inside an open transaction:\n{}",
        postfix.log()
    );
}

/// The bounce for a typo goes back to the same Postfix (the sender is a
/// colleague): it must arrive, not be dropped as a failed null-sender message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bounce_for_a_refused_colleague_reaches_the_sender_through_the_same_postfix() {
    let dir = tempfile::tempdir().unwrap();
    let postfix = PostfixMta::start("127.0.0.122", "office.test", &["alice", "bob"], dir.path());
    let lab = Sink::start("127.0.0.123", 0, Behaviour::accept_all()).await;
    let server = relay_to_office(&postfix, &lab).await;

    submit_one(&server, "bob@office.test", "alcie@office.test", "typo").await;
    let bob = postfix.wait_for("bob", 1, WAIT).await;
    assert_eq!(
        bob.len(),
        1,
        "bob got the bounce; Postfix log:\n{}",
        postfix.log()
    );
    assert!(bob[0].contains("alcie@office.test"), "{}", bob[0]);
    assert!(bob[0].contains("Action: failed"), "{}", bob[0]);
    queue_empties(&server).await;
}

/// A Microsoft 365-style connector that trusts a certificate instead of a
/// password: a real Postfix that requires a client certificate from our CA.
/// The profile with `client_cert`/`client_key` delivers; the same profile
/// without them does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_profile_with_a_client_certificate_delivers_to_postfix_that_requires_one() {
    use crate::support::dns::TestDns;
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    std::fs::create_dir(&pki).unwrap();
    let ca = TestCa::generate_for(&pki, &["mx.office.test"]);
    let ca_file = ca.ca_file(&pki);
    for f in std::fs::read_dir(&pki).unwrap().flatten() {
        // Postfix's daemons read them; a test key, no secret.
        std::fs::set_permissions(
            f.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o644),
        )
        .unwrap();
    }
    std::fs::set_permissions(&pki, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let tls = format!(
        "smtpd_tls_cert_file = {}\nsmtpd_tls_key_file = {}\nsmtpd_tls_security_level = encrypt\nsmtpd_tls_ask_ccert = yes\nsmtpd_tls_req_ccert = yes\nsmtpd_tls_CAfile = {}\nsmtpd_tls_loglevel = 1\n",
        ca.cert_path.display(),
        ca.key_path.display(),
        ca_file.display()
    );
    let postfix = PostfixMta::start_with(
        "127.0.0.124",
        "office.test",
        &["alice", "bob"],
        dir.path(),
        &tls,
    );
    let dns = TestDns::start().await;
    dns.host("mx.office.test", "127.0.0.124");
    let profile = |with_cert: bool| {
        let cert = if with_cert {
            format!(
                "client_cert = \"{}\"\nclient_key = \"{}\"\n",
                ca.client_cert_path.display(),
                ca.client_key_path.display()
            )
        } else {
            String::new()
        };
        format!(
            "{}\n[[network]]\nrange = \"127.0.0.0/24\"\nauth = \"none\"\n[delivery]\nretry_schedule = [\"1h\"]\n[[smarthost]]\nname = \"connector\"\nhosts = \"mx.office.test:{}\"\nca_file = \"{}\"\n{cert}\n[[route]]\ndomain = \"office.test\"\nvia = \"connector\"\n",
            dns.config(),
            postfix.addr.rsplit(':').next().unwrap(),
            ca_file.display()
        )
    };
    let without = TestServer::start(&profile(false)).await;
    submit_one(
        &without,
        "printer@lab.test",
        "bob@office.test",
        "no certificate",
    )
    .await;
    let server = TestServer::start(&profile(true)).await;
    submit_one(
        &server,
        "printer@lab.test",
        "alice@office.test",
        "with certificate",
    )
    .await;
    let alice = postfix.wait_for("alice", 1, WAIT).await;
    assert_eq!(alice.len(), 1, "Postfix log:\n{}", postfix.log());
    assert!(alice[0].contains("Subject: with certificate"));
    queue_empties(&server).await;
    assert!(
        postfix.mailbox("bob").is_empty(),
        "no certificate, no delivery; Postfix log:\n{}",
        postfix.log()
    );
    assert_eq!(without.queued().len(), 1, "deferred, not bounced");
}
