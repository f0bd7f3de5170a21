//! Hostile clients: work an unauthenticated client can make the server do is bounded.

use crate::support::WAIT;
use crate::support::client::{SmtpClient, tcp_from};
use crate::support::server::{ProcessServer, TestServer, complete_config};
use crate::support::tls::TestCa;
use base64::Engine;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

fn plain(user: &str, pass: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{pass}"))
}

/// Clients that send AUTH with a wrong password and hang up at once, hundreds
/// at a time, must not make the server hash for each of them: memory stays
/// bounded and a real user still gets in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_flood_from_clients_that_hang_up_keeps_memory_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::generate(dir.path());
    let users = dir.path().join("users");
    let mut map = portcullis::users::Users::new();
    // argon2id, as `portcullis user add` writes: 19 MiB per verification.
    map.insert(
        "alice".into(),
        portcullis::users::hash_password("right").unwrap(),
    );
    portcullis::users::write_users(&users, &map, None).unwrap();
    let text = complete_config(
        &format!(
            "[auth]\nusers_file = \"{}\"\n[server]\nmax_connections = 1000\nmax_connection_rate_per_ip = 0\n",
            users.display()
        ),
        dir.path(),
        &ca,
    );
    let config = dir.path().join("portcullis.toml");
    std::fs::write(&config, text).unwrap();
    let server = ProcessServer::spawn(&config);
    let before = server.status_kib("VmRSS");

    let attack = format!(
        "EHLO flood.test\r\nAUTH PLAIN {}\r\n",
        plain("alice", "wrong")
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    for wave in 0..6 {
        let mut clients = Vec::new();
        for i in 0..50 {
            let source = format!("127.0.1.{}", 10 + (wave * 50 + i) % 200);
            let attack = attack.clone();
            let addr = server.addr;
            clients.push(tokio::spawn(async move {
                let mut s = tcp_from(&source, addr).await;
                let _ = s.write_all(attack.as_bytes()).await;
                // Hang up without waiting for any answer.
            }));
        }
        for c in clients {
            c.await.unwrap();
        }
        assert!(Instant::now() < deadline, "flood took too long");
    }
    // Then a sustained flood: two clients connect, send a wrong password and
    // hang up as fast as they can for 8 s. (Before malloc was told to hand
    // big blocks back, each blocking thread's arena kept its freed 19 MiB
    // hash buffers: 1 GB after 10 s.)
    let sustained = Instant::now() + Duration::from_secs(8);
    let mut loopers = Vec::new();
    for n in 0..2 {
        let attack = attack.clone();
        let addr = server.addr;
        loopers.push(tokio::spawn(async move {
            let mut sent = 0u32;
            while Instant::now() < sustained {
                let mut s = tcp_from(&format!("127.0.2.{}", 10 + n), addr).await;
                let _ = s.write_all(attack.as_bytes()).await;
                sent += 1;
            }
            sent
        }));
    }
    let mut sent = 0;
    for l in loopers {
        sent += l.await.unwrap();
    }
    // Let whatever was started finish, then look at the high-water mark.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let peak = server.status_kib("VmHWM");
    println!(
        "RSS before {before} KiB, peak during 300 AUTH hang-ups and {sent} more in 8 s: {peak} KiB"
    );
    assert!(
        peak < before + 100 * 1024,
        "peak RSS {peak} KiB grew by more than 100 MiB from {before} KiB"
    );

    let mut c = SmtpClient::greeted(server.addr, "127.0.0.2", "me.test").await;
    let r = tokio::time::timeout(WAIT, c.auth_plain("alice", "right"))
        .await
        .expect("a real user is answered in time");
    assert_eq!(r.code, 235, "{r:?}");
}

/// Each failed AUTH in a session is answered later than the one before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_auth_attempts_cost_growing_time() {
    let server =
        TestServer::start("[[network]]\nrange = \"127.0.0.0/8\"\nauth = \"required\"\n").await;
    crate::support::write_users(&server.config.users_file(), &[("bob", "builder")]);
    let mut c = SmtpClient::greeted(server.addr(), "127.0.0.3", "guess.test").await;
    let start = Instant::now();
    for _ in 0..3 {
        assert_eq!(c.auth_plain("bob", "guess").await.code, 535);
    }
    let spent = start.elapsed();
    // 0.5 s + 1 s + 2 s of deliberate delay at least.
    assert!(
        spent >= Duration::from_millis(3500),
        "three failures took only {spent:?}"
    );
    // The right password is still accepted in the same session.
    assert_eq!(c.auth_plain("bob", "builder").await.code, 235);
}

const CLOSED_LAN: &str = "[[network]]\nrange = \"127.0.0.0/24\"\nauth = \"none\"\n[relay]\ninbound_domains = [\"example.lan\"]\n";

