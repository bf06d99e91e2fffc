//! The GPU job scheduler: a bounded priority queue in front of the GPU worker, with the owner's
//! policy applied between jobs.
//!
//! - Submissions are validated against the adapter's limits and the memory budget before they are
//!   queued, on a blocking thread (the check reads blobs and decodes inline inputs: a large job
//!   must not hold a runtime thread); a full queue refuses at once rather than growing.
//! - Higher priority first, then arrival order. A job whose deadline has passed is not started.
//! - One job runs at a time. At full duty one more (small) job waits in the worker's pipe, so that
//!   it starts the moment the running one ends; a job that arrives later with a higher priority runs
//!   after it. A job that overruns its limit kills the worker; the next job starts a fresh one, and
//!   a job that was waiting in the pipe is queued again. Cancelling the running job kills the
//!   worker too; cancelling the waiting one answers at once (and kills the worker if it started).
//! - Policy: after a job that ran `d`, the GPU rests `d·(1 - duty)/duty` (maximum duty cycle); jobs
//!   start only within the allowed hours (UTC); above `pause_above_celsius` on any thermal zone no job
//!   starts until every zone is below `resume_below_celsius` (hysteresis).
//! - After `idle_release` without work the worker is released, so an idle agent holds no driver.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use edge_hal::{Clock, Thermal};
use edge_identity::Identity;
use edge_jobs::adapter::GpuLimits;
use edge_jobs::check::{Inputs, Problem, ShaderCheck, check_job, gpu_bytes, output_bytes};
use edge_jobs::digest::Sha256;
use edge_jobs::job::{BlobStore, Job};
use edge_jobs::receipt::{self, Receipt};
use edge_jobs::worker::MAX_BATCH;
use edge_jobs::worker::Submitted;
use edge_protocol::exposition::Exposition;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

mod gate;
mod queue;

pub use gate::wait_for_hours;

use self::gate::{Gate, Held};
use self::queue::{Queue, Queued, is_late};
pub use crate::gpu::job_error::JobError;
use crate::gpu::worker::{self, Finished, GpuWorker, Prepared, Worker};

#[cfg(test)]
mod tests;

/// The largest job sent to the worker while another runs, and the largest that shares a batch.
const AHEAD_MAX_BYTES: usize = 16 << 10;
/// The most a batch of small jobs takes on the wire: well inside a pipe's 64 KiB buffer, which
/// holds at most one batch waiting.
const BATCH_MAX_BYTES: usize = 32 << 10;

/// The owner's GPU policy and the queue's bounds.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// Jobs that may wait.
    pub queue_capacity: usize,
    /// GPU memory per job, bytes.
    pub memory_budget: u64,
    /// Largest fraction of time the GPU may be busy, in (0, 1].
    pub max_duty: f64,
    /// Jobs start only in `[start, end)` hours UTC (wrapping past midnight); `None`: always.
    pub allowed_hours_utc: Option<(u8, u8)>,
    /// No job starts while any zone is at or above this.
    pub pause_above_celsius: f64,
    /// ... until every zone is below this.
    pub resume_below_celsius: f64,
    /// Release the worker after this long without work.
    pub idle_release: Duration,
}

impl Default for Policy {
    /// The policy of the embedded defaults (an empty config file; a test in `app` holds the two
    /// together).
    fn default() -> Self {
        Self {
            queue_capacity: 64,
            memory_budget: 2048 << 20,
            max_duty: 1.0,
            allowed_hours_utc: None,
            pause_above_celsius: 85.0,
            resume_below_celsius: 75.0,
            idle_release: Duration::from_secs(60),
        }
    }
}

/// The owner's part of the policy, as `/status` shows it (the names of the config keys).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct PolicyView {
    /// GPU memory per job, MiB.
    pub memory_budget_mib: u64,
    /// Largest share of time the GPU may be busy, percent.
    pub max_duty_percent: f64,
    /// Jobs start only in these hours UTC, `[start, end)`; `null`: always.
    pub allowed_hours_utc: Option<[u8; 2]>,
    /// Pause at or above this.
    pub pause_above_celsius: f64,
    /// Resume below this.
    pub resume_below_celsius: f64,
}

