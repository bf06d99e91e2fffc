//! `edge-agent`: the daemon that runs on the edge box.
//!
//! Today it loads and validates its config, opens (or makes) the device identity, probes the GPU,
//! samples the hardware through [`edge_hal`], serves a read-only status endpoint and speaks
//! systemd's notify and watchdog protocols. Every long-lived task has one shape,
//! `async fn run(self, shutdown: CancellationToken) -> Result<(), E>`, and all are wired in
//! [`app`]. Later issues add GPU jobs, network reporting and pairing on the same frame.

pub mod app;
pub mod check;
pub mod client;
pub mod config;
pub mod exit;
pub mod jobs;
pub mod lock;
pub mod logging;
pub mod metrics;
pub mod monitor;
pub mod progress;
pub mod snapshot;
pub mod state;
pub mod status;
pub mod systemd;
