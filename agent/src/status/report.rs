//! What the running agent knows about itself, shared by its tasks and its status endpoint.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use edge_identity::DeviceId;
use edge_jobs::adapter::GpuStatus;
use edge_protocol::report::Compute;
use serde::Serialize;
use tokio::time::Instant;

use crate::gpu::scheduler::{PolicyView, SchedulerHandle};
use crate::host::snapshot::HardwareSnapshot;
use crate::network::NetworkHandle;
use crate::network::delivery::NetworkView;
use crate::network::outbox::OutboxCounts;
use crate::network::telemetry::Sources;
use crate::pairing::{BridgeStatus, BridgeView};
use crate::version::{VERSIONS, Versions};

/// What `/status`, `/metrics` and the owner's app read: the other subsystems' views and handles.
#[derive(Debug)]
pub(crate) struct AgentState {
    /// Device id from the identity key.
    pub device_id: DeviceId,
    /// Hex Ed25519 public key.
    pub public_key: String,
    /// Where the identity key lives.
    pub identity_key: String,
    /// When the agent started (monotonic).
    pub started: Instant,
    /// When the agent started (wall clock).
    pub started_wall: SystemTime,
    /// Hardware samples taken since start (the monitor counts them).
    pub samples: Arc<AtomicU64>,
    /// The hardware snapshot, GPU, capability and scheduler counters.
    pub sources: Sources,
    /// Where GPU jobs are submitted, and the policy in force.
    pub scheduler: SchedulerHandle,
    /// Reporting to the network; `None` where the box can be bound to none (no hub in the config
    /// and no owner's channel).
    pub network: Option<NetworkHandle>,
    /// The owner's app; `None` without `[pairing] listen`.
    pub pairing: Option<BridgeStatus>,
    /// Owner settings left out at start (`key: why`): unknown to this release, or refused.
    pub owner_ignored: Vec<String>,
}

/// The `network` part of `/status`.
#[derive(Debug, Serialize)]
pub(crate) struct NetworkReport {
    /// Registration, delivery, measurements.
    #[serde(flatten)]
    pub view: NetworkView,
    pub queue: OutboxCounts,
}

impl AgentState {
    /// Samples taken so far.
    pub(crate) fn samples(&self) -> u64 {
        self.samples.load(Ordering::Relaxed)
    }
}

/// The `/status` document.
#[derive(Debug, Serialize)]
pub(crate) struct StatusReport<'a> {
    pub device_id: String,
    /// Hex Ed25519 public key.
    pub public_key: &'a str,
    pub identity_key: &'a str,
    pub versions: &'static Versions,
    /// Seconds since the agent started.
    pub uptime_secs: f64,
    /// Start time, Unix seconds.
    pub started_at_unix: u64,
    pub samples: u64,
    pub hardware: Arc<HardwareSnapshot>,
    pub gpu: &'a GpuStatus,
    /// Measured GPU capability (`null` until measured, or without a GPU).
    pub capability: Option<Compute>,
    /// The GPU policy in force (the owner's changes hold from the next job).
    pub gpu_policy: PolicyView,
    /// Reporting to the network (`null` without a hub in the config and without the owner's
    /// channel; `hub: null` while the owner has not bound the box).
    pub network: Option<NetworkReport>,
    /// Pairing and the owner (`null` without `[pairing] listen`).
    pub pairing: Option<BridgeView>,
    /// Owner settings left out at start, each `key: why`.
    pub owner_settings_ignored: &'a [String],
}

impl AgentState {
    /// The status document as of now.
    pub(crate) fn report(&self) -> StatusReport<'_> {
        StatusReport {
            device_id: self.device_id.to_string(),
            public_key: &self.public_key,
            identity_key: &self.identity_key,
            versions: &VERSIONS,
            uptime_secs: self.started.elapsed().as_secs_f64(),
            started_at_unix: self
                .started_wall
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            samples: self.samples(),
            hardware: self.sources.snapshot.borrow().clone(),
            gpu: &self.sources.gpu,
            capability: self.sources.capability.borrow().clone(),
            gpu_policy: PolicyView::from(&self.scheduler.policy()),
            network: self.network.as_ref().map(|n| NetworkReport {
                view: n.status.lock().map(|v| v.clone()).unwrap_or_default(),
                queue: n.outbox.counts(),
            }),
            pairing: self
                .pairing
                .as_ref()
                .map(|p| p.lock().map(|v| v.clone()).unwrap_or_default()),
            owner_settings_ignored: &self.owner_ignored,
        }
    }
}

impl crate::pairing::OwnerStatus for AgentState {
    fn owner_status(&self) -> (u64, serde_json::Value) {
        let report = self.report();
        let details = serde_json::json!({
            "gpu": report.gpu,
            "capability": report.capability,
            "network": report.network,
            "hardware": report.hardware,
        });
        (report.uptime_secs as u64, details)
    }
}
