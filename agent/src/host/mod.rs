//! The box itself: hardware snapshots and the loop that takes them, liveness and systemd, the state
//! directory, its lock and its reserve of space, logging.

pub(crate) mod lock;
pub mod logging;
pub(crate) mod monitor;
pub(crate) mod progress;
pub(crate) mod reserve;
pub(crate) mod snapshot;
pub(crate) mod state_dir;
pub(crate) mod systemd;
