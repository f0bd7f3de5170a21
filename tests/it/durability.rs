//! Accepted mail survives kill -9: the 250 after DATA means fsynced on disk.

use crate::support::client::SmtpClient;
use crate::support::server::{ProcessServer, binary, complete_config};
use crate::support::tls::TestCa;
use crate::support::{WAIT, run_with_timeout, strip_received};
use std::process::Command;

fn setup() -> (tempfile::TempDir, std::path::PathBuf) {
    setup_with(
        "[[network]]\nrange = \"127.0.0.0/8\"\nauth = \"none\"\n[relay]\ninbound_domains = [\"example.lan\"]\n",
    )
}

/// A data dir and a config file holding `toml_text`, completed for tests.
fn setup_with(toml_text: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::generate(dir.path());
    let text = complete_config(toml_text, dir.path(), &ca);
    let path = dir.path().join("portcullis.toml");
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

fn queue_ids(config: &std::path::Path) -> Vec<String> {
    let (ok, out, err) = run_with_timeout(
        Command::new(binary())
            .args(["queue", "list", "--json", "--config"])
            .arg(config),
        WAIT,
    );
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_right_after_250_keeps_every_message() {
    let (dir, config) = setup();
    let mut server = ProcessServer::spawn(&config);
    let mut c = SmtpClient::greeted(server.addr, "127.0.0.2", "durable.test").await;
    let mut bodies = Vec::new();
    for i in 0..5 {
        let body = format!(
            "Subject: durable {i}\r\n\r\n{}\r\n",
            "payload line\r\n".repeat(200 * (i + 1))
        );
        c.expect("MAIL FROM:<a@x.test>", 250).await;
        c.expect("RCPT TO:<b@example.lan>", 250).await;
        c.expect("DATA", 354).await;
        c.send_raw(body.as_bytes()).await;
        c.send_raw(b".\r\n").await;
        assert_eq!(c.read_reply().await.code, 250);
        bodies.push(body);
    }
    server.kill9();
    drop(c);

    let ids = queue_ids(&config);
    assert_eq!(ids.len(), 5, "every acknowledged message is on disk");
    let spool = portcullis::spool::Spool::open_existing(&dir.path().join("data")).unwrap();
    let mut found: Vec<String> = ids
        .iter()
        .map(|id| {
            String::from_utf8(
                strip_received(&spool.read_body(&crate::support::qid(id)).unwrap()).to_vec(),
            )
            .unwrap()
        })
        .collect();
    found.sort();
    bodies.sort();
    assert_eq!(found, bodies, "intact, byte for byte");

    // The server starts again on the same spool and still lists them.
    let server = ProcessServer::spawn(&config);
    drop(server);
    assert_eq!(queue_ids(&config).len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_data_leaves_no_torn_message() {
    let (dir, config) = setup();
    let mut server = ProcessServer::spawn(&config);
    let mut c = SmtpClient::greeted(server.addr, "127.0.0.2", "torn.test").await;
    c.expect("MAIL FROM:<a@x.test>", 250).await;
    c.expect("RCPT TO:<b@example.lan>", 250).await;
    c.expect("DATA", 354).await;
    // More than the 256 KB a message keeps in memory, so a temporary file exists when we kill.
    c.send_raw("Subject: never finished\r\n\r\n".repeat(20_000).as_bytes())
        .await;
    // Kill only once part of it is on disk (a busy machine may take a while).
    let on_disk = || {
        let tmp = std::fs::read_dir(dir.path().join("data/tmp")).map_or(0, |d| d.count());
        let slots = std::fs::read_dir(dir.path().join("data/slots")).map_or(0, |d| {
            d.filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.metadata().is_ok_and(|m| m.len() > 0))
            })
            .count()
        });
        tmp + slots > 0
    };
    let start = std::time::Instant::now();
    while !on_disk() {
        assert!(start.elapsed() < WAIT, "the message never reached the disk");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    server.kill9();
    // The server restarts first: the offline CLI would clean a torn slot itself.
    let server = ProcessServer::spawn(&config);
    assert!(
        server.wait_for_log("removed unfinished spool files"),
        "{}",
        server.log.lock().unwrap()
    );
    assert!(
        queue_ids(&config).is_empty(),
        "an unacknowledged message is not in the queue"
    );
    let tmp = std::fs::read_dir(dir.path().join("data/tmp"))
        .unwrap()
        .count();
    assert_eq!(tmp, 0, "leftovers are cleaned at start");
    // The unfinished message may have been written into a slot instead.
    let torn_slots = std::fs::read_dir(dir.path().join("data/slots"))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().metadata().unwrap().len() > 0)
        .count();
    assert_eq!(torn_slots, 0, "no slot keeps the unfinished message");
}

/// A small message is durable only in the spool journal until its first
/// delivery pass ends. Killed while that pass hangs on a next hop that
/// never answers, the server finds it again at the next start and delivers
/// it exactly once; one deleted meanwhile does not come back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_a_first_delivery_keeps_the_journaled_message() {
    use crate::support::sink::{Behaviour, Sink};
    // A next hop that takes the connection and never says a word.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = silent.local_addr().unwrap().port();
    let held = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let holder = std::sync::Arc::clone(&held);
    let hold_task = tokio::spawn(async move {
        while let Ok((conn, _)) = silent.accept().await {
            holder.lock().unwrap().push(conn);
        }
    });
    let (dir, config) = setup_with(&format!(
        "[[network]]\nrange = \"127.0.0.0/8\"\nauth = \"none\"\n[delivery]\nmode = \"smarthost\"\nsmarthost = \"127.0.0.1:{port}\"\nsmarthost_tls = \"none\"\n"
    ));
    let mut server = ProcessServer::spawn(&config);
    let mut c = SmtpClient::greeted(server.addr, "127.0.0.2", "journal.test").await;
    let mut ids = Vec::new();
    for subject in ["kept", "deleted"] {
        let r = c
            .send_mail(
                "a@x.test",
                &["b@far.example"],
                format!("Subject: {subject}\r\n\r\nbody of {subject}\r\n").as_bytes(),
            )
            .await;
        assert_eq!(r.code, 250, "{r:?}");
        ids.push(r.text().rsplit(' ').next().unwrap().to_string());
    }
    // Both deliveries are under way (and hang) before anything else happens.
    let start = std::time::Instant::now();
    while held.lock().unwrap().len() < 2 {
        assert!(start.elapsed() < WAIT, "the deliveries never connected");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let queue_dir = dir.path().join("data/queue");
    for id in &ids {
        assert!(
            !queue_dir.join(id).exists(),
            "{id}: still only in the journal during its first pass"
        );
    }
    let (ok, _, err) = run_with_timeout(
        Command::new(binary())
            .args(["queue", "delete", &ids[1], "--config"])
            .arg(&config),
        WAIT,
    );
    assert!(ok, "{err}");
    server.kill9();
    drop(c);
    hold_task.abort();
    let _ = hold_task.await; // the listener is closed once the task is gone
    held.lock().unwrap().clear();

    // The next hop now works; the server starts on the same spool. The
    // port may take a moment to be free again after the kill (bounded).
    let start = std::time::Instant::now();
    while std::net::TcpListener::bind(("127.0.0.1", port)).is_err() {
        assert!(start.elapsed() < WAIT, "port {port} never became free");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let sink = Sink::start("127.0.0.1", port, Behaviour::accept_all()).await;
    let server = ProcessServer::spawn(&config);
    assert!(
        server.wait_for_log("moved messages synced in the journal"),
        "{}",
        server.log.lock().unwrap()
    );
    let got = sink.wait_for(1, WAIT).await;
    assert_eq!(got.len(), 1);
    assert!(
        String::from_utf8_lossy(&got[0].data).contains("body of kept"),
        "the kept message is the one delivered"
    );
    // Give a wrongly resurrected or duplicated message time to show up.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    assert_eq!(
        sink.messages().len(),
        1,
        "delivered once; the deleted one never"
    );
    drop(server);
    assert!(queue_ids(&config).is_empty(), "nothing left queued");
}

/// Messages accepted while a restarted server is still reading its queue
/// are found by that scan (they are in the journal) before the session
/// hands them over: they must still be delivered, not stuck without their
/// copy in memory until the next restart (as the chaos run once found).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_accepted_while_the_queue_is_read_at_start_are_delivered() {
    use crate::support::sink::{Behaviour, Sink};
    use portcullis::spool::{QueueId, Spool};
    let sink = Sink::start("127.0.0.1", 0, Behaviour::accept_all()).await;
    let (dir, config) = setup_with(&format!(
        "[[network]]\nrange = \"127.0.0.0/8\"\nauth = \"none\"\n[delivery]\nmode = \"smarthost\"\nsmarthost = \"{}\"\nsmarthost_tls = \"none\"\n",
        sink.addr
    ));
    // Make reading the queue at start take a while: it first removes state
    // files whose message is gone, and a crash can leave many.
    let spool = Spool::open(&dir.path().join("data")).unwrap();
    let states = dir.path().join("data/state");
    for _ in 0..30_000 {
        std::fs::write(states.join(format!("{}.json", QueueId::new())), b"{}").unwrap();
    }
    drop(spool);
    let server = ProcessServer::spawn(&config);
    let mut c = SmtpClient::greeted(server.addr, "127.0.0.2", "early.test").await;
    for i in 0..10 {
        let r = c
            .send_mail(
                "a@x.test",
                &["b@far.example"],
                format!("Subject: early {i}\r\n\r\nearly {i}\r\n").as_bytes(),
            )
            .await;
        assert_eq!(r.code, 250, "{r:?}");
    }
    let got = sink.wait_for(10, WAIT).await;
    assert_eq!(
        got.len(),
        10,
        "every message accepted during the start-up scan is delivered; log:\n{}",
        server.log.lock().unwrap()
    );
}
