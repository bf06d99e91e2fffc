//! The scheduler's decisions on a fake worker and paused time: no driver, no process. (The real
//! worker and lavapipe are tested once, in `agent/tests/scheduler.rs`.)

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use edge_hal::fake::{FakeClock, FakeThermal};
use edge_jobs::adapter::lavapipe_limits;
use edge_jobs::job::BlobStore;
use edge_jobs::worker::Done;

use super::*;

/// What the fake worker saw, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    Sent(String, Duration),
    Killed,
    Released,
}

/// A worker whose jobs take what `run_for` says, on tokio's (paused) clock.
struct FakeWorker {
    seen: Arc<Mutex<Vec<Seen>>>,
    pending: VecDeque<(String, Sha256)>,
    running: bool,
    run_for: fn(&str) -> Duration,
    /// Answer naming another job than the one asked.
    lie: bool,
    born: Instant,
}

impl FakeWorker {
    fn new(run_for: fn(&str) -> Duration) -> (Self, Arc<Mutex<Vec<Seen>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let worker = Self {
            seen: seen.clone(),
            pending: VecDeque::new(),
            running: false,
            run_for,
            lie: false,
            born: Instant::now(),
        };
        (worker, seen)
    }

    fn saw(&self, seen: Seen) {
        self.seen.lock().expect("log").push(seen);
    }
}

impl Worker for FakeWorker {
    fn is_running(&self) -> bool {
        self.running
    }

    async fn send(&mut self, batch: &[&Prepared], _budget: u64) -> Result<(), JobError> {
        self.running = true;
        for job in batch {
            self.saw(Seen::Sent(job.job_id.clone(), self.born.elapsed()));
            self.pending
                .push_back((job.job_id.clone(), job.kernel_sha256));
        }
        Ok(())
    }

    async fn answer(
        &mut self,
        started: Instant,
        limit: Duration,
        _max_outputs: u64,
    ) -> Result<Finished, JobError> {
        let (id, kernel) = self.pending.front().cloned().ok_or(JobError::Crashed {
            message: "nothing in flight".into(),
        })?;
        let runs = (self.run_for)(&id);
        // Until an instant, not for a span: dropped and called again, it ends at the same time.
        if runs > limit {
            tokio::time::sleep_until(started + limit).await;
            self.kill().await;
            return Err(JobError::Killed { limit });
        }
        tokio::time::sleep_until(started + runs).await;
        self.pending.pop_front();
        let empty = Sha256::of(b"");
        Ok(Finished {
            done: Done {
                job_id: if self.lie { format!("{id}-other") } else { id },
                kernel_sha256: kernel,
                input_sha256: empty,
                output_sha256: empty,
                output_bytes: Vec::new(),
                started_at_unix_ms: 0,
                duration_us: runs.as_micros() as u64,
                kernel_us: None,
                cached_pipeline: false,
                batch: 1,
            },
            outputs: Vec::new(),
            adapter: "fake".into(),
            driver: "fake".into(),
        })
    }

    async fn kill(&mut self) {
        self.running = false;
        self.pending.clear();
        self.saw(Seen::Killed);
    }

    async fn release(&mut self) {
        self.running = false;
        self.saw(Seen::Released);
    }
}

fn policy() -> Policy {
    Policy {
        queue_capacity: 8,
        memory_budget: 256 << 20,
        ..Policy::default()
    }
}

fn job(id: &str, priority: i32) -> Job {
    // 64 KiB of output, so that no two of them share a batch and each answer is one job's.
    let mut job = edge_jobs::kernels::fma_peak(16, 1);
    job.id = id.into();
    job.priority = priority;
    job
}

/// A scheduler on `worker`, running; its handle and the shutdown that stops it.
fn start(
    policy: Policy,
    worker: FakeWorker,
) -> (SchedulerHandle, CancellationToken, Arc<GpuMetrics>) {
    start_in(policy, worker, Arc::new(FakeThermal::default()))
}

/// [`start`], on these thermal zones.
fn start_in(
    policy: Policy,
    worker: FakeWorker,
    thermal: Arc<FakeThermal>,
) -> (SchedulerHandle, CancellationToken, Arc<GpuMetrics>) {
    let metrics = Arc::new(GpuMetrics::default());
    let (scheduler, handle) = Scheduler::new(
        SchedulerParts {
            gpu: Ok(lavapipe_limits()),
            policy,
            identity: Arc::new(Identity::generate_ephemeral().expect("key")),
            thermal,
            clock: Arc::new(FakeClock::default()),
            blobs: BlobStore {
                dir: std::env::temp_dir().join("edge-agent-no-blobs"),
            },
            metrics: metrics.clone(),
        },
        worker,
    );
    let shutdown = CancellationToken::new();
    tokio::spawn(scheduler.run(shutdown.clone()));
    (handle, shutdown, metrics)
}

