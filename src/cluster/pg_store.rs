//! The queue store on PostgreSQL (see the module doc of `cluster` for the
//! leases). A message is one row: envelope and state as JSON text, the
//! content as bytea, committed in one transaction before the 250 (with
//! `synchronous_commit = on` and a synchronous standby, on two machines).
//! Lease times use the database's clock, so that nodes whose clocks differ
//! still agree on when a lease ends.
//!
//! The trait's blocking methods run on a blocking thread (the queue
//! manager calls them through `spool::off_thread`) and wait there for the
//! database; the content a node delivers is copied into `cache_dir`, where
//! the delivery code reads message files.

use crate::config::ClusterConfig;
use crate::queue::{
    Changed, Durability, Forwarded, Loaded, MessageDetail, QueueCommand, QueueStats, QueueStore,
    SharedQueue,
};
use crate::spool::{
    Envelope, MemoryCopy, MessageState, QueueId, QueuedMessage, SpoolError, SpoolWriter,
};
use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use super::batch::Batcher;
use super::db::NOW;

/// The longest wait for the shared queue's counts.
const SHARED_STATS_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

pub struct PgStore {
    pool: deadpool_postgres::Pool,
    node: i32,
    /// This node in the register (for its sign of life).
    identity: super::nodes::Identity,
    lease: i64,
    /// The fence this node holds for each message it owns.
    fences: Mutex<HashMap<QueueId, i64>>,
    /// Where the content of the messages this node delivers is copied.
    cache_dir: PathBuf,
    runtime: tokio::runtime::Handle,
    /// Signed in to the cluster: until then (the database did not answer
    /// at start) new mail is refused and nothing is claimed.
    joined: AtomicBool,
    /// Accepted messages, inserted together (group commit).
    inserts: Batcher<NewRow>,
    /// Finished messages (id, fence), removed together.
    removals: Batcher<(String, i64)>,
    /// Leases (id, fence) renewed before attempts, together.
    renewals: Batcher<(String, i64)>,
}

/// Why `PgStore::connect` gave no joined store.
pub enum JoinError {
    /// Nothing to serve with: the node number is in use, or the
    /// configuration cannot work.
    Refused(String),
    /// The database did not answer: the store, to join later, and why.
    Unreachable(Box<PgStore>, String),
}

impl std::fmt::Display for JoinError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JoinError::Refused(e) | JoinError::Unreachable(_, e) => f.write_str(e),
        }
    }
}

impl std::fmt::Debug for JoinError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

/// A received message's row, before its insert.
struct NewRow {
    id: String,
    envelope: String,
    state: String,
    body: Vec<u8>,
    held: bool,
    next_due: Option<i64>,
}

/// Deferral states written in one statement at most.
const STATES_AT_ONCE: usize = 1_000;

/// Batches of inserts or removals in flight at once, and their size.
const BATCHES_IN_FLIGHT: usize = 4;
const BATCH_MAX: usize = 128;

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore").field("node", &self.node).finish()
    }
}

fn db_error(e: impl std::fmt::Display) -> SpoolError {
    SpoolError::Io(std::io::Error::other(format!("queue database: {e}")))
}

impl PgStore {
    /// Opens the store (`database`: a libpq-style URL or key=value string;
    /// several hosts with `target_session_attrs=read-write` find the
    /// primary) and joins the cluster (see `join`). Call inside the Tokio
    /// runtime. The node registers itself: `cluster.node_id` must not be
    /// held by another live node; `hostname` and `data_dir` say which
    /// machine and installation it is, so that the same one restarting
    /// takes its number back at once.
    ///
    /// A database that does not answer does not stop the node: it comes up
    /// unjoined, answers 451 to new mail, and joins at a later claim round
    /// (`JoinError::Unreachable`, with the store). A number in use and a
    /// configuration that cannot work (a certificate not trusted, a login
    /// refused) are errors.
    pub async fn connect(
        cluster: &ClusterConfig,
        hostname: &str,
        data_dir: &Path,
    ) -> Result<PgStore, JoinError> {
        let store = PgStore::open(cluster, hostname, data_dir).map_err(JoinError::Refused)?;
        match store.join().await {
            Ok(()) => Ok(store),
            Err(
                super::nodes::RegisterError::InUse(e)
                | super::nodes::RegisterError::Misconfigured(e),
            ) => Err(JoinError::Refused(e)),
            Err(super::nodes::RegisterError::Database(e)) => {
                Err(JoinError::Unreachable(Box::new(store), e))
            }
        }
    }

