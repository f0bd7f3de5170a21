//! The queue store on PostgreSQL (issue 31, first part): one real
//! PostgreSQL server, two nodes' stores. A lease that ended is taken over
//! with a new fence, and the old owner's writes then change nothing.

use crate::support::cluster_node::{ClusterSection, inbound_message_code};
use crate::support::postgres::TestPostgres;
use crate::support::{WAIT, run_with_timeout};
use portcullis::cluster::PgStore;
use portcullis::config::{ClusterConfig, ConfigDuration};
use portcullis::queue::{Durability, QueueStore};
use portcullis::spool::{ContentInfo, Envelope, EnvelopeRecipient, Origin, QueueId, Spool};
use std::sync::Arc;
use std::time::Duration;

const LEASE: Duration = Duration::from_secs(2);

fn cluster(pg: &TestPostgres, id: u8) -> ClusterConfig {
    ClusterConfig {
        node_id: id,
        database: pg.url(),
        lease: ConfigDuration(LEASE),
        password_file: None,
        pool_size: 2,
        ca_file: None,
    }
}

/// Node `id` of the cluster, its data directory in `dir`.
async fn node(pg: &TestPostgres, id: u8, dir: &std::path::Path) -> Arc<PgStore> {
    let data = dir.join(format!("node-{id}"));
    let store = PgStore::connect(&cluster(pg, id), "relay.test", &data)
        .await
        .unwrap_or_else(|e| panic!("node {id}: {e}"));
    Arc::new(store)
}

/// A message received by a session: its content in a spool writer.
fn received(spool: &Spool, text: &str) -> (QueueId, portcullis::spool::SpoolWriter, Envelope) {
    let id = QueueId::new();
    let mut writer = spool.begin(&id);
    writer.write(format!("Subject: {text}\r\n\r\n{text}\r\n").as_bytes());
    let envelope = Envelope::new(
        &id,
        "app@client.test".into(),
        vec![EnvelopeRecipient {
            address: "to@example.net".into(),
            domain: "example.net".into(),
        }],
        Origin {
            client_ip: "127.0.0.2".into(),
            helo: "client.test".into(),
            auth_user: None,
            trusted: true,
        },
        ContentInfo {
            smtputf8: false,
            eight_bit: false,
            size: writer.body_len(),
        },
    );
    (id, writer, envelope)
}

/// The config file of a node run as its own process: the LAN trusted,
/// `extra` (delivery settings), and `[cluster]` on `pg` with a 2 s lease.
fn process_config(
    pg: &TestPostgres,
    id: u8,
    dir: &std::path::Path,
    extra: &str,
) -> std::path::PathBuf {
    crate::support::cluster_node::write(
        dir,
        &format!("[[network]]\nrange = \"127.0.0.0/8\"\nauth = \"none\"\n{extra}"),
        &ClusterSection {
            node_id: id,
            database: &pg.url(),
            lease: "2s",
            pool_size: 2,
        },
    )
}

/// Delivery to a smart host on loopback port `hop` (nothing listens there
/// until the test says), retried every second.
fn through_hop(hop: u16) -> String {
    format!(
        "[delivery]\nmode = \"smarthost\"\nsmarthost = \"127.0.0.1:{hop}\"\nsmarthost_tls = \"none\"\nretry_schedule = [\"1s\"]\n"
    )
}