impl From<&Policy> for PolicyView {
    fn from(p: &Policy) -> Self {
        Self {
            memory_budget_mib: p.memory_budget >> 20,
            max_duty_percent: (p.max_duty * 1000.0).round() / 10.0,
            allowed_hours_utc: p.allowed_hours_utc.map(|(a, b)| [a, b]),
            pause_above_celsius: p.pause_above_celsius,
            resume_below_celsius: p.resume_below_celsius,
        }
    }
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct GpuMetrics {
    /// Jobs waiting.
    pub queue_depth: AtomicU64,
    /// Jobs sent to the worker: the running one and any waiting in its pipe.
    pub in_flight: AtomicU64,
    /// Jobs that produced a receipt.
    pub done: AtomicU64,
    /// Jobs that failed on the GPU or in the worker.
    pub failed: AtomicU64,
    /// Jobs refused at submission (invalid, queue full, no GPU) or not started (deadline).
    pub refused: AtomicU64,
    /// Jobs cancelled.
    pub cancelled: AtomicU64,
    /// Microseconds the GPU spent on jobs (the duty cycle is its rate).
    pub busy_us: AtomicU64,
    /// 1 while paused for heat, 2 while outside the allowed hours, 0 otherwise.
    pub paused: AtomicU64,
    /// 1 while a worker process holds the device.
    pub worker_up: AtomicU64,
}

impl GpuMetrics {
    /// The `edge_gpu_*` families of the scheduler.
    pub(crate) fn write_metrics(&self, e: &mut Exposition) {
        let g = self;
        let load =
            |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed) as f64;
        e.family("edge_gpu_queue_depth", "gauge", "GPU jobs waiting.")
            .sample("edge_gpu_queue_depth", &[], load(&g.queue_depth));
        e.family(
            "edge_gpu_jobs_in_flight",
            "gauge",
            "GPU jobs sent to the worker (running or next).",
        )
        .sample("edge_gpu_jobs_in_flight", &[], load(&g.in_flight));
        e.family("edge_gpu_jobs_total", "counter", "GPU jobs by outcome.");
        for (outcome, counter) in [
            ("done", &g.done),
            ("failed", &g.failed),
            ("refused", &g.refused),
            ("cancelled", &g.cancelled),
        ] {
            e.sample(
                "edge_gpu_jobs_total",
                &[("outcome", outcome)],
                load(counter),
            );
        }
        e.family(
            "edge_gpu_busy_seconds_total",
            "counter",
            "Time the GPU spent on jobs; its rate is the duty cycle.",
        )
        .sample("edge_gpu_busy_seconds_total", &[], load(&g.busy_us) / 1e6);
        e.family(
            "edge_gpu_paused",
            "gauge",
            "1 paused for heat, 2 outside the allowed hours, 3 hours set but the clock not yet, 0 running.",
        )
        .sample("edge_gpu_paused", &[], load(&g.paused));
        e.family(
            "edge_gpu_worker_up",
            "gauge",
            "1 while a GPU worker process holds the device.",
        )
        .sample("edge_gpu_worker_up", &[], load(&g.worker_up));
    }
}

/// A finished job: its signed receipt and its outputs.
#[derive(Debug, Clone)]
pub struct JobResult {
    /// The receipt.
    pub receipt: Receipt,
    /// Each `storage_read_write` binding's final contents, in binding order.
    pub outputs: Vec<Vec<u8>>,
}

type Reply = oneshot::Sender<Result<JobResult, JobError>>;

#[derive(Debug)]
enum Msg {
    Submit {
        job: Job,
        outputs: bool,
        reply: Reply,
    },
    Cancel {
        id: String,
        reply: oneshot::Sender<bool>,
    },
}

