//! Why a job produced no receipt: one type from the queue's refusal to the worker's crash, so that
//! every layer (scheduler, network intake, `run-job`) matches the same variants and the network is
//! told `refused` for every refusal, the agent's own or the worker's (it alone parses the shader).

use std::time::Duration;

use edge_jobs::worker::ExecError;

/// Why a job produced no receipt.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobError {
    /// There is no GPU, or the worker could not open it.
    #[error("no GPU: {reason}")]
    NoGpu {
        /// The adapter discovery's or the worker's own words.
        reason: String,
    },
    /// The agent's size and limit checks or the worker's shader validation refused it.
    #[error("job refused: {}", problems.join("; "))]
    Refused {
        /// Every problem, `at: message`.
        problems: Vec<String>,
    },
    /// The queue is full.
    #[error("the job queue is full ({capacity} jobs); try again later")]
    QueueFull {
        /// The queue's bound (`gpu.queue_capacity`).
        capacity: usize,
    },
    /// Its deadline passed before it could start.
    #[error("the job's deadline passed before it could start")]
    DeadlinePassed,
    /// Cancelled before it finished.
    #[error("the job was cancelled")]
    Cancelled,
    /// The agent is shutting down.
    #[error("the agent is shutting down")]
    ShuttingDown,
    /// The GPU failed the job (the worker said how).
    #[error(transparent)]
    Exec(#[from] ExecError),
    /// The worker did not answer in time and was killed.
    #[error("the GPU worker did not answer within {limit:?} and was killed")]
    Killed {
        /// The job's own limit plus the kill slack.
        limit: Duration,
    },
    /// The job's batch failed as a whole (the worker could not tell which job caused it); it
    /// runs again alone.
    #[error("its batch failed as a whole: {reason}")]
    Unsettled {
        /// The worker's account of the batch's failure.
        reason: String,
    },
    /// The worker died or spoke nonsense.
    #[error("the GPU worker failed: {message}")]
    Crashed {
        /// What the agent saw: an exit status, an I/O error or a malformed line.
        message: String,
    },
}
