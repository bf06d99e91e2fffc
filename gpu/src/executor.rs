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

use edge_hal::gpu::GpuLimits;

use crate::digest::Sha256;
use crate::job::BindingKind;
use crate::validate::ValidJob;

/// Compiled pipelines kept before the cache starts over.
const PIPELINE_CACHE_ENTRIES: usize = 64;

/// Why a job did not produce outputs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ExecError {
    /// There is no usable GPU.
    #[error("no GPU: {reason}")]
    NoGpu {
        /// Why.
        reason: String,
    },
    /// The kernel ran past the job's limit.
    #[error(
        "the kernel ran past its limit of {limit:?}; the job was failed and the device replaced"
    )]
    Timeout {
        /// The limit.
        limit: Duration,
    },
    /// The driver refused or failed the work.
    #[error("the GPU driver failed the job: {message}")]
    Driver {
        /// What wgpu said.
        message: String,
    },
    /// The executor thread is gone.
    #[error("the GPU executor has stopped")]
    Stopped,
}

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
}

/// The adapter the executor runs on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Adapter {
    /// Adapter name.
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
            reason: e.to_string(),
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
        let info = adapter.get_info();
        let l = adapter.limits();
        Ok(Self {
            adapter: Adapter {
                name: info.name,
                driver: format!("{} / {}", info.driver, info.driver_info),
                limits: edge_hal::gpu::limits_of(&l),
            },
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
        let job = &valid.job;
        let device = &self.device;
        let driver = |message: String| ExecError::Driver { message };
        let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let oom = device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);

        let key = (valid.kernel_sha256, job.kernel.entry_point.clone());
        let cached_pipeline = self.pipelines.contains_key(&key);
        if !cached_pipeline {
            let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(&job.id),
                source: wgpu::ShaderSource::Wgsl(Cow::Borrowed(&job.kernel.wgsl)),
            });
            let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(&job.id),
                layout: None,
                module: &module,
                entry_point: Some(&job.kernel.entry_point),
                compilation_options: Default::default(),
                cache: None,
            });
            if self.pipelines.len() >= PIPELINE_CACHE_ENTRIES {
                self.pipelines.clear();
            }
            self.pipelines.insert(key.clone(), pipeline);
        }
        let pipeline = &self.pipelines[&key];

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
        let readback: Vec<(u32, &wgpu::Buffer, wgpu::Buffer)> = job
            .bindings
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
                (b.binding, buffer, staging)
            })
            .collect();

        let mut encoder =
            device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
        {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: None,
                timestamp_writes: self.timestamps.as_ref().map(|t| {
                    wgpu::ComputePassTimestampWrites {
                        query_set: &t.queries,
                        beginning_of_pass_write_index: Some(0),
                        end_of_pass_write_index: Some(1),
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
        for (_, buffer, staging) in &readback {
            encoder.copy_buffer_to_buffer(buffer, 0, staging, 0, None);
        }
        if let Some(t) = &self.timestamps {
            encoder.resolve_query_set(&t.queries, 0..2, &t.resolve, 0);
            encoder.copy_buffer_to_buffer(&t.resolve, 0, &t.read, 0, None);
        }
        if let Some(e) = pollster::block_on(oom.pop()) {
            scope_pop_quiet(scope);
            return Err(driver(format!("out of GPU memory: {e}")));
        }
        if let Some(e) = pollster::block_on(scope.pop()) {
            self.pipelines.remove(&key);
            return Err(driver(e.to_string()));
        }

        let started_at = SystemTime::now();
        let start = Instant::now();
        let index = self.queue.submit([encoder.finish()]);
        for (_, _, staging) in &readback {
            staging.slice(..).map_async(wgpu::MapMode::Read, |_| {});
        }
        if let Some(t) = &self.timestamps {
            t.read.slice(..).map_async(wgpu::MapMode::Read, |_| {});
        }
        let limit = Duration::from_millis(job.limits.max_runtime_ms);
        match device.poll(wgpu::PollType::Wait {
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
        let kernel_time = self.timestamps.as_ref().and_then(|t| {
            let ticks = t.read.slice(..).get_mapped_range().ok().map(|v| {
                let word =
                    |i: usize| u64::from_le_bytes(v[i * 8..i * 8 + 8].try_into().unwrap_or([0; 8]));
                word(1).saturating_sub(word(0))
            });
            t.read.unmap();
            let period_ns = f64::from(self.queue.get_timestamp_period());
            ticks.map(|ticks| Duration::from_nanos((ticks as f64 * period_ns) as u64))
        });
        let mut outputs = Vec::with_capacity(readback.len());
        for (binding, _, staging) in readback {
            let bytes = staging
                .slice(..)
                .get_mapped_range()
                .map_err(|e| driver(format!("cannot read back @binding({binding}): {e}")))?
                .to_vec();
            staging.unmap();
            outputs.push((binding, bytes));
        }
        Ok(JobOutput {
            outputs,
            started_at,
            duration,
            kernel_time,
            cached_pipeline,
        })
    }
}

/// Two timestamps around the compute pass, resolved and read back with the outputs.
struct Timestamps {
    queries: wgpu::QuerySet,
    resolve: wgpu::Buffer,
    read: wgpu::Buffer,
}

impl Timestamps {
    fn new(device: &wgpu::Device) -> Self {
        let size = 2 * u64::from(wgpu::QUERY_SIZE);
        Self {
            queries: device.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("pass time"),
                ty: wgpu::QueryType::Timestamp,
                count: 2,
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
