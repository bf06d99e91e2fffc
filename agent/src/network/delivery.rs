//! Delivery: registers the device with the hub, then drains the report queue in order, in
//! batches, forgetting each report only once the hub has it. Failures back off exponentially
//! with jitter up to a cap; a hub that forgot the device gets a fresh registration.

use edge_hal::Clock;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use edge_protocol::Body;
use edge_protocol::api::{Batch, Verdict};
use edge_protocol::report::Register;
use serde::Serialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::network::binding::SetBy;
use crate::network::hub_client::{HubClient, HubError};
use crate::network::outbox::{Outbox, OutboxError};
use crate::version::VERSIONS;

/// An idle queue is still looked at this often (to expire old reports).
const IDLE_CHECK: Duration = Duration::from_secs(60);

/// What the network side of the agent looks like, for `/status` and `/metrics`.
#[derive(Debug, Default, Clone, Serialize)]
pub(crate) struct NetworkView {
    /// The hub's base URL; `None` while the box is bound to no network.
    pub hub: Option<String>,
    /// Who chose the network: `config` (the device's config file) or `owner` (the owner's app).
    pub bound_by: Option<SetBy>,
    /// Whether the hub accepted the registration (this run).
    pub registered: bool,
    /// The owner the hub bound the device to.
    pub owner: Option<String>,
    /// Last successful delivery, Unix ms.
    pub last_delivery_ms: Option<u64>,
    /// The last failure, if the last attempt failed.
    pub last_error: Option<String>,
    /// Echo endpoints in use.
    pub echo_urls: Vec<String>,
    /// The hub's clock less the box's at the last registration, ms.
    pub clock_offset_ms: Option<i64>,
    pub ip: Option<edge_protocol::report::IpReport>,
    pub bandwidth: Option<edge_protocol::report::Bandwidth>,
}

/// Shared, small, written rarely.
pub(crate) type NetworkStatus = Arc<Mutex<NetworkView>>;

