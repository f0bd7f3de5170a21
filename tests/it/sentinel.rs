//! The spam-through guard: the NAT sentinel and the outbound flood hold.

use crate::support::client::SmtpClient;
use crate::support::server::TestServer;
use crate::support::sink::{Behaviour, Sink};
use std::time::{Duration, Instant};

/// A "router" inside the trusted range carries sessions from many Internet
/// senders: it loses its trust; an office client beside it keeps its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_address_carrying_the_internet_loses_its_trust() {
    let server = TestServer::start(
        "[[network]]\nrange = \"127.0.0.0/24\"\nauth = \"none\"\n[delivery]\nmode = \"smarthost\"\nsmarthost = \"127.0.0.1:1\"\nsmarthost_tls = \"none\"\n",
    )
    .await;
    let mut office = SmtpClient::greeted(server.addr(), "127.0.0.10", "pc10.office.lan").await;
    let mut last = 0;
    for i in 0..60 {
        let mut c = SmtpClient::connect(server.addr(), "127.0.0.254").await;
        c.expect(&format!("EHLO mx{i}.sender{i}.com"), 250).await;
        c.expect(&format!("MAIL FROM:<news@sender{i}.com>"), 250)
            .await;
        last = c
            .cmd(&format!("RCPT TO:<victim{i}@far{i}.example>"))
            .await
            .code;
        c.expect("QUIT", 221).await;
        // The office client goes on in between, one message in two rounds.
        if i % 2 == 0 {
            let r = office
                .send_mail(
                    "printer@office.example",
                    &[&format!("boss{i}@partner.example")],
                    b"Subject: scan\r\n\r\nx\r\n",
                )
                .await;
            assert_eq!(r.code, 250, "the office keeps its trust: {r:?}");
        }
    }
    assert_eq!(
        last, 451,
        "the last relay attempt through the router is deferred while the decision is fresh"
    );
    // `guard list` shows it with the evidence; `guard trust` gives it back.
    let config = server.dir.path().join("guard.toml");
    std::fs::write(&config, toml::to_string(&server.config).unwrap()).unwrap();
    let cli = |args: &[&str]| crate::support::portcullis(&config, args);
    let (ok, out, err) = tokio::task::block_in_place(|| cli(&["guard", "list", "--json"]));
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(
        v["untrusted"]["127.0.0.254"]["evidence"]
            .as_str()
            .unwrap()
            .contains("HELO names"),
        "{v}"
    );
    assert!(v["untrusted"].get("127.0.0.10").is_none(), "{v}");
    let (ok, _, _) = tokio::task::block_in_place(|| cli(&["guard", "trust", "127.0.0.254"]));
    assert!(ok);
    // The running server made the change (its control socket), and saved it.
    let saved: serde_json::Value =
        serde_json::from_slice(&std::fs::read(server.data_dir().join("guard.json")).unwrap())
            .unwrap();
    assert!(
        saved["trusted_by_admin"]
            .as_array()
            .unwrap()
            .iter()
            .any(|ip| ip == "127.0.0.254"),
        "{saved}"
    );
    assert!(saved["untrusted"].get("127.0.0.254").is_none(), "{saved}");
    let mut c = SmtpClient::greeted(server.addr(), "127.0.0.254", "router.lan").await;
    c.expect("MAIL FROM:<a@office.example>", 250).await;
    c.expect("RCPT TO:<far@elsewhere.example>", 250).await;
}

/// A trusted source sending to 300 domains: beyond a small allowance its
/// mail is held, and `queue release --source` lets it all go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_to_many_domains_is_held_until_released() {
    let sink = Sink::start("127.0.0.97", 0, Behaviour::accept_all()).await;
    let server = TestServer::start(&format!(
        "[[network]]\nrange = \"127.0.0.0/24\"\nauth = \"none\"\n[delivery]\nmode = \"smarthost\"\nsmarthost = \"{}\"\nsmarthost_tls = \"none\"\nretry_schedule = [\"1s\"]\n",
        sink.addr
    ))
    .await;
    let mut c = SmtpClient::greeted(server.addr(), "127.0.0.20", "pc20.office.lan").await;
    for i in 0..300 {
        let r = c
            .send_mail(
                "clerk@office.example",
                &[&format!("x@domain{i}.example")],
                b"Subject: offer\r\n\r\nx\r\n",
            )
            .await;
        assert_eq!(r.code, 250, "accepted, the sender learns nothing: {r:?}");
    }
    // Let deliveries run, then count.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = sink.messages().len();
    assert!(before <= 150, "at most half leave before release: {before}");
    assert!(before >= 10, "the allowance goes out: {before}");
    let config = server.dir.path().join("flood.toml");
    std::fs::write(&config, toml::to_string(&server.config).unwrap()).unwrap();
    let (ok, out, err) = tokio::task::block_in_place(|| {
        crate::support::portcullis(&config, &["queue", "release", "--source", "127.0.0.20"])
    });
    assert!(ok, "{out}{err}");
    let started = Instant::now();
    while sink.messages().len() < 300 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "released mail is delivered: {}",
            sink.messages().len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(sink.messages().len(), 300);
}