/// Submits jobs to the scheduler. Cheap to clone.
#[derive(Clone, Debug)]
pub struct SchedulerHandle {
    tx: mpsc::Sender<Msg>,
    policy: Arc<watch::Sender<Policy>>,
    admission: Arc<Admission>,
}

/// What a submission is checked against before it reaches the scheduler's task.
#[derive(Debug)]
struct Admission {
    gpu: Result<GpuLimits, String>,
    blobs: BlobStore,
    metrics: Arc<GpuMetrics>,
    /// The threads checks ran on (tests: never the runtime's).
    #[cfg(test)]
    checked_on: std::sync::Mutex<Vec<std::thread::ThreadId>>,
}

impl Admission {
    /// The job's own checks: its fields, sizes, budget and inputs. The shader is the worker's to
    /// check (naga runs there, not in the process holding the key); a job it refuses comes back
    /// as refused all the same.
    fn check(&self, job: &Job, budget: u64) -> Result<(), JobError> {
        #[cfg(test)]
        if let Ok(mut on) = self.checked_on.lock() {
            on.push(std::thread::current().id());
        }
        let limits = self.gpu.as_ref().map_err(|reason| JobError::NoGpu {
            reason: reason.clone(),
        })?;
        check_job(
            job,
            limits,
            budget,
            &self.blobs,
            &ShaderCheck::UNREAD,
            Inputs::Check,
        )
        .map(drop)
        .map_err(|refused| JobError::Refused {
            problems: refused.problems.iter().map(Problem::to_string).collect(),
        })
    }
}

impl SchedulerHandle {
    /// The policy in force.
    pub fn policy(&self) -> Policy {
        self.policy.borrow().clone()
    }

    /// Replaces the policy (the owner changed a setting): it holds from the next job on; the
    /// running job finishes under the old one.
    pub fn set_policy(&self, policy: Policy) {
        self.policy.send_replace(policy);
    }

    /// Submits `job` and waits for its receipt and outputs.
    pub async fn run(&self, job: Job) -> Result<JobResult, JobError> {
        self.submit(job, true).await
    }

    /// Submits `job` and waits for its receipt alone: the outputs stay in the worker (they are
    /// hashed into the receipt), so large ones never pass through the daemon's memory.
    pub async fn run_for_receipt(&self, job: Job) -> Result<JobResult, JobError> {
        self.submit(job, false).await
    }

    async fn submit(&self, job: Job, outputs: bool) -> Result<JobResult, JobError> {
        // Off the runtime's threads: the check reads blobs (up to the GPU budget) and decodes
        // inline inputs.
        let (admission, budget) = (self.admission.clone(), self.policy.borrow().memory_budget);
        let job = edge_tasks::blocking(move || match admission.check(&job, budget) {
            Ok(()) => Ok(job),
            Err(e) => {
                admission.metrics.refused.fetch_add(1, Ordering::Relaxed);
                Err(e)
            }
        })
        .await?;
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Msg::Submit {
                job,
                outputs,
                reply,
            })
            .await
            .map_err(|_| JobError::ShuttingDown)?;
        rx.await.unwrap_or(Err(JobError::ShuttingDown))
    }

    /// Cancels a queued or running job by id; false if there is none.
    pub async fn cancel(&self, id: &str) -> bool {
        let (reply, rx) = oneshot::channel();
        let msg = Msg::Cancel {
            id: id.to_owned(),
            reply,
        };
        self.tx.send(msg).await.is_ok() && rx.await.unwrap_or(false)
    }
}

/// What the scheduler needs from the rest of the agent.
pub struct SchedulerParts {
    /// The adapter's limits, or why there is no GPU.
    pub gpu: Result<GpuLimits, String>,
    /// The owner's policy.
    pub policy: Policy,
    /// Signs receipts.
    pub identity: Arc<Identity>,
    /// Temperatures for the heat pause.
    pub thermal: Arc<dyn Thermal>,
    /// Wall clock for deadlines and allowed hours.
    pub clock: Arc<dyn Clock>,
    /// Content-addressed inputs.
    pub blobs: BlobStore,
    /// Counters.
    pub metrics: Arc<GpuMetrics>,
}