/// Errors of one delivery step.
#[derive(Debug, thiserror::Error)]
enum StepError {
    #[error(transparent)]
    Hub(#[from] HubError),
    #[error(transparent)]
    Outbox(#[from] OutboxError),
    #[error("the hub answered {got} verdicts for {sent} reports")]
    Verdicts { got: usize, sent: usize },
}

/// Registers, then delivers until shutdown.
pub(crate) struct DeliveryTask {
    pub outbox: Outbox,
    pub client: HubClient,
    /// The owner binding token.
    pub owner_token: String,
    pub batch_size: usize,
    /// Longest wait between attempts.
    pub backoff_max: Duration,
    /// Echo endpoints from config; empty: ask the hub.
    pub configured_echo_urls: Vec<String>,
    /// Where the echo endpoints in use are published.
    pub echo_urls: watch::Sender<Vec<String>>,
    /// True while the hub has the device registered.
    pub registered: watch::Sender<bool>,
    /// Shown in `/status`.
    pub status: NetworkStatus,
    /// Stamps sealing, expiry and deliveries.
    pub clock: Arc<dyn Clock>,
}

enum Step {
    /// Something was delivered; go on at once.
    More,
    Idle,
}

impl DeliveryTask {
    /// Runs until `shutdown`. Never fails: every error is logged, shown and retried.
    pub(crate) async fn run(
        self,
        shutdown: CancellationToken,
    ) -> Result<(), std::convert::Infallible> {
        let new_backoff = || {
            ExponentialBuilder::default()
                .with_min_delay(Duration::from_secs(1))
                .with_max_delay(self.backoff_max)
                .with_jitter()
                .without_max_times()
                .build()
        };
        let mut backoff = new_backoff();
        let mut registered = false;
        let mut batch_size = self.batch_size;
        loop {
            let step = if registered {
                self.deliver_once(&mut batch_size).await
            } else {
                self.register().await.map(|()| Step::More)
            };
            let wait = match step {
                Ok(Step::More) => {
                    registered = true;
                    backoff = new_backoff();
                    continue;
                }
                Ok(Step::Idle) => {
                    backoff = new_backoff();
                    tokio::select! {
                        () = shutdown.cancelled() => return Ok(()),
                        () = self.outbox.pushed.notified() => continue,
                        () = tokio::time::sleep(IDLE_CHECK) => continue,
                    }
                }
                Err(e) => {
                    if matches!(&e, StepError::Hub(h) if h.is_unregistered()) {
                        registered = false;
                        self.registered.send_replace(false);
                        self.update(|v| v.registered = false);
                    }
                    let wait = backoff.next().unwrap_or(self.backoff_max);
                    let message = e.to_string();
                    tracing::warn!(error = %message, retry_in = ?wait, "report delivery failed");
                    self.update(|v| v.last_error = Some(message));
                    wait
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    fn update(&self, f: impl FnOnce(&mut NetworkView)) {
        if let Ok(mut view) = self.status.lock() {
            f(&mut view);
        }
    }

    async fn register(&self) -> Result<(), StepError> {
        let outbox = self.outbox.clone();
        let body = Body::Register(Register {
            public_key: outbox.public_key_hex(),
            owner_token: self.owner_token.clone(),
            agent_version: VERSIONS.agent.into(),
        });
        let signed = edge_tasks::blocking(move || outbox.seal_unqueued(body)).await?;
        let sent_ms = self.clock.unix_ms();
        let registered = self.client.register(&signed).await?;
        let offset =
            self.client
                .learn_hub_time(registered.server_time_ms, sent_ms, self.clock.unix_ms());
        let (outbox, next) = (self.outbox.clone(), registered.last_seq + 1);
        edge_tasks::blocking(move || outbox.raise_next(next)).await?;
        tracing::info!(owner = %registered.owner, hub_last_seq = registered.last_seq, "registered with the hub");
        let echo_urls = if self.configured_echo_urls.is_empty() {
            let named = self.client.info().await?.echo_urls;
            self.client.on_hub_host(named)
        } else {
            self.configured_echo_urls.clone()
        };
        self.echo_urls.send_replace(echo_urls.clone());
        self.registered.send_replace(true);
        self.update(|v| {
            v.registered = true;
            v.clock_offset_ms = Some(offset);
            v.owner = Some(registered.owner);
            v.echo_urls = echo_urls;
            v.last_error = None;
        });
        Ok(())
    }

    async fn deliver_once(&self, batch_size: &mut usize) -> Result<Step, StepError> {
        let (outbox, n) = (self.outbox.clone(), *batch_size);
        let now = self.clock.unix_ms();
        let batch = edge_tasks::blocking(move || outbox.peek(n)).await?;
        if batch.is_empty() {
            return Ok(Step::Idle);
        }
        let seqs: Vec<u64> = batch.iter().map(|q| q.seq).collect();
        let sent = self
            .client
            .deliver(&Batch {
                reports: batch.into_iter().map(|q| q.signed).collect(),
            })
            .await;
        let reply = match sent {
            // Too large for the hub: halve the batch; a single report that is too large can
            // never be delivered, so it is dropped like a rejected one.
            Err(e) if e.is_too_large() => {
                if seqs.len() > 1 {
                    *batch_size = (seqs.len() / 2).max(1);
                    tracing::warn!(
                        batch = *batch_size,
                        "the hub found the batch too large; sending smaller ones"
                    );
                    return Ok(Step::More);
                }
                tracing::error!(seq = seqs[0], error = %e, "a report is too large for the hub; dropping it");
                let (outbox, seq) = (self.outbox.clone(), seqs[0]);
                edge_tasks::blocking(move || outbox.ack(&[], &[seq])).await?;
                return Ok(Step::More);
            }
            other => other?,
        };
        if reply.results.len() != seqs.len() {
            return Err(StepError::Verdicts {
                got: reply.results.len(),
                sent: seqs.len(),
            });
        }
        let (mut delivered, mut rejected) = (Vec::new(), Vec::new());
        for (seq, result) in seqs.into_iter().zip(reply.results) {
            match result.status {
                Verdict::Accepted | Verdict::Duplicate => delivered.push(seq),
                Verdict::Rejected => {
                    tracing::error!(seq, error = ?result.error, "the hub rejected a report for good; dropping it");
                    rejected.push(seq);
                }
            }
        }
        let outbox = self.outbox.clone();
        edge_tasks::blocking(move || outbox.ack(&delivered, &rejected)).await?;
        self.update(|v| {
            v.last_delivery_ms = Some(now);
            v.last_error = None;
        });
        Ok(Step::More)
    }
}
