//! The network's side: which network the box is bound to, the hub client, the on-disk report
//! queue, delivery, telemetry, job intake and the measurements of what the box offers, and the
//! supervisor that runs those tasks while the box is bound.

pub(crate) mod binding;
pub(crate) mod delivery;
pub(crate) mod hub_client;
pub(crate) mod intake;
pub(crate) mod measure;
pub(crate) mod outbox;
pub(crate) mod supervisor;
pub(crate) mod telemetry;

use edge_protocol::exposition::Exposition;

use self::delivery::NetworkStatus;
use self::outbox::Outbox;

/// The report queue and the network view, for `/status` and `/metrics`.
#[derive(Clone)]
pub(crate) struct NetworkHandle {
    pub(crate) outbox: Outbox,
    /// Registration, delivery and measurement state.
    pub(crate) status: NetworkStatus,
}

impl std::fmt::Debug for NetworkHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetworkHandle").finish_non_exhaustive()
    }
}

impl NetworkHandle {
    /// The `edge_reports_*` and `edge_hub_*` families.
    pub(crate) fn write_metrics(&self, e: &mut Exposition) {
        let q = self.outbox.counts();
        let registered = self.status.lock().is_ok_and(|v| v.registered);
        e.family(
            "edge_reports_queued",
            "gauge",
            "Reports waiting in the queue.",
        )
        .sample("edge_reports_queued", &[], q.queued as f64);
        for (name, help, value) in [
            (
                "edge_reports_pushed_total",
                "Reports signed and queued.",
                q.pushed,
            ),
            (
                "edge_reports_delivered_total",
                "Reports the hub has.",
                q.delivered,
            ),
            (
                "edge_reports_rejected_total",
                "Reports the hub refused for good.",
                q.rejected,
            ),
            (
                "edge_reports_dropped_total",
                "Reports dropped undelivered (queue bounds).",
                q.dropped,
            ),
            (
                "edge_reports_unwritten_total",
                "Reports that could not be stored (disk errors, low space).",
                q.unwritten,
            ),
        ] {
            e.family(name, "counter", help)
                .sample(name, &[], value as f64);
        }
        e.family(
            "edge_reports_queue_on_disk",
            "gauge",
            "1 while the queue is on disk; 0 when it could not be opened and is held in memory.",
        )
        .sample(
            "edge_reports_queue_on_disk",
            &[],
            f64::from(u8::from(q.on_disk)),
        );
        e.family(
            "edge_hub_registered",
            "gauge",
            "1 once the hub accepted the registration.",
        )
        .sample("edge_hub_registered", &[], f64::from(u8::from(registered)));
    }
}
