//! `edge-agent`: the daemon that runs on the edge box.
//!
//! It loads and validates its config, opens (or makes) the device identity, samples the hardware
//! through [`edge_hal`], schedules GPU jobs on the GPU worker process (`edge-gpu-worker`: the
//! daemon links neither wgpu nor naga) and signs their receipts, measures its compute capability,
//! reports to the network through an on-disk queue, takes jobs from it, serves the owner's pairing
//! and control channel over the LAN and Bluetooth LE, serves a read-only status endpoint and speaks
//! systemd's notify and watchdog protocols.
//!
//! One folder per subsystem; the arrows between them point one way:
//!
//! - `config`: the config files, their fields and their checks;
//! - `host`: the box itself (hardware snapshots and their loop, systemd, the state directory and
//!   its lock, logging);
//! - [`gpu`]: the scheduler in front of the GPU worker, the worker's client side, the capability
//!   benchmark, `run-job`;
//! - `network`: the hub client, the report queue, delivery, telemetry, job intake, measurements;
//! - `pairing`: the owner's bridge (pairing window, owner links, control), mDNS, link caps;
//! - `status`: `/status` and `/metrics`, which read the others' views and which nothing imports;
//! - `commands`: the one-shot commands;
//! - leaves: `version` and `exit`; blocking work and the task set are `edge_tasks`.
//!
//! [`app`] wires them: `App::build` then `App::spawn`.

pub mod app;
pub mod commands;
pub mod config;
pub mod exit;
pub mod gpu;
pub(crate) mod host;
pub(crate) mod network;
pub(crate) mod pairing;
pub(crate) mod status;
pub(crate) mod version;

pub use host::logging;
