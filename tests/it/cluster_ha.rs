//! The cluster as issue 31 lays it out, on loopback: a PostgreSQL primary
//! with a synchronous streaming standby, three Portcullis nodes behind a
//! real HAProxy (`send-proxy-v2`, SMTP health checks), a sink recording
//! every token. One node killed under load, one stopped past its lease,
//! the primary crashed and the standby promoted: every acknowledged
//! message is delivered; duplicates are counted and reported.

use crate::support::client::{SmtpClient, tcp_from};
use crate::support::postgres::TestPostgres;
use crate::support::server::ProcessServer;
use crate::support::sink::{Behaviour, Sink};
use crate::support::{WAIT, free_port};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The address the test's HAProxy listens on.
const FRONT_IP: &str = "127.0.0.98";
/// The LAN client (trusted without a password).
const LAN: &str = "127.0.0.2";
/// Where the nodes listen for HAProxy and where the next hop listens: an
/// address of their own, so that no other test's port 0 on 127.0.0.1 can
/// take a port chosen here before it is bound (or bound again).
const BACKENDS: &str = "127.0.0.96";
const NEXT_HOP: &str = "127.0.0.97";

struct Haproxy(Child);

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// HAProxy in front of `backends` (the nodes' PROXY listeners), checking
/// each with an SMTP HELO every 300 ms.
fn haproxy(dir: &std::path::Path, front: u16, backends: &[u16]) -> Haproxy {
    let servers: String = backends
        .iter()
        .enumerate()
        .map(|(i, port)| {
            format!(
                "  server node{} {BACKENDS}:{port} check send-proxy-v2 check-send-proxy\n",
                i + 1
            )
        })
        .collect();
    let cfg = dir.join("haproxy.cfg");
    std::fs::write(
        &cfg,
        format!(
            "global\n  maxconn 200\ndefaults\n  mode tcp\n  timeout connect 2s\n  timeout client 30s\n  timeout server 30s\n  retries 3\n  option redispatch\n\
             frontend smtp\n  bind {FRONT_IP}:{front}\n  default_backend relays\n\
             backend relays\n  balance roundrobin\n  option smtpchk HELO haproxy.test\n  default-server inter 300ms fall 1 rise 1\n{servers}"
        ),
    )
    .unwrap();
    let child = Command::new("haproxy")
        .args(["-db", "-f"])
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("haproxy installed (test.sh)");
    let started = std::time::Instant::now();
    while std::net::TcpStream::connect((FRONT_IP, front)).is_err() {
        assert!(started.elapsed() < WAIT, "haproxy did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    Haproxy(child)
}

/// Node `id`: a direct listener (the test's own door, listed first) and
/// one behind HAProxy on `proxied`; delivery to the sink on `hop`.
fn node_config(
    dir: &std::path::Path,
    id: u8,
    proxied: u16,
    hop: u16,
    database: &str,
) -> std::path::PathBuf {
    let ca = crate::support::tls::TestCa::generate(dir);
    let text = crate::support::server::complete_config(
        &format!(
            "[[listener]]\naddress = \"127.0.0.1:0\"\nkind = \"smtp\"\n\
             [[listener]]\naddress = \"{BACKENDS}:{proxied}\"\nkind = \"smtp\"\nproxy_protocol = true\nproxy_from = [\"127.0.0.1\"]\n\
             [[network]]\nrange = \"{LAN}\"\nauth = \"none\"\n\
             [delivery]\nmode = \"smarthost\"\nsmarthost = \"{NEXT_HOP}:{hop}\"\nsmarthost_tls = \"none\"\nretry_schedule = [\"1s\"]\n\
             [cluster]\nnode_id = {id}\ndatabase = \"{database}\"\nlease = \"2s\"\npool_size = 4\n"
        ),
        dir,
        &ca,
    );
    let path = dir.join("portcullis.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// One message carrying `token`, from the LAN: the reply to its data, or
/// None when the connection failed on the way (not acknowledged).
async fn send_token(to: SocketAddr, token: &str) -> Option<u16> {
    let attempt = async {
        let mut c = SmtpClient::from_stream(tcp_from(LAN, to).await);
        let mut step = async |line: Option<String>| -> Option<u16> {
            if let Some(line) = line
                && !c.try_send(format!("{line}\r\n").as_bytes()).await
            {
                return None;
            }
            c.try_read_reply().await.map(|r| r.code)
        };
        for (line, want) in [
            (None, 220),
            (Some("EHLO lan.test".to_string()), 250),
            (Some("MAIL FROM:<app@lan.test>".into()), 250),
            (Some("RCPT TO:<someone@far.example>".into()), 250),
            (Some("DATA".into()), 354),
        ] {
            let code = step(line).await?;
            if code != want {
                return Some(code);
            }
        }
        step(Some(format!(
            "Subject: {token}\r\n\r\n{token}\r\n.\r\nQUIT"
        )))
        .await
    };
    tokio::time::timeout(Duration::from_secs(15), attempt)
        .await
        .ok()
        .flatten()
}

/// Sends `token` until one attempt is answered (a connection cut by a
/// dying node is tried again); the final reply code.
async fn send_until_answered(to: SocketAddr, token: &str) -> Option<u16> {
    for _ in 0..20 {
        if let Some(code) = send_token(to, token).await {
            return Some(code);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    None
}

/// The next hop as the nodes see it: up (a sink listening) or down; every
/// token it received, with how often.
struct Tally {
    hop: u16,
    sink: Option<Sink>,
    /// What the sinks stopped before received.
    earlier: Vec<Arc<Mutex<Vec<crate::support::sink::Received>>>>,
}

impl Tally {
    async fn up(hop: u16) -> Tally {
        let mut tally = Tally {
            hop,
            sink: None,
            earlier: Vec::new(),
        };
        tally.start().await;
        tally
    }

    async fn start(&mut self) {
        self.sink = Some(Sink::start(NEXT_HOP, self.hop, Behaviour::accept_all()).await);
    }

    /// The next hop goes down (what it received is kept).
    fn stop(&mut self) {
        if let Some(sink) = self.sink.take() {
            self.earlier.push(Arc::clone(&sink.received));
        }
    }

    fn counts(&self) -> HashMap<String, usize> {
        let mut counts = HashMap::new();
        let earlier = self.earlier.iter().flat_map(|r| r.lock().unwrap().clone());
        let now = self.sink.iter().flat_map(|s| s.messages());
        for m in earlier.chain(now) {
            let data = String::from_utf8_lossy(&m.data).into_owned();
            if let Some(token) = data.lines().find_map(|l| l.strip_prefix("Subject: ")) {
                *counts.entry(token.trim().to_string()).or_insert(0) += 1;
            }
        }
        counts
    }

    /// Waits (bounded) until every token in `acked` arrived; the missing ones.
    async fn missing(&self, acked: &[String], limit: Duration) -> Vec<String> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let counts = self.counts();
            let missing: Vec<String> = acked
                .iter()
                .filter(|t| !counts.contains_key(*t))
                .cloned()
                .collect();
            if missing.is_empty() || tokio::time::Instant::now() >= deadline {
                return missing;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn duplicates(&self, among: &[String]) -> usize {
        let counts = self.counts();
        among
            .iter()
            .map(|t| counts.get(t).copied().unwrap_or(0).saturating_sub(1))
            .sum()
    }
}

fn signal(server: &ProcessServer, signal: rustix::process::Signal) {
    let pid = rustix::process::Pid::from_raw(server.pid() as i32).unwrap();
    rustix::process::kill_process(pid, signal).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_behind_haproxy_lose_no_acknowledged_mail() {
    use tokio::task::block_in_place;
    let mut primary = block_in_place(TestPostgres::start);
    let standby = block_in_place(|| TestPostgres::standby_of(&primary, "standby1"));
    block_in_place(|| primary.require_synchronous("standby1"));
    let database = format!(
        "host=127.0.0.1,127.0.0.1 port={},{} user=postgres dbname=postgres target_session_attrs=read-write",
        primary.port, standby.port
    );
    let hop = free_port(NEXT_HOP);
    let mut tally = Tally::up(hop).await;
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let proxied: Vec<u16> = (0..3).map(|_| free_port(BACKENDS)).collect();
    let mut nodes: Vec<ProcessServer> = (0..3)
        .map(|i| {
            let config = node_config(dirs[i].path(), i as u8 + 1, proxied[i], hop, &database);
            block_in_place(|| ProcessServer::spawn(&config))
        })
        .collect();
    let front_port = free_port(FRONT_IP);
    let _haproxy = block_in_place(|| haproxy(dirs[0].path(), front_port, &proxied));
    let front: SocketAddr = format!("{FRONT_IP}:{front_port}").parse().unwrap();

    // 1. Load through HAProxy from three clients; node 3 is killed (-9)
    // once ten messages are acknowledged.
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut load = tokio::task::JoinSet::new();
    for client in 0..3 {
        let acked = Arc::clone(&acked);
        load.spawn(async move {
            for i in 0..12 {
                let token = format!("load-{client}-{i}");
                if send_until_answered(front, &token).await == Some(250) {
                    acked.lock().unwrap().push(token);
                }
            }
        });
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while acked.lock().unwrap().len() < 10 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    nodes[2].kill9();
    while load.join_next().await.is_some() {}
    let under_load = acked.lock().unwrap().clone();
    assert!(
        under_load.len() >= 30,
        "most of the 36 were acknowledged: {}",
        under_load.len()
    );
    // The dead node's messages wait for its lease (2 s) and the next claim (10 s).
    let missing = tally.missing(&under_load, Duration::from_secs(45)).await;
    assert!(missing.is_empty(), "lost after kill -9: {missing:?}");
    eprintln!(
        "kill -9 under load: {} acknowledged, 0 lost, {} duplicates",
        under_load.len(),
        tally.duplicates(&under_load)
    );

    // 2. Node 1 holds messages it cannot deliver (the next hop is down),
    // then stops (SIGSTOP) past its lease: node 2 takes them over. When
    // node 1 resumes, it finds them taken and delivers none again.
    tally.stop();
    let stalled: Vec<String> = (0..4).map(|i| format!("stalled-{i}")).collect();
    for token in &stalled {
        assert_eq!(send_token(nodes[0].addr, token).await, Some(250));
    }
    assert!(block_in_place(|| nodes[0].wait_for_log("deferred")));
    signal(&nodes[0], rustix::process::Signal::STOP);
    tokio::time::sleep(Duration::from_secs(3)).await;
    tally.start().await;
    let missing = tally.missing(&stalled, Duration::from_secs(40)).await;
    signal(&nodes[0], rustix::process::Signal::CONT);
    assert!(
        missing.is_empty(),
        "node 2 delivered the stalled node's mail: {missing:?}"
    );
    // Node 1 wakes with the messages still in memory, due at once.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        tally.duplicates(&stalled),
        0,
        "the node that stalled found its leases taken and delivered nothing again; log:\n{}",
        nodes[0].log.lock().unwrap()
    );

    // 3. Messages wait in the queue (the next hop is down) when the primary
    // crashes; the standby is promoted; the nodes find it by themselves.
    tally.stop();
    let before_crash: Vec<String> = (0..4).map(|i| format!("failover-{i}")).collect();
    for token in &before_crash {
        assert_eq!(send_until_answered(front, token).await, Some(250));
    }
    block_in_place(|| primary.crash());
    // Nothing is acknowledged that could not be stored.
    let during = send_until_answered(front, "during-outage").await;
    assert!(
        during.is_some_and(|code| (400..500).contains(&code)),
        "no database: a 4xx, got {during:?}"
    );
    block_in_place(|| standby.promote());
    let mut reconnected = false;
    for _ in 0..60 {
        if send_until_answered(front, "after-failover").await == Some(250) {
            reconnected = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(reconnected, "the nodes reconnected to the promoted standby");
    tally.start().await;
    let mut expected = before_crash.clone();
    expected.push("after-failover".to_string());
    let missing = tally.missing(&expected, Duration::from_secs(45)).await;
    assert!(missing.is_empty(), "lost across the failover: {missing:?}");
    eprintln!(
        "failover: {} acknowledged, 0 lost, {} duplicates",
        expected.len(),
        tally.duplicates(&expected)
    );
    assert!(
        !tally.counts().contains_key("during-outage"),
        "what was refused was not delivered"
    );
}
