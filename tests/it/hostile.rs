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
    portcullis::users::write_users(&users, &map).unwrap();
    let text = complete_config(
        &format!(
            "[auth]\nusers_file = \"{}\"\n[server]\nmax_connections = 1000\n",
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
    // Let whatever was started finish, then look at the high-water mark.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let peak = server.status_kib("VmHWM");
    println!("RSS before {before} KiB, peak during 300 AUTH hang-ups {peak} KiB");
    assert!(
        peak < before + 200 * 1024,
        "peak RSS {peak} KiB grew by more than 200 MiB from {before} KiB"
    );

    let mut c = SmtpClient::connect(server.addr, "127.0.0.2").await;
    c.expect("EHLO me.test", 250).await;
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
    let mut c = SmtpClient::connect(server.addr(), "127.0.0.3").await;
    c.expect("EHLO guess.test", 250).await;
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
