//! What the scheduler costs: small-job throughput through the whole path (queue, admission,
//! worker process, JSON lines, receipt signing) next to a bare wgpu submit-and-read-back loop of
//! the same job on one thread, in the same run. The scheduler runs small jobs that wait together
//! in one submission ([`Gpu::run_batch`]), so a bare loop that batches as much is printed too:
//! against it, the scheduler's own cost shows. The paths run in interleaved rounds, so that a
//! change in the machine's load hits all of them alike. Prints figures; asserts nothing about
//! time. CPU time per job is printed beside it, for this process and for the worker (on
//! lavapipe the GPU is these same two cores, so CPU the scheduler spends is taken from the GPU).
//!
//!     cargo bench -p edge-agent --bench scheduler

use std::sync::Arc;
use std::time::{Duration, Instant};

use edge_agent::gpu::scheduler::{GpuMetrics, Policy, Scheduler, SchedulerHandle, SchedulerParts};
use edge_agent::gpu::worker::GpuWorker;
use edge_gpu::executor::Gpu;
use edge_gpu::validate::{ValidJob, validate};
use edge_hal::{SysfsThermal, SystemClock};
use edge_identity::Identity;
use edge_jobs::job::{BlobStore, Job};
use edge_jobs::kernels;
use edge_jobs::worker::MAX_BATCH;
use tokio_util::sync::CancellationToken;

/// CPU time of process `pid`, all its threads, from the scheduler's nanosecond counters.
/// The GPU worker built beside the agent (`cargo build -p edge-gpu` puts it there).
fn worker() -> std::path::PathBuf {
    let worker =
        edge_hal::gpu::worker_beside(std::path::Path::new(env!("CARGO_BIN_EXE_edge-agent")));
    assert!(
        worker.exists(),
        "{} is not built: cargo build -p edge-gpu",
        worker.display()
    );
    worker
}

fn cpu(pid: u32) -> Duration {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten();
    let ns: u64 = tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    Duration::from_nanos(ns)
}