/// The scheduler task, in front of a [`Worker`] ([`GpuWorker`] on the device).
pub struct Scheduler<W: Worker = GpuWorker> {
    inbox: mpsc::Receiver<Msg>,
    /// The owner's policy as it changes ([`SchedulerHandle::set_policy`]).
    policy: watch::Receiver<Policy>,
    parts: SchedulerParts,
    worker: W,
    queue: Queue,
    gate: Gate,
    /// Jobs sent to the worker, oldest (running) first.
    in_flight: VecDeque<InFlight>,
    /// Batches sent so far.
    batches: u64,
    /// When the oldest job in flight became the oldest: its time limit counts from here.
    head_since: Instant,
    last_work: Instant,
}

/// A job sent to the worker.
struct InFlight {
    job: Job,
    outputs: bool,
    seq: u64,
    kernel_sha256: Sha256,
    /// How long its answer may take once it is the oldest in flight.
    limit: Duration,
    /// The batch it was sent in (numbered in sending order).
    batch: u64,
    /// The most bytes of outputs its answer may carry.
    max_outputs: u64,
    /// `None` once cancelled: the submitter has had its answer.
    reply: Option<Reply>,
}

impl InFlight {
    /// Back to the queue, unless cancelled.
    fn requeue(self, solo: bool) -> Option<Queued> {
        Some(Queued {
            job: self.job,
            outputs: self.outputs,
            seq: self.seq,
            reply: self.reply?,
            solo,
        })
    }
}

/// What woke the scheduler.
enum Event {
    Shutdown,
    Inbox(Option<Msg>),
    Answer(Result<Finished, JobError>),
    Wake,
    Idle,
}

impl<W: Worker> Scheduler<W> {
    /// A scheduler and the handle that feeds it.
    pub fn new(parts: SchedulerParts, worker: W) -> (Self, SchedulerHandle) {
        // Submissions beyond the queue bound are refused by the task; the channel only needs to
        // absorb bursts between two turns of its loop.
        let (tx, inbox) = mpsc::channel(parts.policy.queue_capacity.max(1));
        let (policy, policy_rx) = watch::channel(parts.policy.clone());
        let admission = Arc::new(Admission {
            gpu: parts.gpu.clone(),
            blobs: parts.blobs.clone(),
            metrics: parts.metrics.clone(),
            #[cfg(test)]
            checked_on: std::sync::Mutex::default(),
        });
        let now = Instant::now();
        let scheduler = Self {
            inbox,
            policy: policy_rx,
            parts,
            worker,
            queue: Queue::default(),
            gate: Gate::new(now),
            in_flight: VecDeque::new(),
            batches: 0,
            head_since: now,
            last_work: now,
        };
        (
            scheduler,
            SchedulerHandle {
                tx,
                policy: Arc::new(policy),
                admission,
            },
        )
    }

