//! Live reload of a real server process: SIGHUP and `portcullis reload`.

use crate::support::client::SmtpClient;
use crate::support::server::{ProcessServer, binary, complete_config};
use crate::support::tls::TestCa;
use crate::support::{WAIT, run_with_timeout};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const BASE: &str = "[relay]\ninbound_domains = [\"example.lan\"]\n[[network]]\nrange = \"127.0.0.2\"\nauth = \"none\"\n";

fn hup(server: &ProcessServer) {
    let (ok, _, err) = run_with_timeout(
        Command::new("kill").args(["-HUP", &server.pid().to_string()]),
        WAIT,
    );
    assert!(ok, "{err}");
}

fn write_config(dir: &Path, ca: &TestCa, extra: &str) -> std::path::PathBuf {
    let path = dir.join("portcullis.toml");
    // Keep the port the server listens on: the listener stays the same.
    let text = complete_config(&format!("{BASE}{extra}"), dir, ca);
    std::fs::write(&path, text).unwrap();
    path
}

/// Relaying from 127.0.0.5: refused, then allowed once a network is added and
/// the server got SIGHUP; a session opened before the reload finishes its
/// transaction; a broken config changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_a_new_network_and_a_broken_config_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::generate(dir.path());
    let listener = "[[listener]]\naddress = \"127.0.0.1:0\"\n";
    let path = write_config(dir.path(), &ca, listener);
    let server = ProcessServer::spawn(&path);
    // The config names port 0: pin the bound port so the listener is kept.
    let pinned = format!("[[listener]]\naddress = \"{}\"\n", server.addr);
    write_config(dir.path(), &ca, &pinned);

    let mut before = SmtpClient::greeted(server.addr, "127.0.0.2", "lan.test").await;
    before.expect("MAIL FROM:<a@example.lan>", 250).await;

    let mut c = SmtpClient::greeted(server.addr, "127.0.0.5", "newcomer.test").await;
    c.expect("MAIL FROM:<a@x.test>", 250).await;
    c.expect("RCPT TO:<far@elsewhere.example>", 554).await;

    write_config(
        dir.path(),
        &ca,
        &format!("{pinned}[[network]]\nrange = \"127.0.0.5\"\nauth = \"none\"\n"),
    );
    hup(&server);
    assert!(
        server.wait_for_log("configuration reloaded"),
        "{}",
        server.log.lock().unwrap()
    );
    let started = Instant::now();
    loop {
        let mut c = SmtpClient::greeted(server.addr, "127.0.0.5", "newcomer.test").await;
        c.expect("MAIL FROM:<a@x.test>", 250).await;
        if c.cmd("RCPT TO:<far@elsewhere.example>").await.code == 250 {
            break;
        }
        assert!(
            started.elapsed() < WAIT,
            "the new network never took effect"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The session opened before the reload completes its transaction.
    before.expect("RCPT TO:<boss@example.lan>", 250).await;
    before.expect("DATA", 354).await;
    before
        .send_raw(b"Subject: across a reload\r\n\r\nx\r\n.\r\n")
        .await;
    assert_eq!(before.read_reply().await.code, 250);

    // A broken config: logged, and the server goes on with the last good one.
    // (A typo in an otherwise good file.)
    let good = std::fs::read_to_string(&path).unwrap();
    let broken = good.replacen("[server]\n", "[server]\nmax_connections = \"many\"\n", 1);
    assert_ne!(good, broken);
    std::fs::write(&path, broken).unwrap();
    hup(&server);
    assert!(
        server.wait_for_log("reload refused"),
        "{}",
        server.log.lock().unwrap()
    );
    assert!(
        server.log.lock().unwrap().contains("max_connections"),
        "the error names the key"
    );
    let mut c = SmtpClient::greeted(server.addr, "127.0.0.5", "newcomer.test").await;
    c.expect("MAIL FROM:<a@x.test>", 250).await;
    c.expect("RCPT TO:<far@elsewhere.example>", 250).await;

    // `portcullis reload` says the same, with its exit status.
    let (ok, out, err) = run_with_timeout(
        Command::new(binary())
            .args(["reload", "--config"])
            .arg(&path),
        WAIT,
    );
    assert!(
        !ok && format!("{out}{err}").contains("not reloaded"),
        "{out}{err}"
    );
}

/// A certificate replaced on disk is served to the next TLS client after
/// `portcullis reload`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_certificate_is_served_after_reload() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::generate(dir.path());
    let path = write_config(dir.path(), &ca, "[[listener]]\naddress = \"127.0.0.1:0\"\n");
    let server = ProcessServer::spawn(&path);
    write_config(
        dir.path(),
        &ca,
        &format!("[[listener]]\naddress = \"{}\"\n", server.addr),
    );
    let mut c = SmtpClient::greeted(server.addr, "127.0.0.2", "lan.test").await;
    c.starttls(ca.client_config()).await;
    c.expect("EHLO lan.test", 250).await;
    // A new CA and certificate in the same files.
    let renewed = TestCa::generate(dir.path());
    let (ok, out, err) = run_with_timeout(
        Command::new(binary())
            .args(["reload", "--config"])
            .arg(&path),
        WAIT,
    );
    assert!(ok, "{out}{err}");
    assert!(out.contains("reloaded"), "{out}");
    let mut c = SmtpClient::greeted(server.addr, "127.0.0.2", "lan.test").await;
    c.starttls(renewed.client_config()).await;
    c.expect("EHLO lan.test", 250).await;
}

/// `[log] transcript` set by a reload: the sessions that follow are recorded
/// in the new directory (before, it took a restart).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_starts_transcripts() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::generate(dir.path());
    let path = write_config(dir.path(), &ca, "[[listener]]\naddress = \"127.0.0.1:0\"\n");
    let server = ProcessServer::spawn(&path);
    let pinned = format!("[[listener]]\naddress = \"{}\"\n", server.addr);
    let transcripts = dir.path().join("transcripts");
    write_config(
        dir.path(),
        &ca,
        &format!(
            "{pinned}[log]\ntranscript = \"{}\"\n",
            transcripts.display()
        ),
    );
    hup(&server);
    assert!(
        server.wait_for_log("configuration reloaded"),
        "{}",
        server.log.lock().unwrap()
    );
    let mut c = SmtpClient::greeted(server.addr, "127.0.0.2", "recorded.reload.test").await;
    c.expect("MAIL FROM:<a@example.lan>", 250).await;
    drop(c);
    let start = Instant::now();
    let recorded = loop {
        let text: String = std::fs::read_dir(&transcripts)
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok())
            .filter_map(|e| std::fs::read_to_string(e.path()).ok())
            .collect();
        // Transcript lines are written as they happen: wait for the last one.
        if text.contains("MAIL FROM:<a@example.lan>") || start.elapsed() > WAIT {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        recorded.contains("recorded.reload.test") && recorded.contains("MAIL FROM:<a@example.lan>"),
        "the session after the reload is in the transcript: {recorded:?}"
    );
}