    /// The store, not joined yet: no connection made.
    fn open(cluster: &ClusterConfig, hostname: &str, data_dir: &Path) -> Result<PgStore, String> {
        let node = cluster.node_id;
        let lease_secs = cluster.lease.get().as_secs().max(1) as i64;
        let pool = super::db::pool(cluster)?;
        let cache_dir = data_dir.join("cluster-cache");
        clear_cache(&cache_dir).map_err(|e| format!("{}: {e}", cache_dir.display()))?;
        Ok(PgStore {
            node: i32::from(node),
            identity: super::nodes::Identity {
                node: i32::from(node),
                hostname: hostname.to_string(),
                data_dir: data_dir.display().to_string(),
            },
            lease: lease_secs,
            joined: AtomicBool::new(false),
            fences: Mutex::new(HashMap::new()),
            cache_dir,
            runtime: tokio::runtime::Handle::current(),
            inserts: insert_batcher(pool.clone(), i32::from(node), lease_secs),
            removals: removal_batcher(pool.clone(), i32::from(node)),
            renewals: renewal_batcher(pool.clone(), i32::from(node), lease_secs),
            pool,
        })
    }

    /// Creates the tables when missing and signs this node in.
    async fn join(&self) -> Result<(), super::nodes::RegisterError> {
        use super::nodes::RegisterError;
        let mut client = self.pool.get().await.map_err(|e| {
            let said = format!(
                "cluster.database: cannot connect: {}",
                super::db::describe(&e)
            );
            if super::db::is_misconfiguration(&e) {
                RegisterError::Misconfigured(said)
            } else {
                RegisterError::Database(said)
            }
        })?;
        crate::cluster::schema::ensure(&mut client)
            .await
            .map_err(|e| {
                RegisterError::Database(format!("cluster.database: cannot create the tables: {e}"))
            })?;
        let node = u8::try_from(self.node).unwrap_or_default();
        let data_dir = Path::new(&self.identity.data_dir);
        super::nodes::register(&client, node, &self.identity.hostname, data_dir, self.lease)
            .await?;
        self.joined.store(true, Ordering::Release);
        Ok(())
    }

    fn joined(&self) -> bool {
        self.joined.load(Ordering::Acquire)
    }

    /// The connection pool (the shared counters use it too).
    pub fn pool(&self) -> deadpool_postgres::Pool {
        self.pool.clone()
    }

    fn fences(&self) -> std::sync::MutexGuard<'_, HashMap<QueueId, i64>> {
        self.fences.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn fence_of(&self, id: &QueueId) -> Result<i64, SpoolError> {
        self.fences()
            .get(id)
            .copied()
            .ok_or_else(|| SpoolError::NotFound(id.to_string()))
    }

