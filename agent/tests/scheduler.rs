//! The GPU scheduler against a real worker process (`edge-agent gpu-worker`) on lavapipe: queue
//! bound, priority, heat pause with hysteresis, cancellation, deadlines, the time limit, bad jobs,
//! no GPU, duty cycle and idle release. Thermal and wall clock are fakes; the GPU is not.

#![allow(
    clippy::tests_outside_test_module,
    reason = "an integration test crate: its tests need no test module"
)]

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use edge_agent::gpu::scheduler::{
    GpuMetrics, JobError, JobResult, Policy, Scheduler, SchedulerHandle, SchedulerParts,
};
use edge_agent::gpu::worker::GpuWorker;
use edge_hal::fake::{FakeClock, FakeThermal};
use edge_hal::{GpuProbe, IsolatedProbe};
use edge_identity::Identity;
use edge_jobs::adapter::GpuStatus;
use edge_jobs::job::{BlobStore, Job};
use edge_jobs::kernels;
use edge_jobs::receipt;
use edge_jobs::worker::ExecError;
use tokio_util::sync::CancellationToken;

fn policy() -> Policy {
    Policy {
        queue_capacity: 4,
        memory_budget: 256 << 20,
        ..Policy::default()
    }
}

struct Rig {
    handle: SchedulerHandle,
    thermal: Arc<FakeThermal>,
    metrics: Arc<GpuMetrics>,
    shutdown: CancellationToken,
    _blobs: tempfile::TempDir,
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A scheduler on the real GPU, or `None` (said loudly) where there is none to test with.
/// The GPU worker built beside the agent (`cargo test --workspace` builds it there).
fn worker() -> std::path::PathBuf {
    let worker = edge_hal::gpu::worker_beside(Path::new(env!("CARGO_BIN_EXE_edge-agent")));
    assert!(
        worker.exists(),
        "{} is not built: run `cargo build -p edge-gpu` or `cargo test --workspace`",
        worker.display()
    );
    worker
}

fn rig(policy: Policy) -> Option<Rig> {
    let limits = match IsolatedProbe::worker(&worker()).discover() {
        GpuStatus::Available(info) => info.limits,
        GpuStatus::Unavailable { reason } => {
            let lvp = format!(
                "/usr/share/vulkan/icd.d/lvp_icd.{}.json",
                std::env::consts::ARCH
            );
            assert!(
                !Path::new(&lvp).exists(),
                "lavapipe is installed but no GPU was found: {reason}"
            );
            eprintln!("SKIPPED: no Vulkan driver ({reason}); install mesa-vulkan-drivers");
            return None;
        }
    };
    Some(rig_with(Ok(limits), policy))
}

fn rig_with(gpu: Result<edge_jobs::adapter::GpuLimits, String>, policy: Policy) -> Rig {
    let blobs = tempfile::tempdir().expect("tempdir");
    let thermal = Arc::new(FakeThermal::default());
    thermal.set_all(40.0);
    let metrics = Arc::new(GpuMetrics::default());
    let worker = GpuWorker::serving(&worker(), blobs.path());
    let (scheduler, handle) = Scheduler::new(
        SchedulerParts {
            gpu,
            policy,
            identity: Arc::new(Identity::generate_ephemeral().expect("key")),
            thermal: thermal.clone(),
            clock: Arc::new(FakeClock::default()),
            blobs: BlobStore {
                dir: blobs.path().to_owned(),
            },
            metrics: metrics.clone(),
        },
        worker,
    );
    let shutdown = CancellationToken::new();
    tokio::spawn(scheduler.run(shutdown.clone()));
    Rig {
        handle,
        thermal,
        metrics,
        shutdown,
        _blobs: blobs,
    }
}

fn small(id: &str, priority: i32) -> Job {
    let mut job = kernels::hash_chain(7, 10, 64).expect("job");
    job.id = id.to_owned();
    job.priority = priority;
    job
}

/// A job too large to share a batch (its WGSL carries a long comment), which runs for some
/// milliseconds: jobs like it start one after another, each at its own time.
fn alone(id: &str, priority: i32) -> Job {
    let mut job = kernels::hash_chain(7, 100_000, 64).expect("job");
    job.kernel.wgsl = format!("// {}\n{}", "x".repeat(20 << 10), job.kernel.wgsl);
    job.id = id.to_owned();
    job.priority = priority;
    job
}

/// Submits `jobs` while the GPU is paused for heat, then cools it down: the queued jobs are then
/// sent together. Returns their tasks, in submission order.
async fn queued_while_hot(rig: &Rig, jobs: Vec<Job>) -> Vec<Task> {
    rig.thermal.set_all(90.0);
    let count = jobs.len() as u64;
    let tasks = jobs
        .into_iter()
        .map(|job| {
            let h = rig.handle.clone();
            tokio::spawn(async move { h.run(job).await })
        })
        .collect();
    until(&rig.metrics.queue_depth, count, "every job queued").await;
    assert_eq!(rig.metrics.in_flight.load(Ordering::SeqCst), 0, "paused");
    rig.thermal.set_all(40.0);
    tasks
}

#[tokio::test]
async fn a_job_runs_on_the_worker_and_its_receipt_verifies() {
    let Some(rig) = rig(policy()) else { return };
    let result = rig.handle.run(small("first", 0)).await.expect("runs");
    receipt::verify(&result.receipt).expect("receipt verifies");
    assert_eq!(
        kernels::u32s(&result.outputs[0]),
        kernels::hash_chain_reference(7, 10, 64)
    );
    assert_eq!(rig.metrics.done.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn heat_pauses_with_hysteresis_and_a_full_queue_refuses_at_once() {
    let Some(rig) = rig(policy()) else { return };
    rig.thermal.set_all(90.0);
    // One at a time, each queued before the next is sent: admission runs on blocking threads,
    // so jobs sent at once may arrive in any order.
    let mut waiting = Vec::new();
    for (n, (id, p)) in ["low", "high", "mid", "low2"]
        .iter()
        .zip([0, 9, 5, 0])
        .enumerate()
    {
        let h = rig.handle.clone();
        let job = alone(id, p);
        waiting.push(tokio::spawn(async move { h.run(job).await }));
        until(&rig.metrics.queue_depth, n as u64 + 1, id).await;
    }
    // The queue (4) is full while paused: a fifth job is refused, not queued.
    let refused = rig.handle.run(small("extra", 0)).await;
    assert_eq!(refused.err(), Some(JobError::QueueFull { capacity: 4 }));
    assert_eq!(rig.metrics.queue_depth.load(Ordering::SeqCst), 4);
    assert_eq!(rig.metrics.paused.load(Ordering::SeqCst), 1);

    // 80 degrees is below the pause but not below the resume threshold: still paused.
    rig.thermal.set_all(80.0);
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(
        rig.metrics.done.load(Ordering::SeqCst),
        0,
        "resumed too early"
    );

    rig.thermal.set_all(70.0);
    let mut started = Vec::new();
    for task in waiting {
        let r = task.await.expect("join").expect("job runs after cooling");
        started.push((
            r.receipt.body.what.started_at_unix_ms,
            r.receipt.body.what.job_id,
        ));
    }
    started.sort();
    let order: Vec<&str> = started.iter().map(|(_, id)| id.as_str()).collect();
    assert_eq!(
        order,
        ["high", "mid", "low", "low2"],
        "priority, then arrival"
    );
}

#[tokio::test]
async fn queued_jobs_can_be_cancelled_and_late_ones_are_not_started() {
    let Some(rig) = rig(policy()) else { return };
    rig.thermal.set_all(95.0);
    let h = rig.handle.clone();
    let queued = tokio::spawn(async move { h.run(small("doomed", 0)).await });
    let mut late = small("late", 0);
    late.deadline_unix_ms = Some(1_000); // 1970: long past by the fake clock
    let h = rig.handle.clone();
    let late = tokio::spawn(async move { h.run(late).await });
    until(&rig.metrics.queue_depth, 1, "doomed queued").await;
    assert!(rig.handle.cancel("doomed").await);
    assert!(!rig.handle.cancel("no-such-job").await);
    assert_eq!(queued.await.expect("join").err(), Some(JobError::Cancelled));
    rig.thermal.set_all(40.0);
    assert_eq!(
        late.await.expect("join").err(),
        Some(JobError::DeadlinePassed)
    );
}

#[tokio::test]
async fn a_runaway_kernel_fails_at_its_limit_and_the_next_job_runs() {
    let Some(rig) = rig(policy()) else { return };
    let runaway = kernels::runaway(300);
    let err = rig.handle.run(runaway).await.expect_err("overruns");
    assert!(
        matches!(err, JobError::Exec(ExecError::Timeout { .. })),
        "{err:?}"
    );
    let after = rig
        .handle
        .run(small("after", 0))
        .await
        .expect("next job runs");
    receipt::verify(&after.receipt).expect("verifies");
    assert_eq!(rig.metrics.failed.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn bad_jobs_are_refused_with_what_and_where_and_no_gpu_is_said_plainly() {
    let Some(rig) = rig(policy()) else { return };
    // The agent checks the job's own fields before it queues it...
    let mut bad = small("bad-dispatch", 0);
    bad.dispatch = [0, 1, 1];
    match rig.handle.run(bad).await {
        Err(JobError::Refused { problems }) => assert!(
            problems.iter().any(|p| p.starts_with("dispatch: x is 0")),
            "{problems:?}"
        ),
        other => panic!("expected a refusal, got {other:?}"),
    }
    // ...and the shader is the worker's to parse: its refusal is a refusal all the same, with
    // line and column (it used to come back as a worker failure, reported `failed`).
    let mut bad = small("bad-shader", 0);
    bad.kernel.wgsl = bad.kernel.wgsl.replace("out[i] = x;", "out[i] = x");
    match rig.handle.run(bad).await {
        Err(JobError::Refused { problems }) => assert!(
            problems.iter().any(|p| p.starts_with("kernel.wgsl:")),
            "{problems:?}"
        ),
        other => panic!("expected a refusal, got {other:?}"),
    }
    rig.handle
        .run(small("good", 0))
        .await
        .expect("still healthy");

    let none = rig_with(Err("no Vulkan adapter found".into()), policy());
    let err = none.handle.run(small("x", 0)).await.expect_err("no GPU");
    assert_eq!(err.to_string(), "no GPU: no Vulkan adapter found");
}

#[tokio::test]
async fn duty_cycle_rests_the_gpu_and_an_idle_worker_is_released() {
    let mut p = policy();
    p.max_duty = 0.25;
    p.idle_release = Duration::from_secs(1);
    let Some(rig) = rig(p) else { return };
    let first = rig
        .handle
        .run(small("one", 0))
        .await
        .expect("runs")
        .receipt
        .body
        .what;
    let second = rig
        .handle
        .run(small("two", 0))
        .await
        .expect("runs")
        .receipt
        .body
        .what;
    // At 25% duty the GPU rests at least 3x the first job's time before the second starts.
    let gap_ms = second.started_at_unix_ms - first.started_at_unix_ms;
    let min_rest_ms = 3 * first.duration_us / 1000;
    assert!(
        gap_ms >= min_rest_ms,
        "gap {gap_ms} ms < rest {min_rest_ms} ms"
    );

    assert_eq!(rig.metrics.worker_up.load(Ordering::SeqCst), 1);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        rig.metrics.worker_up.load(Ordering::SeqCst),
        0,
        "idle worker released"
    );
    rig.handle
        .run(small("three", 0))
        .await
        .expect("a new worker starts on demand");
}

#[test]
fn allowed_hours_wrap_past_midnight() {
    use edge_agent::gpu::scheduler::wait_for_hours;
    use std::time::{SystemTime, UNIX_EPOCH};
    let at = |h: u64, m: u64| UNIX_EPOCH + Duration::from_secs(20_000 * 86_400 + h * 3600 + m * 60);
    assert_eq!(wait_for_hours((22, 7), at(23, 0)), None);
    assert_eq!(wait_for_hours((22, 7), at(3, 0)), None);
    assert_eq!(
        wait_for_hours((22, 7), at(7, 0)),
        Some(Duration::from_secs(15 * 3600))
    );
    assert_eq!(
        wait_for_hours((9, 17), at(8, 30)),
        Some(Duration::from_secs(30 * 60))
    );
    assert_eq!(wait_for_hours((9, 17), at(12, 0)), None);
    let _: SystemTime = at(0, 0);
}

/// Waits (bounded) until `gauge` reads `want`: the scheduler's state, not a guess at its timing
/// (under qemu-user a worker takes seconds to start).
async fn until(gauge: &AtomicU64, want: u64, what: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while gauge.load(Ordering::SeqCst) != want {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn small_jobs_queued_together_share_one_submission_and_their_receipts_say_so() {
    let Some(rig) = rig(policy()) else { return };
    let jobs = (0..4).map(|i| small(&format!("s{i}"), 0)).collect();
    for task in queued_while_hot(&rig, jobs).await {
        let r = task.await.expect("join").expect("runs");
        receipt::verify(&r.receipt).expect("verifies");
        assert_eq!(r.receipt.body.what.batch, Some(4), "{:?}", r.receipt);
        assert_eq!(
            kernels::u32s(&r.outputs[0]),
            kernels::hash_chain_reference(7, 10, 64)
        );
    }
    assert_eq!(rig.metrics.done.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn a_batch_that_overruns_runs_its_jobs_again_alone_and_only_the_runaway_fails() {
    let Some(rig) = rig(policy()) else { return };
    let mut jobs = vec![kernels::runaway(300)];
    for i in 0..3 {
        let mut job = small(&format!("s{i}"), 0);
        // The batch's limit is the sum of its jobs' limits: keep the wait for the runaway short.
        job.limits.max_runtime_ms = 500;
        jobs.push(job);
    }
    let mut tasks = queued_while_hot(&rig, jobs).await.into_iter();
    let runaway = tasks.next().expect("runaway").await.expect("join");
    let err = runaway.expect_err("overruns");
    assert!(
        matches!(err, JobError::Exec(ExecError::Timeout { .. })),
        "{err:?}"
    );
    for task in tasks {
        let r = task.await.expect("join").expect("runs again, alone");
        receipt::verify(&r.receipt).expect("verifies");
        assert_eq!(r.receipt.body.what.batch, None, "ran alone");
    }
    assert_eq!(rig.metrics.failed.load(Ordering::SeqCst), 1);
    assert_eq!(rig.metrics.done.load(Ordering::SeqCst), 3);
}

type Task = tokio::task::JoinHandle<Result<JobResult, JobError>>;

/// A warm worker running a runaway (3 s limit), and a small job `ahead` submitted while it runs,
/// sent ahead into the worker's pipe.
async fn a_runaway_and_one_sent_ahead(rig: &Rig) -> (Task, Task) {
    rig.handle.run(small("warm", 0)).await.expect("worker up");
    let h = rig.handle.clone();
    let runaway = tokio::spawn(async move { h.run(kernels::runaway(3000)).await });
    until(&rig.metrics.in_flight, 1, "the runaway sent").await;
    let h = rig.handle.clone();
    let ahead = tokio::spawn(async move { h.run(small("ahead", 0)).await });
    until(&rig.metrics.in_flight, 2, "the next job sent ahead").await;
    assert!(!runaway.is_finished(), "the runaway still runs");
    (runaway, ahead)
}

#[tokio::test]
async fn a_job_sent_ahead_of_a_runaway_is_run_again_on_a_fresh_worker() {
    let Some(rig) = rig(policy()) else { return };
    // The job sent ahead waits in the worker's pipe, which dies with the runaway.
    let (runaway, ahead) = a_runaway_and_one_sent_ahead(&rig).await;
    let ahead = ahead.await.expect("join").expect("runs on the next worker");
    receipt::verify(&ahead.receipt).expect("verifies");
    assert_eq!(ahead.receipt.body.what.job_id, "ahead");
    let err = runaway.await.expect("join").expect_err("overruns");
    assert!(
        matches!(err, JobError::Exec(ExecError::Timeout { .. })),
        "{err:?}"
    );
    assert_eq!(rig.metrics.failed.load(Ordering::SeqCst), 1);
    assert_eq!(rig.metrics.done.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_job_waiting_in_the_pipe_can_be_cancelled_and_the_next_one_still_runs() {
    let Some(rig) = rig(policy()) else { return };
    let (runaway, ahead) = a_runaway_and_one_sent_ahead(&rig).await;
    let h = rig.handle.clone();
    let third = tokio::spawn(async move { h.run(small("third", 0)).await });
    until(&rig.metrics.queue_depth, 1, "the third queued").await;
    assert!(!runaway.is_finished(), "the runaway still runs");
    assert!(rig.handle.cancel("ahead").await, "found in flight");
    assert_eq!(ahead.await.expect("join").err(), Some(JobError::Cancelled));
    assert!(runaway.await.expect("join").is_err(), "overruns");
    let third = third.await.expect("join").expect("runs");
    assert_eq!(third.receipt.body.what.job_id, "third");
    assert_eq!(rig.metrics.cancelled.load(Ordering::SeqCst), 1);
    assert_eq!(rig.metrics.done.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_new_policy_holds_from_the_next_job_and_wakes_a_held_back_queue() {
    let Some(rig) = rig(policy()) else { return };
    // The fake clock stands at 00:00 UTC: a window of 12-13 h holds jobs back.
    let mut closed = policy();
    closed.allowed_hours_utc = Some((12, 13));
    rig.handle.set_policy(closed.clone());
    assert_eq!(rig.handle.policy(), closed);
    let h = rig.handle.clone();
    let held = tokio::spawn(async move { h.run(small("held", 0)).await });
    until(&rig.metrics.queue_depth, 1, "held queued").await;
    until(&rig.metrics.paused, 2, "held back by the hours").await;
    assert!(!held.is_finished(), "outside the allowed hours");
    // The owner opens the window: the queued job starts without waiting for a recheck.
    rig.handle.set_policy(policy());
    let done = tokio::time::timeout(Duration::from_secs(30), held)
        .await
        .expect("started on the change, not at the next minute's recheck")
        .expect("join")
        .expect("runs");
    assert_eq!(done.receipt.body.what.job_id, "held");
}
