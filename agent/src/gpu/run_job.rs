//! `edge-agent run-job`: validate, run and sign one GPU job by hand, for developers and support.
//!
//! The job is a JSON file (see docs/jobs.md) or a built-in: `builtin:hash_chain[:COUNT]`,
//! `builtin:copy[:BYTES]`, `builtin:fma_peak[:WORKGROUPS]`, `builtin:sgemm[:N]`, or
//! `builtin:runaway[:LIMIT_MS]` (a kernel that never ends, to see the time limit work).

use std::path::Path;

use edge_identity::Identity;
use edge_jobs::check::output_bytes;
use edge_jobs::job::Job;
use edge_jobs::kernels;
use edge_jobs::receipt::{self, Receipt};
use edge_jobs::worker::Submitted;
use tokio::time::Instant;

use crate::gpu::scheduler::JobError;
use crate::gpu::worker::GpuWorker;

/// Why a job did not run.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RunJobError {
    /// The job file cannot be read.
    #[error("cannot read job file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    /// The outputs cannot be written.
    #[error("cannot write outputs to {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    /// The job file is not a job.
    #[error("{path}: {source}")]
    Parse {
        path: String,
        source: edge_jobs::job::JobError,
    },
    /// An unknown or malformed built-in.
    #[error("{0}")]
    Builtin(String),
    /// The worker refused it, the GPU failed it, or there is none.
    #[error(transparent)]
    Job(#[from] JobError),
}

/// A built-in job by name, or the job in a file.
pub(crate) fn load(spec: &str) -> Result<Job, RunJobError> {
    let Some(builtin) = spec.strip_prefix("builtin:") else {
        let text = std::fs::read_to_string(spec).map_err(|source| RunJobError::Read {
            path: spec.to_owned(),
            source,
        })?;
        return Job::from_json(&text).map_err(|source| RunJobError::Parse {
            path: spec.to_owned(),
            source,
        });
    };
    let (name, arg) = builtin
        .split_once(':')
        .map_or((builtin, None), |(n, a)| (n, Some(a)));
    let number = |default: u32| -> Result<u32, RunJobError> {
        arg.map_or(Ok(default), |a| {
            a.parse()
                .map_err(|_| RunJobError::Builtin(format!("{spec}: {a:?} is not a number")))
        })
    };
    let bad = |e: kernels::BuiltinError| RunJobError::Builtin(format!("{spec}: {e}"));
    match name {
        "hash_chain" => kernels::hash_chain(0x5eed, 1000, number(65_536)?).map_err(bad),
        "copy" => {
            let bytes = number(64 << 20)?;
            let input: Vec<u8> = (0..bytes).map(|i| i as u8).collect();
            kernels::copy(bytes, Some(&input)).map_err(bad)
        }
        "fma_peak" => Ok(kernels::fma_peak(number(256)?, 1024)),
        "sgemm" => {
            let n = number(512)?;
            let a = kernels::random_f32s(n as usize * n as usize, 1);
            let b = kernels::random_f32s(n as usize * n as usize, 2);
            kernels::sgemm(n, n, n, &a, &b).map_err(bad)
        }
        "runaway" => Ok(kernels::runaway(u64::from(number(2000)?))),
        other => Err(RunJobError::Builtin(format!(
            "unknown built-in {other:?}; try hash_chain, copy, fma_peak, sgemm or runaway"
        ))),
    }
}

/// Runs `job` in a fresh GPU worker (reached as `worker` says; it validates the job); writes the
/// outputs to `output` if given, and signs the receipt here, where the key is.
pub(crate) async fn run(
    job: Job,
    identity: &Identity,
    budget: u64,
    worker: edge_hal::gpu::WorkerLaunch,
    output: Option<&Path>,
) -> Result<Receipt, RunJobError> {
    let mut gpu = GpuWorker::new(worker);
    let max_outputs = output_bytes(&job);
    let prepared = crate::gpu::worker::prepare(&Submitted { job, outputs: true })?;
    gpu.send(&[&prepared], budget).await?;
    let finished = gpu
        .answer(Instant::now(), prepared.limit, max_outputs)
        .await?;
    gpu.release().await;
    if let Some(path) = output {
        std::fs::write(path, finished.outputs.concat()).map_err(|source| RunJobError::Write {
            path: path.display().to_string(),
            source,
        })?;
    }
    Ok(receipt::sign(
        identity,
        finished.done.attested(&finished.adapter, &finished.driver),
    ))
}