    /// Waits for `fut` on this blocking thread.
    fn wait<T>(&self, fut: impl Future<Output = T>) -> T {
        self.runtime.block_on(fut)
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, SpoolError> {
        self.pool.get().await.map_err(db_error)
    }

    /// A row as the queue manager wants it: the content copied to the cache.
    fn message(
        &self,
        id: &str,
        envelope: &str,
        state: &str,
        body: Vec<u8>,
    ) -> Result<(QueueId, QueuedMessage), SpoolError> {
        let qid = QueueId::parse(id).ok_or_else(|| SpoolError::NotFound(id.to_string()))?;
        let bad = |reason: String| SpoolError::BadEnvelope {
            path: self.cache_dir.join(id),
            reason,
        };
        let envelope: Envelope = serde_json::from_str(envelope).map_err(|e| bad(e.to_string()))?;
        let state: MessageState = serde_json::from_str(state).map_err(|e| bad(e.to_string()))?;
        let path = self.cache_dir.join(id);
        // A cache: lost with the machine, read back from the database.
        std::fs::write(&path, &body)?;
        let body_len = body.len() as u64;
        Ok((
            qid,
            QueuedMessage {
                envelope,
                state,
                path,
                body_len,
                memory: MemoryCopy::keep(body),
                journaled: false,
            },
        ))
    }

    /// Rows taken or renewed by this node, with their fences remembered.
    fn taken(&self, rows: Vec<tokio_postgres::Row>) -> Result<Loaded, SpoolError> {
        let mut messages = Vec::new();
        let mut unreadable = Vec::new();
        for row in rows {
            match self.taken_one(&row) {
                Ok(m) => messages.push(m),
                Err(e) => unreadable.push((row.get("id"), e)),
            }
        }
        Ok(Loaded {
            messages,
            unreadable,
        })
    }

    /// One row taken or renewed by this node, its fence remembered.
    fn taken_one(&self, row: &tokio_postgres::Row) -> Result<(QueueId, QueuedMessage), SpoolError> {
        let (qid, m) = self.message(
            row.get("id"),
            row.get("envelope"),
            row.get("state"),
            row.get("body"),
        )?;
        self.fences().insert(qid.clone(), row.get("fence"));
        Ok((qid, m))
    }

    async fn accept_async(
        &self,
        content: SpoolWriter,
        envelope: Envelope,
    ) -> std::io::Result<QueuedMessage> {
        let body = tokio::task::spawn_blocking(move || {
            let mut content = content;
            content.content()
        })
        .await
        .map_err(std::io::Error::other)??;
        if !self.joined() {
            return Err(std::io::Error::other(
                "queue database: this node has not reached the cluster's database since it started",
            ));
        }
        let state = MessageState::initial(&envelope);
        let id = QueueId::parse(&envelope.id)
            .ok_or_else(|| std::io::Error::other("a message without a queue id"))?;
        let envelope_json = serde_json::to_string(&envelope).map_err(std::io::Error::other)?;
        let state_json = serde_json::to_string(&state).map_err(std::io::Error::other)?;
        self.inserts
            .submit(NewRow {
                id: id.to_string(),
                envelope: envelope_json,
                state: state_json,
                body: body.clone(),
                held: state.held,
                next_due: state.next_due(),
            })
            .await
            .map_err(|e| std::io::Error::other(format!("queue database: {e}")))?;
        self.fences().insert(id.clone(), 1);
        let path = self.cache_dir.join(id.as_str());
        let body_len = body.len() as u64;
        let memory = MemoryCopy::keep(body.clone());
        tokio::task::spawn_blocking({
            let path = path.clone();
            move || std::fs::write(path, body)
        })
        .await
        .map_err(std::io::Error::other)??;
        Ok(QueuedMessage {
            envelope,
            state,
            path,
            body_len,
            memory,
            journaled: false,
        })
    }
}

impl QueueStore for PgStore {
    fn accept(
        &self,
        content: SpoolWriter,
        envelope: Envelope,
        _deliver_now: bool,
    ) -> Pin<Box<dyn Future<Output = std::io::Result<QueuedMessage>> + Send + '_>> {
        Box::pin(self.accept_async(content, envelope))
    }

    /// This node's own messages (after a restart): taken again with a new
    /// fence. None before the node joined: the claim round that joins it
    /// takes them (see `claim_due`).
    fn load_all(&self) -> std::io::Result<Loaded> {
        if !self.joined() {
            return Ok(Loaded::default());
        }
        let rows = self
            .wait(async { self.take_own_back(&self.client().await?).await })
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        self.taken(rows)
            .map_err(|e| std::io::Error::other(e.to_string()))
    }

