//! What the scheduler costs: small-job throughput through the whole path (queue, admission,
//! worker process, JSON lines, receipt signing) next to a bare wgpu submit-and-read-back loop of
//! the same job on one thread, in the same run. The three paths run in interleaved rounds, so
//! that a change in the machine's load hits all of them alike. Prints figures; asserts nothing
//! about time.
//!
//!     cargo bench -p edge-agent --bench scheduler

use std::sync::Arc;
use std::time::{Duration, Instant};

use edge_agent::gpu_worker::GpuWorker;
use edge_agent::scheduler::{GpuMetrics, Policy, Scheduler, SchedulerHandle, SchedulerParts};
use edge_gpu::executor::Gpu;
use edge_gpu::job::{BlobStore, Job};
use edge_gpu::kernels;
use edge_gpu::validate::validate;
use edge_hal::{Identity, SysfsThermal, SystemClock};
use tokio_util::sync::CancellationToken;

/// Rounds, and jobs per path in each round.
const ROUNDS: usize = 3;
const JOBS: usize = 300;

async fn one_at_a_time(handle: &SchedulerHandle, job: &Job) -> Duration {
    let start = Instant::now();
    for _ in 0..JOBS {
        handle.run(job.clone()).await.expect("run");
    }
    start.elapsed()
}

async fn all_at_once(handle: &SchedulerHandle, job: &Job) -> Duration {
    let start = Instant::now();
    let tasks: Vec<_> = (0..JOBS)
        .map(|_| {
            let (h, j) = (handle.clone(), job.clone());
            tokio::spawn(async move { h.run(j).await })
        })
        .collect();
    for t in tasks {
        t.await.expect("join").expect("run");
    }
    start.elapsed()
}

fn main() {
    let job = kernels::hash_chain(3, 16, 256).expect("job");
    let blobs = tempfile::tempdir().expect("tempdir");
    let store = BlobStore {
        dir: blobs.path().to_owned(),
    };

    // Bare loop: validated once, then submitted and read back on this thread.
    let mut gpu = Gpu::open().expect("a GPU");
    let limits = gpu.adapter().limits.clone();
    let valid = validate(job.clone(), &limits, u64::MAX, &store).expect("valid");
    gpu.run(&valid).expect("warm-up");

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut totals = [Duration::ZERO; 3];
    let mut ratios: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    runtime.block_on(async {
        let worker = GpuWorker::agent(env!("CARGO_BIN_EXE_edge-agent"), blobs.path());
        let (scheduler, handle) = Scheduler::new(
            SchedulerParts {
                gpu: Ok(limits),
                policy: Policy {
                    queue_capacity: JOBS,
                    memory_budget: 1 << 30,
                    max_duty: 1.0,
                    allowed_hours_utc: None,
                    pause_above_celsius: 200.0,
                    resume_below_celsius: 150.0,
                    idle_release: Duration::from_secs(600),
                },
                identity: Arc::new(Identity::generate_ephemeral().expect("key")),
                thermal: Arc::new(SysfsThermal::default()),
                clock: Arc::new(SystemClock),
                blobs: store.clone(),
                metrics: Arc::new(GpuMetrics::default()),
            },
            worker,
        );
        let shutdown = CancellationToken::new();
        tokio::spawn(scheduler.run(shutdown.clone()));
        handle.run(job.clone()).await.expect("warm-up");

        for _ in 0..ROUNDS {
            let start = Instant::now();
            for _ in 0..JOBS {
                gpu.run(&valid).expect("run");
            }
            let bare = start.elapsed();
            let sequential = one_at_a_time(&handle, &job).await;
            let pipelined = all_at_once(&handle, &job).await;
            for (total, d) in totals.iter_mut().zip([bare, sequential, pipelined]) {
                *total += d;
            }
            ratios[0].push(sequential.as_secs_f64() / bare.as_secs_f64());
            ratios[1].push(pipelined.as_secs_f64() / bare.as_secs_f64());
        }
        shutdown.cancel();
    });

    let jobs = ROUNDS * JOBS;
    println!(
        "{jobs} small jobs per path (hash_chain, 256 items x 16 rounds), {ROUNDS} interleaved rounds"
    );
    println!("{:<44}{:>10} {:>12}", "path", "jobs/s", "us per job");
    let names = [
        "bare wgpu submit + read-back (one thread)",
        "scheduler, one at a time",
        "scheduler, all submitted at once",
    ];
    for (name, d) in names.iter().zip(totals) {
        println!(
            "{name:<44}{:>10.0} {:>12.0}",
            jobs as f64 / d.as_secs_f64(),
            d.as_secs_f64() * 1e6 / jobs as f64
        );
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        100.0 * (v[v.len() / 2] - 1.0)
    };
    println!(
        "scheduler cost vs bare (median of rounds): {:+.0}% one at a time, {:+.0}% all at once",
        median(&mut ratios[0]),
        median(&mut ratios[1])
    );
}
