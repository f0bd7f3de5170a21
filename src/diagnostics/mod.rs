//! Diagnostics an admin runs against a config or a server: `explain` (the
//! decision path for one client and envelope), the config audit, and the
//! open-relay test battery. They ask the server's own policy code, never a
//! copy of the rules.

pub mod audit;
pub mod doctor;
mod doctor_cluster;
pub mod explain;
pub mod probe;
pub mod relay_test;
pub mod self_test;