    fn load(&self, id: &QueueId) -> Result<QueuedMessage, SpoolError> {
        let row = self.wait(async {
            let client = self.client().await?;
            client
                .query_opt(
                    "SELECT id, envelope, state, body, fence FROM portcullis_message
                      WHERE id = $1 AND owner = $2",
                    &[&id.as_str(), &self.node],
                )
                .await
                .map_err(db_error)
        })?;
        let row = row.ok_or_else(|| SpoolError::NotFound(id.to_string()))?;
        self.taken_one(&row).map(|(_, m)| m)
    }

    /// Renews this node's leases, then takes due messages whose lease ended
    /// (a node that died or stalled), each with a new fence.
    fn claim_due(
        &self,
        now: i64,
        limit: usize,
    ) -> Result<Vec<(QueueId, QueuedMessage)>, SpoolError> {
        let limit = limit.max(1) as i64;
        // A node that came up without its database joins here, and takes
        // back what it held before it stopped.
        let mut own = Vec::new();
        if !self.joined() {
            self.wait(self.join()).map_err(db_error)?;
            tracing::info!(
                node = self.node,
                "joined the cluster: the database answers, new mail is accepted again"
            );
            own = self.wait(async { self.take_own_back(&self.client().await?).await })?;
        }
        let rows = self.wait(async {
            let mut client = self.client().await?;
            super::nodes::heartbeat(&client, &self.identity)
                .await
                .map_err(db_error)?;
            self.renew_held_leases(&mut client).await?;
            client
                .query(
                    &format!(
                        "UPDATE portcullis_message m
                            SET owner = $1, lease_until = {NOW} + $2, fence = m.fence + 1
                           FROM (SELECT id FROM portcullis_message
                                  WHERE NOT held AND next_due <= $3
                                    AND (owner IS NULL OR lease_until < {NOW})
                                    AND owner IS DISTINCT FROM $1
                                  ORDER BY next_due
                                  LIMIT $4
                                  FOR UPDATE SKIP LOCKED) due
                          WHERE m.id = due.id
                      RETURNING m.id, m.envelope, m.state, m.body, m.fence"
                    ),
                    &[&self.node, &self.lease, &now, &limit],
                )
                .await
                .map_err(db_error)
        })?;
        own.extend(rows);
        Ok(self.taken(own)?.messages)
    }

    fn forward(&self, id: &QueueId, command: &QueueCommand) -> Result<Forwarded, SpoolError> {
        let text = serde_json::to_string(command).map_err(|e| db_error(e.to_string()))?;
        let outcome = self.wait(async {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(db_error)?;
            let (holder, _) = super::queue_admin::lock_message(&tx, id)
                .await
                .map_err(db_error)?
                .ok_or_else(|| SpoolError::NotFound(id.to_string()))?;
            let outcome = match holder {
                Some(node) if node != self.node => {
                    super::queue_admin::pass_to_holder(&tx, id, &text)
                        .await
                        .map_err(db_error)?;
                    Ok(node)
                }
                _ => Err(tx
                    .query_one(
                        &format!(
                            "UPDATE portcullis_message
                                SET owner = $2, lease_until = {NOW} + $3, fence = fence + 1
                              WHERE id = $1
                          RETURNING id, envelope, state, body, fence"
                        ),
                        &[&id.as_str(), &self.node, &self.lease],
                    )
                    .await
                    .map_err(db_error)?),
            };
            tx.commit().await.map_err(db_error)?;
            Ok::<_, SpoolError>(outcome)
        })?;
        match outcome {
            Ok(node) => Ok(Forwarded::Passed { node }),
            Err(row) => {
                let (id, m) = self.taken_one(&row)?;
                Ok(Forwarded::TakenOver(id, Box::new(m)))
            }
        }
    }

