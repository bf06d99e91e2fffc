//! What the scheduler costs: small-job throughput through the whole path (queue, admission,
//! worker process, JSON lines, receipt signing) next to a bare in-process wgpu submit-and-read-back
//! loop of the same job, in the same run. Prints figures; asserts nothing about time.
//!
//!     cargo bench -p edge-agent --bench scheduler

use std::sync::Arc;
use std::time::{Duration, Instant};

use edge_agent::gpu_worker::GpuWorker;
use edge_agent::scheduler::{GpuMetrics, Policy, Scheduler, SchedulerParts};
use edge_gpu::executor::Executor;
use edge_gpu::job::BlobStore;
use edge_gpu::kernels;
use edge_gpu::validate::validate;
use edge_hal::{Identity, SysfsThermal, SystemClock};
use tokio_util::sync::CancellationToken;

const JOBS: usize = 300;

fn main() {
    let job = kernels::hash_chain(3, 16, 256).expect("job");
    let blobs = tempfile::tempdir().expect("tempdir");
    let store = BlobStore {
        dir: blobs.path().to_owned(),
    };

    // Bare loop: validate once, then submit and read back in-process.
    let ex = Executor::start().expect("a GPU");
    let limits = ex.adapter().limits.clone();
    let valid = validate(job.clone(), &limits, u64::MAX, &store).expect("valid");
    ex.run(valid.clone()).expect("warm-up");
    let start = Instant::now();
    for _ in 0..JOBS {
        ex.run(valid.clone()).expect("run");
    }
    let bare = start.elapsed();
    drop(ex);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (sequential, pipelined) = runtime.block_on(async {
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

        let start = Instant::now();
        for _ in 0..JOBS {
            handle.run(job.clone()).await.expect("run");
        }
        let sequential = start.elapsed();

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
        let pipelined = start.elapsed();
        shutdown.cancel();
        (sequential, pipelined)
    });

    let rate = |d: Duration| JOBS as f64 / d.as_secs_f64();
    println!("{JOBS} small jobs (hash_chain, 256 items x 16 rounds)");
    println!("{:<44}{:>10} {:>12}", "path", "jobs/s", "us per job");
    for (name, d) in [
        ("bare wgpu submit + read-back (in-process)", bare),
        ("scheduler, one at a time", sequential),
        ("scheduler, all submitted at once", pipelined),
    ] {
        println!(
            "{name:<44}{:>10.0} {:>12.0}",
            rate(d),
            d.as_secs_f64() * 1e6 / JOBS as f64
        );
    }
    println!(
        "scheduler cost vs bare: {:+.0}% one at a time, {:+.0}% pipelined",
        100.0 * (sequential.as_secs_f64() / bare.as_secs_f64() - 1.0),
        100.0 * (pipelined.as_secs_f64() / bare.as_secs_f64() - 1.0)
    );
}
