//! Job intake: long-polls the hub for work once registered, runs each job through the scheduler
//! (so the owner's policy holds), and queues its outcome (the signed receipt, or why not) as a
//! `job_result` report, which store-and-forward delivers like any other.

use edge_hal::Clock;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use edge_identity::Identity;
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
            let outcome = tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                result = self.scheduler.run_for_receipt(job) => outcome(result.map(|r| r.receipt)),
            };
            let report = Body::JobResult(Box::new(JobReport { job_id, outcome }));
            self.outbox.push(report).await;
        }
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
