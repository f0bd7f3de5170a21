//! The queue store on PostgreSQL (issue 31, first part): one real
//! PostgreSQL server, two nodes' stores. A lease that ended is taken over
//! with a new fence, and the old owner's writes then change nothing.

use crate::support::postgres::TestPostgres;
use portcullis::cluster::PgStore;
use portcullis::queue::{Durability, QueueStore};
use portcullis::spool::{ContentInfo, Envelope, EnvelopeRecipient, Origin, QueueId, Spool};
use std::sync::Arc;
use std::time::Duration;

const LEASE: Duration = Duration::from_secs(2);

async fn node(pg: &TestPostgres, id: u8, dir: &std::path::Path) -> Arc<PgStore> {
    let store = PgStore::connect(&pg.url(), id, LEASE, 2, dir.join(format!("cache-{id}")))
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

    // A wakes up: its writes change nothing, and it says the message is gone.
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
