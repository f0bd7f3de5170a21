//! Several nodes sharing one queue: the queue store on PostgreSQL with
//! fenced leases (`pg_store.rs`), its schema (`schema.rs`), the nodes'
//! register (`nodes.rs`: unique node numbers, signs of life), and the
//! counters, bans and guard decisions the nodes share (`shared/`).
//!
//! A node holds a message under a lease: an owner, an expiry and a fence
//! counter that grows each time the message changes hands. Every write a
//! node makes names the fence it holds, so a node whose lease was taken
//! over (it stalled, or lost the network) changes nothing and drops its
//! work on that message: at least once, never zero times, and never two
//! owners writing.

mod batch;
mod db;
mod nodes;
mod pg_store;
pub mod queue_admin;
mod schema;
pub mod shared;
mod status;

pub use pg_store::{JoinError, PgStore};
pub use status::{ClusterStatus, NodeSeen, Standby, status};