/// Runs a blocking store call off the async threads, as the queue manager does.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_taken_over_fences_out_the_old_owner() {
    let pg = tokio::task::block_in_place(TestPostgres::start);
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(&dir.path().join("spool")).unwrap();
    let a = node(&pg, 1, dir.path()).await;
    let b = node(&pg, 2, dir.path()).await;

    let (id, writer, envelope) = received(&spool, "leased");
    let queued = a.accept(writer, envelope, true).await.unwrap();
    assert_eq!(queued.envelope.id, id.as_str());
    assert!(
        std::fs::read(&queued.path)
            .unwrap()
            .starts_with(b"Subject: leased")
    );

    // While A's lease runs, B takes nothing.
    let b2 = Arc::clone(&b);
    assert!(
        blocking(move || b2.claim_due(i64::MAX, 10))
            .await
            .unwrap()
            .is_empty()
    );

    // A stalls past its lease (it renews nothing); B takes the message over.
    let mut claimed = Vec::new();
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let b2 = Arc::clone(&b);
        claimed = blocking(move || b2.claim_due(i64::MAX, 10)).await.unwrap();
        if !claimed.is_empty() {
            break;
        }
    }
    assert_eq!(claimed.len(), 1, "B took over the message after the lease");
    let (taken_id, taken) = &claimed[0];
    assert_eq!(taken_id, &id);
    assert!(
        std::fs::read(&taken.path)
            .unwrap()
            .starts_with(b"Subject: leased")
    );

    // A wakes up: before an attempt it asks to renew its lease, and hears
    // the message is no longer its own (so it does not deliver it again);
    // B's renewal holds.
    let (a2, id2) = (Arc::clone(&a), id.clone());
    assert!(!blocking(move || a2.renew_lease(&id2)).await.unwrap());
    let (b2, id2) = (Arc::clone(&b), id.clone());
    assert!(blocking(move || b2.renew_lease(&id2)).await.unwrap());
    // Nor do its writes change anything: the message is gone for it.
    let mut state = taken.state.clone();
    state.recipients[0].attempts = 7;
    let (a2, stale) = (Arc::clone(&a), state.clone());
    let id2 = id.clone();
    let written = blocking(move || a2.record_state(&id2, &stale, Durability::Synced)).await;
    assert!(matches!(
        written,
        Err(portcullis::spool::SpoolError::NotFound(_))
    ));
    let (a2, id2) = (Arc::clone(&a), id.clone());
    assert!(blocking(move || a2.finish(&id2, false)).await.is_err());
    // Nor does A's renewal take the message back.
    let a2 = Arc::clone(&a);
    assert!(
        blocking(move || a2.claim_due(i64::MAX, 10))
            .await
            .unwrap()
            .is_empty()
    );

    // B's writes are the ones that count.
    state.recipients[0].attempts = 1;
    let (b2, fresh, id2) = (Arc::clone(&b), state.clone(), id.clone());
    blocking(move || b2.record_state(&id2, &fresh, Durability::Synced))
        .await
        .unwrap();
    let (b2, id2) = (Arc::clone(&b), id.clone());
    let shown = blocking(move || b2.load(&id2)).await.unwrap();
    assert_eq!(shown.state.recipients[0].attempts, 1);
    let (b2, id2) = (Arc::clone(&b), id.clone());
    blocking(move || b2.finish(&id2, false)).await.unwrap();
    let b2 = Arc::clone(&b);
    assert!(
        blocking(move || b2.load_all())
            .await
            .unwrap()
            .messages
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_takes_its_messages_back_with_a_new_fence() {
    let pg = tokio::task::block_in_place(TestPostgres::start);
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(&dir.path().join("spool")).unwrap();
    let before = node(&pg, 1, dir.path()).await;
    let mut ids = Vec::new();
    for i in 0..3 {
        let (id, writer, envelope) = received(&spool, &format!("m{i}"));
        before.accept(writer, envelope, true).await.unwrap();
        ids.push(id);
    }
    // The same node id after a kill -9: every message it held is its again.
    let after = node(&pg, 1, dir.path()).await;
    let after2 = Arc::clone(&after);
    let loaded = blocking(move || after2.load_all()).await.unwrap();
    let mut found: Vec<QueueId> = loaded.messages.iter().map(|(id, _)| id.clone()).collect();
    found.sort();
    ids.sort();
    assert_eq!(found, ids);
    // The process that was killed (had it only stalled) writes nothing now.
    let state = loaded.messages[0].1.state.clone();
    let id = loaded.messages[0].0.clone();
    let stale = Arc::clone(&before);
    let (id2, st) = (id.clone(), state.clone());
    assert!(
        blocking(move || stale.record_state(&id2, &st, Durability::Quick))
            .await
            .is_err()
    );
    let after2 = Arc::clone(&after);
    blocking(move || after2.record_state(&id, &state, Durability::Quick))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_number_is_held_by_one_live_node() {
    let pg = tokio::task::block_in_place(TestPostgres::start);
    let dir = tempfile::tempdir().unwrap();
    let _first = node(&pg, 5, dir.path()).await;
    // Another installation asking for the same number is refused, named.
    let other = dir.path().join("elsewhere");
    let refused = PgStore::connect(&cluster(&pg, 5), "relay.test", &other)
        .await
        .unwrap_err();
    assert!(
        matches!(refused, portcullis::cluster::JoinError::Refused(_)),
        "a number in use stops the node: {refused}"
    );
    let refused = refused.to_string();
    assert!(
        refused.contains("cluster.node_id = 5 is in use"),
        "{refused}"
    );
    assert!(
        !refused.contains("postgres"),
        "no connection details: {refused}"
    );
    // Once the first has not been seen for a lease, the number is free.
    tokio::time::sleep(LEASE + Duration::from_millis(1500)).await;
    PgStore::connect(&cluster(&pg, 5), "relay.test", &other)
        .await
        .unwrap();
}

/// Two real nodes on one PostgreSQL: node 1 accepts a message its next hop
/// cannot take yet and is killed (-9); node 2 delivers it once node 1's
/// lease has ended. Nothing is lost, nothing delivered twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_nodes_mail_is_delivered_by_another_node() {
    use crate::support::client::SmtpClient;
    use crate::support::server::ProcessServer;
    use crate::support::sink::{Behaviour, Sink};
    let pg = tokio::task::block_in_place(TestPostgres::start);
    let hop = crate::support::free_port("127.0.0.1");
    let delivery = through_hop(hop);
    let node_config = |id: u8, dir: &std::path::Path| process_config(&pg, id, dir, &delivery);
    let (one, two) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut first =
        tokio::task::block_in_place(|| ProcessServer::spawn(&node_config(1, one.path())));
    let mut c = SmtpClient::greeted(first.addr, "127.0.0.2", "app.test").await;
    let r = c
        .send_mail(
            "app@client.test",
            &["someone@far.example"],
            b"Subject: survives its node\r\n\r\nbody\r\n",
        )
        .await;
    assert_eq!(r.code, 250, "{r:?}");
    // Its first attempt fails (nothing listens on the next hop yet).
    assert!(
        tokio::task::block_in_place(|| first.wait_for_log("deferred")),
        "{}",
        first.log.lock().unwrap()
    );
    drop(c);
    first.kill9();

    let sink = Sink::start("127.0.0.1", hop, Behaviour::accept_all()).await;
    let second = tokio::task::block_in_place(|| ProcessServer::spawn(&node_config(2, two.path())));
    // The lease (2 s) ends, the next claim (every 10 s) takes it, and the
    // retry is due: bounded wait for the delivery.
    let got = sink.wait_for(1, Duration::from_secs(40)).await;
    assert_eq!(
        got.len(),
        1,
        "node 2 delivered it; log:\n{}",
        second.log.lock().unwrap()
    );
    assert!(String::from_utf8_lossy(&got[0].data).contains("Subject: survives its node"));
    // Delivered once: nothing more arrives, and the shared queue is empty.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(sink.messages().len(), 1);
    let left = tokio::task::block_in_place(|| pg.query("SELECT count(*) FROM portcullis_message"));
    assert_eq!(left, "0", "the message left the shared queue");
}

/// The database gone, a node accepts nothing it cannot store: 451, never 250.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_database_new_mail_gets_451() {
    use crate::support::client::SmtpClient;
    use crate::support::server::ProcessServer;
    let pg = tokio::task::block_in_place(TestPostgres::start);
    let dir = tempfile::tempdir().unwrap();
    let path = process_config(&pg, 1, dir.path(), "");
    let server = tokio::task::block_in_place(|| ProcessServer::spawn(&path));
    let url = pg.url();
    tokio::task::block_in_place(|| drop(pg));
    let mut c = SmtpClient::greeted(server.addr, "127.0.0.2", "app.test").await;
    let r = c
        .send_mail(
            "app@client.test",
            &["someone@far.example"],
            b"Subject: x\r\n\r\nbody\r\n",
        )
        .await;
    assert_eq!(r.code, 451, "{r:?}\n{}", server.log.lock().unwrap());
    assert!(
        !server.log.lock().unwrap().contains(&url),
        "the connection string is never logged"
    );
}