    fn take_commands(&self) -> Result<Vec<QueueCommand>, SpoolError> {
        let rows = self.wait(async {
            let client = self.client().await?;
            client
                .query(
                    &format!(
                        "WITH taken AS (
                             DELETE FROM portcullis_command c
                              USING portcullis_message m
                              WHERE c.message_id = m.id AND m.owner = $1 AND m.lease_until >= {NOW}
                          RETURNING c.seq, c.command)
                         SELECT command FROM taken ORDER BY seq"
                    ),
                    &[&self.node],
                )
                .await
                .map_err(db_error)
        })?;
        Ok(rows
            .iter()
            .filter_map(|r| serde_json::from_str(r.get::<_, &str>(0)).ok())
            .collect())
    }

    /// Nothing to settle: a message is whole in the database from its 250.
    fn settle(&self, messages: &[(&QueueId, &MemoryCopy)]) -> Vec<Result<bool, SpoolError>> {
        messages.iter().map(|_| Ok(true)).collect()
    }

    /// Fenced: a node that lost the message's lease changes nothing.
    fn record_state(
        &self,
        id: &QueueId,
        state: &MessageState,
        durability: Durability,
    ) -> Result<(), SpoolError> {
        let fence = self.fence_of(id)?;
        let json = serde_json::to_string(state).map_err(|e| db_error(e.to_string()))?;
        let changed = self.wait(async {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(db_error)?;
            if durability == Durability::Quick {
                // A deferral lost to a crash only means an earlier retry:
                // no wait for the disk or the standby.
                tx.batch_execute("SET LOCAL synchronous_commit = off")
                    .await
                    .map_err(db_error)?;
            }
            let changed = tx
                .execute(
                    &format!(
                        "UPDATE portcullis_message
                            SET state = $4, held = $5, next_due = $6, lease_until = {NOW} + $7
                          WHERE id = $1 AND owner = $2 AND fence = $3"
                    ),
                    &[
                        &id.as_str(),
                        &self.node,
                        &fence,
                        &json,
                        &state.held,
                        &state.next_due(),
                        &self.lease,
                    ],
                )
                .await
                .map_err(db_error)?;
            tx.commit().await.map_err(db_error)?;
            Ok::<_, SpoolError>(changed)
        })?;
        if changed == 0 {
            self.fences().remove(id);
            return Err(SpoolError::NotFound(id.to_string()));
        }
        Ok(())
    }

    /// In chunks of `STATES_AT_ONCE`, one fenced UPDATE each.
    fn record_states(
        &self,
        states: &[(&QueueId, &MessageState)],
        durability: Durability,
    ) -> Vec<Result<(), SpoolError>> {
        let mut results: Vec<Result<(), SpoolError>> = Vec::with_capacity(states.len());
        for chunk in states.chunks(STATES_AT_ONCE) {
            results.extend(self.record_chunk(chunk, durability));
        }
        results
    }

    /// An admin's delete: whoever holds the message.
    fn delete(&self, id: &QueueId) -> Result<(), SpoolError> {
        self.remove(
            id,
            "DELETE FROM portcullis_message WHERE id = $1",
            &[&id.as_str()],
        )
    }

    fn leases(&self) -> bool {
        true
    }

    /// The messages this node does not hold, each with its holder.
    fn shared_queue(&self) -> Result<Option<SharedQueue>, SpoolError> {
        let others = self.wait(async {
            let client = self.client().await?;
            super::queue_admin::list(&client, Some(self.node))
                .await
                .map_err(db_error)
        })?;
        Ok(Some(SharedQueue {
            node: u8::try_from(self.node).unwrap_or_default(),
            others,
        }))
    }

    /// Counted in the database, within `SHARED_STATS_WAIT` (a status or a
    /// dashboard does not wait out a database that does not answer).
    fn shared_stats(&self) -> Result<Option<QueueStats>, SpoolError> {
        let stats = self.wait(async {
            let counting = async {
                let client = self.client().await?;
                super::queue_admin::stats(&client, Some(self.node))
                    .await
                    .map_err(db_error)
            };
            tokio::time::timeout(SHARED_STATS_WAIT, counting)
                .await
                .map_err(|_| db_error("the database did not answer in time"))?
        })?;
        Ok(Some(stats))
    }

    fn show_shared(&self, id: &QueueId) -> Result<Option<MessageDetail>, SpoolError> {
        self.wait(async {
            let client = self.client().await?;
            super::queue_admin::show(&client, id)
                .await
                .map_err(db_error)
        })
    }

    fn change_shared(&self, command: &QueueCommand) -> Result<Vec<Changed>, SpoolError> {
        self.wait(async {
            let mut client = self.client().await?;
            super::queue_admin::change(&mut client, command, Some(self.node))
                .await
                .map_err(db_error)
        })
    }

    fn leave(&self, settled: bool) -> Result<(), SpoolError> {
        if !self.joined() {
            return Ok(());
        }
        self.wait(async {
            let client = self.client().await?;
            if settled {
                client
                    .execute(
                        "UPDATE portcullis_message SET lease_until = 0 WHERE owner = $1",
                        &[&self.node],
                    )
                    .await
                    .map_err(db_error)?;
            }
            super::nodes::sign_out(&client, &self.identity)
                .await
                .map_err(db_error)
        })?;
        if settled {
            self.fences().clear();
        }
        Ok(())
    }

    /// Renews the lease when this node still holds it under the same
    /// fence (with the other renewals asked meanwhile); otherwise forgets
    /// the message here (another node took it).
    fn renew_lease(&self, id: &QueueId) -> Result<bool, SpoolError> {
        let fence = self.fence_of(id)?;
        let renewed = self
            .wait(self.renewals.submit((id.to_string(), fence)))
            .map_err(db_error)?;
        if !renewed {
            self.fences().remove(id);
            let _ = std::fs::remove_file(self.cache_dir.join(id.as_str()));
            return Ok(false);
        }
        Ok(true)
    }

    /// Fenced like `record_state`; removed with others finished meanwhile,
    /// committed without waiting for the disk or the standby: a removal
    /// lost to a crash of the database means a second delivery, never a
    /// lost message (as on a single node).
    fn finish(&self, id: &QueueId, _journaled: bool) -> Result<(), SpoolError> {
        let fence = self.fence_of(id)?;
        let removed = self
            .wait(self.removals.submit((id.to_string(), fence)))
            .map_err(db_error)?;
        self.fences().remove(id);
        let _ = std::fs::remove_file(self.cache_dir.join(id.as_str()));
        if !removed {
            return Err(SpoolError::NotFound(id.to_string()));
        }
        Ok(())
    }
}

