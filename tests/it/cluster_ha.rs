//! The cluster as issue 31 lays it out, on loopback: a PostgreSQL primary
//! with a synchronous streaming standby, three Portcullis nodes behind a
//! real HAProxy (`send-proxy-v2`, SMTP health checks), a sink recording
//! every token. One node killed under load, one stopped past its lease,
//! the primary crashed and the standby promoted: every acknowledged
//! message is delivered; duplicates are counted and reported.

use crate::support::client::{SmtpClient, tcp_from};
use crate::support::free_port;
use crate::support::haproxy::Haproxy;
use crate::support::postgres::TestPostgres;
use crate::support::server::ProcessServer;
use crate::support::sink::{Behaviour, Sink};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The LAN client (trusted without a password).
const LAN: &str = "127.0.0.2";

/// Where a test's HAProxy listens (`front`), where its nodes listen for
/// HAProxy (`backends`) and where the next hop listens: addresses of the
/// test's own (no other test uses them), so that no other test's port 0
/// can take a port chosen here before it is bound (or bound again).
#[derive(Clone, Copy)]
struct Seats {
    front: &'static str,
    backends: &'static str,
    next_hop: &'static str,
}

const FAILURES: Seats = Seats {
    front: "127.0.31.1",
    backends: "127.0.31.2",
    next_hop: "127.0.31.3",
};
const SHARING: Seats = Seats {
    front: "127.0.32.1",
    backends: "127.0.32.2",
    next_hop: "127.0.32.3",
};

/// HAProxy in front of `backends` (the nodes' PROXY listeners), checking
/// each with an SMTP HELO every 300 ms.
fn haproxy(dir: &std::path::Path, seats: Seats, front: u16, backends: &[u16]) -> Haproxy {
    let servers: String = backends
        .iter()
        .enumerate()
        .map(|(i, port)| {
            format!(
                "  server node{} {}:{port} check send-proxy-v2 check-send-proxy\n",
                i + 1,
                seats.backends
            )
        })
        .collect();
    let front_ip = seats.front;
    crate::support::haproxy::start(
        dir,
        &format!(
            "global\n  maxconn 200\ndefaults\n  mode tcp\n  timeout connect 2s\n  timeout client 30s\n  timeout server 30s\n  retries 3\n  option redispatch\n\
             frontend smtp\n  bind {front_ip}:{front}\n  default_backend relays\n\
             backend relays\n  balance roundrobin\n  option smtpchk HELO haproxy.test\n  default-server inter 300ms fall 1 rise 1\n{servers}"
        ),
        (front_ip, front),
    )
}

