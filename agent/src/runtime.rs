//! How the agent runs work: blocking work off the async runtime, one way. A leaf: it imports
//! nothing of the agent's, so every subsystem may use it.

/// Runs blocking work (file I/O, SQLite, the hardware's files, child processes) on tokio's
/// blocking pool; a panic there is re-raised here, in the task that asked, so it is reported like
/// that task's own panic rather than lost in a join error.
pub(crate) async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}
