//! `edge-gpu`: other people's compute on this box's GPU, through wgpu on Vulkan. Everything here
//! runs in the GPU worker process (`edge-gpu-worker`), never in the daemon: untrusted WGSL is
//! parsed, and the Vulkan driver loaded, only in a process the agent can kill and that holds no key.
//!
//! - [`discover`]: the adapter opened, and its limits, as the worker says them (`edge-gpu-worker hello`).
//! - [`validate`]: nothing reaches the GPU unchecked: the WGSL is parsed and validated by naga, the
//!   shader's bindings must match the job's, then [`edge_jobs::check`] holds every size to the
//!   adapter and the owner's memory budget. Each refusal says what and where.
//! - [`executor`]: the wgpu `Device` and `Queue`, pipelines cached by kernel SHA-256, batches of
//!   small jobs in one submission.
//! - [`worker`]: the worker's side of [`edge_jobs::worker`].
//! - [`sandbox`]: the worker's confinement (resource limits, Landlock, a seccomp allowlist),
//!   installed before the device opens.
//!
//! Limits today: one bind group (`@group(0)`), storage and uniform buffers only, no textures. A
//! kernel that never ends is detected (time limit) but cannot be stopped in-process: lavapipe and
//! most drivers cannot preempt a running dispatch, so the agent kills the worker (see
//! `docs/jobs.md`).

pub mod discover;
pub mod executor;
pub mod sandbox;
pub mod validate;
pub mod worker;