    /// Schedules until `shutdown`; queued jobs are then answered `ShuttingDown`.
    pub async fn run(
        mut self,
        shutdown: CancellationToken,
    ) -> Result<(), std::convert::Infallible> {
        loop {
            let latest = self.policy.borrow_and_update().clone();
            if latest != self.parts.policy {
                tracing::info!(policy = ?latest, "GPU policy changed");
                self.parts.policy = latest;
            }
            self.expire();
            self.send_ready().await;
            match self.next_event(&shutdown).await {
                Event::Shutdown | Event::Inbox(None) => break,
                Event::Inbox(Some(Msg::Submit {
                    job,
                    outputs,
                    reply,
                })) => self.submit(job, outputs, reply),
                Event::Inbox(Some(Msg::Cancel { id, reply })) => {
                    let found = self.cancel(&id).await;
                    let _ = reply.send(found);
                }
                Event::Answer(answer) => self.finish(answer).await,
                // A wake-up may only be a recheck of a pause: `send_ready` decides.
                Event::Wake => {}
                Event::Idle => {
                    self.worker.release().await;
                    self.parts.metrics.worker_up.store(0, Ordering::Relaxed);
                }
            }
        }
        let in_flight = std::mem::take(&mut self.in_flight);
        if !in_flight.is_empty() {
            // The worker is mid-job: stop it.
            self.worker.kill().await;
        }
        self.worker.release().await;
        for job in in_flight {
            if let Some(reply) = job.reply {
                self.parts.metrics.cancelled.fetch_add(1, Ordering::Relaxed);
                let _ = reply.send(Err(JobError::ShuttingDown));
            }
        }
        for queued in self.queue.drain() {
            let _ = queued.reply.send(Err(JobError::ShuttingDown));
        }
        Ok(())
    }

    async fn next_event(&mut self, shutdown: &CancellationToken) -> Event {
        let wake = if self.in_flight.is_empty() {
            self.next_start()
        } else {
            None
        };
        let idle_at = self.last_work + self.parts.policy.idle_release;
        let idle = self.queue.is_empty() && self.in_flight.is_empty() && self.worker.is_running();
        let head = self
            .in_flight
            .front()
            .map(|job| (job.limit, job.max_outputs));
        let (limit, max_outputs) = head.unwrap_or_default();
        let Self {
            inbox,
            worker,
            head_since,
            policy,
            ..
        } = self;
        tokio::select! {
            () = shutdown.cancelled() => Event::Shutdown,
            msg = inbox.recv() => Event::Inbox(msg),
            // A new policy may let a held-back job start (or hold the next one back).
            Ok(()) = policy.changed() => Event::Wake,
            answer = worker.answer(*head_since, limit, max_outputs), if head.is_some() => {
                Event::Answer(answer)
            }
            () = tokio::time::sleep_until(wake.unwrap_or(idle_at)), if wake.is_some() => Event::Wake,
            () = tokio::time::sleep_until(idle_at), if idle => Event::Idle,
        }
    }

    /// Answers queued jobs whose deadline has passed, so they neither wait nor hold queue places.
    fn expire(&mut self) {
        let now_ms = self.parts.clock.unix_ms();
        let late = self.queue.take_where(|job| is_late(job, now_ms));
        if late.is_empty() {
            return;
        }
        for q in late {
            self.parts.metrics.refused.fetch_add(1, Ordering::Relaxed);
            let _ = q.reply.send(Err(JobError::DeadlinePassed));
        }
        self.count_queue();
    }

    /// Updates the queue and in-flight gauges.
    fn count_queue(&self) {
        let metrics = &self.parts.metrics;
        let depth = self.queue.len() as u64;
        metrics.queue_depth.store(depth, Ordering::Relaxed);
        let sent = self.in_flight.len() as u64;
        metrics.in_flight.store(sent, Ordering::Relaxed);
    }

    /// When the next job may start: `None` with an empty queue.
    fn next_start(&mut self) -> Option<Instant> {
        if self.queue.is_empty() {
            return None;
        }
        let now = Instant::now();
        if let Some(wait) = self.policy_wait() {
            return Some(now + wait);
        }
        Some(self.gate.rest_until().max(now))
    }

    /// How long policy (heat, hours) holds jobs back from now; `None` when they may run.
    fn policy_wait(&mut self) -> Option<Duration> {
        let held = self.gate.held(
            Instant::now(),
            self.parts.clock.wall(),
            &self.parts.policy,
            self.parts.thermal.as_ref(),
        );
        let gauge = Held::gauge(held);
        self.parts.metrics.paused.store(gauge, Ordering::Relaxed);
        held.map(Held::recheck)
    }