impl PgStore {
    fn record_chunk(
        &self,
        chunk: &[(&QueueId, &MessageState)],
        durability: Durability,
    ) -> Vec<Result<(), SpoolError>> {
        let mut ids = Vec::new();
        let mut fences = Vec::new();
        let mut jsons = Vec::new();
        let mut held = Vec::new();
        let mut due = Vec::new();
        for (id, state) in chunk {
            let (Ok(fence), Ok(json)) = (self.fence_of(id), serde_json::to_string(state)) else {
                continue;
            };
            ids.push(id.as_str());
            fences.push(fence);
            jsons.push(json);
            held.push(state.held);
            due.push(state.next_due());
        }
        let updated = self.wait(async {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(db_error)?;
            if durability == Durability::Quick {
                tx.batch_execute("SET LOCAL synchronous_commit = off")
                    .await
                    .map_err(db_error)?;
            }
            let rows = tx
                .query(
                    &format!(
                        "UPDATE portcullis_message m
                            SET state = u.state, held = u.held, next_due = u.due,
                                lease_until = {NOW} + $6
                           FROM unnest($1::text[], $2::int8[], $3::text[], $4::bool[], $5::int8[])
                             AS u(id, fence, state, held, due)
                          WHERE m.id = u.id AND m.fence = u.fence AND m.owner = $7
                      RETURNING m.id"
                    ),
                    &[&ids, &fences, &jsons, &held, &due, &self.lease, &self.node],
                )
                .await
                .map_err(db_error)?;
            tx.commit().await.map_err(db_error)?;
            Ok::<_, SpoolError>(
                rows.iter()
                    .map(|r| r.get::<_, String>(0))
                    .collect::<std::collections::HashSet<String>>(),
            )
        });
        chunk
            .iter()
            .map(|(id, _)| match &updated {
                Ok(set) if set.contains(id.as_str()) => Ok(()),
                Ok(_) => {
                    // Taken over (or gone): no longer this node's.
                    self.fences().remove(*id);
                    Err(SpoolError::NotFound(id.to_string()))
                }
                Err(e) => Err(db_error(e)),
            })
            .collect()
    }

