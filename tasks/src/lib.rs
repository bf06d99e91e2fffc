//! One shape for every task of a daemon (the agent's and the hub's).
//!
//! Every long-lived task, sub-task and per-connection task is spawned on one [`Tasks`] set, under a
//! name. The set's owner waits on [`Failures`] for the first *essential* task that fails (its error,
//! or its panic, with its name) and, at the end, [`Tasks::drain`]s: it cancels the shared shutdown
//! token and waits, within a grace period, for every task the set ever spawned, so nothing is left
//! running unseen. A task whose failure must not stop the daemon (one owner link, one
//! connection, a best-effort measurement) is spawned [`Tasks::spawn_logged`]: its failure is
//! logged, and the drain still waits for it.

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A task that ended with an error or a panic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failed {
    /// The name it was spawned under.
    pub task: &'static str,
    /// Its error's text, or `panicked: ...`.
    pub message: String,
}

/// The receiving end of the essential tasks' failures.
#[derive(Debug)]
pub struct Failures(mpsc::UnboundedReceiver<Failed>);

impl Failures {
    /// The next essential task to fail. Pending forever while none has: the set holds a sender,
    /// so this never ends merely because the tasks did.
    pub async fn next(&mut self) -> Failed {
        match self.0.recv().await {
            Some(failed) => failed,
            None => std::future::pending().await,
        }
    }
}

/// The tracked set. Cheap to clone: clones spawn into the same set and share its shutdown token.
#[derive(Debug, Clone)]
pub struct Tasks {
    tracker: TaskTracker,
    shutdown: CancellationToken,
    failures: mpsc::UnboundedSender<Failed>,
}

/// The drain's grace period ran out with tasks still running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StillRunning {
    /// Tasks still running when the grace period ended, blocking ones included.
    pub tasks: usize,
}

impl Tasks {
    /// An empty set with a fresh shutdown token.
    pub fn new() -> (Self, Failures) {
        let (failures, failed) = mpsc::unbounded_channel();
        let tasks = Self {
            tracker: TaskTracker::new(),
            shutdown: CancellationToken::new(),
            failures,
        };
        (tasks, Failures(failed))
    }

    /// A set inside this one, to stop and restart a group of tasks on its own: its token is a
    /// child of this set's (this set's shutdown stops its tasks too), its failures are this set's,
    /// and it has its own tracker, so [`Tasks::drain`] on it waits for its tasks only. This set's
    /// drain does not wait for them: drain the child from a task of this set.
    pub fn child(&self) -> Self {
        Self {
            tracker: TaskTracker::new(),
            shutdown: self.shutdown.child_token(),
            failures: self.failures.clone(),
        }
    }

    /// The token every task of the set stops on.
    pub fn shutdown(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Spawns an essential task: its error or panic is logged and sent to [`Failures`].
    pub fn spawn<E: Display + Send + 'static>(
        &self,
        name: &'static str,
        future: impl Future<Output = Result<(), E>> + Send + 'static,
    ) {
        self.watch(name, future, Some(self.failures.clone()));
    }

    /// Spawns a task whose failure is logged but stops nothing.
    pub fn spawn_logged<E: Display + Send + 'static>(
        &self,
        name: &'static str,
        future: impl Future<Output = Result<(), E>> + Send + 'static,
    ) {
        self.watch(name, future, None);
    }

    /// Runs blocking work on tokio's blocking pool as a task of the set (the drain waits for it;
    /// it should look at [`Tasks::shutdown`] to end in time). A panic is logged.
    pub fn spawn_blocking(&self, name: &'static str, f: impl FnOnce() + Send + 'static) {
        let task = tokio::task::spawn_blocking(f);
        self.tracker.spawn(async move {
            if let Err(join) = task.await {
                tracing::error!(task = name, error = %join, "task failed");
            }
        });
    }

    fn watch<E: Display + Send + 'static>(
        &self,
        name: &'static str,
        future: impl Future<Output = Result<(), E>> + Send + 'static,
        failures: Option<mpsc::UnboundedSender<Failed>>,
    ) {
        // The future runs as its own tokio task so that its panic arrives here as a join error
        // and is reported like an error instead of taking the watcher down with it.
        let task = tokio::spawn(future);
        self.tracker.spawn(async move {
            let message = match task.await {
                Ok(Ok(())) => return,
                Ok(Err(e)) => e.to_string(),
                Err(join) if join.is_panic() => format!("panicked: {join}"),
                Err(join) => join.to_string(),
            };
            match failures {
                Some(failures) => {
                    tracing::error!(task = name, error = %message, "task failed");
                    let _ = failures.send(Failed {
                        task: name,
                        message,
                    });
                }
                None => tracing::warn!(task = name, error = %message, "task failed"),
            }
        });
    }

    /// Tasks spawned and not yet ended.
    pub fn running(&self) -> usize {
        self.tracker.len()
    }

    /// Cancels the shutdown token and waits up to `grace` for every task of the set.
    pub async fn drain(&self, grace: Duration) -> Result<(), StillRunning> {
        self.shutdown.cancel();
        self.tracker.close();
        match tokio::time::timeout(grace, self.tracker.wait()).await {
            Ok(()) => Ok(()),
            Err(_) => Err(StillRunning {
                tasks: self.tracker.len(),
            }),
        }
    }
}

