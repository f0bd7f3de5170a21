//! Profiles' quotas against loopback SMTP peers: our pacing holds mail in
//! the queue (never a bounce), big recipient lists go as several
//! transactions, a provider's quota reply stops the profile and its overflow
//! takes over, and the counts survive kill -9.

use crate::support::client::SmtpClient;
use crate::support::server::{ProcessServer, TestServer, complete_config};
use crate::support::sink::{Behaviour, Sink};
use crate::support::tls::TestCa;
use crate::support::{DNS_GUARD, WAIT};
use std::sync::atomic::Ordering;
use std::time::Duration;

/// A clear-text profile to `sink` (loopback; the warning is expected).
fn profile(name: &str, sink: &Sink, extra: &str) -> String {
    format!(
        "[[smarthost]]\nname = \"{name}\"\nhosts = \"{}\"\ntls = \"none\"\n{extra}\n",
        sink.addr
    )
}

fn config(rest: &str) -> String {
    format!(
        "{DNS_GUARD}[server]\nmax_recipients = 300\n[[network]]\nrange = \"127.0.0.0/24\"\nauth = \"none\"\n[delivery]\nmode = \"smarthost\"\nretry_schedule = [\"1s\"]\n{rest}"
    )
}

async fn send(addr: std::net::SocketAddr, to: &[&str], subject: &str) {
    let mut c = SmtpClient::greeted(addr, "127.0.0.2", "app.test").await;
    let r = c
        .send_mail(
            "app@client.test",
            to,
            format!("Subject: {subject}\r\n\r\nx\r\n").as_bytes(),
        )
        .await;
    assert_eq!(r.code, 250, "{r:?}");
    c.expect("QUIT", 221).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pacing_holds_what_the_minute_has_no_room_for_without_a_bounce() {
    let sink = Sink::start("127.0.0.80", 0, Behaviour::accept_all()).await;
    let server =
        TestServer::start(&config(&profile("isp", &sink, "messages_per_minute = 5"))).await;
    for n in 0..8 {
        send(server.addr(), &["far@anywhere.example"], &format!("m{n}")).await;
    }
    let got = sink.wait_for(5, WAIT).await;
    assert_eq!(got.len(), 5);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(sink.messages().len(), 5, "no more than 5 within the minute");
    let queued = server.queued();
    assert_eq!(queued.len(), 3, "the rest waits in the queue: {queued:?}");
    for id in &queued {
        let m = server.spool().load(&crate::support::qid(id)).unwrap();
        assert_eq!(m.envelope.sender, "app@client.test", "no bounce among them");
        assert!(
            m.state
                .recipients
                .iter()
                .all(|r| r.status == portcullis::spool::RecipientStatus::Queued)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_recipients_than_a_message_may_have_go_as_several_transactions() {
    let sink = Sink::start("127.0.0.81", 0, Behaviour::accept_all()).await;
    let server = TestServer::start(&config(&profile(
        "m365",
        &sink,
        "recipients_per_message = 100",
    )))
    .await;
    let rcpts: Vec<String> = (0..250).map(|i| format!("r{i}@far.example")).collect();
    let refs: Vec<&str> = rcpts.iter().map(String::as_str).collect();
    send(server.addr(), &refs, "many").await;
    let got = sink.wait_for(3, WAIT).await;
    let mut sizes: Vec<usize> = got.iter().map(|m| m.rcpts.len()).collect();
    sizes.sort();
    assert_eq!(sizes, vec![50, 100, 100]);
    let mut all: Vec<String> = got.iter().flat_map(|m| m.rcpts.clone()).collect();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 250, "each recipient exactly once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_quota_reply_stops_the_profile_and_the_overflow_takes_over() {
    let spent = Sink::start(
        "127.0.0.82",
        0,
        Behaviour {
            mail_reply: Some("550 5.4.5 Daily user sending limit exceeded."),
            ..Behaviour::accept_all()
        },
    )
    .await;
    let second = Sink::start("127.0.0.83", 0, Behaviour::accept_all()).await;
    let rest = format!(
        "{}{}[[route]]\nvia = \"main\"\n",
        profile("main", &spent, "overflow = \"second\""),
        profile("second", &second, "")
    );
    let server = TestServer::start(&config(&rest)).await;
    for n in 0..3 {
        send(server.addr(), &["far@anywhere.example"], &format!("q{n}")).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let got = second.wait_for(3, WAIT).await;
    assert_eq!(got.len(), 3, "the overflow profile took every message");
    assert_eq!(
        spent.connections.load(Ordering::SeqCst),
        1,
        "after the quota reply, no connection per message to the spent profile"
    );
    let start = std::time::Instant::now();
    while !server.queued().is_empty() && start.elapsed() < WAIT {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        server.queued().is_empty(),
        "delivered, nothing bounced or left"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_counts_survive_kill_9() {
    let sink = Sink::start("127.0.0.84", 0, Behaviour::accept_all()).await;
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::generate(dir.path());
    let path = dir.path().join("portcullis.toml");
    std::fs::write(
        &path,
        complete_config(
            &config(&profile("isp", &sink, "messages_per_day = 2")),
            dir.path(),
            &ca,
        ),
    )
    .unwrap();
    let mut server = ProcessServer::spawn(&path);
    send(server.addr, &["a@far.example"], "one").await;
    send(server.addr, &["b@far.example"], "two").await;
    assert_eq!(sink.wait_for(2, WAIT).await.len(), 2);
    server.kill9();
    let server = ProcessServer::spawn(&path);
    send(server.addr, &["c@far.example"], "three").await;
    assert!(
        server.wait_for_log("held by profile"),
        "{}",
        server.log.lock().unwrap()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        sink.messages().len(),
        2,
        "the two sent before the crash still count: the third waits"
    );
}

#[test]
fn check_config_names_quotas_above_the_provider_and_overflow_loops() {
    let c = portcullis::config::Config::parse(
        "[[smarthost]]\nname = \"m\"\npreset = \"google-smtp-relay\"\nrecipients_per_day = 50000\n",
        "t",
    )
    .unwrap();
    assert!(
        c.findings()
            .iter()
            .any(|f| f.key == "smarthost[0].recipients_per_day" && f.reason.contains("10000")),
        "{:?}",
        c.findings()
    );
    let e = portcullis::config::Config::parse(
        "[[smarthost]]\nname = \"a\"\nhosts = \"a.test\"\noverflow = \"b\"\n[[smarthost]]\nname = \"b\"\nhosts = \"b.test\"\noverflow = \"a\"\n",
        "t",
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("overflow") && e.contains("loop"), "{e}");
}
