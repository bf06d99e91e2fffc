//! The agent's side of the GPU worker process (`edge-gpu-worker serve`, protocol in
//! [`edge_jobs::worker`]): started on the first job, killed when a job overruns, released when the
//! GPU has been idle for a while so that an idle agent holds no driver memory.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use edge_hal::gpu::WorkerLaunch;
use edge_jobs::digest::Sha256;
use edge_jobs::worker::{
    Answer, Done, Hello, Response, Submitted, request_line, take_answer, take_line,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::process::{Child, Command};
use tokio::time::Instant;

use crate::gpu::job_error::JobError;

/// How long the worker may take to open the device.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Slack beyond a job's own limit before the agent kills the worker (the worker enforces the limit
/// itself; this catches a worker that is wedged outside the dispatch).
const KILL_SLACK: Duration = Duration::from_secs(5);

struct Running {
    /// The process, where the agent started it (not when the service manager did, on a socket).
    child: Option<Child>,
    /// Requests go here; closing it asks the worker to exit.
    stdin: Box<dyn AsyncWrite + Send + Unpin>,
    stdout: Box<dyn AsyncRead + Send + Unpin>,
    /// Bytes read from the worker and not yet taken as a message.
    read: Vec<u8>,
    adapter: String,
    driver: String,
}

impl Running {
    /// Reads more of the worker's output; false at its end. Cancel-safe: what was read stays in
    /// `read`.
    async fn read_more(&mut self) -> std::io::Result<bool> {
        self.read.reserve(64 << 10);
        Ok(self.stdout.read_buf(&mut self.read).await? > 0)
    }

    /// Whether the worker has gone (its output ended or broke), without waiting.
    async fn has_exited(&mut self) -> bool {
        if let Some(child) = &mut self.child
            && !matches!(child.try_wait(), Ok(None))
        {
            return true;
        }
        // An idle worker says nothing: anything readable now is its end.
        matches!(
            tokio::time::timeout(Duration::ZERO, self.read_more()).await,
            Ok(Ok(false) | Err(_))
        )
    }

    /// Stops the worker without waiting: a child is killed (tokio reaps it), a connection closed
    /// (the worker exits when it sees that, `edge_gpu::sandbox::exit_when_hung_up`).
    fn stop(mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.start_kill();
        }
    }
}

/// A job the worker ran: its answer and outputs, and the adapter and driver it ran on.
#[derive(Debug)]
pub struct Finished {
    /// What the worker says it did.
    pub done: Done,
    /// The outputs, when they were asked for.
    pub outputs: Vec<Vec<u8>>,
    /// Adapter name.
    pub adapter: String,
    /// Driver and version.
    pub driver: String,
}

/// The worker process, started on demand.
pub struct GpuWorker {
    launch: WorkerLaunch,
    running: Option<Running>,
    /// Jobs sent and not yet answered.
    in_flight: usize,
}

/// A job encoded for the worker.
pub struct Prepared {
    json: Vec<u8>,
    /// How long the worker may take over it once it is the oldest job in flight.
    pub limit: Duration,
    /// The job's id, and its kernel's digest (what a worker's answer must name).
    pub job_id: String,
    /// SHA-256 of the job's WGSL.
    pub kernel_sha256: Sha256,
}

/// What the scheduler needs of a GPU worker: [`GpuWorker`] on the device; in the scheduler's own
/// tests, a fake that answers on paused time, so its policy is tested without a driver.
pub trait Worker: Send + 'static {
    /// Whether a worker process is up (holding the device).
    fn is_running(&self) -> bool;
    /// Sends a batch of jobs, run in one GPU submission (see [`GpuWorker::send`]).
    fn send(
        &mut self,
        batch: &[&Prepared],
        budget: u64,
    ) -> impl Future<Output = Result<(), JobError>> + Send;
    /// The answer to the oldest job in flight (see [`GpuWorker::answer`]). Cancel-safe.
    fn answer(
        &mut self,
        started: Instant,
        limit: Duration,
        max_outputs: u64,
    ) -> impl Future<Output = Result<Finished, JobError>> + Send;
    /// Stops the worker at once.
    fn kill(&mut self) -> impl Future<Output = ()> + Send;
    /// Lets an idle worker exit.
    fn release(&mut self) -> impl Future<Output = ()> + Send;
}

