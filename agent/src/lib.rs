//! `edge-agent`: the daemon that runs on the edge box.
//!
//! It loads and validates its config, opens (or makes) the device identity, samples the hardware
//! through [`edge_hal`], schedules GPU jobs on the GPU worker process (`edge-gpu-worker`: the
//! daemon links neither wgpu nor naga) and signs their receipts, measures its compute capability,
//! reports to the network through an on-disk queue, takes jobs from it, serves the owner's pairing
//! and control channel over the LAN and Bluetooth LE, serves a read-only status endpoint and speaks
//! systemd's notify and watchdog protocols. Every long-lived task has one shape,
//! `async fn run(self, shutdown: CancellationToken) -> Result<(), E>`, and all are wired in
//! [`app`].

pub mod advertise;
pub mod app;
pub mod bridge;
pub mod capability;
pub mod check;
pub mod client;
pub mod commands;
pub mod config;
pub mod delivery;
pub mod exit;
pub mod gpu_worker;
pub mod hub_client;
pub mod intake;
pub mod jobs;
pub mod link_caps;
pub mod lock;
pub mod logging;
pub mod measure;
pub mod metrics;
pub mod monitor;
pub mod outbox;
pub mod progress;
pub(crate) mod runtime;
pub mod scheduler;
pub mod snapshot;
pub mod state;
pub mod status;
pub mod systemd;
pub mod telemetry;
