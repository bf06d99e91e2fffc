//! The capability benchmark: what this box's GPU can do, measured with the built-in kernels
//! through the scheduler (so on the worker, like any job), cached in the state directory and
//! measured again only when the agent version, the adapter or its driver changes. A measurement
//! that fails (a worker that did not start, a wrong result) is tried again with backoff until it
//! succeeds: a box without figures offers nothing to the network.

use edge_protocol::exposition::Exposition;
use std::convert::Infallible;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use backon::{BackoffBuilder, ExponentialBuilder};

use edge_identity::durable;
use edge_jobs::adapter::GpuStatus;
use edge_jobs::kernels::{self, f32s};
use edge_jobs::{freivalds, job::Job};
use edge_protocol::report::Compute;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::gpu::scheduler::{JobError, JobResult, SchedulerHandle};
use crate::version::VERSIONS;

/// SGEMM size of the benchmark.
const SGEMM_N: u32 = 512;
/// Copy size of the bandwidth measurement.
const COPY_BYTES: u32 = 32 << 20;

/// The wait after a first failed measurement; it doubles (with jitter) up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_secs(10);
/// The longest wait between measurements that fail.
const RETRY_MAX: Duration = Duration::from_secs(30 * 60);

/// Errors measuring.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CapabilityError {
    /// A benchmark job failed.
    #[error("benchmark job failed: {0}")]
    Job(#[from] JobError),
    /// The GPU computed a wrong SGEMM.
    #[error("the GPU's SGEMM result is wrong: {0}")]
    Wrong(#[from] freivalds::Mismatch),
}

/// Measures (or loads) the capability once at start.
pub(crate) struct CapabilityTask {
    /// Runs the benchmark jobs.
    pub scheduler: SchedulerHandle,
    pub cache: PathBuf,
    /// The adapter found at start.
    pub gpu: GpuStatus,
    /// Where the result goes.
    pub publish: watch::Sender<Option<Compute>>,
    /// Measure when the cache does not answer (else only load it).
    pub measure: bool,
}

impl CapabilityTask {
    /// Loads the cache or measures (again after each failure, with backoff); then ends.
    pub(crate) async fn run(self, shutdown: CancellationToken) -> Result<(), Infallible> {
        let GpuStatus::Available(info) = &self.gpu else {
            return Ok(());
        };
        if let Some(cached) = self.load()
            && cached.agent_version == VERSIONS.agent
            && cached.adapter == info.name
            && cached.driver == info.driver_info
        {
            tracing::info!(sgemm_gflops = cached.sgemm_gflops, "capability from cache");
            self.publish.send_replace(Some(cached));
            return Ok(());
        }
        if !self.measure {
            return Ok(());
        }
        crate::host::systemd::status("measuring GPU capability");
        let mut backoff = ExponentialBuilder::default()
            .with_min_delay(RETRY_FIRST)
            .with_max_delay(RETRY_MAX)
            .with_jitter()
            .without_max_times()
            .build();
        let measured = loop {
            let attempt = tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                m = measure(&self.scheduler, &info.name, &info.driver_info) => m,
            };
            let e = match attempt {
                Ok(measured) => break measured,
                Err(e) => e,
            };
            let wait = backoff.next().unwrap_or(RETRY_MAX);
            tracing::warn!(error = %e, retry_in = ?wait, "measuring the GPU capability failed");
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                () = tokio::time::sleep(wait) => {}
            }
        };
        tracing::info!(
            fp32_peak_gflops = measured.fp32_peak_gflops,
            sgemm_gflops = measured.sgemm_gflops,
            memory_bandwidth_gbps = measured.memory_bandwidth_gbps,
            dispatch_round_trip_us = measured.dispatch_round_trip_us,
            "capability measured"
        );
        if let Err(e) = self.store(&measured) {
            tracing::warn!(error = %e, path = %self.cache.display(), "cannot cache the capability");
        }
        self.publish.send_replace(Some(measured));
        Ok(())
    }

    fn load(&self) -> Option<Compute> {
        // A cache that cannot be read is measured again, not an error.
        durable::read_json(&self.cache).ok().flatten()
    }

    fn store(&self, capability: &Compute) -> Result<(), durable::FileError> {
        durable::write_json(&self.cache, capability, 0o644)
    }
}