impl Worker for GpuWorker {
    fn is_running(&self) -> bool {
        GpuWorker::is_running(self)
    }

    fn send(
        &mut self,
        batch: &[&Prepared],
        budget: u64,
    ) -> impl Future<Output = Result<(), JobError>> + Send {
        GpuWorker::send(self, batch, budget)
    }

    fn answer(
        &mut self,
        started: Instant,
        limit: Duration,
        max_outputs: u64,
    ) -> impl Future<Output = Result<Finished, JobError>> + Send {
        GpuWorker::answer(self, started, limit, max_outputs)
    }

    fn kill(&mut self) -> impl Future<Output = ()> + Send {
        GpuWorker::kill(self)
    }

    fn release(&mut self) -> impl Future<Output = ()> + Send {
        GpuWorker::release(self)
    }
}

/// Encodes `job` for a [`Worker`].
pub fn prepare(job: &Submitted) -> Result<Prepared, JobError> {
    // Beyond the kernel's own limit the worker resolves, hashes and uploads the inputs: allow
    // for that at a conservative 100 MiB/s.
    let bytes: u64 = job.job.bindings.iter().map(|b| b.size).sum();
    let limit = Duration::from_millis(job.job.limits.max_runtime_ms)
        + KILL_SLACK
        + Duration::from_secs(bytes / (100 << 20));
    let json = serde_json::to_vec(job).map_err(|e| JobError::Crashed {
        message: format!("cannot encode the job: {e}"),
    })?;
    Ok(Prepared {
        json,
        limit,
        job_id: job.job.id.clone(),
        kernel_sha256: Sha256::of(job.job.kernel.wgsl.as_bytes()),
    })
}

impl Prepared {
    /// Its size on the wire, bytes.
    pub fn wire_len(&self) -> usize {
        self.json.len()
    }
}

impl GpuWorker {
    /// A worker reached as `launch` says.
    pub fn new(launch: WorkerLaunch) -> Self {
        Self {
            launch,
            running: None,
            in_flight: 0,
        }
    }

    /// The worker as a build tree runs it: `WORKER serve --blobs DIR`, a child of the agent.
    pub fn serving(worker: &Path, blobs: &Path) -> Self {
        Self::new(launch(None, worker, blobs))
    }

    /// Whether a worker process is up (holding the device).
    pub fn is_running(&self) -> bool {
        self.running.is_some()
    }

    async fn start(&mut self) -> Result<&mut Running, JobError> {
        // A worker that died while idle (OOM killer, driver crash) is replaced, not written to.
        if let Some(running) = &mut self.running
            && running.has_exited().await
        {
            tracing::warn!("GPU worker had exited while idle; starting a new one");
            self.running = None;
        }
        if self.running.is_none() {
            let crashed = |message: String| JobError::Crashed { message };
            let mut running = connect(&self.launch).await.map_err(crashed)?;
            let hello = tokio::time::timeout(START_TIMEOUT, async {
                loop {
                    let hello = take_line::<Hello>(&mut running.read).map_err(|e| e.to_string())?;
                    if hello.is_some() {
                        return Ok(hello);
                    }
                    if !running.read_more().await.map_err(|e| e.to_string())? {
                        return Ok(None);
                    }
                }
            })
            .await
            .map_err(|_| JobError::Killed {
                limit: START_TIMEOUT,
            })?
            .map_err(|e: String| crashed(format!("reading its hello: {e}")))?;
            let Some(hello) = hello else {
                let status = match &mut running.child {
                    Some(child) => child
                        .wait()
                        .await
                        .map(|s| s.to_string())
                        .unwrap_or_default(),
                    None => "it closed the connection".into(),
                };
                return Err(crashed(format!("it exited before saying hello ({status})")));
            };
            match hello {
                Hello::Ready { gpu } => {
                    tracing::info!(adapter = %gpu.name, "GPU worker started");
                    running.driver = gpu.driver_version();
                    running.adapter = gpu.name;
                    self.running = Some(running);
                }
                Hello::NoGpu { reason } => return Err(JobError::NoGpu { reason }),
            }
        }
        self.running.as_mut().ok_or_else(|| JobError::Crashed {
            message: "worker vanished".into(),
        })
    }