fn sent(seen: &Mutex<Vec<Seen>>) -> Vec<(String, Duration)> {
    seen.lock()
        .expect("log")
        .iter()
        .filter_map(|s| match s {
            Seen::Sent(id, at) => Some((id.clone(), *at)),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "current_thread")]
async fn a_submission_is_checked_off_the_runtime_thread() {
    // The check decodes inline inputs and reads blobs (up to the GPU budget): on the runtime's
    // thread, a large job would stall the owner's channel, the report queue and every timer.
    let (worker, _seen) = FakeWorker::new(|_| Duration::from_millis(1));
    let (handle, shutdown, _) = start(policy(), worker);
    let mut big = job("inline", 0);
    big.bindings[0].input = Some(edge_jobs::job::Blob::inline(&[1; 4096]));
    let _ = handle.run(big).await;
    let on = handle.admission.checked_on.lock().expect("threads").clone();
    assert_eq!(on.len(), 1, "checked once");
    assert_ne!(
        on[0],
        std::thread::current().id(),
        "checked on the runtime's thread"
    );
    shutdown.cancel();
}

#[tokio::test(start_paused = true)]
async fn jobs_that_wait_run_by_priority_and_each_receipt_is_signed_for_its_job() {
    let (worker, seen) = FakeWorker::new(|_| Duration::from_secs(1));
    let (handle, shutdown, metrics) = start(policy(), worker);
    // One at a time, each taken (queued or sent) before the next is submitted: admission runs
    // on blocking threads, so jobs submitted at once may arrive in any order.
    let mut runs = Vec::new();
    for (n, (id, priority)) in [("first", 0), ("low", 1), ("high", 9), ("mid", 5)]
        .into_iter()
        .enumerate()
    {
        let h = handle.clone();
        runs.push(tokio::spawn(async move {
            h.run_for_receipt(job(id, priority)).await
        }));
        let taken = || {
            metrics.queue_depth.load(Ordering::Relaxed) + metrics.in_flight.load(Ordering::Relaxed)
        };
        for _ in 0..10_000 {
            if taken() > n as u64 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert!(taken() > n as u64, "{id} never taken");
    }
    let mut receipts = Vec::new();
    for run in runs {
        receipts.push(run.await.expect("join").expect("job"));
    }
    let order: Vec<String> = sent(&seen).into_iter().map(|(id, _)| id).collect();
    // "first" was running (and one more may be waiting in the pipe) when the rest arrived.
    assert_eq!(order.first().map(String::as_str), Some("first"));
    let rest: Vec<&str> = order[1..].iter().map(String::as_str).collect();
    assert!(
        rest == ["high", "mid", "low"] || rest == ["low", "high", "mid"],
        "order {order:?}"
    );
    for (result, id) in receipts.iter().zip(["first", "low", "high", "mid"]) {
        assert_eq!(result.receipt.body.what.job_id, id);
    }
    assert_eq!(metrics.done.load(Ordering::Relaxed), 4);
    shutdown.cancel();
}

#[tokio::test(start_paused = true)]
async fn below_full_duty_the_next_job_waits_out_the_rest() {
    let (worker, seen) = FakeWorker::new(|_| Duration::from_secs(2));
    let (handle, shutdown, _) = start(
        Policy {
            max_duty: 0.5,
            ..policy()
        },
        worker,
    );
    let (a, b) = tokio::join!(handle.run(job("a", 0)), handle.run(job("b", 0)));
    a.expect("a");
    b.expect("b");
    let sent = sent(&seen);
    assert_eq!(sent.len(), 2);
    // "a" ran 2 s; at 50% duty the GPU then rests 2 s.
    let gap = sent[1].1 - sent[0].1;
    assert!(gap >= Duration::from_secs(4), "b was sent {gap:?} after a");
    shutdown.cancel();
}

#[tokio::test(start_paused = true)]
async fn an_overrun_kills_the_worker_and_the_next_job_runs_on_a_fresh_one() {
    let (worker, seen) = FakeWorker::new(|id| {
        if id == "stuck" {
            Duration::from_secs(3600)
        } else {
            Duration::from_millis(10)
        }
    });
    let (handle, shutdown, metrics) = start(policy(), worker);
    let stuck = handle.run(job("stuck", 0)).await;
    assert!(matches!(stuck, Err(JobError::Killed { .. })), "{stuck:?}");
    handle.run(job("next", 0)).await.expect("the next job runs");
    assert!(seen.lock().expect("log").contains(&Seen::Killed));
    assert_eq!(metrics.failed.load(Ordering::Relaxed), 1);
    shutdown.cancel();
}

#[tokio::test(start_paused = true)]
async fn an_answer_about_another_job_is_never_signed() {
    let (mut worker, seen) = FakeWorker::new(|_| Duration::from_millis(10));
    worker.lie = true;
    let (handle, shutdown, _) = start(policy(), worker);
    let result = handle.run(job("asked", 0)).await;
    match result {
        Err(JobError::Crashed { message }) => {
            assert!(message.contains("asked"), "{message}");
        }
        other => panic!("expected a refusal to sign, got {other:?}"),
    }
    assert!(
        seen.lock().expect("log").contains(&Seen::Killed),
        "the lying worker lives on"
    );
    shutdown.cancel();
}

#[tokio::test(start_paused = true)]
async fn an_idle_worker_is_released_after_the_idle_time_and_not_before() {
    let (worker, seen) = FakeWorker::new(|_| Duration::from_millis(10));
    let (handle, shutdown, metrics) = start(policy(), worker);
    handle.run(job("one", 0)).await.expect("job");
    tokio::time::sleep(Duration::from_secs(59)).await;
    assert!(
        !seen.lock().expect("log").contains(&Seen::Released),
        "released early"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(seen.lock().expect("log").contains(&Seen::Released));
    assert_eq!(metrics.worker_up.load(Ordering::Relaxed), 0);
    shutdown.cancel();
}

#[tokio::test(start_paused = true)]
async fn a_hot_box_holds_jobs_until_it_cools() {
    let (worker, seen) = FakeWorker::new(|_| Duration::from_millis(10));
    let thermal = Arc::new(FakeThermal::default());
    thermal.set_all(90.0);
    let (handle, shutdown, metrics) = start_in(policy(), worker, thermal.clone());
    let run = tokio::spawn(async move { handle.run(job("waits", 0)).await });
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(sent(&seen).is_empty(), "a job started at 90 °C");
    assert_eq!(metrics.paused.load(Ordering::Relaxed), 1);
    thermal.set_all(70.0);
    run.await.expect("join").expect("runs once cool");
    assert_eq!(metrics.paused.load(Ordering::Relaxed), 0);
    shutdown.cancel();
}
