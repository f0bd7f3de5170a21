//! The SMTP protocol, receive side: reply values, command parsing, address
//! parsing, the DATA reader and the connection stream. Knows nothing of policy or disk.

pub mod address;
pub mod command;
pub mod data;
pub mod hops;
pub mod reply;
pub mod sasl;

pub use reply::Reply;
pub mod stream;
