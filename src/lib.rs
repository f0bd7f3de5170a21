//! Portcullis: an SMTP relay that cannot become an open relay by accident.

pub mod config;
pub mod policy;
pub mod smtp;
pub mod spool;
pub mod tls;
pub mod users;