    /// Sends a batch of jobs, run in one GPU submission, starting the worker if none is up. The
    /// worker runs batches in the order sent and answers each job in turn
    /// ([`GpuWorker::answer`]); a batch sent while another runs waits in the pipe, so the worker
    /// starts it the moment the previous one is done. `budget` is the GPU memory budget per job.
    pub async fn send(&mut self, batch: &[&Prepared], budget: u64) -> Result<(), JobError> {
        // A worker that died with jobs in flight is not replaced here: their answers must come
        // from the process they were sent to (its end is read as a crash by `answer`).
        let running = if self.in_flight == 0 {
            self.start().await?
        } else {
            self.running.as_mut().ok_or_else(|| JobError::Crashed {
                message: "the worker is gone".into(),
            })?
        };
        let line = request_line(budget, batch.iter().map(|job| job.json.as_slice()));
        running
            .stdin
            .write_all(&line)
            .await
            .map_err(|e| JobError::Crashed {
                message: format!("cannot send the job: {e}"),
            })?;
        self.in_flight += batch.len();
        Ok(())
    }

    /// The answer to the oldest job in flight, with the adapter and driver it ran on. Without an
    /// answer by `deadline` the worker is killed. Timeouts, crashes, driver errors and a batch
    /// that failed as a whole kill the worker (a lost device does not heal; the next job gets a
    /// fresh process): every job still in flight is then lost and must be sent again.
    /// Cancel-safe: dropping the future loses no answer. `started` is when the job became the
    /// oldest in flight, `limit` how long it may take from then (for the first job of a batch,
    /// the sum of its jobs' [`Prepared::limit`]s); `max_outputs` the most bytes of outputs the job
    /// can have (an answer that claims more is a crash).
    pub async fn answer(
        &mut self,
        started: Instant,
        limit: Duration,
        max_outputs: u64,
    ) -> Result<Finished, JobError> {
        let result = self.read_answer(started + limit, limit, max_outputs).await;
        match &result {
            Ok(_) | Err(JobError::Refused { .. }) => self.in_flight -= 1,
            // No await here: the caller may drop this future as soon as it yields, and the
            // answer must not be lost half-way through stopping the worker.
            Err(_) => self.abandon(),
        }
        result
    }

    /// Stops the worker without waiting for it to exit.
    fn abandon(&mut self) {
        self.in_flight = 0;
        if let Some(running) = self.running.take() {
            running.stop();
        }
    }

    async fn read_answer(
        &mut self,
        deadline: Instant,
        limit: Duration,
        max_outputs: u64,
    ) -> Result<Finished, JobError> {
        let crashed = |message: String| JobError::Crashed { message };
        let running = self
            .running
            .as_mut()
            .filter(|_| self.in_flight > 0)
            .ok_or_else(|| crashed("no job is in flight".into()))?;
        let Answer { response, outputs } = loop {
            match take_answer(&mut running.read, max_outputs) {
                Ok(Some(answer)) => break answer,
                Ok(None) => {}
                Err(e) => return Err(crashed(e.to_string())),
            }
            let more = tokio::time::timeout_at(deadline, running.read_more())
                .await
                .map_err(|_| JobError::Killed { limit })?
                .map_err(|e| crashed(e.to_string()))?;
            if !more {
                return Err(crashed("the worker exited while running the job".into()));
            }
        };
        match response {
            Response::Done(done) => Ok(Finished {
                done,
                outputs,
                adapter: running.adapter.clone(),
                driver: running.driver.clone(),
            }),
            Response::Refused { problems } => Err(JobError::Refused { problems }),
            Response::Failed { error } => Err(JobError::Exec(error)),
            Response::Unsettled { reason } => Err(JobError::Unsettled { reason }),
        }
    }