/// `CRLF NUL . CRLF` would end the data at a next hop that drops NUL; what
/// follows would run there as a second transaction. Refused, nothing spooled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nul_before_a_dot_cannot_smuggle_a_second_message() {
    let server = TestServer::start(CLOSED_LAN).await;
    let mut c = SmtpClient::greeted(server.addr(), "127.0.3.9", "client.test").await;
    c.expect("MAIL FROM:<a@x.test>", 250).await;
    c.expect("RCPT TO:<b@example.lan>", 250).await;
    c.expect("DATA", 354).await;
    c.send_raw(b"Subject: one\r\n\r\nhello\r\n\0.\r\nMAIL FROM:<evil@x.test>\r\nRCPT TO:<victim@example.lan>\r\nDATA\r\n\r\nsmuggled\r\n.\r\n")
        .await;
    let r = c.read_reply().await;
    assert_eq!(r.code, 554, "{r:?}");
    assert!(r.text().starts_with("5.6.0"), "{r:?}");
    assert!(c.closed().await, "connection closed after a NUL in DATA");
    assert!(server.queued().is_empty(), "nothing is spooled");
}

/// With `nul_in_data = "strip"` the NUL goes, and the dot after it stays text:
/// the whole input is one message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stripped_nul_keeps_one_message() {
    let server =
        TestServer::start(&format!("[server]\nnul_in_data = \"strip\"\n{CLOSED_LAN}")).await;
    let mut c = SmtpClient::greeted(server.addr(), "127.0.3.9", "client.test").await;
    c.expect("MAIL FROM:<a@x.test>", 250).await;
    c.expect("RCPT TO:<b@example.lan>", 250).await;
    c.expect("DATA", 354).await;
    c.send_raw(b"Subject: one\r\n\r\nhello\r\n\0.\r\nRSET\r\n.\r\n")
        .await;
    assert_eq!(c.read_reply().await.code, 250);
    c.expect("QUIT", 221).await;
    let ids = server.queued();
    assert_eq!(ids.len(), 1);
    let content = server
        .spool()
        .read_body(&crate::support::qid(&ids[0]))
        .unwrap();
    assert!(
        crate::support::strip_received(&content).ends_with(b"hello\r\n.\r\nRSET\r\n"),
        "{:?}",
        String::from_utf8_lossy(&content)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_characters_in_commands_and_oversized_chunks_are_refused() {
    let server = TestServer::start(CLOSED_LAN).await;
    let mut c = SmtpClient::connect(server.addr(), "127.0.3.9").await;
    let r = c.cmd("EHLO a\0b").await;
    assert_eq!(r.code, 500, "{r:?}");
    assert!(!r.text().contains('\0'), "the NUL is not echoed back");
    c.expect("EHLO client.test", 250).await;
    c.expect("MAIL FROM:<a@x.test> SIZE=1 SIZE=2", 501).await;
    c.expect("MAIL FROM:<a@x.test> SIZE=10", 250).await;
    c.expect("RCPT TO:<b@example.lan>", 250).await;
    // A chunk size past the limit is refused at once, and the connection closed
    // (its octets can be neither read in reasonable time nor taken for commands).
    let r = c.cmd("BDAT 18446744073709551615 LAST").await;
    assert_eq!(r.code, 552, "{r:?}");
    assert!(r.text().starts_with("5.3.4"), "{r:?}");
    assert!(c.closed().await);
}

/// Slow strangers fill every slot they can: the office still gets in (the
/// reserved slots), and the strangers' idle connections are cut short once
/// the server is under stress.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_slow_strangers_cannot_lock_the_office_out() {
    let server = TestServer::start(&format!(
        "[server]\nmax_connections = 20\nmax_connections_per_ip = 5\nreserved_connections = 4\nstress_timeout = \"1s\"\n{CLOSED_LAN}"
    ))
    .await;
    let mut strangers = Vec::new();
    let mut refused = 0;
    for i in 0..20 {
        let source = format!("127.0.3.{}", 10 + i / 5);
        let mut c = SmtpClient::connect_raw(server.addr(), &source).await;
        let banner = c.read_reply().await;
        match banner.code {
            220 => strangers.push(c),
            421 => refused += 1,
            other => panic!("unexpected banner {other}: {banner:?}"),
        }
    }
    assert_eq!(
        strangers.len(),
        16,
        "strangers get all but the reserved slots"
    );
    assert_eq!(refused, 4);
    // The office connects and sends while the strangers hold their slots.
    let mut office = SmtpClient::greeted(server.addr(), "127.0.0.2", "office.test").await;
    let r = office
        .send_mail(
            "app@example.lan",
            &["boss@example.lan"],
            b"Subject: still here\r\n\r\nx\r\n",
        )
        .await;
    assert_eq!(r.code, 250, "{r:?}");
    // Under stress (17 of 20 slots), idle strangers wait a second, not five
    // minutes. Once enough of them are gone the stress ends and the rest get
    // normal waits again, so count those cut off within a few seconds.
    let started = Instant::now();
    let mut cut_off = 0;
    let waits: Vec<_> = strangers
        .into_iter()
        .map(|mut c| {
            tokio::spawn(async move {
                tokio::time::timeout(Duration::from_secs(5), c.read_reply())
                    .await
                    .ok()
            })
        })
        .collect();
    for w in waits {
        if let Some(r) = w.await.unwrap() {
            assert_eq!(r.code, 421, "{r:?}");
            assert!(r.text().contains("4.4.2"), "{r:?}");
            cut_off += 1;
        }
    }
    println!(
        "{cut_off} idle strangers cut off within {:?} under stress",
        started.elapsed()
    );
    assert!(
        cut_off >= 3,
        "enough idle strangers are cut off to end the stress: {cut_off}"
    );
}