/// Runs blocking work (file I/O, SQLite, the hardware's files, child processes) on tokio's
/// blocking pool. A panic there is re-raised here, in the task that asked, so it is reported like
/// that task's own panic rather than lost in a join error.
pub async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}

/// How long a listener pauses after a failed `accept`.
pub const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// After a failed `accept` on `listener`: logs it and pauses for [`ACCEPT_PAUSE`]. Out of
/// descriptors (`EMFILE`), the connection stays in the backlog and every `accept` fails at once:
/// without the pause a listener loop spins a core for as long as that lasts.
pub async fn accept_failed(listener: &str, error: &std::io::Error) {
    tracing::warn!(listener, %error, "accept failed; pausing");
    tokio::time::sleep(ACCEPT_PAUSE).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_essential_failure_is_heard_with_its_name() {
        let (tasks, mut failures) = Tasks::new();
        tasks.spawn("fine", async { Ok::<_, String>(()) });
        tasks.spawn("broken", async { Err::<(), _>("disk full") });
        let failed = failures.next().await;
        assert_eq!(
            failed,
            Failed {
                task: "broken",
                message: "disk full".into()
            }
        );
    }

    #[tokio::test]
    async fn a_child_set_drains_on_its_own_and_stops_with_its_parent() {
        let (tasks, mut failures) = Tasks::new();
        let parked = |stop: CancellationToken| async move {
            stop.cancelled().await;
            Ok::<_, String>(())
        };
        let child = tasks.child();
        child.spawn("first", parked(child.shutdown()));
        child.drain(Duration::from_secs(5)).await.expect("drains");
        assert!(!tasks.shutdown().is_cancelled(), "the parent runs on");
        let second = tasks.child();
        second.spawn("second", parked(second.shutdown()));
        second.spawn("broken", async { Err::<(), _>("hub gone") });
        assert_eq!(
            failures.next().await.task,
            "broken",
            "failures reach the parent"
        );
        tasks
            .drain(Duration::from_secs(5))
            .await
            .expect("the parent drains");
        assert!(
            second.shutdown().is_cancelled(),
            "and the child's token with it"
        );
        second
            .drain(Duration::from_secs(5))
            .await
            .expect("the child ends");
    }

    #[tokio::test]
    async fn a_panic_is_a_failure_not_a_silent_end() {
        let (tasks, mut failures) = Tasks::new();
        tasks.spawn("panics", async {
            if true {
                panic!("boom");
            }
            Ok::<_, String>(())
        });
        let failed = failures.next().await;
        assert_eq!(failed.task, "panics");
        assert!(failed.message.contains("panicked"), "{}", failed.message);
    }

    #[tokio::test(start_paused = true)]
    async fn a_logged_failure_stops_nothing() {
        let (tasks, mut failures) = Tasks::new();
        tasks.spawn_logged("one link", async { Err::<(), _>("peer went away") });
        let heard = tokio::time::timeout(Duration::from_secs(60), failures.next()).await;
        assert!(
            heard.is_err(),
            "a logged task's failure reached the essential channel"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_drain_waits_for_every_task_and_names_the_stragglers() {
        let (tasks, _failures) = Tasks::new();
        let stop = tasks.shutdown();
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let seen = done.clone();
        tasks.spawn_logged("slow to stop", async move {
            stop.cancelled().await;
            tokio::time::sleep(Duration::from_secs(2)).await;
            seen.store(true, std::sync::atomic::Ordering::SeqCst);
            Ok::<_, String>(())
        });
        tasks.spawn_logged("ignores shutdown", async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok::<_, String>(())
        });
        let drained = tasks.drain(Duration::from_secs(10)).await;
        assert!(
            done.load(std::sync::atomic::Ordering::SeqCst),
            "the drain did not wait"
        );
        assert_eq!(drained, Err(StillRunning { tasks: 1 }));
    }
}
