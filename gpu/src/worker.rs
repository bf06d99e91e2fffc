//! The GPU worker protocol: the agent runs jobs in a child process (`edge-agent gpu-worker`) that
//! owns the executor, so that a runaway kernel is stopped by killing the process, a driver crash
//! takes down only the worker, the Vulkan driver is never mapped into the daemon, and the process
//! that runs other people's shaders never holds the device's identity key (receipts are signed by
//! the agent from the worker's answer).
//!
//! One JSON object per line in each direction. The worker first says [`Hello`]; then for each
//! [`Request`], a batch of jobs run in one GPU submission, it answers one [`Response`] per job, in
//! order. It exits when its input closes, and right after a job overruns its limit (the runaway
//! cannot be stopped otherwise).

use std::io::{BufRead, Write};
use std::time::SystemTime;

use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::digest::Sha256;
use crate::executor::{ExecError, Gpu, JobOutput, MAX_BATCH};
use crate::job::{BlobStore, Job};
use crate::validate::{Problem, ShaderCache, ValidJob, validate_cached};

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

/// Jobs to run in one submission (at most [`MAX_BATCH`]), with the owner's GPU memory budget to
/// validate each against. The agent sends pre-encoded [`Submitted`] jobs, so it builds this line
/// itself ([`request_line`]); the worker parses it as this.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Request {
    /// GPU memory budget in bytes, per job.
    pub budget: u64,
    /// The jobs, in the order they are answered.
    pub jobs: Vec<Submitted>,
}

/// One job of a [`Request`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Submitted {
    /// The job as submitted.
    pub job: Job,
    /// Send the outputs back (else only their hash, in `Done::output_sha256`).
    #[serde(default = "yes")]
    pub outputs: bool,
}

/// The request line for `budget` and jobs already encoded as JSON [`Submitted`] objects.
pub fn request_line<'a>(budget: u64, jobs: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut line = format!(r#"{{"budget":{budget},"jobs":["#).into_bytes();
    for (i, job) in jobs.into_iter().enumerate() {
        if i > 0 {
            line.push(b',');
        }
        line.extend_from_slice(job);
    }
    line.extend_from_slice(b"]}\n");
    line
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
    /// Jobs in the submission (1: it ran alone); `started_at_unix_ms` and `duration_us` are the
    /// submission's.
    #[serde(default = "one")]
    pub batch: u32,
}

fn one() -> u32 {
    1
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
            batch: (self.batch > 1).then_some(self.batch),
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
    /// The batch it ran in failed as a whole (a driver error or a timeout cannot be pinned on one
    /// job of a submission): run it again alone.
    Unsettled {
        /// What happened to the batch.
        reason: String,
    },
}

/// What the worker does after a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum After {
    Continue,
    /// The device is broken: open a new one.
    Replace,
    /// A dispatch overran: exit (it cannot be stopped, and the device must not be torn down).
    Exit,
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
        let (responses, after) = answer(&mut gpu, &line?, blobs, &mut shaders);
        for response in &responses {
            write_line(&mut output, response)?;
        }
        output.flush()?;
        match after {
            After::Continue => {}
            After::Replace => gpu = gpu.replace(),
            After::Exit => {
                std::mem::forget(gpu);
                return Ok(());
            }
        }
    }
    Ok(())
}

/// A job that passed validation, and what its answer needs.
struct Run {
    /// Its place in the request.
    index: usize,
    valid: ValidJob,
    input_sha256: Sha256,
    outputs: bool,
}

/// Validates one request line's jobs and runs those that pass in one submission; answers every
/// job, in order, and says what to do next.
fn answer(
    gpu: &mut Gpu,
    line: &str,
    blobs: &BlobStore,
    shaders: &mut ShaderCache,
) -> (Vec<Response>, After) {
    let Request { budget, jobs } = match serde_json::from_str(line) {
        Ok(request) => request,
        Err(e) => {
            let problems = vec![format!("request: {e}")];
            return (vec![Response::Refused { problems }], After::Continue);
        }
    };
    let mut responses: Vec<Option<Response>> = vec![None; jobs.len()];
    let mut runs = Vec::with_capacity(jobs.len());
    for (index, Submitted { job, outputs }) in jobs.into_iter().enumerate() {
        if index >= MAX_BATCH {
            let problems = vec![format!("jobs[{index}]: at most {MAX_BATCH} jobs per batch")];
            responses[index] = Some(Response::Refused { problems });
            continue;
        }
        match validate_cached(job, &gpu.adapter().limits, budget, blobs, shaders) {
            Ok(mut valid) => {
                // Keep what the answer needs, and hand the inputs over rather than copy them.
                let input_sha256 = valid.input_sha256();
                valid.job.bindings.iter_mut().for_each(|b| b.input = None);
                runs.push(Run {
                    index,
                    valid,
                    input_sha256,
                    outputs,
                });
            }
            Err(refused) => {
                let problems = refused.problems.iter().map(Problem::to_string).collect();
                responses[index] = Some(Response::Refused { problems });
            }
        }
    }
    let batch: Vec<&ValidJob> = runs.iter().map(|run| &run.valid).collect();
    let results = if batch.is_empty() {
        Vec::new()
    } else {
        gpu.run_batch(&batch)
    };
    let size = batch.len() as u32;
    let mut after = After::Continue;
    for result in &results {
        if matches!(result, Err(ExecError::Timeout { .. })) {
            after = After::Exit;
        } else if after == After::Continue && gpu.is_broken_by(result) {
            after = After::Replace;
        }
    }
    for (run, result) in runs.into_iter().zip(results) {
        let index = run.index;
        responses[index] = Some(match result {
            Ok(out) => Response::Done(done(run, out, size)),
            Err(error) if size == 1 => Response::Failed { error },
            Err(error) => Response::Unsettled {
                reason: error.to_string(),
            },
        });
    }
    (responses.into_iter().flatten().collect(), after)
}

/// The answer for a job that ran.
fn done(run: Run, out: JobOutput, batch: u32) -> Done {
    let Run {
        valid,
        input_sha256,
        outputs,
        ..
    } = run;
    Done {
        output_sha256: out.output_sha256(),
        job_id: valid.job.id,
        kernel_sha256: valid.kernel_sha256,
        input_sha256,
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
        batch,
    }
}

/// Writes one message as a JSON line.
fn write_line(output: &mut impl Write, message: &impl Serialize) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(message).map_err(std::io::Error::other)?;
    line.push(b'\n');
    output.write_all(&line)
}

/// Writes one message as a JSON line and flushes it.
pub fn send(output: &mut impl Write, message: &impl Serialize) -> std::io::Result<()> {
    write_line(output, message)?;
    output.flush()
}