    /// This node's messages (after a restart), each with a new fence and lease.
    async fn take_own_back(
        &self,
        client: &deadpool_postgres::Object,
    ) -> Result<Vec<tokio_postgres::Row>, SpoolError> {
        client
            .query(
                &format!(
                    "UPDATE portcullis_message
                        SET fence = fence + 1, lease_until = {NOW} + $2
                      WHERE owner = $1
                  RETURNING id, envelope, state, body, fence"
                ),
                &[&self.node, &self.lease],
            )
            .await
            .map_err(db_error)
    }

    /// Renews the leases this node holds that have run down to
    /// `renew_below` (each round would otherwise rewrite every row the node
    /// holds, a queue of deferred mail included). Committed without waiting
    /// for the disk or the standby: a renewal lost to a crash of the
    /// database only makes a lease look shorter, and an attempt renews its
    /// own lease first.
    async fn renew_held_leases(
        &self,
        client: &mut deadpool_postgres::Object,
    ) -> Result<(), SpoolError> {
        let tx = client.transaction().await.map_err(db_error)?;
        tx.batch_execute("SET LOCAL synchronous_commit = off")
            .await
            .map_err(db_error)?;
        tx.execute(
            &format!(
                "UPDATE portcullis_message SET lease_until = {NOW} + $2
                  WHERE owner = $1 AND lease_until < {NOW} + $3"
            ),
            &[&self.node, &self.lease, &renew_below(self.lease)],
        )
        .await
        .map_err(db_error)?;
        tx.commit().await.map_err(db_error)
    }

    /// Deletes the row as `sql` says; the cached content and the fence go
    /// too. `NotFound` when no row matched (deleted, or taken over).
    fn remove(
        &self,
        id: &QueueId,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<(), SpoolError> {
        let removed = self.wait(async {
            let client = self.client().await?;
            client.execute(sql, params).await.map_err(db_error)
        })?;
        self.fences().remove(id);
        let _ = std::fs::remove_file(self.cache_dir.join(id.as_str()));
        if removed == 0 {
            return Err(SpoolError::NotFound(id.to_string()));
        }
        Ok(())
    }
}

/// The seconds left on a lease below which the claim round renews it: at
/// its half, when the rounds (every `CLAIM_EVERY`) come often enough for a
/// lease renewed that late to be renewed again before it ends; otherwise at
/// every round.
fn renew_below(lease: i64) -> i64 {
    let round = crate::queue::CLAIM_EVERY.as_secs() as i64;
    if lease >= 4 * round { lease / 2 } else { lease }
}

/// Empties the content cache (what an earlier run left: the messages this
/// node takes are copied again from the database) and makes sure it exists.
/// The caller holds the data directory's lock: no other process uses it.
fn clear_cache(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_file() {
            std::fs::remove_file(path)?;
        }
    }
    Ok(())
}

/// Inserts accepted messages in batches: one statement, one commit (with a
/// synchronous standby, one wait for it) for all that arrived together.
fn insert_batcher(pool: deadpool_postgres::Pool, node: i32, lease: i64) -> Batcher<NewRow> {
    Batcher::start(BATCHES_IN_FLIGHT, BATCH_MAX, move |rows: Vec<NewRow>| {
        let pool = pool.clone();
        async move {
            let client = pool.get().await.map_err(|e| e.to_string())?;
            let ids: Vec<&str> = rows.iter().map(|r| r.id.as_str()).collect();
            let envelopes: Vec<&str> = rows.iter().map(|r| r.envelope.as_str()).collect();
            let states: Vec<&str> = rows.iter().map(|r| r.state.as_str()).collect();
            let bodies: Vec<&[u8]> = rows.iter().map(|r| r.body.as_slice()).collect();
            let held: Vec<bool> = rows.iter().map(|r| r.held).collect();
            let due: Vec<Option<i64>> = rows.iter().map(|r| r.next_due).collect();
            client
                .execute(
                    &format!(
                        "INSERT INTO portcullis_message
                           (id, envelope, state, body, held, next_due, owner, lease_until, fence)
                         SELECT id, envelope, state, body, held, due, $7, {NOW} + $8, 1
                           FROM unnest($1::text[], $2::text[], $3::text[], $4::bytea[], $5::bool[], $6::int8[])
                             AS t(id, envelope, state, body, held, due)"
                    ),
                    &[&ids, &envelopes, &states, &bodies, &held, &due, &node, &lease],
                )
                .await
                .map_err(|e| super::db::describe(&e))?;
            Ok(vec![true; rows.len()])
        }
    })
}