    /// Whether another batch may be sent to the worker now. One batch runs; at full duty one more
    /// waits in the worker's pipe so that it starts the moment the running one ends (the hand-off
    /// between processes then overlaps GPU work). Below full duty the GPU rests between batches,
    /// so nothing is sent ahead.
    fn may_send(&mut self) -> bool {
        let depth = if self.parts.policy.max_duty >= 1.0 {
            2
        } else {
            1
        };
        let batches = match (self.in_flight.front(), self.in_flight.back()) {
            (Some(first), Some(last)) => last.batch - first.batch + 1,
            _ => 0,
        };
        !self.queue.is_empty()
            && batches < depth
            && !self.gate.resting(Instant::now())
            && self.policy_wait().is_none()
    }

    /// Sends the best queued jobs to the worker, in batches, while policy lets them start.
    async fn send_ready(&mut self) {
        while self.may_send() {
            let ahead = !self.in_flight.is_empty();
            let batch = self.gather(ahead);
            if batch.is_empty() {
                return;
            }
            let prepared: Vec<&Prepared> = batch.iter().map(|(_, p)| p).collect();
            match self
                .worker
                .send(&prepared, self.parts.policy.memory_budget)
                .await
            {
                Ok(()) => {
                    if !ahead {
                        self.head_since = Instant::now();
                    }
                    self.batches += 1;
                    // The first answer comes when the whole batch is done.
                    let total = prepared
                        .iter()
                        .map(|p| p.limit)
                        .fold(Duration::ZERO, Duration::saturating_add);
                    for (i, (queued, prepared)) in batch.into_iter().enumerate() {
                        self.in_flight.push_back(InFlight {
                            max_outputs: if queued.outputs {
                                output_bytes(&queued.job)
                            } else {
                                0
                            },
                            kernel_sha256: prepared.kernel_sha256,
                            job: queued.job,
                            outputs: queued.outputs,
                            seq: queued.seq,
                            limit: if i == 0 { total } else { prepared.limit },
                            batch: self.batches,
                            reply: Some(queued.reply),
                        });
                    }
                    self.count_queue();
                    self.parts.metrics.worker_up.store(1, Ordering::Relaxed);
                }
                Err(_) if ahead => {
                    // Their answers would come from a dead worker; the running job's answer says
                    // what happened. These wait for the next worker.
                    batch
                        .into_iter()
                        .for_each(|(queued, _)| self.requeue(queued));
                    return;
                }
                Err(e) => {
                    self.worker.kill().await;
                    self.parts.metrics.worker_up.store(0, Ordering::Relaxed);
                    for (queued, _) in batch {
                        self.parts.metrics.failed.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(job = %queued.job.id, error = %e, "GPU job failed");
                        let _ = queued.reply.send(Err(e.clone()));
                    }
                }
            }
        }
    }

    /// Takes the next batch off the queue, best job first: small jobs (at most
    /// [`AHEAD_MAX_BYTES`] each on the wire) go together, up to [`MAX_BATCH`] of them, within
    /// [`BATCH_MAX_BYTES`] and the memory budget together; a larger job goes alone. Sent `ahead`
    /// of a running batch, it must fit the pipe's buffer, so that writing it never waits for the
    /// worker (which is busy, and may be writing a large answer to us): a large job then waits.
    fn gather(&mut self, ahead: bool) -> Vec<(Queued, Prepared)> {
        let mut batch: Vec<(Queued, Prepared)> = Vec::new();
        let (mut bytes, mut gpu) = (0, 0);
        while batch.len() < MAX_BATCH {
            // Only small jobs share a batch, and never one that is to run alone.
            if let Some((first, prepared)) = batch.first()
                && (first.solo
                    || prepared.wire_len() > AHEAD_MAX_BYTES
                    || self.queue.peek().is_some_and(|next| next.solo))
            {
                break;
            }
            let Some(queued) = self.queue.pop() else {
                break;
            };
            if is_late(&queued.job, self.parts.clock.unix_ms()) {
                self.parts.metrics.refused.fetch_add(1, Ordering::Relaxed);
                let _ = queued.reply.send(Err(JobError::DeadlinePassed));
                continue;
            }
            let Queued {
                job,
                outputs,
                seq,
                reply,
                solo,
            } = queued;
            let submitted = Submitted { job, outputs };
            let prepared = worker::prepare(&submitted);
            let queued = Queued {
                job: submitted.job,
                outputs,
                seq,
                reply,
                solo,
            };
            let prepared = match prepared {
                Ok(prepared) => prepared,
                Err(e) => {
                    self.parts.metrics.failed.fetch_add(1, Ordering::Relaxed);
                    let _ = queued.reply.send(Err(e));
                    continue;
                }
            };
            let job_gpu = gpu_bytes(&queued.job);
            let fits = if batch.is_empty() {
                !ahead || prepared.wire_len() <= AHEAD_MAX_BYTES
            } else {
                prepared.wire_len() <= AHEAD_MAX_BYTES
                    && bytes + prepared.wire_len() <= BATCH_MAX_BYTES
                    && gpu + job_gpu <= self.parts.policy.memory_budget
            };
            if !fits {
                self.requeue(queued);
                break;
            }
            bytes += prepared.wire_len();
            gpu += job_gpu;
            batch.push((queued, prepared));
        }
        self.count_queue();
        batch
    }

