//! The network's tasks (delivery, heartbeats, job intake, capability reports) run while the box
//! is bound to a network, as a set of their own: when the owner binds the box anew or a factory
//! reset unbinds it, the set is drained and started again on the new binding, and the rest of the
//! agent (the owner's channel, the GPU, the status endpoint) runs on untouched. A new binding
//! keeps the queue (it goes to the new network); unbinding erases it.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use edge_hal::Clock;
use edge_identity::Identity;
use edge_tasks::Tasks;
use tokio::sync::watch;

use crate::config::NetworkConfig;
use crate::gpu::scheduler::SchedulerHandle;
use crate::network::NetworkHandle;
use crate::network::binding::Hub;
use crate::network::delivery::{DeliveryTask, NetworkView};
use crate::network::hub_client::HubClient;
use crate::network::intake::IntakeTask;
use crate::network::telemetry::{CapabilityReportTask, HeartbeatTask, Sources};

/// Starts the network's tasks on each binding.
pub(crate) struct NetworkSupervisor {
    pub network: NetworkConfig,
    pub handle: NetworkHandle,
    pub sources: Sources,
    pub scheduler: SchedulerHandle,
    pub identity: Arc<Identity>,
    pub clock: Arc<dyn Clock>,
    /// The binding now and each change.
    pub hub: watch::Receiver<Option<Arc<Hub>>>,
    /// How long the old binding's tasks get to stop.
    pub grace: Duration,
    /// The jobs' blob store, where job intake puts the blobs it fetches.
    pub blobs: std::path::PathBuf,
}

impl NetworkSupervisor {
    /// Runs until `tasks` shuts down; the network's tasks are a child set of it.
    pub(crate) async fn run(mut self, tasks: Tasks) -> Result<(), Infallible> {
        let stop = tasks.shutdown();
        loop {
            let hub = self.hub.borrow_and_update().clone();
            let was_bound = hub.is_some();
            let running = tasks.child();
            self.show(hub.as_deref());
            if let Some(hub) = hub {
                match HubClient::new(&hub.url, &hub.ca_pem, &hub.ca_origin) {
                    Ok(client) => self.spawn(&running, client, &hub),
                    Err(e) => {
                        // Both CAs were parsed before (at start, or when the owner bound the box).
                        tracing::error!(hub = %hub.url, error = %e, "cannot talk to the network");
                        self.update(|v| v.last_error = Some(e.to_string()));
                    }
                }
            }
            // Without the owner's channel nothing holds the binding's sender and it never
            // changes: a closed channel disables that branch, and the tasks run until shutdown.
            let changed = tokio::select! {
                () = stop.cancelled() => false,
                Ok(()) = self.hub.changed() => true,
            };
            if running.drain(self.grace).await.is_err() {
                tracing::warn!(grace = ?self.grace, "the network's tasks did not stop in time");
            }
            if !changed {
                return Ok(());
            }
            tracing::info!("the network binding changed; restarting the network's tasks");
            if was_bound && self.hub.borrow().is_none() {
                // Unbound (a factory reset): what was queued was the previous owner's. Erased
                // only now, with the tasks that push reports stopped.
                let outbox = self.handle.outbox.clone();
                match edge_tasks::blocking(move || outbox.erase()).await {
                    Ok(erased) => tracing::warn!(erased, "unbound: the report queue is erased"),
                    Err(e) => tracing::error!(error = %e, "unbound: the report queue not erased"),
                }
            }
        }
    }

    /// What `/status` shows for `hub` before anything is known of it.
    fn show(&self, hub: Option<&Hub>) {
        self.update(|v| {
            *v = NetworkView {
                hub: hub.map(|h| h.url.clone()),
                bound_by: hub.map(|h| h.set_by),
                ..NetworkView::default()
            };
        });
    }

    fn update(&self, f: impl FnOnce(&mut NetworkView)) {
        if let Ok(mut view) = self.handle.status.lock() {
            f(&mut view);
        }
    }

    /// Delivery, heartbeats, job intake and capability reports, on `tasks`.
    fn spawn(&self, tasks: &Tasks, client: HubClient, hub: &Hub) {
        let (network, shutdown) = (&self.network, tasks.shutdown());
        let NetworkHandle { outbox, status } = self.handle.clone();
        let (echo_urls, echo_urls_rx) = watch::channel(Vec::new());
        let (registered, registered_rx) = watch::channel(false);
        let delivery = DeliveryTask {
            outbox: outbox.clone(),
            client: client.clone(),
            owner_token: hub.owner_token.to_string(),
            batch_size: network.batch_size,
            backoff_max: network.backoff_max,
            configured_echo_urls: network.echo_urls.clone(),
            echo_urls,
            registered,
            status: status.clone(),
            clock: self.clock.clone(),
        };
        tasks.spawn("delivery", delivery.run(shutdown.clone()));
        let heartbeat = HeartbeatTask {
            outbox: outbox.clone(),
            sources: self.sources.clone(),
            interval: network.heartbeat_interval,
        };
        tasks.spawn("heartbeat", heartbeat.run(shutdown.clone()));
        if network.accept_jobs {
            let intake = IntakeTask {
                client: client.clone(),
                identity: self.identity.clone(),
                scheduler: self.scheduler.clone(),
                outbox: outbox.clone(),
                registered: registered_rx,
                clock: self.clock.clone(),
                blobs: self.blobs.clone(),
            };
            tasks.spawn("job-intake", intake.run(shutdown.clone()));
        }
        let capability = CapabilityReportTask {
            outbox,
            client,
            identity: self.identity.clone(),
            sources: self.sources.clone(),
            echo_urls: echo_urls_rx,
            bandwidth: network.bandwidth.clone(),
            ip_check_interval: network.ip_check_interval,
            interval: network.capability_interval,
            status,
            clock: self.clock.clone(),
        };
        tasks.spawn("capability-report", capability.run(shutdown));
    }
}