/// Removes finished messages in batches, each only under the fence this
/// node holds; answers, per message, whether its row was there.
fn removal_batcher(pool: deadpool_postgres::Pool, node: i32) -> Batcher<(String, i64)> {
    fenced_batcher(
        pool,
        "DELETE FROM portcullis_message m
          USING unnest($1::text[], $2::int8[]) AS f(id, fence)
          WHERE m.id = f.id AND m.fence = f.fence AND m.owner = $3
      RETURNING m.id"
            .to_string(),
        node,
        None,
    )
}

/// Renews leases in batches, each only under the fence this node holds;
/// answers, per message, whether it is still this node's. A renewal lost
/// to a crash of the database only makes the lease look shorter.
fn renewal_batcher(pool: deadpool_postgres::Pool, node: i32, lease: i64) -> Batcher<(String, i64)> {
    fenced_batcher(
        pool,
        format!(
            "UPDATE portcullis_message m SET lease_until = {NOW} + $4
               FROM unnest($1::text[], $2::int8[]) AS f(id, fence)
              WHERE m.id = f.id AND m.fence = f.fence AND m.owner = $3
          RETURNING m.id"
        ),
        node,
        Some(lease),
    )
}

/// Runs `sql` on batches of (id, fence) ($1, $2; this node $3, `lease`
/// $4 when given), committed without waiting for the disk or the standby;
/// answers, per message, whether `sql` returned its id.
fn fenced_batcher(
    pool: deadpool_postgres::Pool,
    sql: String,
    node: i32,
    lease: Option<i64>,
) -> Batcher<(String, i64)> {
    let sql = std::sync::Arc::new(sql);
    Batcher::start(
        BATCHES_IN_FLIGHT,
        BATCH_MAX,
        move |items: Vec<(String, i64)>| {
            let (pool, sql) = (pool.clone(), std::sync::Arc::clone(&sql));
            async move {
                let mut client = pool.get().await.map_err(|e| e.to_string())?;
                let describe = |e: tokio_postgres::Error| super::db::describe(&e);
                let tx = client.transaction().await.map_err(describe)?;
                tx.batch_execute("SET LOCAL synchronous_commit = off")
                    .await
                    .map_err(describe)?;
                let ids: Vec<&str> = items.iter().map(|(id, _)| id.as_str()).collect();
                let fences: Vec<i64> = items.iter().map(|(_, f)| *f).collect();
                let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
                    vec![&ids, &fences, &node];
                if let Some(lease) = &lease {
                    params.push(lease);
                }
                let done = tx.query(sql.as_str(), &params).await.map_err(describe)?;
                tx.commit().await.map_err(describe)?;
                let done: std::collections::HashSet<String> =
                    done.iter().map(|r| r.get(0)).collect();
                Ok(items.iter().map(|(id, _)| done.contains(id)).collect())
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::renew_below;

    #[test]
    fn long_leases_are_renewed_at_their_half_short_ones_every_round() {
        // 2m with rounds every 10s: renewed with 60s left, four rounds to spare.
        assert_eq!(renew_below(120), 60);
        assert_eq!(renew_below(40), 20);
        // Too short for that: every round renews it, as it must.
        assert_eq!(renew_below(39), 39);
        assert_eq!(renew_below(5), 5);
    }
}