/// Runs `job` twice (the first compiles the pipeline) and returns the second run; the outputs
/// come back only when `outputs`.
async fn timed(
    scheduler: &SchedulerHandle,
    job: Job,
    outputs: bool,
) -> Result<JobResult, JobError> {
    scheduler.run_for_receipt(job.clone()).await?;
    if outputs {
        scheduler.run(job).await
    } else {
        scheduler.run_for_receipt(job).await
    }
}

/// The kernel's own time where the GPU has timestamps, else submission to read-back.
fn seconds(result: &JobResult) -> f64 {
    let body = &result.receipt.body.what;
    body.kernel_us.unwrap_or(body.duration_us).max(1) as f64 / 1e6
}

/// Measures every figure through `scheduler`.
pub(crate) async fn measure(
    scheduler: &SchedulerHandle,
    adapter: &str,
    driver: &str,
) -> Result<Compute, CapabilityError> {
    let (groups, iters) = (256, 1024);
    let fma = timed(scheduler, kernels::fma_peak(groups, iters), false).await?;
    let fp32_peak_gflops = kernels::fma_peak_flops(groups, iters) / seconds(&fma) / 1e9;

    let n = SGEMM_N as usize;
    let a = kernels::random_f32s(n * n, 1);
    let b = kernels::random_f32s(n * n, 2);
    let job = kernels::sgemm(SGEMM_N, SGEMM_N, SGEMM_N, &a, &b).map_err(|e| JobError::Refused {
        problems: vec![e.to_string()],
    })?;
    let sgemm = timed(scheduler, job, true).await?;
    let c = f32s(&sgemm.outputs[0]);
    freivalds::check((n, n, n), &a, &b, &c, 2, 0x5eed)?;
    let sgemm_gflops = 2.0 * (n as f64).powi(3) / seconds(&sgemm) / 1e9;

    // Zeros in, nothing back: the kernel moves the bytes all the same, and 2 x 32 MiB never pass
    // through the daemon.
    let copy_job = kernels::copy(COPY_BYTES, None).map_err(|e| JobError::Refused {
        problems: vec![e.to_string()],
    })?;
    let copy = timed(scheduler, copy_job, false).await?;
    let memory_bandwidth_gbps = 2.0 * f64::from(COPY_BYTES) / seconds(&copy) / 1e9;

    let tiny = kernels::hash_chain(1, 1, 64).map_err(|e| JobError::Refused {
        problems: vec![e.to_string()],
    })?;
    // A run that shared its submission with other jobs did not time one round trip alone: keep
    // the runs that ran alone (all of them but on a box busy with other work).
    let mut trips = Vec::new();
    let mut shared = Vec::new();
    for _ in 0..33 {
        let what = scheduler
            .run_for_receipt(tiny.clone())
            .await?
            .receipt
            .body
            .what;
        match what.batch {
            None => trips.push(what.duration_us as f64),
            Some(jobs) => shared.push(what.duration_us as f64 / f64::from(jobs)),
        }
        if trips.len() == 11 {
            break;
        }
    }
    if trips.is_empty() {
        trips = shared;
    }
    trips.sort_by(f64::total_cmp);

    Ok(Compute {
        agent_version: VERSIONS.agent.to_owned(),
        adapter: adapter.to_owned(),
        driver: driver.to_owned(),
        measured_at_unix: SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        fp32_peak_gflops,
        sgemm_gflops,
        sgemm_n: SGEMM_N,
        memory_bandwidth_gbps,
        dispatch_round_trip_us: trips[trips.len() / 2],
    })
}
/// The `edge_gpu_capability` family.
pub(crate) fn write_metrics(cap: &Compute, e: &mut Exposition) {
    e.family("edge_gpu_capability", "gauge", "Measured GPU capability.");
    for (what, value) in [
        ("fp32_peak_gflops", cap.fp32_peak_gflops),
        ("sgemm_gflops", cap.sgemm_gflops),
        ("memory_bandwidth_gbps", cap.memory_bandwidth_gbps),
        ("dispatch_round_trip_us", cap.dispatch_round_trip_us),
    ] {
        e.sample("edge_gpu_capability", &[("measure", what)], value);
    }
}
