//! The GPU executor: one OS thread owns the wgpu `Device` and `Queue`; callers send it validated
//! jobs over a channel and get the outputs back on a reply channel.
//!
//! A driver error or a lost device fails only the job that was running, and the thread opens a new
//! device before the next job. A job that overruns its time limit is failed at the limit; its
//! device is abandoned (not destroyed: destroying waits for the runaway dispatch, which on most
//! drivers never ends) and a new one opened. The runaway keeps its GPU (on lavapipe, a CPU core)
//! busy until the process exits, which is why the agent runs the executor in a child process it
//! can kill.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

use edge_jobs::adapter::{GpuInfo, GpuLimits};
use edge_jobs::digest::Sha256;
use edge_jobs::job::BindingKind;
use edge_jobs::receipt::Attested;
use edge_jobs::worker::{ExecError, MAX_BATCH};

use crate::validate::ValidJob;

/// Compiled pipelines kept before the cache starts over.
const PIPELINE_CACHE_ENTRIES: usize = 64;

/// What a finished job produced.
#[derive(Debug, Clone)]
pub struct JobOutput {
    /// Contents of each `storage_read_write` binding after the run, in job order, by binding number.
    pub outputs: Vec<(u32, Vec<u8>)>,
    /// Wall-clock time at submission.
    pub started_at: SystemTime,
    /// Submission to outputs read back.
    pub duration: Duration,
    /// The compute pass alone, from GPU timestamps where the adapter has them.
    pub kernel_time: Option<Duration>,
    /// Whether the pipeline came from the cache.
    pub cached_pipeline: bool,
}

impl JobOutput {
    /// SHA-256 over the outputs' bytes, in binding order.
    pub fn output_sha256(&self) -> Sha256 {
        Sha256::of_parts(self.outputs.iter().map(|(_, b)| b.as_slice()))
    }

    /// What a receipt for this in-process run of `job` on `adapter` attests.
    pub fn attested(&self, adapter: &Adapter, job: &ValidJob) -> Attested {
        let output = self;
        Attested {
            job_id: job.job.id.clone(),
            kernel_sha256: job.kernel_sha256,
            input_sha256: job.input_sha256(),
            output_sha256: output.output_sha256(),
            adapter: adapter.name.clone(),
            driver: adapter.driver.clone(),
            started_at_unix_ms: output
                .started_at
                .duration_since(std::time::SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            duration_us: output.duration.as_micros() as u64,
            kernel_us: output.kernel_time.map(|t| t.as_micros() as u64),
            batch: None,
        }
    }
}

/// The adapter the executor runs on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Adapter {
    /// The adapter's name as wgpu reports it, e.g. `Adreno (TM) 650`.
    pub name: String,
    /// Driver and version, e.g. `llvmpipe / Mesa 22.3.6 (LLVM 15.0.6)`.
    pub driver: String,
    /// Limits jobs are validated against.
    pub limits: GpuLimits,
}

struct Request {
    job: ValidJob,
    reply: mpsc::Sender<Result<JobOutput, ExecError>>,
}