/// Node `id`: a direct listener (the test's own door, listed first) and
/// one behind HAProxy on `proxied`; delivery to the sink on `hop`; `extra`
/// (more sections) before `[cluster]`.
fn node_config(
    dir: &std::path::Path,
    seats: Seats,
    id: u8,
    (proxied, hop): (u16, u16),
    database: &str,
    extra: &str,
) -> std::path::PathBuf {
    let Seats {
        backends, next_hop, ..
    } = seats;
    crate::support::cluster_node::write(
        dir,
        &format!(
            "[[listener]]\naddress = \"127.0.0.1:0\"\nkind = \"smtp\"\n\
             [[listener]]\naddress = \"{backends}:{proxied}\"\nkind = \"smtp\"\nproxy_protocol = true\nproxy_from = [\"127.0.0.1\"]\n\
             [[network]]\nrange = \"{LAN}\"\nauth = \"none\"\n\
             [delivery]\nmode = \"smarthost\"\nsmarthost = \"{next_hop}:{hop}\"\nsmarthost_tls = \"none\"\nretry_schedule = [\"1s\"]\n{extra}"
        ),
        &crate::support::cluster_node::ClusterSection {
            node_id: id,
            database,
            lease: "2s",
            pool_size: 4,
        },
    )
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
        self.sink = Some(Sink::start(FAILURES.next_hop, self.hop, Behaviour::accept_all()).await);
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

/// Three nodes (ids 1 to 3, one per directory of `dirs`) behind HAProxy:
/// the nodes, HAProxy's address and HAProxy.
fn three_nodes(
    dirs: &[tempfile::TempDir],
    seats: Seats,
    hop: u16,
    database: &str,
    extra: &str,
) -> (Vec<ProcessServer>, SocketAddr, Haproxy) {
    let proxied: Vec<u16> = (0..3).map(|_| free_port(seats.backends)).collect();
    let nodes = (0..3)
        .map(|i| {
            let config = node_config(
                dirs[i].path(),
                seats,
                i as u8 + 1,
                (proxied[i], hop),
                database,
                extra,
            );
            tokio::task::block_in_place(|| ProcessServer::spawn(&config))
        })
        .collect();
    let front_port = free_port(seats.front);
    let haproxy =
        tokio::task::block_in_place(|| haproxy(dirs[0].path(), seats, front_port, &proxied));
    let front = format!("{}:{front_port}", seats.front).parse().unwrap();
    (nodes, front, haproxy)
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
    let hop = free_port(FAILURES.next_hop);
    let mut tally = Tally::up(hop).await;
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let (mut nodes, front, _haproxy) = three_nodes(&dirs, FAILURES, hop, &database, "");

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

/// One outsider whose connections HAProxy spreads over three nodes is held
/// to one limit (three messages an hour) and, banned after two failed
/// logins on whichever node, is refused by all three; the LAN, untrusted
/// by an admin on one node, relays through none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_limit_and_one_ban_over_three_nodes_behind_haproxy() {
    use tokio::task::block_in_place;
    const OUTSIDER: &str = "127.0.3.10";
    let pg = block_in_place(TestPostgres::start);
    let hop = free_port(SHARING.next_hop);
    let sink = Sink::start(SHARING.next_hop, hop, Behaviour::accept_all()).await;
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    for dir in &dirs {
        crate::support::write_users(
            &dir.path().join("data").join("users"),
            &[("bob", "builder")],
        );
    }
    let extra = "[relay]\ninbound_domains = [\"example.lan\"]\n\
                 [limits]\nmessages_per_hour_per_ip = 3\nauth_failures_before_ban = 2\nban_duration = \"10m\"\n";
    let (nodes, front, _haproxy) = three_nodes(&dirs, SHARING, hop, &pg.url(), extra);

    // Six messages, one connection each: HAProxy deals them round the nodes.
    let mut codes = Vec::new();
    for i in 0..6 {
        let mut c = SmtpClient::from_stream(tcp_from(OUTSIDER, front).await);
        assert_eq!(c.read_reply().await.code, 220);
        c.expect("EHLO spread.test", 250).await;
        codes.push(
            crate::support::cluster_node::inbound_message_code(&mut c, &format!("spread-{i}"))
                .await,
        );
    }
    assert_eq!(
        codes,
        [250, 250, 250, 450, 450, 450],
        "held to one limit over three nodes"
    );
    let served = nodes
        .iter()
        .filter(|n| n.log.lock().unwrap().contains(OUTSIDER))
        .count();
    assert!(
        served >= 2,
        "HAProxy spread the client over the nodes ({served})"
    );
    let got = sink.wait_for(3, Duration::from_secs(30)).await;
    assert_eq!(got.len(), 3, "the three accepted were delivered");

    // Two failed logins through HAProxy: the next connections, whichever
    // node they reach, are refused.
    let mut c = SmtpClient::from_stream(tcp_from(OUTSIDER, front).await);
    assert_eq!(c.read_reply().await.code, 220);
    c.expect("EHLO guesser.test", 250).await;
    assert_eq!(c.auth_plain("bob", "guess1").await.code, 535);
    assert_eq!(c.auth_plain("bob", "guess2").await.code, 421);
    tokio::time::sleep(Duration::from_millis(500)).await;
    for _ in 0..3 {
        let mut c = SmtpClient::from_stream(tcp_from(OUTSIDER, front).await);
        let greeting = c.try_read_reply().await.map(|r| r.code);
        assert_eq!(greeting, Some(421), "banned on every node");
    }

    // The LAN relays through every node until an admin untrusts it on node
    // 1: then no node lets it relay without AUTH.
    let relays = async || {
        let mut c = SmtpClient::from_stream(tcp_from(LAN, front).await);
        assert_eq!(c.read_reply().await.code, 220);
        c.expect("EHLO lan.test", 250).await;
        c.expect("MAIL FROM:<app@lan.test>", 250).await;
        c.cmd("RCPT TO:<someone@far.example>").await.code
    };
    for _ in 0..3 {
        assert_eq!(relays().await, 250, "the LAN relays through each node");
    }
    let (ok, _, err) = block_in_place(|| {
        crate::support::run_with_timeout(
            Command::new(crate::support::server::binary())
                .args(["guard", "untrust", LAN, "--config"])
                .arg(dirs[0].path().join("portcullis.toml")),
            crate::support::WAIT,
        )
    });
    assert!(ok, "{err}");
    // Refused by three connections in a row (one per node), once the
    // decision has reached them (the nodes share every 100 ms).
    let mut refused_in_a_row = 0;
    for _ in 0..50 {
        if relays().await == 250 {
            refused_in_a_row = 0;
            tokio::time::sleep(Duration::from_millis(100)).await;
        } else {
            refused_in_a_row += 1;
            if refused_in_a_row == 3 {
                break;
            }
        }
    }
    assert_eq!(
        refused_in_a_row, 3,
        "every node follows node 1's guard decision"
    );
}
