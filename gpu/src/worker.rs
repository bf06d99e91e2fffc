//! The GPU worker protocol: the agent runs jobs in a child process (`edge-agent gpu-worker`) that
//! owns the executor, so that a runaway kernel is stopped by killing the process, a driver crash
//! takes down only the worker, the Vulkan driver is never mapped into the daemon, and the process
//! that runs other people's shaders never holds the device's identity key (receipts are signed by
//! the agent from the worker's answer).
//!
//! One JSON object per line in each direction. The worker first says [`Hello`]; then for each
//! [`Request`] it answers one [`Response`]. It exits when its input closes, and right after a job
//! overruns its limit (the runaway cannot be stopped otherwise).

use std::io::{BufRead, Write};
use std::time::SystemTime;

use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::digest::Sha256;
use crate::executor::{ExecError, Gpu};
use crate::job::{BlobStore, Job};
use crate::validate::{Problem, ShaderCache, validate_cached};

/// The worker's first line.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Hello {
    /// The device is open.
    Ready {
        /// Adapter name.
        adapter: String,
        /// Driver and version.
        driver: String,
    },
    /// No GPU could be opened.
    NoGpu {
        /// Why.
        reason: String,
    },
}

/// A job to run, with the owner's GPU memory budget to validate it against.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Request {
    /// The job as submitted.
    pub job: Job,
    /// GPU memory budget in bytes.
    pub budget: u64,
    /// Send the outputs back (else only their hash, in `Done::output_sha256`).
    #[serde(default = "yes")]
    pub outputs: bool,
}

fn yes() -> bool {
    true
}

/// What a finished job produced: everything a receipt needs, and the outputs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Done {
    /// The job id.
    pub job_id: String,
    /// SHA-256 of the WGSL.
    pub kernel_sha256: Sha256,
    /// SHA-256 of the inputs.
    pub input_sha256: Sha256,
    /// SHA-256 of the outputs.
    pub output_sha256: Sha256,
    /// Each output binding's bytes, base64, in binding order; empty when not asked for.
    pub outputs_base64: Vec<String>,
    /// Submission time, Unix milliseconds.
    pub started_at_unix_ms: u64,
    /// Submission to read-back, microseconds.
    pub duration_us: u64,
    /// The compute pass alone (GPU timestamps), microseconds, where the adapter has them.
    pub kernel_us: Option<u64>,
    /// Whether the pipeline was cached.
    pub cached_pipeline: bool,
}

impl Done {
    /// What a receipt for this run attests.
    pub fn attested(&self, adapter: &str, driver: &str) -> crate::receipt::Attested {
        crate::receipt::Attested {
            job_id: self.job_id.clone(),
            kernel_sha256: self.kernel_sha256,
            input_sha256: self.input_sha256,
            output_sha256: self.output_sha256,
            adapter: adapter.to_owned(),
            driver: driver.to_owned(),
            started_at_unix_ms: self.started_at_unix_ms,
            duration_us: self.duration_us,
            kernel_us: self.kernel_us,
        }
    }

    /// The outputs' bytes.
    pub fn outputs(&self) -> Vec<Vec<u8>> {
        self.outputs_base64
            .iter()
            .map(|b| {
                base64::engine::general_purpose::STANDARD
                    .decode(b)
                    .unwrap_or_default()
            })
            .collect()
    }
}

/// The answer to one request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    /// It ran.
    Done(Done),
    /// Validation refused it.
    Refused {
        /// Every problem, `at: message`.
        problems: Vec<String>,
    },
    /// The GPU failed it.
    Failed {
        /// What happened.
        error: ExecError,
    },
}

/// Serves requests from `input` until it closes; answers on `output`. Returns after a timeout, too
/// (the caller should then exit the process).
pub fn serve(
    input: impl BufRead,
    mut output: impl Write,
    blobs: &BlobStore,
) -> std::io::Result<()> {
    // The device lives on this thread: no hand-off to an executor thread per job, and a job's
    // time limit holds all the same (the wait for it is bounded).
    let mut gpu = match Gpu::open() {
        Ok(gpu) => gpu,
        Err(e) => {
            return send(
                &mut output,
                &Hello::NoGpu {
                    reason: e.to_string(),
                },
            );
        }
    };
    let adapter = gpu.adapter();
    send(
        &mut output,
        &Hello::Ready {
            adapter: adapter.name.clone(),
            driver: adapter.driver.clone(),
        },
    )?;
    let mut shaders = ShaderCache::default();
    for line in input.lines() {
        let (response, broken) = answer(&mut gpu, &line?, blobs, &mut shaders);
        send(&mut output, &response)?;
        if let Response::Failed {
            error: ExecError::Timeout { .. },
        } = response
        {
            // The runaway dispatch cannot be stopped; the device must not be torn down.
            std::mem::forget(gpu);
            return Ok(());
        }
        if broken {
            gpu = gpu.replace();
        }
    }
    Ok(())
}

/// Validates and runs one request line; says too whether the device must be replaced.
fn answer(
    gpu: &mut Gpu,
    line: &str,
    blobs: &BlobStore,
    shaders: &mut ShaderCache,
) -> (Response, bool) {
    let Request {
        job,
        budget,
        outputs,
    } = match serde_json::from_str(line) {
        Ok(request) => request,
        Err(e) => {
            let problems = vec![format!("request: {e}")];
            return (Response::Refused { problems }, false);
        }
    };
    let mut valid = match validate_cached(job, &gpu.adapter().limits, budget, blobs, shaders) {
        Ok(valid) => valid,
        Err(refused) => {
            let problems = refused.problems.iter().map(Problem::to_string).collect();
            return (Response::Refused { problems }, false);
        }
    };
    // Keep what the answer needs, and hand the inputs over rather than copy them.
    let (kernel_sha256, input_sha256) = (valid.kernel_sha256, valid.input_sha256());
    valid.job.bindings.iter_mut().for_each(|b| b.input = None);
    let result = gpu.run(&valid);
    let broken = gpu.is_broken_by(&result);
    let response = match result {
        Ok(out) => Response::Done(Done {
            job_id: valid.job.id,
            kernel_sha256,
            input_sha256,
            output_sha256: out.output_sha256(),
            outputs_base64: if outputs {
                let base64 = &base64::engine::general_purpose::STANDARD;
                out.outputs.iter().map(|(_, b)| base64.encode(b)).collect()
            } else {
                Vec::new()
            },
            started_at_unix_ms: out
                .started_at
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            duration_us: out.duration.as_micros() as u64,
            kernel_us: out.kernel_time.map(|t| t.as_micros() as u64),
            cached_pipeline: out.cached_pipeline,
        }),
        Err(error) => Response::Failed { error },
    };
    (response, broken)
}

/// Writes one message as a JSON line and flushes it.
pub fn send(output: &mut impl Write, message: &impl Serialize) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(message).map_err(std::io::Error::other)?;
    line.push(b'\n');
    output.write_all(&line)?;
    output.flush()
}
