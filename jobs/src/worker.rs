//! The GPU worker protocol: the agent runs jobs in a child process (`edge-gpu-worker`) that
//! owns the executor, so that a runaway kernel is stopped by killing the process, a driver crash
//! takes down only the worker, the Vulkan driver is never mapped into the daemon, and the process
//! that runs other people's shaders never holds the device's identity key (receipts are signed by
//! the agent from the worker's answer).
//!
//! One JSON object per line in each direction. The worker first says [`Hello`]; then for each
//! [`Request`], a batch of jobs run in one GPU submission, it answers one [`Response`] per job, in
//! order. The outputs of a [`Done`] follow its line as raw bytes, as many as its `output_bytes`
//! say ([`take_answer`] reads them): no base64, no JSON escaping of megabytes. It exits when its
//! input closes, and right after a job overruns its limit (the runaway cannot be stopped
//! otherwise).

use std::io::Write;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::adapter::{GpuInfo, GpuStatus};
use crate::digest::Sha256;
use crate::job::Job;

/// Most jobs the worker runs in one submission.
pub const MAX_BATCH: usize = 16;

/// Why a job did not produce outputs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ExecError {
    /// There is no usable GPU.
    #[error("no GPU: {reason}")]
    NoGpu {
        /// Why the device could not be opened, e.g. `no Vulkan adapter found: ...` (with
        /// `VK_ICD_FILENAMES` where set), or the device refused to open.
        reason: String,
    },
    /// The kernel ran past the job's limit.
    #[error(
        "the kernel ran past its limit of {limit:?}; the job was failed and the device replaced"
    )]
    Timeout {
        /// The job's `max_runtime_ms`; for a batch, the sum of its jobs' limits.
        limit: Duration,
    },
    /// The driver refused or failed the work.
    #[error("the GPU driver failed the job: {message}")]
    Driver {
        /// wgpu's error (validation, out of memory, device lost), or the executor's own, such as a
        /// batch over [`MAX_BATCH`].
        message: String,
    },
    /// The executor thread is gone.
    #[error("the GPU executor has stopped")]
    Stopped,
}

/// The worker's first line: GPU discovery. The agent's discovery at start is this line too
/// (`edge-gpu-worker hello` opens the device as `serve` does, says it, and exits), so the limits
/// jobs are checked against are those of the adapter they run on.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Hello {
    /// The device is open: what it is.
    Ready {
        /// The adapter, its driver and its limits.
        gpu: GpuInfo,
    },
    /// No GPU could be opened.
    NoGpu {
        /// The error opening the device, as displayed, e.g. `no GPU: no Vulkan adapter found: ...`.
        reason: String,
    },
}

impl From<Hello> for GpuStatus {
    fn from(hello: Hello) -> Self {
        match hello {
            Hello::Ready { gpu } => Self::Available(gpu),
            Hello::NoGpu { reason } => Self::Unavailable { reason },
        }
    }
}

/// A request for the worker's account of its own confinement instead of jobs (`edge-agent
/// sandbox`, and the image's boot test): it answers one JSON line (`edge_gpu::sandbox::Report`)
/// saying its user, capabilities and system-call filter, and whether it could open `probe` (a file
/// it must not read, the identity key), open an `AF_INET` socket and trace the agent. It tells
/// whoever holds the connection (only the agent's user can open it) nothing secret.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxProbe {
    /// The file the worker must not be able to open.
    pub probe: std::path::PathBuf,
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
    /// The job as the consumer sent it; the worker validates it against `budget` before running.
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
    /// [`Job::id`], copied from the job.
    pub job_id: String,
    /// SHA-256 of the WGSL.
    pub kernel_sha256: Sha256,
    /// SHA-256 of the inputs.
    pub input_sha256: Sha256,
    /// SHA-256 of the outputs.
    pub output_sha256: Sha256,
    /// The size of each output binding, in binding order, whose bytes follow the line; empty
    /// when the outputs were not asked for.
    pub output_bytes: Vec<u64>,
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
}

/// The answer to one request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    /// It ran, alone or in a batch; its outputs follow the line if they were asked for.
    Done(Done),
    /// Validation refused it; it never reached the GPU.
    Refused {
        /// Every problem, `at: message`.
        problems: Vec<String>,
    },
    /// The GPU failed it.
    Failed {
        /// The executor's error. After an [`ExecError::Timeout`] the worker exits once it has
        /// answered.
        error: ExecError,
    },
    /// The batch it ran in failed as a whole (a driver error or a timeout cannot be pinned on one
    /// job of a submission): run it again alone.
    Unsettled {
        /// What happened to the batch.
        reason: String,
    },
}

/// One answer as read off the wire: the response and, for [`Response::Done`], the outputs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The answer's JSON line, parsed.
    pub response: Response,
    /// Each output binding's bytes, in binding order.
    pub outputs: Vec<Vec<u8>>,
}

/// Why bytes from the worker are not a well-formed message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The line is not the message expected.
    #[error("bad message from the worker: {0}")]
    Json(String),
    /// An answer claims more output than its job can have.
    #[error("the answer claims {claimed} bytes of outputs; at most {max} were expected")]
    TooLarge {
        /// The sum of the answer's `output_bytes`, in bytes (saturating).
        claimed: u64,
        /// The most the job's outputs can be.
        max: u64,
    },
}