/// A stranger may open only so many connections a minute; trusted clients are not counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_strangers_connection_rate_is_capped() {
    let server = TestServer::start(&format!(
        "[server]\nmax_connection_rate_per_ip = 5\n{CLOSED_LAN}"
    ))
    .await;
    for _ in 0..5 {
        let mut c = SmtpClient::connect(server.addr(), "127.0.3.20").await;
        c.expect("QUIT", 221).await;
    }
    let mut sixth = SmtpClient::connect_raw(server.addr(), "127.0.3.20").await;
    let r = sixth.read_reply().await;
    assert_eq!(r.code, 421, "{r:?}");
    assert!(r.text().contains("last minute"), "{r:?}");
    for _ in 0..10 {
        let mut c = SmtpClient::connect(server.addr(), "127.0.0.2").await;
        c.expect("QUIT", 221).await;
    }
}

/// Strangers on the submission port are strangers: they do not get the
/// slots reserved for the trusted LAN (privilege comes with trust, not the
/// port), so a flood of idle connections to 587 leaves the office its way in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_on_the_submission_port_leave_the_reserved_slots_to_the_lan() {
    let server = TestServer::start(&format!(
        "[server]\nmax_connections = 20\nmax_connections_per_ip = 5\nreserved_connections = 4\n[[listener]]\naddress = \"127.0.0.1:0\"\nkind = \"smtp\"\n[[listener]]\naddress = \"127.0.0.1:0\"\nkind = \"submission\"\n{CLOSED_LAN}"
    ))
    .await;
    let submission = server.addr_of(portcullis::config::ListenerKind::Submission);
    let mut held = Vec::new();
    let mut refused = 0;
    for i in 0..20 {
        let source = format!("127.0.3.{}", 30 + i / 5);
        let mut c = SmtpClient::connect_raw(submission, &source).await;
        match c.read_reply().await.code {
            220 => held.push(c),
            421 => refused += 1,
            other => panic!("unexpected banner {other}"),
        }
    }
    assert_eq!(
        (held.len(), refused),
        (16, 4),
        "the reserved slots stay free"
    );
    let mut office = SmtpClient::greeted(server.addr(), "127.0.0.2", "office.test").await;
    let r = office
        .send_mail(
            "app@example.lan",
            &["boss@example.lan"],
            b"Subject: in\r\n\r\nx\r\n",
        )
        .await;
    assert_eq!(r.code, 250, "{r:?}");
    drop(held);
}

/// Bare connections to an implicit-TLS listener from one address: those the
/// caps refuse are closed at once instead of being taken through a TLS
/// handshake, so they cannot pile up descriptors; under a small open-file
/// limit the trusted LAN on port 25 is still answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bare_connections_to_smtps_cannot_exhaust_descriptors() {
    let dir = tempfile::tempdir().unwrap();
    let ca = crate::support::tls::TestCa::generate(dir.path());
    let smtp = crate::support::free_port("127.0.0.1");
    let smtps = crate::support::free_port("127.0.0.1");
    let config = dir.path().join("portcullis.toml");
    std::fs::write(
        &config,
        crate::support::server::complete_config(
            &format!(
                "[server]\nmax_connections_per_ip = 20\n[[listener]]\naddress = \"127.0.0.1:{smtp}\"\nkind = \"smtp\"\n[[listener]]\naddress = \"127.0.0.1:{smtps}\"\nkind = \"smtps\"\n{CLOSED_LAN}"
            ),
            dir.path(),
            &ca,
        ),
    )
    .unwrap();
    let server = crate::support::server::ProcessServer::spawn_with_open_files(&config, 256);
    let target: std::net::SocketAddr = format!("127.0.0.1:{smtps}").parse().unwrap();
    let mut bare = Vec::new();
    for _ in 0..400 {
        bare.push(crate::support::client::tcp_from("127.0.3.60", target).await);
    }
    // Give the server the time to take them all in.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let open = std::fs::read_dir(format!("/proc/{}/fd", server.pid()))
        .unwrap()
        .count();
    assert!(
        open < 150,
        "{open} descriptors open for 400 bare connections"
    );
    let lan: std::net::SocketAddr = format!("127.0.0.1:{smtp}").parse().unwrap();
    let mut office = SmtpClient::connect_raw(lan, "127.0.0.2").await;
    assert_eq!(office.read_reply().await.code, 220, "the LAN is answered");
    drop(bare);
}

