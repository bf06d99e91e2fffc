//! The main loop: samples the hardware every interval, publishes the snapshot, marks progress.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use edge_hal::Hal;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::host::progress::Progress;
use crate::host::snapshot::HardwareSnapshot;

/// Errors of the monitor loop.
#[derive(Debug, thiserror::Error)]
pub(crate) enum MonitorError {
    /// The blocking sample panicked.
    #[error("hardware sample task failed: {0}")]
    Sample(#[from] tokio::task::JoinError),
}

/// Samples the hardware on a timer.
pub(crate) struct Monitor {
    pub hal: Hal,
    /// The state directory, whose filesystem is sampled.
    pub state_dir: PathBuf,
    pub interval: Duration,
    pub publish: watch::Sender<Arc<HardwareSnapshot>>,
    /// Marked after each sample.
    pub progress: Progress,
    pub samples: Arc<AtomicU64>,
}

impl Monitor {
    /// Samples until `shutdown`.
    pub(crate) async fn run(self, shutdown: CancellationToken) -> Result<(), MonitorError> {
        // The first sample was taken at start-up; the next is one interval later.
        let start = tokio::time::Instant::now() + self.interval;
        let mut tick = tokio::time::interval_at(start, self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                _ = tick.tick() => {
                    let (hal, dir) = (self.hal.clone(), self.state_dir.clone());
                    let snap = edge_tasks::blocking(move || HardwareSnapshot::collect(&hal, &dir)).await;
                    for error in &snap.errors {
                        tracing::warn!(%error, "hardware sample incomplete");
                    }
                    self.publish.send_replace(Arc::new(snap));
                    self.samples.fetch_add(1, Ordering::Relaxed);
                    self.progress.mark();
                }
            }
        }
    }
}