    /// Stops the worker at once.
    pub async fn kill(&mut self) {
        self.in_flight = 0;
        if let Some(mut running) = self.running.take()
            && let Some(child) = &mut running.child
        {
            let _ = child.kill().await;
        }
    }

    /// Lets an idle worker exit (its input closes), stopping it if it does not within a second.
    pub async fn release(&mut self) {
        self.in_flight = 0;
        if let Some(mut running) = self.running.take() {
            running.stdin = Box::new(tokio::io::sink());
            let exited = tokio::time::timeout(Duration::from_secs(1), async {
                match &mut running.child {
                    Some(child) => drop(child.wait().await),
                    None => while matches!(running.read_more().await, Ok(true)) {},
                }
            })
            .await;
            if exited.is_err() {
                running.stop();
            }
            tracing::info!("GPU idle: worker released");
        }
    }

    /// The worker's account of its own confinement ([`edge_jobs::worker::SandboxProbe`]), as the
    /// JSON it sends: `probe` is a file it must not be able to open. Starts a worker if none is
    /// up, and leaves it up.
    pub async fn sandbox_report(&mut self, probe: &Path) -> Result<serde_json::Value, JobError> {
        if self.in_flight > 0 {
            return Err(JobError::Crashed {
                message: "jobs are in flight".into(),
            });
        }
        let crashed = |message: String| JobError::Crashed { message };
        let running = self.start().await?;
        let mut line = serde_json::to_vec(&edge_jobs::worker::SandboxProbe {
            probe: probe.to_owned(),
        })
        .map_err(|e| crashed(e.to_string()))?;
        line.push(b'\n');
        running
            .stdin
            .write_all(&line)
            .await
            .map_err(|e| crashed(format!("cannot ask the worker: {e}")))?;
        let report = tokio::time::timeout(START_TIMEOUT, async {
            loop {
                if let Some(report) = take_line(&mut running.read).map_err(|e| e.to_string())? {
                    return Ok(report);
                }
                if !running.read_more().await.map_err(|e| e.to_string())? {
                    return Err("the worker exited".to_owned());
                }
            }
        })
        .await
        .map_err(|_| JobError::Killed {
            limit: START_TIMEOUT,
        })?;
        if report.is_err() {
            self.abandon();
        }
        report.map_err(crashed)
    }
}

/// How the agent reaches its worker: through `socket` where the config names one (the box's
/// socket unit, `gpu.worker_socket`), else as its child `WORKER serve --blobs DIR`.
pub fn launch(socket: Option<&Path>, worker: &Path, blobs: &Path) -> WorkerLaunch {
    match socket {
        Some(socket) => WorkerLaunch::Socket(socket.to_owned()),
        None => WorkerLaunch::Command(vec![
            worker.into(),
            "serve".into(),
            "--blobs".into(),
            blobs.into(),
        ]),
    }
}

/// Starts or reaches a worker; it has not said hello yet.
async fn connect(launch: &WorkerLaunch) -> Result<Running, String> {
    let running = |child, stdin, stdout| Running {
        child,
        stdin,
        stdout,
        read: Vec::new(),
        adapter: String::new(),
        driver: String::new(),
    };
    match launch {
        WorkerLaunch::Command(command) => {
            let (program, args) = command
                .split_first()
                .ok_or_else(|| "no worker command".to_owned())?;
            let mut child = Command::from(edge_hal::gpu::worker_command(program))
                .args(args)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .map_err(|e| format!("cannot start {}: {e}", program.to_string_lossy()))?;
            let stdin = child.stdin.take().ok_or_else(|| "no stdin".to_owned())?;
            let stdout = child.stdout.take().ok_or_else(|| "no stdout".to_owned())?;
            Ok(running(Some(child), Box::new(stdin), Box::new(stdout)))
        }
        WorkerLaunch::Socket(path) => {
            let stream = tokio::net::UnixStream::connect(path)
                .await
                .map_err(|e| format!("cannot reach the GPU worker at {}: {e}", path.display()))?;
            let (read, write) = stream.into_split();
            Ok(running(None, Box::new(write), Box::new(read)))
        }
    }
}
