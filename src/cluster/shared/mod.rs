//! State the nodes of a cluster share besides the queue: rate counters,
//! bans and blocks, quota ledgers (`counters.rs`), the guard's decisions
//! and the flood hold's observations (`guard.rs`), the next hops taken for
//! down (`down.rs`). Each lives in memory on every node, where the session's
//! hot path reads it without waiting, and is mirrored through one table,
//! `portcullis_shared`, by a background task (`SharedSync`) that every
//! 100 ms writes what changed here and reads what changed elsewhere.
//!
//! Rows hold absolute values (this node's count in a window, a ban's end),
//! never increments, so reading a row twice is harmless: each read looks a
//! little further back than the last one ended (`OVERLAP`), and a row
//! committed late is still seen. A row belongs to `(kind, key, node)`:
//! counts are per node (node = its number) and summed by the readers;
//! decisions every node may change (bans, the guard) use node 0, the last
//! writer winning.
//!
//! Losing the database relaxes nothing that matters for mail: each node
//! goes on with its own counts and bans, and what changed waits (bounded)
//! until the database answers again.

pub mod counters;
pub mod down;
pub mod guard;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio_util::sync::CancellationToken;

/// How often changes are written and read.
const TICK: Duration = Duration::from_millis(100);
/// How far back each read reaches before where the last one ended, for
/// rows whose write committed after it was stamped.
const OVERLAP_MS: i64 = 2_000;
/// How often rows past their expiry are deleted.
const SWEEP_EVERY: Duration = Duration::from_secs(60);
/// Changes waiting for the database, at most: beyond, the newest are
/// dropped (the counts relax; nothing else is at stake).
const MAX_PENDING: usize = 100_000;
/// Rows read at once.
const READ_LIMIT: i64 = 20_000;

/// The database's clock in Unix milliseconds: windows and bans are judged
/// by it, so nodes whose clocks differ still agree.
#[derive(Default)]
pub struct SharedClock {
    offset_ms: AtomicI64,
}

impl SharedClock {
    pub fn now_ms(&self) -> i64 {
        local_ms() + self.offset_ms.load(Ordering::Relaxed)
    }

    fn learn(&self, db_now_ms: i64, local_at_ms: i64) {
        self.offset_ms
            .store(db_now_ms - local_at_ms, Ordering::Relaxed);
    }
}

fn local_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// One shared value: what `(kind, key, node)` is now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub kind: &'static str,
    pub key: String,
    /// The node the value is of, or 0 for a value every node may change.
    pub node: i16,
    /// JSON.
    pub value: String,
    /// Unix ms (the database's clock) after which the row is deleted.
    pub expires_ms: i64,
}

/// Something whose state is shared: it says what changed here, and takes
/// what changed elsewhere.
pub trait SharedSource: Send + Sync {
    /// The kinds of rows it owns.
    fn kinds(&self) -> &'static [&'static str];
    /// Rows for what changed on this node since the last call.
    fn changes(&self, now_ms: i64) -> Vec<Row>;
    /// A row read from the database. `mine`: written by this node (only at
    /// start, when a restarted node takes its own counts back).
    fn apply(&self, row: &Row, mine: bool, now_ms: i64);
}

/// Writes and reads the shared rows for this node's sources.
pub struct SharedSync {
    pool: deadpool_postgres::Pool,
    node: i16,
    clock: Arc<SharedClock>,
    sources: Vec<Arc<dyn SharedSource>>,
    /// Changes not written yet (the database did not answer).
    pending: Mutex<HashMap<(&'static str, String, i16), Row>>,
    /// Where the next read starts (Unix ms, the database's clock).
    read_from: AtomicI64,
}

impl SharedSync {
    pub fn new(
        pool: deadpool_postgres::Pool,
        node: u8,
        clock: Arc<SharedClock>,
        sources: Vec<Arc<dyn SharedSource>>,
    ) -> SharedSync {
        SharedSync {
            pool,
            node: i16::from(node),
            clock,
            sources,
            pending: Mutex::new(HashMap::new()),
            read_from: AtomicI64::new(0),
        }
    }

    /// Reads every live row (before the node serves: a restarted node
    /// knows the bans, counts and decisions at once).
    pub async fn load(&self) -> Result<(), String> {
        let client = self.pool.get().await.map_err(|e| e.to_string())?;
        let now = self.db_now(&client).await.map_err(|e| e.to_string())?;
        let rows = client
            .query(
                "SELECT kind, key, node, value, expires_ms, writer FROM portcullis_shared \
                 WHERE expires_ms > $1",
                &[&now],
            )
            .await
            .map_err(|e| e.to_string())?;
        for row in &rows {
            let writer: i16 = row.get(5);
            self.dispatch(row, writer == self.node, now);
        }
        self.read_from.store(now - OVERLAP_MS, Ordering::Relaxed);
        Ok(())
    }