    /// Puts a job back on the queue.
    fn requeue(&mut self, queued: Queued) {
        self.queue.put_back(queued);
        self.count_queue();
    }

    /// Takes the oldest job in flight's answer and hands it to its submitter.
    async fn finish(&mut self, answer: Result<Finished, JobError>) {
        let Some(head) = self.in_flight.pop_front() else {
            return;
        };
        self.count_queue();
        let metrics = self.parts.metrics.clone();
        // Busy time and the duty-cycle rest count the GPU's work, not worker start-up or refusals;
        // each job of a batch counts its share of the submission.
        let ran = match &answer {
            Ok(Finished { done, .. }) => {
                Duration::from_micros(done.duration_us / u64::from(done.batch.max(1)))
            }
            Err(JobError::Refused { .. } | JobError::NoGpu { .. }) => Duration::ZERO,
            Err(_) => self.head_since.elapsed(),
        };
        metrics
            .busy_us
            .fetch_add(ran.as_micros() as u64, Ordering::Relaxed);
        self.last_work = Instant::now();
        self.head_since = self.last_work;
        self.gate
            .rest_after(ran, self.parts.policy.max_duty, self.last_work);
        let result = match answer {
            Ok(Finished { done, .. })
                if done.job_id != head.job.id || done.kernel_sha256 != head.kernel_sha256 =>
            {
                // The worker runs untrusted shaders next to the driver: never sign an answer that
                // is not about the job it was given.
                self.abandon_worker().await;
                metrics.failed.fetch_add(1, Ordering::Relaxed);
                Err(JobError::Crashed {
                    message: format!(
                        "the worker answered for job {:?} (kernel {}) when asked for {:?} (kernel {})",
                        done.job_id, done.kernel_sha256, head.job.id, head.kernel_sha256
                    ),
                })
            }
            Ok(Finished {
                done,
                outputs,
                adapter,
                driver,
            }) => {
                metrics.done.fetch_add(1, Ordering::Relaxed);
                if let Some(reply) = head.reply {
                    // Signing takes tens of microseconds: done here, it costs less than a hand-off
                    // to a blocking thread would (measured with the scheduler bench).
                    let receipt =
                        receipt::sign(&self.parts.identity, done.attested(&adapter, &driver));
                    let _ = reply.send(Ok(JobResult { receipt, outputs }));
                }
                return self.drop_cancelled_head(head.batch).await;
            }
            Err(JobError::Unsettled { reason }) => {
                // Its batch failed as a whole, and the worker is gone (`answer` killed it): each
                // job of the batch runs again alone, so that only the one to blame fails.
                tracing::warn!(job = %head.job.id, %reason, "GPU batch failed; its jobs run again alone");
                let batch = head.batch;
                if let Some(queued) = head.requeue(true) {
                    self.requeue(queued);
                }
                self.requeue_in_flight(Some(batch));
                return self.drop_cancelled_head(batch).await;
            }
            Err(e) => {
                if !matches!(e, JobError::Refused { .. }) {
                    // The worker is gone (`answer` killed it): what was sent ahead runs again.
                    self.requeue_in_flight(None);
                }
                metrics.failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(job = %head.job.id, error = %e, "GPU job failed");
                Err(e)
            }
        };
        if let Some(reply) = head.reply {
            let _ = reply.send(result);
        }
        self.drop_cancelled_head(head.batch).await;
    }

