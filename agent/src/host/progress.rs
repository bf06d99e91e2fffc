//! Liveness: the main loop marks progress; the watchdog reads how long ago that was.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

/// Shared record of the main loop's last step. Clones share it.
#[derive(Debug, Clone)]
pub(crate) struct Progress(Arc<Mutex<Instant>>);

impl Progress {
    /// A record that counts start-up as progress.
    pub(crate) fn new() -> Self {
        Self(Arc::new(Mutex::new(Instant::now())))
    }

    /// The loop just did a unit of work.
    pub(crate) fn mark(&self) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    }

    /// Time since the last mark.
    pub(crate) fn age(&self) -> Duration {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).elapsed()
    }
}

impl Default for Progress {
    fn default() -> Self {
        Self::new()
    }
}