    /// Writes and reads every `TICK` until `stop`.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_sweep = tokio::time::Instant::now();
        let mut last_complaint: Option<tokio::time::Instant> = None;
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            let sweep = last_sweep.elapsed() >= SWEEP_EVERY;
            match self.once(sweep).await {
                Ok(()) => {
                    if sweep {
                        last_sweep = tokio::time::Instant::now();
                    }
                    last_complaint = None;
                }
                // Said once a minute, not ten times a second.
                Err(e) if last_complaint.is_none_or(|t| t.elapsed() >= SWEEP_EVERY) => {
                    tracing::warn!(error = %e, "cannot share counters and bans with the other nodes; going on with this node's own");
                    last_complaint = Some(tokio::time::Instant::now());
                }
                Err(_) => {}
            }
        }
        // What changed last still reaches the others.
        let _ = tokio::time::timeout(Duration::from_secs(2), self.once(false)).await;
    }

    /// One round: write, read, and now and then sweep.
    async fn once(&self, sweep: bool) -> Result<(), String> {
        self.collect();
        let client = self.pool.get().await.map_err(|e| e.to_string())?;
        self.write(&client).await.map_err(|e| e.to_string())?;
        self.read(&client).await.map_err(|e| e.to_string())?;
        if sweep {
            let now = self.clock.now_ms();
            client
                .execute(
                    "DELETE FROM portcullis_shared WHERE expires_ms < $1",
                    &[&now],
                )
                .await
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// Takes the sources' changes into `pending` (a newer value of a row
    /// replaces the older).
    fn collect(&self) {
        let now = self.clock.now_ms();
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        for source in &self.sources {
            for row in source.changes(now) {
                let key = (row.kind, row.key.clone(), row.node);
                if pending.len() >= MAX_PENDING && !pending.contains_key(&key) {
                    continue;
                }
                pending.insert(key, row);
            }
        }
    }

    async fn write(&self, client: &tokio_postgres::Client) -> Result<(), tokio_postgres::Error> {
        let rows: Vec<Row> = {
            let pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            if pending.is_empty() {
                return Ok(());
            }
            pending.values().cloned().collect()
        };
        let kinds: Vec<&str> = rows.iter().map(|r| r.kind).collect();
        let keys: Vec<&str> = rows.iter().map(|r| r.key.as_str()).collect();
        let nodes: Vec<i16> = rows.iter().map(|r| r.node).collect();
        let values: Vec<&str> = rows.iter().map(|r| r.value.as_str()).collect();
        let expires: Vec<i64> = rows.iter().map(|r| r.expires_ms).collect();
        client
            .execute(
                "INSERT INTO portcullis_shared (kind, key, node, value, expires_ms, writer, changed_ms) \
                 SELECT k, y, n, v, e, $6, (extract(epoch from clock_timestamp()) * 1000)::bigint \
                 FROM unnest($1::text[], $2::text[], $3::int2[], $4::text[], $5::int8[]) AS t(k, y, n, v, e) \
                 ON CONFLICT (kind, key, node) DO UPDATE SET value = excluded.value, \
                 expires_ms = excluded.expires_ms, writer = excluded.writer, changed_ms = excluded.changed_ms",
                &[&kinds, &keys, &nodes, &values, &expires, &self.node],
            )
            .await?;
        // Only what was written leaves `pending` (a change made meanwhile stays).
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        for row in rows {
            let key = (row.kind, row.key.clone(), row.node);
            if pending.get(&key) == Some(&row) {
                pending.remove(&key);
            }
        }
        Ok(())
    }

    async fn read(&self, client: &tokio_postgres::Client) -> Result<(), tokio_postgres::Error> {
        let from = self.read_from.load(Ordering::Relaxed);
        let now = self.db_now(client).await?;
        let rows = client
            .query(
                "SELECT kind, key, node, value, expires_ms, changed_ms FROM portcullis_shared \
                 WHERE changed_ms > $1 AND writer <> $2 ORDER BY changed_ms LIMIT $3",
                &[&from, &self.node, &READ_LIMIT],
            )
            .await?;
        let mut newest = from;
        for row in &rows {
            self.dispatch(row, false, now);
            newest = newest.max(row.get::<_, i64>(5));
        }
        // A full read may have more behind it: go on from its last row.
        let next = if rows.len() as i64 >= READ_LIMIT {
            newest
        } else {
            now - OVERLAP_MS
        };
        self.read_from.store(next.max(from), Ordering::Relaxed);
        Ok(())
    }

    async fn db_now(&self, client: &tokio_postgres::Client) -> Result<i64, tokio_postgres::Error> {
        let asked = local_ms();
        let row = client
            .query_one(
                "SELECT (extract(epoch from clock_timestamp()) * 1000)::bigint",
                &[],
            )
            .await?;
        let now: i64 = row.get(0);
        let answered = local_ms();
        self.clock.learn(now, (asked + answered) / 2);
        Ok(now)
    }

    fn dispatch(&self, row: &tokio_postgres::Row, mine: bool, now: i64) {
        let kind: &str = row.get(0);
        let Some(source) = self.sources.iter().find(|s| s.kinds().contains(&kind)) else {
            return;
        };
        let Some(kind) = source.kinds().iter().find(|k| **k == kind) else {
            return;
        };
        let shared = Row {
            kind,
            key: row.get(1),
            node: row.get(2),
            value: row.get(3),
            expires_ms: row.get(4),
        };
        source.apply(&shared, mine, now);
    }
}
