//! What the agent reports: a heartbeat on a timer, and a capability report (compute, bandwidth,
//! IP, host) at start, when the public address or the GPU figures change, and periodically.
//! Both only push into the report queue; delivery is [`crate::network::delivery`]'s business.

use edge_hal::Clock;
use edge_identity::Identity;
use edge_jobs::adapter::GpuStatus;
use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use edge_protocol::Body;
use edge_protocol::report::{Bandwidth, Capability, Compute, Heartbeat, Host, IpReport};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::BandwidthConfig;
use crate::gpu::scheduler::GpuMetrics;
use crate::host::snapshot::HardwareSnapshot;
use crate::network::delivery::NetworkStatus;
use crate::network::hub_client::HubClient;
use crate::network::measure;
use crate::network::outbox::Outbox;
use crate::version::VERSIONS;

/// How long the first capability report waits for the GPU benchmark.
const COMPUTE_WAIT: Duration = Duration::from_secs(600);

/// What the reports read from the rest of the agent (the status endpoint reads the same).
#[derive(Debug, Clone)]
pub(crate) struct Sources {
    /// The latest hardware snapshot.
    pub snapshot: watch::Receiver<Arc<HardwareSnapshot>>,
    /// The measured GPU capability, once known.
    pub capability: watch::Receiver<Option<Compute>>,
    /// GPU discovery at start-up.
    pub gpu: GpuStatus,
    pub gpu_metrics: Arc<GpuMetrics>,
}

/// The heartbeat as of now.
pub(crate) fn heartbeat(state: &Sources) -> Heartbeat {
    let snap = state.snapshot.borrow().clone();
    let (rx_bytes, tx_bytes) = snap
        .interfaces
        .iter()
        .filter(|i| i.name != "lo")
        .fold((0, 0), |(rx, tx), i| {
            (rx + i.counters.rx_bytes, tx + i.counters.tx_bytes)
        });
    let system = snap.system.as_ref();
    Heartbeat {
        uptime_secs: system.map_or(0, |s| s.uptime_secs as u64),
        load_1m: system.map_or(0.0, |s| s.load[0]),
        memory_available_bytes: system.map_or(0, |s| s.memory_available_bytes),
        max_temp_celsius: max_temp(&snap),
        rx_bytes,
        tx_bytes,
        gpu_queued: state.gpu_metrics.queue_depth.load(Ordering::Relaxed),
        gpu_jobs_done: state.gpu_metrics.done.load(Ordering::Relaxed),
    }
}

fn max_temp(snap: &HardwareSnapshot) -> Option<f64> {
    snap.thermal.iter().map(|z| z.celsius).reduce(f64::max)
}

/// The host part of a capability report.
pub(crate) fn host(snap: &HardwareSnapshot) -> Host {
    let system = snap.system.as_ref();
    Host {
        cpu_model: system.map(|s| s.cpu_model.clone()).unwrap_or_default(),
        cores: system.map_or(0, |s| s.cores),
        memory_total_bytes: system.map_or(0, |s| s.memory_total_bytes),
        storage_total_bytes: snap.storage.as_ref().map_or(0, |s| s.total_bytes),
        storage_available_bytes: snap.storage.as_ref().map_or(0, |s| s.available_bytes),
        max_temp_celsius: max_temp(snap),
        uptime_secs: system.map_or(0, |s| s.uptime_secs as u64),
        kernel: system.map(|s| s.kernel.clone()).unwrap_or_default(),
        os: system.map(|s| s.os_release.clone()).unwrap_or_default(),
    }
}

/// Pushes a heartbeat every interval, the first at once.
pub(crate) struct HeartbeatTask {
    pub outbox: Outbox,
    pub sources: Sources,
    pub interval: Duration,
}

impl HeartbeatTask {
    /// Runs until `shutdown`; a heartbeat that cannot be stored is counted by the queue.
    pub(crate) async fn run(self, shutdown: CancellationToken) -> Result<(), Infallible> {
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                _ = tick.tick() => {
                    let body = Body::Heartbeat(heartbeat(&self.sources));
                    self.outbox.push(body).await;
                }
            }
        }
    }
}

