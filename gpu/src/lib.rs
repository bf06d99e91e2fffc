//! `edge-gpu`: other people's compute on this box's GPU, through wgpu on Vulkan.
//!
//! - [`job`]: the job model (versioned JSON, documented in `docs/jobs.md`): a WGSL compute kernel,
//!   its bindings with sizes and inputs, the dispatch, priority, deadline and limits.
//! - [`validate`]: nothing reaches the GPU unchecked: the WGSL is parsed and validated by naga, the
//!   shader's bindings must match the job's, and every size must fit the adapter and the owner's
//!   memory budget. Each refusal says what and where (line:column for shader errors).
//! - [`executor`]: one OS thread owns the wgpu `Device` and `Queue`; callers talk to it over a
//!   channel. Pipelines are cached by kernel SHA-256.
//! - [`kernels`]: built-in jobs (FP32 peak, SGEMM, copy bandwidth, an integer hash chain), each with a
//!   CPU reference.
//! - [`receipt`]: a signed receipt for every finished job, and its verification; [`freivalds`]
//!   checks an SGEMM result in O(n^2) without redoing it.
//!
//! - [`worker`]: the line protocol of the child process the agent runs jobs in.
//!
//! Limits today: one bind group (`@group(0)`), storage and uniform buffers only, no textures. A
//! kernel that never ends is detected (time limit) but cannot be stopped in-process: lavapipe and
//! most drivers cannot preempt a running dispatch. The agent therefore runs jobs in a child process
//! it can kill (see `docs/jobs.md`).

pub mod digest;
pub mod executor;
pub mod freivalds;
pub mod job;
pub mod kernels;
pub mod receipt;
pub mod validate;
pub mod worker;
