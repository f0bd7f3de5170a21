//! The tables a cluster keeps in PostgreSQL, created at start by the first
//! node (under an advisory lock, so that nodes starting together do not
//! race) and left as they are by the others.

/// `pg_advisory_xact_lock` key for schema changes ("PORTCULL").
const SCHEMA_LOCK: i64 = 0x504f_5254_4355_4c4c;

const TABLES: &str = "
CREATE TABLE IF NOT EXISTS portcullis_message (
    id          text PRIMARY KEY,
    envelope    text NOT NULL,
    state       text NOT NULL,
    body        bytea NOT NULL,
    held        boolean NOT NULL,
    -- unix seconds; NULL: nothing is due (all recipients done)
    next_due    bigint,
    -- the node that holds the message, until lease_until (unix seconds, the database's clock)
    owner       integer,
    lease_until bigint NOT NULL DEFAULT 0,
    -- grows each time the message changes hands; every write names it
    fence       bigint NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS portcullis_message_due ON portcullis_message (next_due) WHERE NOT held;
CREATE INDEX IF NOT EXISTS portcullis_message_owner ON portcullis_message (owner);
-- queue commands given on one node for a message another holds
CREATE TABLE IF NOT EXISTS portcullis_command (
    seq         bigserial PRIMARY KEY,
    message_id  text NOT NULL REFERENCES portcullis_message (id) ON DELETE CASCADE,
    command     text NOT NULL
);
CREATE INDEX IF NOT EXISTS portcullis_command_message ON portcullis_command (message_id);
CREATE TABLE IF NOT EXISTS portcullis_node (
    node_id     integer PRIMARY KEY,
    hostname    text NOT NULL,
    data_dir    text NOT NULL,
    -- unix seconds, the database's clock; renewed with the node's leases
    last_seen   bigint NOT NULL
);
-- counters, bans and decisions the nodes share (see cluster/shared): the
-- value of (kind, key) on one node, or on node 0 for what any node may change
CREATE TABLE IF NOT EXISTS portcullis_shared (
    kind        text NOT NULL,
    key         text NOT NULL,
    node        smallint NOT NULL,
    value       text NOT NULL,
    -- unix ms, the database's clock
    expires_ms  bigint NOT NULL,
    writer      smallint NOT NULL,
    changed_ms  bigint NOT NULL,
    PRIMARY KEY (kind, key, node)
);
CREATE INDEX IF NOT EXISTS portcullis_shared_changed ON portcullis_shared (changed_ms);
";

/// Creates the tables when missing.
pub async fn ensure(client: &mut tokio_postgres::Client) -> Result<(), tokio_postgres::Error> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])
        .await?;
    tx.batch_execute(TABLES).await?;
    tx.commit().await
}
