//! The application's shared state and its replacement on reload: the
//! context every session, the admin page and the periodic tasks read
//! (config, policy, TLS, users, spool, checks, guard, events), the
//! connection slots they share, and the reload that swaps the context
//! whole. Below `server/` (which accepts and admits) and `session/` (which
//! speaks SMTP); `daemon/` starts, runs and stops it all.

mod context;
mod limits;
mod listeners;
pub mod reload;

pub use context::Context;
pub use limits::{ConnectionLimits, LimitSettings, Refusal, Slot};
pub use listeners::BoundListeners;
pub use reload::{CurrentContext, ReloadHandle, ReloadRequest};
