//! The worker's side of the protocol in [`edge_jobs::worker`]: it opens the GPU, says hello,
//! then validates (naga) and runs each request's jobs in one submission.

use std::io::{BufRead, Write};
use std::time::SystemTime;

use edge_jobs::check::Problem;
use edge_jobs::digest::Sha256;
use edge_jobs::job::BlobStore;
use edge_jobs::worker::{
    Done, ExecError, Hello, MAX_BATCH, Request, Response, SandboxProbe, Submitted, send, write_line,
};

use crate::executor::{Gpu, JobOutput};
use crate::sandbox::{self, Confined};
use crate::validate::{ShaderCache, ValidJob, validate_cached};

/// What the worker does after a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum After {
    Continue,
    /// The device is broken: open a new one.
    Replace,
    /// A dispatch overran: exit (it cannot be stopped, and the device must not be torn down).
    Exit,
}

/// Opens the device and says what it is, or why there is none: the worker's first line, and all
/// of `edge-gpu-worker hello` (the agent's discovery at start).
pub fn hello(mut output: impl Write) -> std::io::Result<Option<Gpu>> {
    match Gpu::open() {
        Ok(gpu) => {
            send(
                &mut output,
                &Hello::Ready {
                    gpu: gpu.info().clone(),
                },
            )?;
            Ok(Some(gpu))
        }
        Err(e) => {
            send(
                &mut output,
                &Hello::NoGpu {
                    reason: e.to_string(),
                },
            )?;
            Ok(None)
        }
    }
}

/// Serves requests from `input` until it closes; answers on `output`. Returns after a timeout, too
/// (the caller should then exit the process). A [`SandboxProbe`] line is answered with the
/// [`sandbox::report`] of this process, confined as `confined` says.
pub fn serve(
    input: impl BufRead,
    mut output: impl Write,
    blobs: &BlobStore,
    confined: Confined,
) -> std::io::Result<()> {
    // The device lives on this thread: no hand-off to an executor thread per job, and a job's
    // time limit holds all the same (the wait for it is bounded).
    let Some(mut gpu) = hello(&mut output)? else {
        return Ok(());
    };
    let mut shaders = ShaderCache::default();
    for line in input.lines() {
        let line = line?;
        if let Ok(SandboxProbe { probe }) = serde_json::from_str(&line) {
            send(&mut output, &sandbox::report(confined, &probe))?;
            continue;
        }
        let (answers, after) = answer(&mut gpu, &line, blobs, &mut shaders);
        for (response, outputs) in &answers {
            write_line(&mut output, response)?;
            outputs
                .iter()
                .try_for_each(|bytes| output.write_all(bytes))?;
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

/// A response and the outputs that follow its line.
type Reply = (Response, Vec<Vec<u8>>);

/// Validates one request line's jobs and runs those that pass in one submission; answers every
/// job, in order, and says what to do next.
fn answer(
    gpu: &mut Gpu,
    line: &str,
    blobs: &BlobStore,
    shaders: &mut ShaderCache,
) -> (Vec<Reply>, After) {
    let refused = |problems| (Response::Refused { problems }, Vec::new());
    let Request { budget, jobs } = match serde_json::from_str(line) {
        Ok(request) => request,
        Err(e) => {
            let problems = vec![format!("request: {e}")];
            return (vec![refused(problems)], After::Continue);
        }
    };
    let mut responses: Vec<Option<Reply>> = vec![None; jobs.len()];
    let mut runs = Vec::with_capacity(jobs.len());
    for (index, Submitted { job, outputs }) in jobs.into_iter().enumerate() {
        if index >= MAX_BATCH {
            let problems = vec![format!("jobs[{index}]: at most {MAX_BATCH} jobs per batch")];
            responses[index] = Some(refused(problems));
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
                responses[index] = Some((Response::Refused { problems }, Vec::new()));
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
            Ok(out) => done(run, out, size),
            Err(error) if size == 1 => (Response::Failed { error }, Vec::new()),
            Err(error) => (
                Response::Unsettled {
                    reason: error.to_string(),
                },
                Vec::new(),
            ),
        });
    }
    (responses.into_iter().flatten().collect(), after)
}

/// The answer for a job that ran, and its outputs when they were asked for.
fn done(run: Run, out: JobOutput, batch: u32) -> Reply {
    let Run {
        valid,
        input_sha256,
        outputs,
        ..
    } = run;
    let output_sha256 = out.output_sha256();
    let outputs: Vec<Vec<u8>> = if outputs {
        out.outputs.into_iter().map(|(_, bytes)| bytes).collect()
    } else {
        Vec::new()
    };
    let done = Done {
        output_sha256,
        job_id: valid.job.id,
        kernel_sha256: valid.kernel_sha256,
        input_sha256,
        output_bytes: outputs.iter().map(|b| b.len() as u64).collect(),
        started_at_unix_ms: out
            .started_at
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
        duration_us: out.duration.as_micros() as u64,
        kernel_us: out.kernel_time.map(|t| t.as_micros() as u64),
        cached_pipeline: out.cached_pipeline,
        batch,
    };
    (Response::Done(done), outputs)
}