/// This process's children (the GPU worker).
fn children() -> Vec<u32> {
    let me = std::process::id();
    let tasks = std::fs::read_dir(format!("/proc/{me}/task"))
        .into_iter()
        .flatten();
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|s| {
            s.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

/// CPU time of this process and of the GPU worker.
fn cpu_now() -> [Duration; 2] {
    let worker = children().into_iter().map(cpu).sum();
    [cpu(std::process::id()), worker]
}

/// Interleaved rounds per job size.
const ROUNDS: usize = 3;

async fn one_at_a_time(handle: &SchedulerHandle, job: &Job, jobs: usize) -> Duration {
    let start = Instant::now();
    for _ in 0..jobs {
        handle.run(job.clone()).await.expect("run");
    }
    start.elapsed()
}

async fn all_at_once(handle: &SchedulerHandle, job: &Job, jobs: usize) -> Duration {
    let start = Instant::now();
    let tasks: Vec<_> = (0..jobs)
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

/// Runs `jobs` copies of `job` per path in each of [`ROUNDS`] rounds and prints the table.
async fn compare(gpu: &mut Gpu, handle: &SchedulerHandle, job: &Job, what: &str, jobs: usize) {
    let store = BlobStore {
        dir: "/nonexistent".into(),
    };
    let valid = validate(job.clone(), &gpu.adapter().limits, u64::MAX, &store).expect("valid");
    gpu.run(&valid).expect("warm-up");
    handle.run(job.clone()).await.expect("warm-up");

    let mut totals = [Duration::ZERO; 4];
    // CPU per path: [this process, the worker].
    let mut cpus = [[Duration::ZERO; 2]; 4];
    let mut ratios: [Vec<f64>; 3] = [Vec::new(), Vec::new(), Vec::new()];
    let batch: Vec<&ValidJob> = std::iter::repeat_n(&valid, MAX_BATCH).collect();
    let mut count = |path: usize, before: [Duration; 2]| {
        let after = cpu_now();
        for side in 0..2 {
            cpus[path][side] += after[side].saturating_sub(before[side]);
        }
    };
    for _ in 0..ROUNDS {
        let before = cpu_now();
        let start = Instant::now();
        for _ in 0..jobs {
            gpu.run(&valid).expect("run");
        }
        let bare = start.elapsed();
        count(0, before);
        let before = cpu_now();
        let start = Instant::now();
        for _ in 0..jobs / MAX_BATCH {
            for result in gpu.run_batch(&batch) {
                result.expect("run");
            }
        }
        gpu.run_batch(&batch[..jobs % MAX_BATCH])
            .into_iter()
            .for_each(|result| drop(result.expect("run")));
        let batched = start.elapsed();
        count(3, before);
        let before = cpu_now();
        let sequential = one_at_a_time(handle, job, jobs).await;
        count(1, before);
        let before = cpu_now();
        let pipelined = all_at_once(handle, job, jobs).await;
        count(2, before);
        for (total, d) in totals[..3].iter_mut().zip([bare, sequential, pipelined]) {
            *total += d;
        }
        totals[3] += batched;
        ratios[0].push(sequential.as_secs_f64() / bare.as_secs_f64());
        ratios[1].push(pipelined.as_secs_f64() / bare.as_secs_f64());
        ratios[2].push(pipelined.as_secs_f64() / batched.as_secs_f64());
    }

    let n = ROUNDS * jobs;
    println!("\n{n} jobs per path ({what}), {ROUNDS} interleaved rounds");
    println!(
        "{:<44}{:>10} {:>12} {:>16} {:>14}",
        "path", "jobs/s", "us per job", "CPU us/job here", "worker CPU us"
    );
    let names = [
        "bare wgpu submit + read-back (one thread)",
        "scheduler, one at a time",
        "scheduler, all submitted at once",
        "bare wgpu, 16 jobs per submission",
    ];
    let per_job = |d: Duration| d.as_secs_f64() * 1e6 / n as f64;
    for ((name, d), [here, worker]) in names.iter().zip(totals).zip(cpus) {
        println!(
            "{name:<44}{:>10.0} {:>12.0} {:>16.0} {:>14.0}",
            n as f64 / d.as_secs_f64(),
            per_job(d),
            per_job(here),
            per_job(worker)
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
    println!(
        "all at once vs the bare loop batched as much: {:+.0}%",
        median(&mut ratios[2])
    );
}

fn main() {
    let blobs = tempfile::tempdir().expect("tempdir");
    // Bare loop: validated once, then submitted and read back on this thread.
    let mut gpu = Gpu::open().expect("a GPU");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let worker = GpuWorker::serving(&worker(), blobs.path());
        let (scheduler, handle) = Scheduler::new(
            SchedulerParts {
                gpu: Ok(gpu.adapter().limits.clone()),
                // No thermal pause and no idle release within a run: the bench measures the
                // scheduler, not the policy.
                policy: Policy {
                    queue_capacity: 1000,
                    memory_budget: 1 << 30,
                    pause_above_celsius: 200.0,
                    resume_below_celsius: 150.0,
                    idle_release: Duration::from_secs(600),
                    ..Policy::default()
                },
                identity: Arc::new(Identity::generate_ephemeral().expect("key")),
                thermal: Arc::new(SysfsThermal::default()),
                clock: Arc::new(SystemClock),
                blobs: BlobStore {
                    dir: blobs.path().to_owned(),
                },
                metrics: Arc::new(GpuMetrics::default()),
            },
            worker,
        );
        let shutdown = CancellationToken::new();
        tokio::spawn(scheduler.run(shutdown.clone()));
        let tiny = kernels::hash_chain(3, 16, 256).expect("job");
        compare(
            &mut gpu,
            &handle,
            &tiny,
            "hash_chain, 256 items x 16 rounds",
            300,
        )
        .await;
        let small = kernels::hash_chain(3, 256, 1 << 16).expect("job");
        compare(
            &mut gpu,
            &handle,
            &small,
            "hash_chain, 65536 items x 256 rounds",
            40,
        )
        .await;
        shutdown.cancel();
    });
    println!(
        "\n(CPU includes lavapipe's threads: the bare loop's in this process, the scheduler's in the worker)"
    );
}