/// A node that starts while its database is down comes up anyway: new
/// mail gets 451 (never 250), and once the database answers the node joins
/// by itself and accepts and delivers mail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_started_without_its_database_joins_when_it_answers() {
    use crate::support::client::SmtpClient;
    use crate::support::server::ProcessServer;
    use crate::support::sink::{Behaviour, Sink};
    let mut pg = tokio::task::block_in_place(TestPostgres::start);
    let hop = crate::support::free_port("127.0.0.1");
    let sink = Sink::start("127.0.0.1", hop, Behaviour::accept_all()).await;
    let dir = tempfile::tempdir().unwrap();
    let path = process_config(&pg, 1, dir.path(), &through_hop(hop));
    tokio::task::block_in_place(|| pg.crash());
    let server = tokio::task::block_in_place(|| ProcessServer::spawn(&path));
    let send = async |subject: &str| {
        let mut c = SmtpClient::greeted(server.addr, "127.0.0.2", "app.test").await;
        let body = format!("Subject: {subject}\r\n\r\nx\r\n");
        c.send_mail("app@client.test", &["someone@far.example"], body.as_bytes())
            .await
            .code
    };
    assert_eq!(
        send("while down").await,
        451,
        "{}",
        server.log.lock().unwrap()
    );
    assert!(
        server.log.lock().unwrap().contains("new mail gets 451"),
        "{}",
        server.log.lock().unwrap()
    );

    tokio::task::block_in_place(|| pg.restart());
    // The next claim rounds (every 10 s) find the database.
    let mut code = 0;
    for _ in 0..30 {
        code = send("once joined").await;
        if code == 250 {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert_eq!(code, 250, "joined once the database answered");
    let got = sink.wait_for(1, Duration::from_secs(30)).await;
    assert_eq!(got.len(), 1);
    assert!(String::from_utf8_lossy(&got[0].data).contains("Subject: once joined"));
    let nodes = tokio::task::block_in_place(|| {
        pg.query("SELECT count(*) FROM portcullis_node WHERE node_id = 1")
    });
    assert_eq!(nodes, "1", "the node signed in");
}

/// `portcullis cluster status` asks the database: nodes and their signs of
/// life, the messages each holds, the primary and its standbys (none here:
/// exit 1, a 250 is then on one machine only).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_status_shows_nodes_messages_and_standbys() {
    use crate::support::client::SmtpClient;
    use crate::support::server::{ProcessServer, binary};
    let pg = tokio::task::block_in_place(TestPostgres::start);
    let dir = tempfile::tempdir().unwrap();
    let hop = crate::support::free_port("127.0.0.1");
    let path = process_config(&pg, 7, dir.path(), &through_hop(hop));
    let status = || {
        let (code, out, err) = crate::support::run_bounded(
            std::process::Command::new(binary())
                .args(["cluster", "status", "--json", "--config"])
                .arg(&path),
            WAIT,
        );
        let json: serde_json::Value =
            serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {err}"));
        (code.code(), json)
    };
    // Before any node started: an empty cluster, said so.
    let (code, before) = tokio::task::block_in_place(status);
    assert_eq!(code, Some(1), "no synchronous standby");
    assert_eq!(before["nodes"].as_array().unwrap().len(), 0);
    assert_eq!(before["primary"], true);

    let server = tokio::task::block_in_place(|| ProcessServer::spawn(&path));
    let mut c = SmtpClient::greeted(server.addr, "127.0.0.2", "app.test").await;
    let r = c
        .send_mail(
            "app@client.test",
            &["someone@far.example"],
            b"Subject: s\r\n\r\nx\r\n",
        )
        .await;
    assert_eq!(r.code, 250, "{r:?}");
    let (code, now) = tokio::task::block_in_place(status);
    assert_eq!(code, Some(1));
    let nodes = now["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 1, "{now}");
    assert_eq!(nodes[0]["node_id"], 7);
    assert_eq!(nodes[0]["alive"], true);
    assert_eq!(nodes[0]["messages"], 1, "{now}");
    assert_eq!(now["messages"], 1);
    assert_eq!(now["unheld"], 0);
    assert_eq!(now["standbys"].as_array().unwrap().len(), 0);
    assert!(now["database"].as_str().unwrap().contains("127.0.0.1"));

    // doctor says the same of the cluster, among its other checks.
    let (_, out, err) = tokio::task::block_in_place(|| {
        run_with_timeout(
            std::process::Command::new(binary())
                .args(["doctor", "--json", "--timeout", "1", "--config"])
                .arg(&path),
            Duration::from_secs(120),
        )
    });
    let doctor: serde_json::Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {err}"));
    let cluster_checks: std::collections::HashMap<String, String> = doctor["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["name"].as_str().unwrap().starts_with("cluster "))
        .map(|c| {
            (
                c["name"].as_str().unwrap().to_string(),
                c["status"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(cluster_checks["cluster database"], "ok", "{doctor}");
    assert_eq!(cluster_checks["cluster standby"], "warning", "{doctor}");
    assert_eq!(cluster_checks["cluster node id"], "ok", "{doctor}");
    assert_eq!(cluster_checks["cluster nodes"], "ok", "{doctor}");
}

/// A queue command given on node 1 for a message node 2 holds reaches node
/// 2 (hold); once node 2 is dead, node 1 takes the message over to apply
/// the next one (release) and delivers it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_commands_reach_the_node_that_holds_the_message() {
    use crate::support::client::SmtpClient;
    use crate::support::server::{ProcessServer, binary};
    use crate::support::sink::{Behaviour, Sink};
    let pg = tokio::task::block_in_place(TestPostgres::start);
    let hop = crate::support::free_port("127.0.0.1");
    let delivery = through_hop(hop);
    let (one, two) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let config_one = process_config(&pg, 1, one.path(), &delivery);
    let config_two = process_config(&pg, 2, two.path(), &delivery);
    let _first = tokio::task::block_in_place(|| ProcessServer::spawn(&config_one));
    let mut second = tokio::task::block_in_place(|| ProcessServer::spawn(&config_two));
    let mut c = SmtpClient::greeted(second.addr, "127.0.0.2", "app.test").await;
    let r = c
        .send_mail(
            "app@client.test",
            &["someone@far.example"],
            b"Subject: steered\r\n\r\nx\r\n",
        )
        .await;
    assert_eq!(r.code, 250, "{r:?}");
    drop(c);
    let id = r.text().rsplit(' ').next().unwrap().to_string();
    let queue = |verb: &str| {
        let (ok, out, err) = run_with_timeout(
            std::process::Command::new(binary())
                .args(["queue", verb, &id, "--config"])
                .arg(&config_one),
            WAIT,
        );
        assert!(ok, "{err}");
        out
    };
    let held = || {
        pg.query(&format!(
            "SELECT held::text || '/' || owner FROM portcullis_message WHERE id = '{id}'"
        ))
    };
    // Node 1's list shows the whole shared queue, with the holder.
    let listed = tokio::task::block_in_place(|| {
        let (ok, out, err) = run_with_timeout(
            std::process::Command::new(binary())
                .args(["queue", "list", "--json", "--config"])
                .arg(&config_one),
            WAIT,
        );
        assert!(ok, "{err}");
        out
    });
    let rows: serde_json::Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(rows.as_array().map(Vec::len), Some(1), "{listed}");
    assert_eq!(rows[0]["id"], id.as_str());
    assert_eq!(rows[0]["node"], 2, "held by node 2: {listed}");
    // And shows it, as the shared queue has it.
    let shown = tokio::task::block_in_place(|| queue("show"));
    assert!(shown.contains("Subject: steered"), "{shown}");
    let said = tokio::task::block_in_place(|| queue("hold"));
    assert!(said.contains("passed to node 2"), "{said}");
    let mut state = String::new();
    for _ in 0..100 {
        state = tokio::task::block_in_place(held);
        if state == "true/2" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(state, "true/2", "node 2 applied the hold");
    // Node 1's status counts the whole shared queue beside its own.
    let status = tokio::task::block_in_place(|| {
        let (ok, out, err) = run_with_timeout(
            std::process::Command::new(binary())
                .args(["status", "--json", "--config"])
                .arg(&config_one),
            WAIT,
        );
        assert!(ok, "{err}");
        out
    });
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    let queue_counts = &status["queue"];
    assert_eq!(queue_counts["messages"], 0, "node 1 holds none: {status}");
    assert_eq!(queue_counts["cluster"]["messages"], 1, "{status}");
    assert_eq!(queue_counts["cluster"]["held"], 1, "{status}");
    assert_eq!(queue_counts["cluster"]["recipients_queued"], 1, "{status}");
    assert!(
        queue_counts["cluster"]["oldest_received_at"].is_i64(),
        "{status}"
    );

    second.kill9();
    tokio::time::sleep(LEASE + Duration::from_secs(1)).await;
    let sink = Sink::start("127.0.0.1", hop, Behaviour::accept_all()).await;
    let said = tokio::task::block_in_place(|| queue("release"));
    assert!(!said.contains("passed to"), "no live node held it: {said}");
    let got = sink.wait_for(1, Duration::from_secs(30)).await;
    assert_eq!(got.len(), 1, "node 1 took it over and delivered it");
    assert!(String::from_utf8_lossy(&got[0].data).contains("Subject: steered"));
}

/// The node configuration README gives for the two-node layout passes
/// check-config as printed (with its password file present).
#[test]
fn the_readme_node_config_is_valid() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = readme
        .split("### Two nodes behind HAProxy")
        .nth(1)
        .expect("the two-node section");
    let block = section
        .split("```toml\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("the node's configuration");
    let dir = tempfile::tempdir().unwrap();
    let password = dir.path().join("db-password");
    std::fs::write(&password, "s3cret\n").unwrap();
    let ca = crate::support::tls::TestCa::generate(dir.path());
    let ca_file = dir.path().join("db-ca.pem");
    std::fs::write(&ca_file, &ca.ca_pem).unwrap();
    let text = block
        .replace(
            "/etc/portcullis/db-password",
            &password.display().to_string(),
        )
        .replace("/etc/portcullis/db-ca.pem", &ca_file.display().to_string());
    let config = portcullis::config::Config::parse(&text, "README")
        .unwrap_or_else(|e| panic!("{e}\n{text}"));
    let cluster = config.cluster.expect("a [cluster] section");
    assert_eq!(cluster.node_id, 1);
    assert_eq!(cluster.lease.get(), Duration::from_secs(120));
    assert!(cluster.ca_file.is_some() && cluster.database.contains("sslmode=require"));
    assert!(config.listener[0].proxy_protocol);
}

/// A node's config for the shared-state test: 127.0.0.2 is the LAN, every
/// other address an outsider writing to example.lan; three messages an
/// hour per address, two failed logins ban for ten minutes.
fn sharing_config(
    pg: &TestPostgres,
    id: u8,
    dir: &std::path::Path,
    hop: u16,
) -> std::path::PathBuf {
    let path = crate::support::cluster_node::write(
        dir,
        &format!(
            "[relay]\ninbound_domains = [\"example.lan\"]\n\
             [[network]]\nrange = \"127.0.0.2\"\nauth = \"none\"\n\
             [limits]\nmessages_per_hour_per_ip = 3\nauth_failures_before_ban = 2\nban_duration = \"10m\"\n{}",
            through_hop(hop),
        ),
        &ClusterSection {
            node_id: id,
            database: &pg.url(),
            lease: "2s",
            pool_size: 2,
        },
    );
    crate::support::write_users(&dir.join("data").join("users"), &[("bob", "builder")]);
    path
}

/// Polls `check` (every 100 ms, at most `within`) until it holds.
async fn eventually(within: Duration, mut check: impl AsyncFnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Rate counts, bans and the guard's decisions are the cluster's, not a
/// node's: a client spread over two nodes is held to one limit, an
/// address banned on one is refused by the other, an address an admin
/// untrusted on one must authenticate on the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_bans_and_guard_decisions_are_shared() {
    use crate::support::client::SmtpClient;
    use crate::support::server::{ProcessServer, binary};
    let pg = tokio::task::block_in_place(TestPostgres::start);
    let hop = crate::support::free_port("127.0.0.1");
    let (one, two) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let config_one = sharing_config(&pg, 1, one.path(), hop);
    let first = tokio::task::block_in_place(|| ProcessServer::spawn(&config_one));
    let second = tokio::task::block_in_place(|| {
        ProcessServer::spawn(&sharing_config(&pg, 2, two.path(), hop))
    });
    let nodes = [first.addr, second.addr];

    // Six messages from one outsider, alternating nodes: three pass.
    let mut codes = Vec::new();
    for i in 0..6 {
        let mut c = SmtpClient::greeted(nodes[i % 2], "127.0.3.10", "spread.test").await;
        codes.push(inbound_message_code(&mut c, &i.to_string()).await);
    }
    assert_eq!(
        codes,
        [250, 250, 250, 450, 450, 450],
        "held to one limit over both nodes"
    );

    // Two failed logins on node 1 ban the address on node 2 as well.
    let mut c = SmtpClient::greeted(nodes[0], "127.0.3.20", "guesser.test").await;
    assert_eq!(c.auth_plain("bob", "guess1").await.code, 535);
    assert_eq!(c.auth_plain("bob", "guess2").await.code, 421);
    let banned_on_two = eventually(Duration::from_secs(5), async || {
        let mut c = SmtpClient::connect_raw(nodes[1], "127.0.3.20").await;
        c.read_reply().await.code == 421
    })
    .await;
    assert!(banned_on_two, "node 2 refuses the address node 1 banned");
    // Lifted on node 2: welcome on node 1 again.
    let (ok, _, err) = tokio::task::block_in_place(|| {
        run_with_timeout(
            std::process::Command::new(binary())
                .args(["ban", "lift", "127.0.3.20", "--config"])
                .arg(two.path().join("portcullis.toml")),
            WAIT,
        )
    });
    assert!(ok, "{err}");
    let welcome_on_one = eventually(Duration::from_secs(5), async || {
        let mut c = SmtpClient::connect_raw(nodes[0], "127.0.3.20").await;
        c.read_reply().await.code == 220
    })
    .await;
    assert!(welcome_on_one, "the lift reached node 1");

    // The LAN relays through node 2 until an admin untrusts it on node 1.
    let relays = async |addr| {
        let mut c = SmtpClient::greeted(addr, "127.0.0.2", "lan.test").await;
        c.expect("MAIL FROM:<app@lan.test>", 250).await;
        c.cmd("RCPT TO:<someone@far.example>").await.code
    };
    assert_eq!(relays(nodes[1]).await, 250);
    let (ok, _, err) = tokio::task::block_in_place(|| {
        run_with_timeout(
            std::process::Command::new(binary())
                .args(["guard", "untrust", "127.0.0.2", "--config"])
                .arg(&config_one),
            WAIT,
        )
    });
    assert!(ok, "{err}");
    let refused_on_two = eventually(Duration::from_secs(5), async || {
        relays(nodes[1]).await != 250
    })
    .await;
    assert!(refused_on_two, "node 2 follows node 1's guard decision");
    assert_eq!(
        relays(nodes[0]).await,
        relays(nodes[1]).await,
        "both nodes answer alike"
    );

    // What the nodes share is in the database, and nothing secret is.
    let rows = tokio::task::block_in_place(|| {
        pg.query("SELECT string_agg(kind || ':' || key, ' ' ORDER BY kind, key) FROM portcullis_shared WHERE kind IN ('ban', 'guard')")
    });
    assert!(
        rows.contains("ban:127.0.3.20") && rows.contains("guard:127.0.0.2"),
        "{rows}"
    );
    let all = tokio::task::block_in_place(|| {
        pg.query("SELECT string_agg(value, ' ') FROM portcullis_shared")
    });
    assert!(!all.contains("guess"), "no password in shared state");
}

/// A node stopped cleanly (SIGTERM, as for an upgrade) ends its leases and
/// frees its number: with a one-minute lease, another node still delivers
/// its waiting message within its next claim, and a new installation may
/// take the number at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_stopped_cleanly_hands_its_mail_over_at_once() {
    use crate::support::client::SmtpClient;
    use crate::support::server::ProcessServer;
    use crate::support::sink::{Behaviour, Sink};
    let pg = tokio::task::block_in_place(TestPostgres::start);
    let hop = crate::support::free_port("127.0.0.1");
    let delivery = through_hop(hop);
    let long_lease = |path: std::path::PathBuf| with_lease(path, "60s");
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let config_one = long_lease(process_config(&pg, 1, dirs[0].path(), &delivery));
    let mut first = tokio::task::block_in_place(|| ProcessServer::spawn(&config_one));
    let mut c = SmtpClient::greeted(first.addr, "127.0.0.2", "app.test").await;
    let r = c
        .send_mail(
            "app@client.test",
            &["someone@far.example"],
            b"Subject: handed over\r\n\r\nx\r\n",
        )
        .await;
    assert_eq!(r.code, 250, "{r:?}");
    drop(c);
    assert!(tokio::task::block_in_place(
        || first.wait_for_log("deferred")
    ));
    assert!(
        tokio::task::block_in_place(|| first.terminate()),
        "node 1 stopped"
    );
    assert!(
        first.log.lock().unwrap().contains("leases ended"),
        "{}",
        first.log.lock().unwrap()
    );

    let sink = Sink::start("127.0.0.1", hop, Behaviour::accept_all()).await;
    let config_two = long_lease(process_config(&pg, 2, dirs[1].path(), &delivery));
    let _second = tokio::task::block_in_place(|| ProcessServer::spawn(&config_two));
    // Well before node 1's minute-long lease would have run out.
    let got = sink.wait_for(1, Duration::from_secs(25)).await;
    assert_eq!(got.len(), 1, "node 2 took the message at its first claims");
    // Node 1's number is free for another installation now.
    let config_other = long_lease(process_config(&pg, 1, dirs[2].path(), ""));
    let other = tokio::task::block_in_place(|| ProcessServer::spawn(&config_other));
    assert!(
        !other.log.lock().unwrap().contains("is in use"),
        "{}",
        other.log.lock().unwrap()
    );
}

/// The compose example's files hold up: each node's config (as its
/// entrypoint writes it) passes `check-config`, and HAProxy accepts its
/// configuration (`haproxy -c`).
#[test]
fn the_compose_cluster_example_is_valid() {
    use crate::support::server::binary;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let template = std::fs::read_to_string(root.join("packaging/cluster/node.toml")).unwrap();
    let entrypoint =
        std::fs::read_to_string(root.join("packaging/cluster/node-entrypoint.sh")).unwrap();
    assert!(template.contains("\nnode_id = NODE_ID\n"));
    assert!(entrypoint.contains("s/^node_id = NODE_ID$/node_id = ${PORTCULLIS_NODE}/"));
    let dir = tempfile::tempdir().unwrap();
    let password = dir.path().join("cluster-db-password");
    std::fs::write(&password, "s3cret\n").unwrap();
    for node in ["1", "2"] {
        let text = template
            .replace("node_id = NODE_ID", &format!("node_id = {node}"))
            .replace(
                "/run/secrets/cluster-db-password",
                &password.display().to_string(),
            )
            .replace(
                "/var/lib/portcullis",
                &dir.path().join(node).display().to_string(),
            );
        let path = dir.path().join(format!("node{node}.toml"));
        std::fs::write(&path, text).unwrap();
        let (ok, out, err) = run_with_timeout(
            std::process::Command::new(binary())
                .args(["check-config", "--config"])
                .arg(&path),
            WAIT,
        );
        assert!(ok, "node {node}: {out}{err}");
    }
    let (ok, out, err) = run_with_timeout(
        std::process::Command::new("haproxy")
            .args(["-c", "-f"])
            .arg(root.join("packaging/cluster/haproxy.cfg")),
        WAIT,
    );
    assert!(ok, "haproxy -c: {out}{err}");
}

/// `sslmode=require`: the node reaches PostgreSQL over TLS, verifying the
/// server's certificate against `cluster.ca_file`. The server here refuses
/// any connection without TLS, so the accepted mail proves it; a node that
/// does not trust the server's CA refuses to start and says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_connection_is_tls_when_required() {
    use crate::support::client::SmtpClient;
    use crate::support::server::{ProcessServer, binary};
    let certs = tempfile::tempdir().unwrap();
    let ca = crate::support::tls::TestCa::generate(certs.path());
    let ca_file = certs.path().join("db-ca.pem");
    std::fs::write(&ca_file, &ca.ca_pem).unwrap();
    let pg =
        tokio::task::block_in_place(|| TestPostgres::start_tls_only(&ca.cert_path, &ca.key_path));
    let database = format!(
        "host=localhost port={} user=postgres dbname=postgres sslmode=require",
        pg.port
    );
    let node_config = |dir: &std::path::Path, trusted: bool| {
        let path = process_config(&pg, 1, dir, "");
        let mut text = std::fs::read_to_string(&path)
            .unwrap()
            .replace(&pg.url(), &database);
        if trusted {
            text = text.replace(
                "[cluster]\n",
                &format!("[cluster]\nca_file = \"{}\"\n", ca_file.display()),
            );
        }
        std::fs::write(&path, text).unwrap();
        path
    };

    let untrusting = tempfile::tempdir().unwrap();
    let path = node_config(untrusting.path(), false);
    let (ok, _, err) = tokio::task::block_in_place(|| {
        run_with_timeout(
            std::process::Command::new(binary())
                .args(["serve", "--config"])
                .arg(&path),
            WAIT,
        )
    });
    assert!(!ok, "a node that cannot verify the database does not start");
    assert!(
        err.contains("cluster.database") && err.to_lowercase().contains("certificate"),
        "{err}"
    );

    let dir = tempfile::tempdir().unwrap();
    let path = node_config(dir.path(), true);
    let server = tokio::task::block_in_place(|| ProcessServer::spawn(&path));
    let mut c = SmtpClient::greeted(server.addr, "127.0.0.2", "app.test").await;
    let r = c
        .send_mail(
            "app@client.test",
            &["someone@far.example"],
            b"Subject: over TLS\r\n\r\nx\r\n",
        )
        .await;
    assert_eq!(r.code, 250, "{r:?}\n{}", server.log.lock().unwrap());
    let encrypted = tokio::task::block_in_place(|| {
        pg.query("SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE s.ssl AND a.datname = 'postgres' AND a.pid <> pg_backend_pid()")
    });
    assert_ne!(encrypted, "0", "the node's connections are TLS");
}

/// `lease = "2s"` in the node config at `path` made `lease`.
fn with_lease(path: std::path::PathBuf, lease: &str) -> std::path::PathBuf {
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("lease = \"2s\""));
    std::fs::write(
        &path,
        text.replace("lease = \"2s\"", &format!("lease = \"{lease}\"")),
    )
    .unwrap();
    path
}

/// Queue commands over the whole shared queue: `--source` on a running
/// node reaches the messages another node holds; a node whose server is
/// stopped lists, shows and changes the shared queue from the database
/// (passed to the holder while it lives, applied in the database once no
/// live node holds the message).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_commands_cover_the_whole_shared_queue_with_or_without_a_server() {
    use crate::support::client::SmtpClient;
    use crate::support::server::{ProcessServer, binary};
    use crate::support::sink::{Behaviour, Sink};
    let pg = tokio::task::block_in_place(TestPostgres::start);
    let hop = crate::support::free_port("127.0.0.1");
    let delivery = through_hop(hop);
    let (one, two) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let config_one = with_lease(process_config(&pg, 1, one.path(), &delivery), "60s");
    let config_two = with_lease(process_config(&pg, 2, two.path(), &delivery), "60s");
    let mut first = tokio::task::block_in_place(|| ProcessServer::spawn(&config_one));
    let mut second = tokio::task::block_in_place(|| ProcessServer::spawn(&config_two));
    let mut ids = Vec::new();
    for subject in ["kept", "dropped"] {
        let mut c = SmtpClient::greeted(second.addr, "127.0.0.2", "app.test").await;
        let body = format!("Subject: {subject}\r\n\r\nx\r\n");
        let r = c
            .send_mail("app@client.test", &["someone@far.example"], body.as_bytes())
            .await;
        assert_eq!(r.code, 250, "{r:?}");
        ids.push(r.text().rsplit(' ').next().unwrap().to_string());
    }
    let cli = |args: &[&str]| {
        tokio::task::block_in_place(|| {
            run_with_timeout(
                std::process::Command::new(binary())
                    .args(args)
                    .arg("--config")
                    .arg(&config_one),
                WAIT,
            )
        })
    };
    let row = |id: &str| {
        tokio::task::block_in_place(|| {
            pg.query(&format!(
                "SELECT held::text || '/' || coalesce(owner::text, '-') FROM portcullis_message WHERE id = '{id}'"
            ))
        })
    };

    // Through node 1's server: every message from 127.0.0.2, node 2's too.
    let (ok, said, err) = cli(&["queue", "hold", "--source", "127.0.0.2"]);
    assert!(ok, "{err}");
    assert_eq!(said.matches("passed to node 2").count(), 2, "{said}");
    for id in &ids {
        let mut state = String::new();
        for _ in 0..100 {
            state = row(id);
            if state == "true/2" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert_eq!(state, "true/2", "node 2 applied the hold to {id}");
    }

    // Node 1 stopped: its CLI reads the shared queue from the database.
    assert!(tokio::task::block_in_place(|| first.terminate()));
    let (ok, listed, err) = cli(&["queue", "list", "--json"]);
    assert!(ok, "{err}");
    let rows: serde_json::Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(rows.as_array().map(Vec::len), Some(2), "{listed}");
    for r in rows.as_array().unwrap() {
        assert_eq!(r["node"], 2, "{listed}");
        assert_eq!(r["held"], true, "{listed}");
    }
    let (ok, shown, err) = cli(&["queue", "show", &ids[0], "--json"]);
    assert!(ok, "{err}");
    let shown: serde_json::Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(shown["envelope"]["sender"], "app@client.test", "{shown}");
    assert!(
        shown["headers"].as_str().unwrap().contains("Subject: kept"),
        "{shown}"
    );

    // Node 2 dead and its leases over: the CLI changes the rows itself.
    second.kill9();
    tokio::task::block_in_place(|| pg.query("UPDATE portcullis_message SET lease_until = 0"));
    let (ok, said, err) = cli(&["queue", "release", &ids[0]]);
    assert!(
        ok && said.contains("released") && !said.contains("passed"),
        "{said}{err}"
    );
    let (ok, said, err) = cli(&["queue", "delete", &ids[1]]);
    assert!(ok && said.contains("deleted"), "{said}{err}");
    assert_eq!(row(&ids[0]), "false/2");
    assert_eq!(row(&ids[1]), "", "deleted from the shared queue");
    let (ok, _, err) = cli(&["queue", "show", &ids[1]]);
    assert!(!ok && err.contains("no message"), "{err}");

    // Node 1 back: it delivers the released message, and only that one.
    let sink = Sink::start("127.0.0.1", hop, Behaviour::accept_all()).await;
    let _first = tokio::task::block_in_place(|| ProcessServer::spawn(&config_one));
    let got = sink.wait_for(1, Duration::from_secs(30)).await;
    assert_eq!(got.len(), 1);
    assert!(String::from_utf8_lossy(&got[0].data).contains("Subject: kept"));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        sink.messages().len(),
        1,
        "the deleted message stayed deleted"
    );
}
