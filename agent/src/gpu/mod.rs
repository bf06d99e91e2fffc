//! GPU work on the daemon's side: the scheduler in front of the worker process, the client for that
//! process, the capability benchmark and `run-job`. Neither wgpu nor naga is linked here: the
//! worker (`edge-gpu-worker`) parses, validates and runs shaders.

pub(crate) mod capability;
mod job_error;
pub(crate) mod run_job;
pub mod scheduler;
pub mod worker;