    /// A job cancelled while it waited in the worker's pipe may have started by now: stop it. One
    /// of the batch that just finished has run already; its answer is read and dropped.
    async fn drop_cancelled_head(&mut self, finished: u64) {
        if self
            .in_flight
            .front()
            .is_some_and(|job| job.reply.is_none() && job.batch != finished)
        {
            self.abandon_worker().await;
        }
        self.parts
            .metrics
            .worker_up
            .store(u64::from(self.worker.is_running()), Ordering::Relaxed);
    }

    /// Kills the worker; jobs that were sent ahead (and not cancelled) go back to the queue.
    async fn abandon_worker(&mut self) {
        self.worker.kill().await;
        self.parts.metrics.worker_up.store(0, Ordering::Relaxed);
        self.requeue_in_flight(None);
    }

    /// Puts every job in flight (not cancelled) back on the queue; those of batch `solo` are to
    /// run alone.
    fn requeue_in_flight(&mut self, solo: Option<u64>) {
        for job in std::mem::take(&mut self.in_flight) {
            let alone = Some(job.batch) == solo;
            if let Some(queued) = job.requeue(alone) {
                self.queue.put_back(queued);
            }
        }
        self.count_queue();
    }

    /// Queues or refuses a submission.
    fn submit(&mut self, job: Job, outputs: bool, reply: Reply) {
        match admit(&self.parts, self.queue.len(), &job) {
            Ok(()) => {
                self.queue.arrive(job, outputs, reply);
                self.count_queue();
            }
            Err(e) => {
                self.parts.metrics.refused.fetch_add(1, Ordering::Relaxed);
                let _ = reply.send(Err(e));
            }
        }
    }

    /// Cancels a queued job, a job waiting in the worker's pipe, or the running one (which kills
    /// the worker: a dispatch cannot be stopped otherwise). False if there is no such job.
    async fn cancel(&mut self, id: &str) -> bool {
        let metrics = self.parts.metrics.clone();
        let answer = |reply: Reply| {
            metrics.cancelled.fetch_add(1, Ordering::Relaxed);
            let _ = reply.send(Err(JobError::Cancelled));
        };
        let cancelled = self.queue.take_where(|job| job.id == id);
        self.count_queue();
        let mut found = !cancelled.is_empty();
        cancelled.into_iter().for_each(|q| answer(q.reply));
        let running = self.in_flight.front().is_some_and(|job| job.job.id == id);
        for job in self.in_flight.iter_mut().filter(|job| job.job.id == id) {
            if let Some(reply) = job.reply.take() {
                answer(reply);
                found = true;
            }
        }
        if running {
            let _ = self.in_flight.pop_front();
            self.abandon_worker().await;
        }
        self.count_queue();
        found
    }
}

/// What is checked of a submission (already checked on its own by [`Admission::check`]) as it
/// is queued: its deadline, and room in the queue.
fn admit(parts: &SchedulerParts, queued: usize, job: &Job) -> Result<(), JobError> {
    if is_late(job, parts.clock.unix_ms()) {
        return Err(JobError::DeadlinePassed);
    }
    if queued >= parts.policy.queue_capacity {
        return Err(JobError::QueueFull {
            capacity: parts.policy.queue_capacity,
        });
    }
    Ok(())
}
