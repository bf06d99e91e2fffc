//! The bridge's task: the listener, the pairing window (opened at start while unowned, on the
//! button, after an unpair), the mDNS announcement and the links under it, the Bluetooth LE loop,
//! and one tracked task per owner link.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use edge_identity::Identity;
#[cfg(feature = "ble")]
use edge_mobile_bridge::ble::BleServer;
use edge_mobile_bridge::lan::LanLink;
use edge_mobile_bridge::link::Link;
use edge_mobile_bridge::pairing::{DevicePairing, PairingWindow};
use edge_mobile_bridge::setup_code::SetupCode;
use edge_tasks::Tasks;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::Control;
use super::advertise::{self, AdvertiseError, Advertiser, LinkWatch};
use super::files::{BridgeError, BridgeFiles, PairingRecord};
use super::link_caps::{LinkCaps, Peer};

/// How long to wait before trying Bluetooth LE again where BlueZ was not there.
#[cfg(feature = "ble")]
const BLE_RETRY: Duration = Duration::from_secs(60);

/// How often the links under the mDNS announcement are looked at.
const LINK_CHECK: Duration = Duration::from_secs(2);

/// What the owner's `Status` request shows. The status subsystem provides it; pairing does not
/// import it (it imports pairing's view).
pub(crate) trait OwnerStatus: Send + Sync {
    /// Seconds since the agent started, and the details document (GPU, capability, network,
    /// hardware).
    fn owner_status(&self) -> (u64, serde_json::Value);
}

/// What every connection shares.
pub(super) struct Shared {
    pub(super) record: PairingRecord,
    pub(super) pairing: Option<DevicePairing>,
    pub(super) next_conn: u64,
}

/// Serves pairing and the owner's control channel on a TCP listener.
pub(crate) struct BridgeTask {
    /// Bound by the caller (so the address can be shown before serving).
    pub(crate) listener: TcpListener,
    /// The device identity (pairing proof, session handshakes).
    pub(crate) identity: Arc<Identity>,
    /// Where its state lives.
    pub(crate) files: BridgeFiles,
    pub(crate) code: SetupCode,
    /// Answers the owner's requests.
    pub(crate) control: Control,
    /// Where the links and the Bluetooth loop run.
    pub(crate) tasks: Tasks,
    /// Announce the listener over mDNS (`_edge-agent._tcp`).
    pub(crate) mdns: bool,
    /// Serve pairing and the control channel over Bluetooth LE too.
    pub(crate) ble: bool,
}

/// What the bridge shows in `/status`.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct BridgeView {
    pub listen: String,
    /// Whether the box has an owner.
    pub owned: bool,
    /// Whether a pairing window is open.
    pub window_open: bool,
    /// Failed pairing attempts over the box's life.
    pub failures: u32,
    /// Whether attempts are paced (the lifetime count passed
    /// [`edge_mobile_bridge::pairing::SLOW_FROM`]).
    pub slowed: bool,
    /// The Bluetooth adapter pairing is served on, while it is.
    pub ble: Option<String>,
}

/// Shared with `/status`.
pub(crate) type BridgeStatus = Arc<Mutex<BridgeView>>;

/// What the pairing button did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ButtonEvent {
    /// Pressed (or SIGUSR1): opens a pairing window.
    Pressed,
    /// Held down for `edge_hal::button::RESET_HOLD`: the physical factory reset, for an owner
    /// without the app, or a buyer whose seller did not reset the box.
    Held,
}

