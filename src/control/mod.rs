//! The control plane: one typed, versioned command set that the CLI and
//! local tools send to the running server over `data_dir/control.sock`.
//! Each command goes to the one owner of the state it touches: the queue
//! manager for the queue, the guard for trust, the checks for bans, the
//! daemon for reload. Nobody else writes those files while a server runs;
//! without one, the CLI takes the data directory's lock and acts itself.

mod answer;
mod commands;
mod socket;

pub use answer::ServerSide;
pub use commands::{Answer, Ban, BanCommand, Command, GuardCommand, Status};
pub use socket::{ControlError, PROTOCOL_VERSION, ask_queue, bind, request, serve, socket_path};