/// Takes one whole line off the front of `buf` and parses it; `None` until the line is whole.
pub fn take_line<T: serde::de::DeserializeOwned>(
    buf: &mut Vec<u8>,
) -> Result<Option<T>, FrameError> {
    let Some(end) = buf.iter().position(|&b| b == b'\n') else {
        return Ok(None);
    };
    let message = serde_json::from_slice(&buf[..end]).map_err(|e| FrameError::Json(e.to_string()));
    buf.drain(..=end);
    message.map(Some)
}

/// Takes one whole answer, its line and the outputs after it, off the front of `buf` (bytes read
/// from the worker, in order), leaving what follows; `None` until it has all arrived. An answer
/// may claim at most `max_outputs` bytes of outputs: the most its job can have.
pub fn take_answer(buf: &mut Vec<u8>, max_outputs: u64) -> Result<Option<Answer>, FrameError> {
    let Some(end) = buf.iter().position(|&b| b == b'\n') else {
        return Ok(None);
    };
    let response: Response =
        serde_json::from_slice(&buf[..end]).map_err(|e| FrameError::Json(e.to_string()))?;
    let lengths = match &response {
        Response::Done(done) => done.output_bytes.as_slice(),
        _ => &[],
    };
    let claimed = lengths.iter().fold(0, |a: u64, &b| a.saturating_add(b));
    if claimed > max_outputs {
        return Err(FrameError::TooLarge {
            claimed,
            max: max_outputs,
        });
    }
    // Within `max_outputs`, which is within memory: the sizes fit in usize.
    let whole = end + 1 + claimed as usize;
    if buf.len() < whole {
        return Ok(None);
    }
    let rest = buf.split_off(whole);
    let frame = std::mem::replace(buf, rest);
    let mut at = end + 1;
    let outputs = lengths
        .iter()
        .map(|&len| {
            let bytes = frame[at..at + len as usize].to_vec();
            at += len as usize;
            bytes
        })
        .collect();
    Ok(Some(Answer { response, outputs }))
}

/// Writes one message as a JSON line (the caller flushes).
pub fn write_line(output: &mut impl Write, message: &impl Serialize) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(message).map_err(std::io::Error::other)?;
    line.push(b'\n');
    output.write_all(&line)
}

/// Writes one message as a JSON line and flushes it.
pub fn send(output: &mut impl Write, message: &impl Serialize) -> std::io::Result<()> {
    write_line(output, message)?;
    output.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn done(output_bytes: Vec<u64>) -> Response {
        Response::Done(Done {
            job_id: "j".into(),
            kernel_sha256: Sha256::of(b"k"),
            input_sha256: Sha256::of(b"i"),
            output_sha256: Sha256::of(b"o"),
            output_bytes,
            started_at_unix_ms: 1,
            duration_us: 2,
            kernel_us: None,
            cached_pipeline: false,
            batch: 1,
        })
    }

    fn wire(response: &Response, outputs: &[&[u8]]) -> Vec<u8> {
        let mut bytes = Vec::new();
        write_line(&mut bytes, response).expect("encodes");
        outputs.iter().for_each(|o| bytes.extend_from_slice(o));
        bytes
    }

    #[test]
    fn answers_arriving_a_byte_at_a_time_come_out_whole_and_in_order() {
        let first = done(vec![3, 0, 5]);
        let second = Response::Refused {
            problems: vec!["dispatch: zero".into()],
        };
        let mut sent = wire(&first, &[b"abc", b"", b"\n\n{}\n"]);
        sent.extend(wire(&second, &[]));
        let mut buf = Vec::new();
        let mut got = Vec::new();
        for byte in sent {
            buf.push(byte);
            while let Some(answer) = take_answer(&mut buf, 8).expect("well formed") {
                got.push(answer);
            }
        }
        assert!(buf.is_empty());
        assert_eq!(
            got,
            [
                Answer {
                    response: first,
                    outputs: vec![b"abc".to_vec(), Vec::new(), b"\n\n{}\n".to_vec()],
                },
                Answer {
                    response: second,
                    outputs: Vec::new(),
                },
            ]
        );
    }

    #[test]
    fn an_answer_that_claims_too_much_or_is_not_json_is_refused() {
        let mut buf = wire(&done(vec![4, u64::MAX]), &[]);
        assert_eq!(
            take_answer(&mut buf, 1 << 20),
            Err(FrameError::TooLarge {
                claimed: u64::MAX,
                max: 1 << 20
            })
        );
        let mut buf = b"{\"done\":\n".to_vec();
        assert!(matches!(
            take_answer(&mut buf, 1 << 20),
            Err(FrameError::Json(_))
        ));
        let ready = Hello::Ready {
            gpu: GpuInfo {
                name: "llvmpipe".into(),
                backend: "vulkan".into(),
                device_type: "cpu".into(),
                driver: "llvmpipe".into(),
                driver_info: "Mesa 22.3.6".into(),
                vendor_id: 0x10005,
                device_id: 0,
                limits: crate::adapter::lavapipe_limits(),
            },
        };
        let mut buf = serde_json::to_vec(&ready).expect("json");
        buf.extend_from_slice(b"\nrest");
        let hello: Option<Hello> = take_line(&mut buf).expect("hello");
        match hello {
            Some(Hello::Ready { gpu }) => {
                assert_eq!(gpu.driver_version(), "llvmpipe / Mesa 22.3.6");
                assert_eq!(gpu.limits, crate::adapter::lavapipe_limits());
            }
            other => panic!("expected ready, got {other:?}"),
        }
        assert_eq!(buf, b"rest");
    }
}
