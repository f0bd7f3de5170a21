//! Changing the configuration from the admin page: a candidate file is
//! reviewed exactly as `check-config` and `audit` would (and refused when
//! it adds a risk, locks the admin out, or needs a restart), previewed with
//! `explain` for sample clients, written in place (comments and layout kept:
//! whole-file edits are taken as written, structured edits go through
//! `toml_edit`), with the previous versions kept beside it, then reloaded —
//! and put back when the reload fails. Every change is logged with its diff.

pub mod candidate;
pub mod edit;
pub mod file;
pub mod preview;

pub use candidate::{Review, review};
pub use file::{Change, ConfigFile, version_of};
