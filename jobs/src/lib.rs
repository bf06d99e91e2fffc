//! `edge-jobs`: other people's compute, as data: what a job is, what the device signs about it,
//! and how the agent and the GPU worker speak. Pure in the dependency graph (no wgpu, no naga, no
//! async runtime), so the network service, the protocol crate and fuzzers use it without the GPU
//! stack; running jobs is `edge-gpu`'s.
//!
//! - [`job`]: the job model (versioned JSON, documented in `docs/jobs.md`): a WGSL compute kernel,
//!   its bindings with sizes and inputs, the dispatch, priority, deadline and limits.
//! - [`check`]: the checks that need no shader compiler (fields, sizes, the adapter's limits, the
//!   owner's budget, inputs); the worker adds the shader's own problems.
//! - [`adapter`]: what GPU discovery found and the limits jobs are checked against.
//! - [`kernels`]: built-in jobs (FP32 peak, SGEMM, copy bandwidth, an integer hash chain), each with
//!   a CPU reference.
//! - [`receipt`]: the signed receipt for every finished job, and its verification; [`freivalds`]
//!   checks an SGEMM result in O(n^2) without redoing it.
//! - [`worker`]: the line protocol between the agent and the GPU worker process.

pub mod adapter;
pub mod check;
pub mod digest;
pub mod freivalds;
pub mod job;
pub mod kernels;
pub mod receipt;
pub mod worker;