/// NOOP, RSET, VRFY, EXPN and HELP do nothing: a session is closed after
/// `max_junk_commands` of them between two messages (an accepted message
/// starts the count again), and under stress NOOPs every few seconds no
/// longer keep an idle stranger's slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_that_do_nothing_cannot_hold_a_slot() {
    let server = TestServer::start(&format!(
        "[server]\nmax_junk_commands = 20\nmax_connections = 8\nmax_connections_per_ip = 8\nreserved_connections = 1\nstress_timeout = \"1s\"\n{CLOSED_LAN}"
    ))
    .await;
    let mut c = SmtpClient::greeted(server.addr(), "127.0.3.80", "idle.test").await;
    for _ in 0..20 {
        c.expect("NOOP", 250).await;
    }
    let r = c
        .send_mail(
            "a@x.test",
            &["b@example.lan"],
            b"Subject: real\r\n\r\nx\r\n",
        )
        .await;
    assert_eq!(r.code, 250, "a message starts the count again");
    for _ in 0..10 {
        c.expect("RSET", 250).await;
        c.expect("NOOP", 250).await;
    }
    let r = c.cmd("VRFY someone").await;
    assert_eq!(r.code, 421, "{r:?}");
    assert!(c.closed().await);

    // Under stress (6 of 8 slots taken), a NOOP every 300 ms keeps no one
    // past stress_timeout.
    let mut holders = Vec::new();
    for i in 0..6 {
        holders.push(
            SmtpClient::greeted(server.addr(), &format!("127.0.3.{}", 81 + i), "idle.test").await,
        );
    }
    let started = Instant::now();
    let mut nooper = holders.pop().unwrap();
    let mut cut_off = false;
    while started.elapsed() < Duration::from_secs(6) {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let r = nooper.cmd("NOOP").await;
        if r.code == 421 {
            cut_off = true;
            break;
        }
    }
    assert!(
        cut_off,
        "NOOPs kept a stressed server's slot for {:?}",
        started.elapsed()
    );
    drop(holders);
}

/// Brute force from rotating addresses: failures are counted by network
/// prefix (a /24 here, a /64 for IPv6), which is banned as a whole; and an
/// account guessed at from many networks is closed to logins from outside
/// for a while (454, without checking the password), while its owner can
/// still log in from the trusted LAN.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guessing_from_rotating_addresses_is_stopped_by_prefix_and_by_account() {
    let server = TestServer::start(&format!(
        "[limits]\nauth_failures_before_ban = 5\nauth_failures_per_prefix = 4\nauth_failures_per_account = 6\n{CLOSED_LAN}"
    ))
    .await;
    crate::support::write_users(&server.config.users_file(), &[("bob", "builder")]);
    // One guess per address, each for another name, all from 127.0.7.0/24.
    for i in 1..=4 {
        let mut c = SmtpClient::greeted(server.addr(), &format!("127.0.7.{i}"), "rot.test").await;
        let r = c.auth_plain(&format!("user{i}"), "guess").await;
        assert!(matches!(r.code, 535 | 421), "{r:?}");
    }
    let mut next = SmtpClient::connect_raw(server.addr(), "127.0.7.200").await;
    assert_eq!(
        next.read_reply().await.code,
        421,
        "the whole /24 is banned, not only the addresses that guessed"
    );
    // bob guessed at from six networks: locked to logins from outside.
    for net in 10..16 {
        let mut c = SmtpClient::greeted(server.addr(), &format!("127.0.{net}.1"), "rot.test").await;
        assert_eq!(c.auth_plain("bob", "guess").await.code, 535);
    }
    let mut outsider = SmtpClient::greeted(server.addr(), "127.0.20.1", "x.test").await;
    let r = outsider.auth_plain("bob", "builder").await;
    assert_eq!(r.code, 454, "even the right password, from outside: {r:?}");
    let mut owner = SmtpClient::greeted(server.addr(), "127.0.0.2", "pc.office.lan").await;
    assert_eq!(
        owner.auth_plain("bob", "builder").await.code,
        235,
        "the owner still logs in from the LAN"
    );
}