/// Handle to the executor thread. Dropping it stops the thread after the running job.
pub struct Executor {
    requests: Option<mpsc::Sender<Request>>,
    adapter: Adapter,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Executor {
    /// Opens the best Vulkan adapter on a new thread.
    pub fn start() -> Result<Self, ExecError> {
        let (tx, rx) = mpsc::channel::<Request>();
        let (ready_tx, ready_rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("gpu-executor".into())
            .spawn(move || {
                let mut gpu = match Gpu::open() {
                    Ok(gpu) => {
                        let _ = ready_tx.send(Ok(gpu.adapter.clone()));
                        gpu
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                for Request { job, reply } in rx {
                    let result = gpu.run(&job);
                    let replace = gpu.is_broken_by(&result);
                    // Answer first: opening a new device takes time the caller should not wait.
                    let _ = reply.send(result);
                    if replace {
                        gpu = gpu.replace();
                    }
                }
            })
            .map_err(|e| ExecError::NoGpu {
                reason: format!("cannot start the executor thread: {e}"),
            })?;
        let adapter = ready_rx.recv().map_err(|_| ExecError::Stopped)??;
        Ok(Self {
            requests: Some(tx),
            adapter,
            thread: Some(thread),
        })
    }

    /// The adapter jobs run on.
    pub fn adapter(&self) -> &Adapter {
        &self.adapter
    }

    /// Queues `job`; the result arrives on the returned channel.
    pub fn submit(&self, job: ValidJob) -> mpsc::Receiver<Result<JobOutput, ExecError>> {
        let (reply, rx) = mpsc::channel();
        if let Some(requests) = &self.requests {
            // A send error drops `reply`, and the receiver then sees the executor as stopped.
            let _ = requests.send(Request { job, reply });
        }
        rx
    }

    /// Runs `job` and waits for it.
    pub fn run(&self, job: ValidJob) -> Result<JobOutput, ExecError> {
        self.submit(job).recv().unwrap_or(Err(ExecError::Stopped))
    }
}

impl Drop for Executor {
    fn drop(&mut self) {
        drop(self.requests.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A device and what is cached on it, owned by one thread: the [`Executor`]'s, or a caller that
/// runs jobs on its own thread (the GPU worker process, which saves a thread hand-off per job).
pub struct Gpu {
    adapter: Adapter,
    info: GpuInfo,
    device: wgpu::Device,
    queue: wgpu::Queue,
    pipelines: HashMap<(Sha256, String), wgpu::ComputePipeline>,
    lost: Arc<AtomicBool>,
    /// Query set and buffers for timing the compute pass, where the adapter supports it.
    timestamps: Option<Timestamps>,
    /// Devices abandoned after a runaway kernel; never destroyed (see the module docs).
    abandoned: Vec<wgpu::Device>,
}

impl Gpu {
    /// Opens the best Vulkan adapter.
    pub fn open() -> Result<Self, ExecError> {
        let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
        desc.backends = wgpu::Backends::VULKAN;
        let instance = wgpu::Instance::new(desc);
        let adapter = pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions {
            power_preference: wgpu::PowerPreference::HighPerformance,
            ..Default::default()
        }))
        .map_err(|e| ExecError::NoGpu {
            reason: crate::discover::no_adapter(&e),
        })?;
        let timestamps = adapter.features().contains(wgpu::Features::TIMESTAMP_QUERY);
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("edge-gpu"),
            required_features: if timestamps {
                wgpu::Features::TIMESTAMP_QUERY
            } else {
                wgpu::Features::empty()
            },
            required_limits: adapter.limits(),
            experimental_features: wgpu::ExperimentalFeatures::default(),
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::Off,
        }))
        .map_err(|e| ExecError::NoGpu {
            reason: format!("cannot open the device: {e}"),
        })?;
        let lost = Arc::new(AtomicBool::new(false));
        let flag = lost.clone();
        device.set_device_lost_callback(move |reason, message| {
            tracing::error!(?reason, %message, "GPU device lost");
            flag.store(true, Ordering::SeqCst);
        });
        device.on_uncaptured_error(Arc::new(
            |e| tracing::error!(error = %e, "uncaptured GPU error"),
        ));
        let info = crate::discover::info_of(&adapter);
        Ok(Self {
            adapter: Adapter {
                name: info.name.clone(),
                driver: info.driver_version(),
                limits: info.limits.clone(),
            },
            info,
            timestamps: timestamps.then(|| Timestamps::new(&device)),
            device,
            queue,
            pipelines: HashMap::new(),
            lost,
            abandoned: Vec::new(),
        })
    }

    /// The adapter jobs run on.
    pub fn adapter(&self) -> &Adapter {
        &self.adapter
    }

    /// The adapter jobs run on, as discovery reports it.
    pub fn info(&self) -> &GpuInfo {
        &self.info
    }

    /// Whether `result` (of [`Gpu::run`]) left the device unusable: then [`Gpu::replace`] it.
    pub fn is_broken_by(&self, result: &Result<JobOutput, ExecError>) -> bool {
        matches!(
            result,
            Err(ExecError::Driver { .. } | ExecError::Timeout { .. })
        ) || self.lost.load(Ordering::SeqCst)
    }

    /// A fresh device after a failure; the old one is kept, never destroyed.
    pub fn replace(mut self) -> Self {
        match Gpu::open() {
            Ok(mut fresh) => {
                fresh.abandoned = std::mem::take(&mut self.abandoned);
                fresh.abandoned.push(self.device.clone());
                std::mem::forget(self.queue);
                fresh
            }
            // No new device: keep the old one; the next job will fail and we try again.
            Err(_) => self,
        }
    }

    /// Runs `valid` and reads its outputs back, failing it at its time limit.
    pub fn run(&mut self, valid: &ValidJob) -> Result<JobOutput, ExecError> {
        self.run_batch(&[valid])
            .pop()
            .unwrap_or(Err(ExecError::Stopped))
    }

    /// Runs `jobs` in one submission, each in its own compute pass, and reads every output back
    /// after one wait: for many small jobs, the submission and the wait are most of the cost.
    /// Results come in job order. What cannot be told apart in one submission fails every job of
    /// it: a driver error or out-of-memory (wgpu's error scopes do not say which pass), and a
    /// timeout, where the limit is the sum of the jobs' limits. Run them one by one to find the
    /// culprit. At most [`MAX_BATCH`] jobs (more are failed without running).
    pub fn run_batch(&mut self, jobs: &[&ValidJob]) -> Vec<Result<JobOutput, ExecError>> {
        let all = |e: ExecError| jobs.iter().map(|_| Err(e.clone())).collect();
        if jobs.len() > MAX_BATCH {
            return all(ExecError::Driver {
                message: format!("{} jobs in one batch; at most {MAX_BATCH}", jobs.len()),
            });
        }
        match self.submit_batch(jobs) {
            Ok(outputs) => outputs.into_iter().map(Ok).collect(),
            Err(e) => all(e),
        }
    }

    fn submit_batch(&mut self, jobs: &[&ValidJob]) -> Result<Vec<JobOutput>, ExecError> {
        let driver = |message: String| ExecError::Driver { message };
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let oom = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);

        let keys: Vec<_> = jobs
            .iter()
            .map(|v| (v.kernel_sha256, v.job.kernel.entry_point.clone()))
            .collect();
        let cached: Vec<bool> = keys
            .iter()
            .map(|k| self.pipelines.contains_key(k))
            .collect();
        if self.pipelines.len() + jobs.len() > PIPELINE_CACHE_ENTRIES {
            self.pipelines.clear();
        }
        for (valid, key) in jobs.iter().zip(&keys) {
            if !self.pipelines.contains_key(key) {
                let pipeline = self.pipeline(&valid.job);
                self.pipelines.insert(key.clone(), pipeline);
            }
        }

        let mut encoder = self
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
        let mut readbacks = Vec::with_capacity(jobs.len());
        for (index, (valid, key)) in jobs.iter().zip(&keys).enumerate() {
            readbacks.push(self.encode(valid, &self.pipelines[key], &mut encoder, index as u32));
        }
        if let Some(t) = &self.timestamps {
            let queries = 2 * jobs.len() as u32;
            encoder.resolve_query_set(&t.queries, 0..queries, &t.resolve, 0);
            encoder.copy_buffer_to_buffer(&t.resolve, 0, &t.read, 0, None);
        }
        if let Some(e) = pollster::block_on(oom.pop()) {
            scope_pop_quiet(scope);
            return Err(driver(format!("out of GPU memory: {e}")));
        }
        if let Some(e) = pollster::block_on(scope.pop()) {
            keys.iter().for_each(|key| drop(self.pipelines.remove(key)));
            return Err(driver(e.to_string()));
        }

        let started_at = SystemTime::now();
        let start = Instant::now();
        let index = self.queue.submit([encoder.finish()]);
        for (_, staging) in readbacks.iter().flatten() {
            staging.slice(..).map_async(wgpu::MapMode::Read, |_| {});
        }
        if let Some(t) = &self.timestamps {
            t.read.slice(..).map_async(wgpu::MapMode::Read, |_| {});
        }
        let limit = jobs
            .iter()
            .map(|v| Duration::from_millis(v.job.limits.max_runtime_ms))
            .fold(Duration::ZERO, Duration::saturating_add);
        match self.device.poll(wgpu::PollType::Wait {
            submission_index: Some(index),
            timeout: Some(limit),
        }) {
            Ok(_) => {}
            Err(wgpu::PollError::Timeout) => return Err(ExecError::Timeout { limit }),
            Err(e) => return Err(driver(e.to_string())),
        }
        let duration = start.elapsed();
        if self.lost.load(Ordering::SeqCst) {
            return Err(driver("the device was lost while the job ran".into()));
        }
        let kernel_times = self.kernel_times(jobs.len());
        let mut done = Vec::with_capacity(jobs.len());
        for ((readback, kernel_time), cached_pipeline) in
            readbacks.into_iter().zip(kernel_times).zip(cached)
        {
            let mut outputs = Vec::with_capacity(readback.len());
            for (binding, staging) in readback {
                let bytes = staging
                    .slice(..)
                    .get_mapped_range()
                    .map_err(|e| driver(format!("cannot read back @binding({binding}): {e}")))?
                    .to_vec();
                staging.unmap();
                outputs.push((binding, bytes));
            }
            done.push(JobOutput {
                outputs,
                started_at,
                duration,
                kernel_time,
                cached_pipeline,
            });
        }
        Ok(done)
    }

    /// Compiles `job`'s kernel.
    fn pipeline(&self, job: &edge_jobs::job::Job) -> wgpu::ComputePipeline {
        let module = self
            .device
            .create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(&job.id),
                source: wgpu::ShaderSource::Wgsl(Cow::Borrowed(&job.kernel.wgsl)),
            });
        self.device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(&job.id),
                layout: None,
                module: &module,
                entry_point: Some(&job.kernel.entry_point),
                compilation_options: Default::default(),
                cache: None,
            })
    }

    /// Creates `valid`'s buffers and records its pass (timed with queries `2 * index` and
    /// `2 * index + 1`) and the copies of its outputs; returns the read-back buffers by binding.
    fn encode(
        &self,
        valid: &ValidJob,
        pipeline: &wgpu::ComputePipeline,
        encoder: &mut wgpu::CommandEncoder,
        index: u32,
    ) -> Vec<(u32, wgpu::Buffer)> {
        let (job, device) = (&valid.job, &self.device);
        let buffers: Vec<wgpu::Buffer> = job
            .bindings
            .iter()
            .zip(&valid.inputs)
            .map(|(b, input)| {
                let usage = match b.kind {
                    BindingKind::Uniform => {
                        wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST
                    }
                    _ => {
                        wgpu::BufferUsages::STORAGE
                            | wgpu::BufferUsages::COPY_DST
                            | wgpu::BufferUsages::COPY_SRC
                    }
                };
                let buffer = device.create_buffer(&wgpu::BufferDescriptor {
                    label: None,
                    size: b.size,
                    usage,
                    mapped_at_creation: false,
                });
                if input.iter().any(|&x| x != 0) {
                    self.queue.write_buffer(&buffer, 0, input);
                }
                buffer
            })
            .collect();
        let entries: Vec<wgpu::BindGroupEntry<'_>> = job
            .bindings
            .iter()
            .zip(&buffers)
            .map(|(b, buffer)| wgpu::BindGroupEntry {
                binding: b.binding,
                resource: buffer.as_entire_binding(),
            })
            .collect();
        // A kernel without buffers has no bind group to set.
        let bind_group = (!entries.is_empty()).then(|| {
            device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: None,
                layout: &pipeline.get_bind_group_layout(0),
                entries: &entries,
            })
        });
        {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: None,
                timestamp_writes: self.timestamps.as_ref().map(|t| {
                    wgpu::ComputePassTimestampWrites {
                        query_set: &t.queries,
                        beginning_of_pass_write_index: Some(2 * index),
                        end_of_pass_write_index: Some(2 * index + 1),
                    }
                }),
            });
            pass.set_pipeline(pipeline);
            if let Some(bind_group) = &bind_group {
                pass.set_bind_group(0, bind_group, &[]);
            }
            let [x, y, z] = job.dispatch;
            pass.dispatch_workgroups(x, y, z);
        }
        job.bindings
            .iter()
            .zip(&buffers)
            .filter(|(b, _)| b.kind == BindingKind::StorageReadWrite)
            .map(|(b, buffer)| {
                let staging = device.create_buffer(&wgpu::BufferDescriptor {
                    label: None,
                    size: b.size,
                    usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                });
                encoder.copy_buffer_to_buffer(buffer, 0, &staging, 0, None);
                (b.binding, staging)
            })
            .collect()
    }

    /// Each of the first `jobs` passes' time, from the mapped timestamps (all `None` without them).
    fn kernel_times(&self, jobs: usize) -> Vec<Option<Duration>> {
        let Some(t) = &self.timestamps else {
            return vec![None; jobs];
        };
        let period_ns = f64::from(self.queue.get_timestamp_period());
        let times = match t.read.slice(..).get_mapped_range() {
            Ok(v) => {
                let word =
                    |i: usize| u64::from_le_bytes(v[i * 8..i * 8 + 8].try_into().unwrap_or([0; 8]));
                (0..jobs)
                    .map(|j| {
                        let ticks = word(2 * j + 1).saturating_sub(word(2 * j));
                        Some(Duration::from_nanos((ticks as f64 * period_ns) as u64))
                    })
                    .collect()
            }
            Err(_) => vec![None; jobs],
        };
        t.read.unmap();
        times
    }
}

/// Two timestamps around each compute pass of a batch, resolved and read back with the outputs.
struct Timestamps {
    queries: wgpu::QuerySet,
    resolve: wgpu::Buffer,
    read: wgpu::Buffer,
}

impl Timestamps {
    fn new(device: &wgpu::Device) -> Self {
        let count = 2 * MAX_BATCH as u32;
        let size = u64::from(count) * u64::from(wgpu::QUERY_SIZE);
        Self {
            queries: device.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("pass times"),
                ty: wgpu::QueryType::Timestamp,
                count,
            }),
            resolve: device.create_buffer(&wgpu::BufferDescriptor {
                label: None,
                size,
                usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            }),
            read: device.create_buffer(&wgpu::BufferDescriptor {
                label: None,
                size,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            }),
        }
    }
}

fn scope_pop_quiet(scope: wgpu::ErrorScopeGuard) {
    drop(pollster::block_on(scope.pop()));
}
