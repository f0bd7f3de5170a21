//! Portcullis: an SMTP relay that cannot become an open relay by accident.

pub mod admin;
pub mod archive;
pub mod bounce;
pub mod checks;
pub mod cli;
pub mod config;
pub mod credentials;
pub mod delivery;
pub mod diagnostics;
pub mod dns;
pub mod events;
pub mod fsio;
pub mod guard;
pub mod log_writer;
pub mod metrics;
pub mod oauth;
pub mod policy;
pub mod queue;
pub mod server;
pub mod session;
pub mod smtp;
pub mod spool;
pub mod tls;
pub mod transcript;
pub mod users;
pub mod verified_cache;