/// Measures and pushes capability reports.
pub(crate) struct CapabilityReportTask {
    pub outbox: Outbox,
    /// The hub (bandwidth and echo endpoints).
    pub client: HubClient,
    /// Signs the bandwidth tests.
    pub identity: Arc<Identity>,
    /// Hardware and GPU state.
    pub sources: Sources,
    /// Echo endpoints in use (from delivery's registration, or config).
    pub echo_urls: watch::Receiver<Vec<String>>,
    pub bandwidth: BandwidthConfig,
    /// Time between public IP checks.
    pub ip_check_interval: Duration,
    /// Time between reports when nothing changed.
    pub interval: Duration,
    /// Shown in `/status`.
    pub status: NetworkStatus,
    /// Stamps the reports and measurements.
    pub clock: Arc<dyn Clock>,
}

impl CapabilityReportTask {
    /// Runs until `shutdown`; a report that cannot be stored is counted by the queue.
    pub(crate) async fn run(mut self, shutdown: CancellationToken) -> Result<(), Infallible> {
        let mut compute = self.sources.capability.clone();
        let waits_for_gpu = matches!(self.sources.gpu, GpuStatus::Available(_));
        if waits_for_gpu && compute.borrow().is_none() {
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                _ = tokio::time::timeout(COMPUTE_WAIT, compute.wait_for(Option::is_some)) => {}
            }
        }
        // The first report goes out once the echo endpoints are known (after registration).
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            _ = self.echo_urls.wait_for(|urls| !urls.is_empty()) => {}
        }
        let mut ip = self.measure_ip().await;
        let mut bandwidth = self.measure_bandwidth().await;
        let figures = compute.borrow_and_update().clone();
        self.push(&figures, &bandwidth, &ip).await;
        let mut ip_check = tokio::time::interval_at(
            tokio::time::Instant::now() + self.ip_check_interval,
            self.ip_check_interval,
        );
        let mut periodic =
            tokio::time::interval_at(tokio::time::Instant::now() + self.interval, self.interval);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                _ = ip_check.tick() => {
                    let fresh = self.measure_ip().await;
                    if fresh.public_ip == ip.public_ip {
                        continue;
                    }
                    tracing::info!(old = ?ip.public_ip, new = ?fresh.public_ip, "public address changed");
                    ip = fresh;
                }
                _ = periodic.tick() => {
                    ip = self.measure_ip().await;
                    if let Some(fresh) = self.measure_bandwidth().await {
                        bandwidth = Some(fresh);
                    }
                }
                Ok(()) = compute.changed() => {}
            }
            let figures = compute.borrow_and_update().clone();
            self.push(&figures, &bandwidth, &ip).await;
        }
    }

    async fn measure_ip(&self) -> IpReport {
        let urls = self.echo_urls.borrow().clone();
        let own: Vec<IpAddr> = self
            .sources
            .snapshot
            .borrow()
            .interfaces
            .iter()
            .flat_map(|i| i.addresses.iter().map(|a| a.ip))
            .collect();
        let report = measure::public_ip(&self.client, &urls, &own, self.clock.as_ref()).await;
        if let Ok(mut view) = self.status.lock() {
            view.ip = Some(report.clone());
        }
        report
    }

    async fn measure_bandwidth(&self) -> Option<Bandwidth> {
        if !self.bandwidth.measure {
            return None;
        }
        let measured = measure::bandwidth(
            &self.client,
            &self.identity,
            &self.bandwidth,
            self.clock.as_ref(),
        );
        match measured.await {
            Ok(b) => {
                tracing::info!(
                    down_mbps = b.down_mbps,
                    up_mbps = b.up_mbps,
                    latency_ms = b.latency_ms,
                    "bandwidth measured"
                );
                if let Ok(mut view) = self.status.lock() {
                    view.bandwidth = Some(b.clone());
                }
                Some(b)
            }
            Err(e) => {
                tracing::warn!(error = %e, "bandwidth measurement failed");
                None
            }
        }
    }

    async fn push(&self, compute: &Option<Compute>, bandwidth: &Option<Bandwidth>, ip: &IpReport) {
        let body = Body::Capability(Box::new(Capability {
            agent_version: VERSIONS.agent.into(),
            compute: compute.clone(),
            bandwidth: bandwidth.clone(),
            ip: Some(ip.clone()),
            host: host(&self.sources.snapshot.borrow()),
        }));
        self.outbox.push(body).await;
    }
}
