//! systemd integration: `sd_notify` messages and the watchdog task.
//!
//! Outside systemd (`NOTIFY_SOCKET` unset) every message is a no-op. The watchdog pings only while
//! the main loop keeps marking [`Progress`]: a wedged loop stops the pings and systemd restarts us.

use std::sync::Arc;
use std::time::Duration;

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;

use crate::host::progress::Progress;

/// Sends states to the service manager; failures are logged, never fatal.
pub(crate) fn notify(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::debug!(error = %e, "sd_notify failed");
    }
}

/// A `STATUS=` line for `systemctl status`, also logged.
pub(crate) fn status(line: &str) {
    tracing::debug!(status = line, "status");
    notify(&[NotifyState::Status(line)]);
}

/// The watchdog interval systemd asked for (`WATCHDOG_USEC`), if any.
pub(crate) fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled()
}

/// Feeds the systemd watchdog while the main loop makes progress.
pub(crate) struct Watchdog {
    /// How often to consider a ping (half the watchdog interval).
    pub period: Duration,
    /// Longest gap between progress marks that still counts as alive.
    pub max_age: Duration,
    /// The main loop's progress.
    pub progress: Progress,
    /// Sends one ping (`WATCHDOG=1` in production; a counter in tests).
    pub ping: Arc<dyn Fn() + Send + Sync>,
}

impl Watchdog {
    /// The production watchdog for a systemd interval.
    pub(crate) fn systemd(interval: Duration, max_age: Duration, progress: Progress) -> Self {
        Self {
            period: interval / 2,
            max_age,
            progress,
            ping: Arc::new(|| notify(&[NotifyState::Watchdog])),
        }
    }

    /// Pings every `period` while progress is fresh, until `shutdown`.
    pub(crate) async fn run(
        self,
        shutdown: CancellationToken,
    ) -> Result<(), std::convert::Infallible> {
        let mut tick = tokio::time::interval(self.period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut stalled = false;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                _ = tick.tick() => {
                    let age = self.progress.age();
                    if age <= self.max_age {
                        (self.ping)();
                        stalled = false;
                    } else if !stalled {
                        stalled = true;
                        tracing::error!(?age, "main loop made no progress; withholding watchdog pings");
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test(start_paused = true)]
    async fn pings_only_while_progress_is_fresh() {
        let pings = Arc::new(AtomicU32::new(0));
        let counter = pings.clone();
        let progress = Progress::new();
        let shutdown = CancellationToken::new();
        let dog = Watchdog {
            period: Duration::from_secs(5),
            max_age: Duration::from_secs(12),
            progress: progress.clone(),
            ping: Arc::new(move || {
                counter.fetch_add(1, Ordering::SeqCst);
            }),
        };
        let task = tokio::spawn(dog.run(shutdown.clone()));
        // Fresh progress: ticks at 0, 5 and 10 s all ping.
        tokio::time::sleep(Duration::from_secs(11)).await;
        assert_eq!(pings.load(Ordering::SeqCst), 3);
        // No marks: the tick at 15 s sees age 15 s > 12 s, and none after that pings.
        tokio::time::sleep(Duration::from_secs(20)).await;
        assert_eq!(pings.load(Ordering::SeqCst), 3);
        // The loop recovers: pings resume.
        progress.mark();
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(pings.load(Ordering::SeqCst), 4);
        shutdown.cancel();
        task.await.expect("join").expect("run");
    }
}