impl BridgeTask {
    /// Serves until `shutdown`. `button` says what the owner does with the pairing button.
    pub(crate) async fn run(
        self,
        status: BridgeStatus,
        mut button: tokio::sync::mpsc::Receiver<ButtonEvent>,
        shutdown: CancellationToken,
    ) -> Result<(), BridgeError> {
        let files = self.files.clone();
        let record = edge_tasks::blocking(move || files.load()).await?;
        let listen = self
            .listener
            .local_addr()
            .map_or_else(|_| "?".into(), |a| a.to_string());
        // The announcement, and a watch on the links it depends on (see `advertise`).
        let (advertiser, mut links) = match self.listener.local_addr() {
            Ok(addr) if self.mdns && !addr.ip().is_loopback() => {
                let interfaces = self.control.hal.interfaces.clone();
                let id = self.identity.device_id().to_string();
                let window_open = record.opens_window_at_start();
                let (now, started) = edge_tasks::blocking(move || {
                    let now = interfaces.list().unwrap_or_default();
                    (now, Advertiser::start(&id, addr, window_open))
                })
                .await;
                let watch = LinkWatch::new(advertise::links(&now, addr));
                (
                    announced(started, addr, "announcing over mDNS"),
                    Some((addr, watch)),
                )
            }
            _ => (None, None),
        };
        let this = Arc::new(Served {
            advertiser: Mutex::new((advertiser, None)),
            task: self,
            shared: Mutex::new(Shared {
                record,
                pairing: None,
                next_conn: 0,
            }),
            status,
            listen,
            caps: LinkCaps::default(),
        });
        let (at_start, owned) = {
            let record = &this.lock().record;
            (record.opens_window_at_start(), record.owner_key.is_some())
        };
        if !at_start && !owned {
            tracing::info!("unowned: press the pairing button to open a window");
        } else {
            this.open_window("start");
        }
        #[cfg(not(feature = "ble"))]
        if this.task.ble {
            tracing::warn!(
                "[pairing] ble is on, but this build has no Bluetooth LE transport (cargo feature `ble`); pairing is served on the LAN only"
            );
        }
        #[cfg(feature = "ble")]
        if this.task.ble {
            let ble = this.clone().serve_ble(shutdown.clone());
            this.task.tasks.spawn_logged("pairing-ble", async move {
                ble.await;
                Ok::<_, std::convert::Infallible>(())
            });
        }
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut look = tokio::time::interval(LINK_CHECK);
        look.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                Some(event) = button.recv() => match event {
                    ButtonEvent::Pressed => this.open_window("pairing button"),
                    ButtonEvent::Held => this.factory_reset("the pairing button held").await,
                },
                _ = tick.tick() => this.tick(),
                _ = look.tick(), if links.is_some() => {
                    if let Some((addr, watch)) = links.as_mut() {
                        this.check_links(*addr, watch).await;
                    }
                }
                accepted = this.task.listener.accept() => {
                    let (stream, peer) = match accepted {
                        Ok(pair) => pair,
                        Err(e) => {
                            // Before, this was `continue` at once: out of descriptors, a core spun.
                            edge_tasks::accept_failed("pairing", &e).await;
                            continue;
                        }
                    };
                    let _ = stream.set_nodelay(true);
                    match LanLink::new(stream) {
                        Ok(link) => this.spawn_link(link, Peer::Ip(peer.ip()), peer.to_string(), &shutdown),
                        Err(e) => tracing::debug!(%peer, error = %e, "owner link refused"),
                    }
                }
            }
        }
    }
}

pub(super) struct Served {
    /// The announcement and the window state it last announced.
    pub(super) advertiser: Mutex<(Option<Advertiser>, Option<bool>)>,
    pub(super) task: BridgeTask,
    pub(super) shared: Mutex<Shared>,
    pub(super) status: BridgeStatus,
    pub(super) listen: String,
    /// Links served at once.
    pub(super) caps: LinkCaps,
}

/// The announcement `started`, logged.
fn announced(
    started: Result<Option<Advertiser>, AdvertiseError>,
    addr: std::net::SocketAddr,
    what: &str,
) -> Option<Advertiser> {
    match started {
        Ok(Some(a)) => {
            tracing::info!(%addr, service = advertise::SERVICE, "{what}");
            Some(a)
        }
        Ok(None) => None,
        Err(e) => {
            tracing::warn!(error = %e, "mDNS announcement failed; the app needs the address");
            None
        }
    }
}

impl Served {
    pub(super) fn lock(&self) -> MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts the announcement afresh once the links under it have changed and settled: the
    /// responder does not take up a link that came up after it started (Wi-Fi set up through
    /// the app, a cable plugged in late).
    async fn check_links(&self, addr: std::net::SocketAddr, watch: &mut LinkWatch) {
        let interfaces = self.task.control.hal.interfaces.clone();
        let now = match edge_tasks::blocking(move || interfaces.list()).await {
            Ok(now) => now,
            Err(e) => {
                tracing::debug!(error = %e, "cannot list the links under the mDNS announcement");
                return;
            }
        };
        if !watch.observe(advertise::links(&now, addr)) {
            return;
        }
        let old = self.advertiser.lock().ok().and_then(|mut a| a.0.take());
        let window_open = self.status.lock().is_ok_and(|v| v.window_open);
        let id = self.task.identity.device_id().to_string();
        let started = edge_tasks::blocking(move || {
            if let Some(old) = old {
                old.stop();
            }
            Advertiser::start(&id, addr, window_open)
        })
        .await;
        let started = announced(
            started,
            addr,
            "network links changed: announcing over mDNS afresh",
        );
        if let Ok(mut guard) = self.advertiser.lock() {
            // A window change meanwhile is announced on the next tick.
            *guard = (started, Some(window_open));
        }
    }

