//! The queue manager is the one owner of queue state: commands from the CLI
//! reach it over the control socket while it delivers, and nothing is lost or
//! sent twice.

use crate::support::client::SmtpClient;
use crate::support::server::{TestServer, binary};
use crate::support::sink::{Behaviour, Sink};
use crate::support::{WAIT, free_port, run_with_timeout};
use std::collections::HashMap;
use std::time::{Duration, Instant};

const MESSAGES: usize = 300;

/// 300 messages queued while the next hop is down; then it comes up while
/// `queue retry --all` and hold/release by source run in a loop: every
/// message arrives exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_racing_deliveries_lose_and_duplicate_nothing() {
    let port = free_port("127.0.0.82");
    let server = TestServer::start(&format!(
        "[[network]]\nrange = \"127.0.0.0/24\"\nauth = \"none\"\n[delivery]\nretry_schedule = [\"1s\"]\n[[route]]\ndomain = \"hop.example\"\nhost = \"127.0.0.82:{port}\"\n"
    ))
    .await;
    let config_path = server.dir.path().join("cli.toml");
    std::fs::write(&config_path, toml::to_string(&server.config).unwrap()).unwrap();
    let cli = move |args: Vec<String>| {
        run_with_timeout(
            std::process::Command::new(binary())
                .args(&args)
                .arg("--config")
                .arg(&config_path),
            WAIT,
        )
    };

    // Four clients, 75 messages each, while nobody listens at the next hop.
    let mut senders = Vec::new();
    for client in 0..4 {
        let addr = server.addr();
        senders.push(tokio::spawn(async move {
            let mut c = SmtpClient::greeted(addr, "127.0.0.2", "load.test").await;
            for i in 0..MESSAGES / 4 {
                let token = format!("msg-{client}-{i}");
                let r = c
                    .send_mail(
                        "app@client.test",
                        &["user@hop.example"],
                        format!("Subject: {token}\r\n\r\n{token}\r\n").as_bytes(),
                    )
                    .await;
                assert_eq!(r.code, 250, "{r:?}");
            }
            c.expect("QUIT", 221).await;
        }));
    }
    for s in senders {
        s.await.unwrap();
    }
    assert_eq!(server.queued().len(), MESSAGES, "all accepted and queued");

    let sink = Sink::start("127.0.0.82", port, Behaviour::accept_all()).await;
    let started = Instant::now();
    let mut rounds = 0;
    let commands: [&[&str]; 3] = [
        &["queue", "retry", "--all"],
        &["queue", "hold", "--source", "127.0.0.2"],
        &["queue", "release", "--source", "127.0.0.2"],
    ];
    while started.elapsed() < Duration::from_secs(25) {
        let args: Vec<String> = commands[rounds % 3].iter().map(|s| s.to_string()).collect();
        let cli = cli.clone();
        let (ok, out, err) = tokio::task::spawn_blocking(move || cli(args))
            .await
            .unwrap();
        assert!(ok, "{out}{err}");
        rounds += 1;
    }
    // Leave everything released and due, then let the queue drain.
    let (ok, _, err) = tokio::task::block_in_place(|| {
        cli(["queue", "release", "--source", "127.0.0.2"]
            .map(String::from)
            .to_vec())
    });
    assert!(ok, "{err}");
    let drained = Instant::now();
    while !server.queued().is_empty() && drained.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(server.queued().is_empty(), "the queue drains");

    let mut seen: HashMap<String, usize> = HashMap::new();
    for m in sink.messages() {
        let text = String::from_utf8_lossy(&m.data).to_string();
        let token = text
            .lines()
            .find_map(|l| l.strip_prefix("Subject: "))
            .unwrap_or_default()
            .to_string();
        *seen.entry(token).or_default() += 1;
    }
    let duplicates: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    println!(
        "{rounds} queue commands in 25 s; {} distinct messages delivered",
        seen.len()
    );
    assert_eq!(seen.len(), MESSAGES, "none lost");
    assert!(duplicates.is_empty(), "duplicates: {duplicates:?}");
}