/// A trusted source whose mail bounces (every recipient refused by the next
/// hop, as spam to harvested addresses is): once enough of it failed, its
/// further mail is held, though it writes to one domain only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_that_keeps_bouncing_is_held() {
    let refusing = Behaviour {
        reject_rcpt: vec![("nobody", 550, "5.1.1 no such user")],
        ..Behaviour::accept_all()
    };
    let sink = Sink::start("127.0.0.98", 0, refusing).await;
    let server = TestServer::start(&format!(
        "[[network]]\nrange = \"127.0.0.0/24\"\nauth = \"none\"\n[delivery]\nmode = \"smarthost\"\nsmarthost = \"{}\"\nsmarthost_tls = \"none\"\n[guard]\nflood_min_failures = 5\n",
        sink.addr
    ))
    .await;
    let mut c = SmtpClient::greeted(server.addr(), "127.0.0.21", "pc21.office.lan").await;
    for _ in 0..5 {
        send_to(&mut c, "nobody@one.example").await;
    }
    // Each failure sends a bounce to the sender: wait for the five.
    let started = Instant::now();
    while sink.messages().iter().filter(|m| m.from.is_empty()).count() < 5 {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "deliveries did not fail in time"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    send_to(&mut c, "someone@one.example").await;
    c.expect("QUIT", 221).await;
    let spool = server.spool();
    let held: Vec<_> = server
        .queued()
        .into_iter()
        .filter_map(|id| spool.load(&crate::support::qid(&id)).ok())
        .filter(|m| m.state.held)
        .collect();
    assert_eq!(
        held.len(),
        1,
        "the next message of a bouncing source is held"
    );
    assert_eq!(
        held[0].envelope.recipients[0].address,
        "someone@one.example"
    );
}

async fn send_to(c: &mut SmtpClient, to: &str) {
    let r = c
        .send_mail(
            "clerk@office.example",
            &[to],
            b"Subject: hello\r\n\r\nx\r\n",
        )
        .await;
    assert_eq!(r.code, 250, "{r:?}");
}

/// A web server hosting several sites (each PHPMailer instance says EHLO
/// with its own site's name and sends as noreply@site), and an admin's
/// workstation testing with reserved names, keep their trust, round after
/// round; a router that lost its trust gets 451 (retried), then 554 once
/// the decision is old.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_site_web_servers_and_test_tools_keep_their_trust() {
    let server = TestServer::start(
        "[[network]]\nrange = \"127.0.0.0/24\"\nauth = \"none\"\n[delivery]\nmode = \"smarthost\"\nsmarthost = \"127.0.0.1:1\"\nsmarthost_tls = \"none\"\n[guard]\nnat_tempfail = \"1s\"\n",
    )
    .await;
    for round in 0..4 {
        for site in 0..9 {
            let mut c =
                SmtpClient::greeted(server.addr(), "127.0.0.30", &format!("www.shop{site}.com"))
                    .await;
            let r = c
                .send_mail(
                    &format!("noreply@shop{site}.com"),
                    &[&format!("customer{round}@buyer{site}.net")],
                    b"Subject: your order\r\n\r\nthanks\r\n",
                )
                .await;
            assert_eq!(r.code, 250, "site {site}, round {round}: {r:?}");
            c.expect("QUIT", 221).await;
        }
    }
    for i in 0..30 {
        let mut c =
            SmtpClient::greeted(server.addr(), "127.0.0.31", &format!("tool{i}.test")).await;
        c.expect(&format!("MAIL FROM:<me@box{i}.example.com>"), 250)
            .await;
        c.expect("RCPT TO:<colleague@partner.de>", 250).await;
        c.expect("QUIT", 221).await;
    }
    // A router carrying the Internet: 451 while the decision is fresh, 554 after.
    let mut first_refusal = 0;
    for i in 0..30 {
        let mut c = SmtpClient::connect(server.addr(), "127.0.0.254").await;
        c.expect(&format!("EHLO mx{i}.sender{i}.com"), 250).await;
        c.expect(&format!("MAIL FROM:<news@sender{i}.com>"), 250)
            .await;
        let code = c.cmd(&format!("RCPT TO:<victim{i}@far{i}.net>")).await.code;
        if code != 250 {
            first_refusal = code;
            break;
        }
    }
    assert_eq!(first_refusal, 451, "deferred while the decision is fresh");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let mut c = SmtpClient::greeted(server.addr(), "127.0.0.254", "mx99.sender99.com").await;
    c.expect("MAIL FROM:<news@sender99.com>", 250).await;
    c.expect("RCPT TO:<victim@far.net>", 554).await;
    let guard = std::fs::read_to_string(server.data_dir().join("guard.json")).unwrap();
    assert!(guard.contains("127.0.0.254"), "{guard}");
    assert!(
        !guard.contains("127.0.0.30") && !guard.contains("127.0.0.31"),
        "{guard}"
    );
}

/// With no server running, `portcullis guard` edits the state file itself
/// (under the data directory's lock), and a server started later has it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guard_commands_without_a_server_edit_the_file_a_server_then_reads() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let config = dir.path().join("portcullis.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\ndata_dir = \"{}\"\n[dns]\nnameservers = [\"127.0.0.1:1\"]\n[[listener]]\naddress = \"127.0.0.1:0\"\nkind = \"smtp\"\n[[network]]\nrange = \"127.0.0.0/24\"\nauth = \"none\"\n",
            data.display()
        ),
    )
    .unwrap();
    let cli = |args: &[&str]| crate::support::portcullis(&config, args);
    let (ok, out, err) = tokio::task::block_in_place(|| cli(&["guard", "untrust", "127.0.0.77"]));
    assert!(ok, "{out}{err}");
    let (ok, out, _) = tokio::task::block_in_place(|| cli(&["guard", "list", "--json"]));
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(v["untrusted"].get("127.0.0.77").is_some(), "{v}");
    let server = crate::support::server::ProcessServer::spawn(&config);
    let mut c = SmtpClient::greeted(server.addr, "127.0.0.77", "pc77.office.lan").await;
    c.expect("MAIL FROM:<a@office.example>", 250).await;
    let r = c.cmd("RCPT TO:<far@elsewhere.example>").await;
    assert!(
        r.code >= 400,
        "untrusted while no server ran, still so: {r:?}"
    );
}