    pub(super) fn publish(&self, shared: &Shared) {
        let window_open = shared
            .pairing
            .as_ref()
            .is_some_and(|p| p.window().is_open());
        if let Ok(mut view) = self.status.lock() {
            *view = BridgeView {
                listen: self.listen.clone(),
                owned: shared.record.owner_key.is_some(),
                window_open,
                failures: shared.record.failures,
                slowed: shared.record.failures >= edge_mobile_bridge::pairing::SLOW_FROM,
                ble: view.ble.take(),
            };
        }
        if let Ok(mut guard) = self.advertiser.lock() {
            let (advertiser, announced) = &mut *guard;
            if let Some(a) = advertiser
                && *announced != Some(window_open)
            {
                *announced = Some(window_open);
                if let Err(e) = a.announce(window_open) {
                    tracing::warn!(error = %e, "mDNS update failed");
                }
            }
        }
    }

    /// Opens a pairing window if the box has no owner (and is not locked).
    pub(super) fn open_window(&self, why: &str) {
        let mut shared = self.lock();
        let owned = shared.record.owner_key.is_some();
        match PairingWindow::open(Instant::now(), owned, shared.record.failures) {
            Ok(window) => {
                tracing::info!(reason = why, "pairing window open for 15 minutes");
                shared.pairing = Some(DevicePairing::new(
                    window,
                    self.task.code.clone(),
                    self.task.identity.device_id(),
                ));
            }
            Err(e) => tracing::info!(reason = why, error = %e, "no pairing window"),
        }
        self.publish(&shared);
    }

    pub(super) fn tick(&self) {
        let mut shared = self.lock();
        if let Some(pairing) = shared.pairing.as_mut() {
            pairing.tick(Instant::now());
        }
        self.publish(&shared);
    }

    pub(super) async fn save(&self, record: PairingRecord) -> Result<(), BridgeError> {
        let files = self.task.files.clone();
        let saved = record.clone();
        edge_tasks::blocking(move || files.save(&saved)).await?;
        let mut shared = self.lock();
        shared.record = record;
        self.publish(&shared);
        Ok(())
    }

    /// Serves one app's link until it ends, the agent shuts down, or a newcomer evicts it (see
    /// [`LinkCaps`]); closes it at once when every place is held by the owner's links.
    fn spawn_link<L: Link + 'static>(
        self: &Arc<Self>,
        link: L,
        host: Peer,
        peer: String,
        shutdown: &CancellationToken,
    ) {
        let Some(permit) = self.caps.admit(&host) else {
            // Debug, not warn: whoever floods the port must not flood the journal as well.
            tracing::debug!(%peer, "owner link closed: every place is the owner's");
            return;
        };
        let served = self.clone();
        let shutdown = shutdown.clone();
        self.task.tasks.spawn_logged("owner-link", async move {
            tokio::select! {
                () = shutdown.cancelled() => {}
                () = permit.evicted() => tracing::debug!(%peer, "owner link evicted to make room"),
                result = served.connection(link, &permit) => if let Err(e) = result {
                    // Debug: a link that ends badly is the peer's business (see above).
                    tracing::debug!(%peer, error = %e, "owner link ended");
                },
            }
            Ok::<_, std::convert::Infallible>(())
        });
    }

    /// Serves pairing and the control channel over Bluetooth LE as well, for as long as BlueZ
    /// is there: where it is not (yet), says so and tries again every [`BLE_RETRY`].
    #[cfg(feature = "ble")]
    async fn serve_ble(self: Arc<Self>, shutdown: CancellationToken) {
        let id = self.task.identity.device_id().to_string();
        let name = format!("edge-{}", &id[..id.len().min(12)]);
        loop {
            match BleServer::start(&name).await {
                Ok(mut server) => {
                    let adapter = server.adapter().to_owned();
                    tracing::info!(%adapter, %name, "serving pairing over Bluetooth LE");
                    self.set_ble(Some(adapter));
                    loop {
                        tokio::select! {
                            () = shutdown.cancelled() => return,
                            accepted = server.accept() => match accepted {
                                Ok((address, link)) => {
                                    let host = Peer::Ble(address.to_string());
                                    let peer = host.to_string();
                                    self.spawn_link(link, host, peer, &shutdown);
                                }
                                Err(e) => {
                                    tracing::warn!(error = %e, "Bluetooth LE service failed; starting it again");
                                    break;
                                }
                            },
                        }
                    }
                    self.set_ble(None);
                }
                Err(e) => tracing::warn!(
                    error = %e,
                    "Bluetooth LE unavailable; pairing is served on the LAN only (trying again in {} s)",
                    BLE_RETRY.as_secs()
                ),
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(BLE_RETRY) => {}
            }
        }
    }

    #[cfg(feature = "ble")]
    fn set_ble(&self, adapter: Option<String>) {
        if let Ok(mut view) = self.status.lock() {
            view.ble = adapter;
        }
    }
}
