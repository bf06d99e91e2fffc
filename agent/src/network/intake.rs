//! Job intake: long-polls the hub for work once registered, fetches the input blobs a job names
//! that the box does not hold, runs the job through the scheduler (so the owner's policy holds),
//! and queues its outcome (the signed receipt, or why not) as a `job_result` report, which
//! store-and-forward delivers like any other. Blobs fetched for a job are removed once it has run.

use edge_hal::Clock;
use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use edge_identity::Identity;
use edge_jobs::job::{Blob, Job};
use edge_protocol::Body;
use edge_protocol::report::{JobOutcome, JobReport};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::gpu::scheduler::{JobError, SchedulerHandle};
use crate::network::hub_client::HubClient;
use crate::network::outbox::Outbox;

/// How long the hub holds a poll open.
const POLL_WAIT: Duration = Duration::from_secs(25);
/// Wait after a failed poll (delivery's backoff handles the hub being away).
const RETRY: Duration = Duration::from_secs(5);

/// Takes jobs from the hub until shutdown.
pub(crate) struct IntakeTask {
    pub client: HubClient,
    pub identity: Arc<Identity>,
    pub scheduler: SchedulerHandle,
    pub outbox: Outbox,
    /// True while the hub has the device registered.
    pub registered: watch::Receiver<bool>,
    /// Stamps polls and outcomes.
    pub clock: Arc<dyn Clock>,
    /// The blob store the scheduler and the GPU worker read (`<state_dir>/blobs`).
    pub blobs: PathBuf,
}

impl IntakeTask {
    /// Runs until `shutdown`; an outcome that cannot be stored is counted by the queue.
    pub(crate) async fn run(mut self, shutdown: CancellationToken) -> Result<(), Infallible> {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                _ = self.registered.wait_for(|r| *r) => {}
            }
            let job = tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                polled = self.client.next_job(&self.identity, POLL_WAIT, self.clock.unix_ms()) => polled,
            };
            let job = match job {
                Ok(Some(job)) => job,
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "polling for jobs failed");
                    tokio::select! {
                        () = shutdown.cancelled() => return Ok(()),
                        () = tokio::time::sleep(RETRY) => continue,
                    }
                }
            };
            let job_id = job.id.clone();
            tracing::info!(job = %job_id, "job from the network");
            let fetched = tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                fetched = self.fetch_blobs(&job) => fetched,
            };
            let outcome = match &fetched {
                Err(error) => JobOutcome::Refused {
                    error: error.clone(),
                },
                Ok(_) => tokio::select! {
                    () = shutdown.cancelled() => return Ok(()),
                    result = self.scheduler.run_for_receipt(job) => outcome(result.map(|r| r.receipt)),
                },
            };
            for path in fetched.unwrap_or_default() {
                if let Err(e) = tokio::fs::remove_file(&path).await {
                    tracing::warn!(path = %path.display(), error = %e, "a fetched blob could not be removed");
                }
            }
            let report = Body::JobResult(Box::new(JobReport { job_id, outcome }));
            self.outbox.push(report).await;
        }
    }

    /// Fetches the input blobs of `job` that the store does not hold, each at most its binding's
    /// size; returns their paths (removed once the job has run), or why the job cannot run (the
    /// blobs fetched so far are removed).
    async fn fetch_blobs(&self, job: &Job) -> Result<Vec<PathBuf>, String> {
        let mut fetched: Vec<PathBuf> = Vec::new();
        let wanted = job
            .bindings
            .iter()
            .any(|b| matches!(b.input, Some(Blob::Sha256(_))));
        if wanted {
            self.open_store()
                .await
                .map_err(|e| format!("the blob store {}: {e}", self.blobs.display()))?;
        }
        for binding in &job.bindings {
            let Some(Blob::Sha256(sha256)) = &binding.input else {
                continue;
            };
            let path = self.blobs.join(sha256.to_string());
            if fetched.contains(&path) || tokio::fs::try_exists(&path).await.unwrap_or(false) {
                continue;
            }
            let got = self
                .client
                .fetch_blob(
                    &self.identity,
                    *sha256,
                    binding.size,
                    self.clock.unix_ms(),
                    &self.blobs,
                )
                .await;
            if let Err(e) = got {
                for path in &fetched {
                    let _ = tokio::fs::remove_file(path).await;
                }
                return Err(format!(
                    "binding {}: fetching its input blob: {e}",
                    binding.binding
                ));
            }
            tracing::info!(job = %job.id, blob = %sha256, "input blob fetched from the hub");
            fetched.push(path);
        }
        Ok(fetched)
    }

    /// The blob store, made if missing, open to the GPU worker's user (another user: it reads
    /// the blobs through a read-only bind of this one directory, never the state directory).
    async fn open_store(&self) -> std::io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        tokio::fs::create_dir_all(&self.blobs).await?;
        tokio::fs::set_permissions(&self.blobs, std::fs::Permissions::from_mode(0o755)).await
    }
}

/// A scheduler result as the network sees it.
fn outcome(result: Result<edge_jobs::receipt::Receipt, JobError>) -> JobOutcome {
    match result {
        Ok(receipt) => JobOutcome::Done {
            receipt: Box::new(receipt),
        },
        Err(
            e @ (JobError::NoGpu { .. }
            | JobError::Refused { .. }
            | JobError::QueueFull { .. }
            | JobError::DeadlinePassed),
        ) => JobOutcome::Refused {
            error: e.to_string(),
        },
        Err(e) => JobOutcome::Failed {
            error: e.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_the_worker_refuses_is_reported_refused_not_failed() {
        // The worker parses the shader; the agent does not. Before, its refusal reached the
        // network as `failed`, against docs/protocol.md.
        let refused = JobError::Refused {
            problems: vec!["kernel.wgsl:3:1: expected `;`".into()],
        };
        assert!(
            matches!(outcome(Err(refused)), JobOutcome::Refused { ref error } if error.contains("kernel.wgsl:3:1")),
        );
        let no_gpu = JobError::NoGpu {
            reason: "no adapter".into(),
        };
        assert!(matches!(outcome(Err(no_gpu)), JobOutcome::Refused { .. }));
        let crashed = JobError::Crashed {
            message: "exited".into(),
        };
        assert!(matches!(outcome(Err(crashed)), JobOutcome::Failed { .. }));
    }
}
