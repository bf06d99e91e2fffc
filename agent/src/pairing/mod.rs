//! The owner's bridge on the device: pairing while the box has no owner, then the owner's
//! encrypted control channel, over the LAN (TCP). The protocol is `edge-mobile-bridge`'s; this
//! module stores what it asks to store and answers the owner's requests.
//!
//! State, in the state directory: `setup-code` (the per-device setup secret, 0600, made on first
//! start; the label's QR code and manual code come from it) and `pairing.json` (the owner's public
//! key and the persistent failure count, 0600, written durably before any reply that depends on
//! them). The pairing window opens at start while the box has no owner, and again on the pairing
//! button (`[pairing] button`, or SIGUSR1); it closes after 15 minutes, 20 failures, or a pairing. At 100 failures over the
//! box's life pairing is locked until a factory reset (`edge-agent factory-reset`, or the owner's
//! app).

pub(crate) mod advertise;
pub(crate) mod link_caps;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use edge_hal::Hal;
use edge_hal::wifi::Passphrase;
use edge_identity::{Identity, durable};
#[cfg(feature = "ble")]
use edge_mobile_bridge::ble::BleServer;
use edge_mobile_bridge::lan::LanLink;
use edge_mobile_bridge::link::{Link, TransportError};
use edge_mobile_bridge::message::{
    ErrorCode, Message, Request, Response, StatusReport, WifiNetwork,
};
use edge_mobile_bridge::pairing::{ConnId, DevicePairing, DeviceStep, PairingError, PairingWindow};
use edge_mobile_bridge::session::{DeviceHandshake, SecureChannel};
use edge_mobile_bridge::setup_code::{DeviceFingerprint, QrPayload, SetupCode};
use edge_tasks::Tasks;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use self::advertise::{AdvertiseError, Advertiser, LinkWatch};
use self::link_caps::LinkCaps;
use crate::gpu::scheduler::SchedulerHandle;
use crate::version::VERSIONS;

/// A client that says nothing for this long is dropped.
const IDLE: Duration = Duration::from_secs(60);

/// How long to wait before trying Bluetooth LE again where BlueZ was not there.
#[cfg(feature = "ble")]
const BLE_RETRY: Duration = Duration::from_secs(60);

/// How often the links under the mDNS announcement are looked at.
const LINK_CHECK: Duration = Duration::from_secs(2);

/// Errors of the bridge's storage.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    /// A state file could not be read or written.
    #[error(transparent)]
    File(#[from] durable::FileError),
    /// A state file holds something else.
    #[error("{path}: {reason}")]
    Corrupt {
        path: PathBuf,
        reason: String,
    },
}

/// What pairing leaves on disk.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PairingRecord {
    /// The owner's Ed25519 public key, hex; `None` while unowned.
    pub owner_key: Option<String>,
    /// Failed pairing attempts over the box's life (reset by a factory reset).
    pub failures: u32,
}

/// The bridge's files in the state directory.
#[derive(Debug, Clone)]
pub(crate) struct BridgeFiles {
    pub setup_code: PathBuf,
    /// The owner key and failure count.
    pub pairing: PathBuf,
}

impl BridgeFiles {
    /// The files in `state_dir`.
    pub(crate) fn in_dir(state_dir: &Path) -> Self {
        Self {
            setup_code: state_dir.join("setup-code"),
            pairing: state_dir.join("pairing.json"),
        }
    }

    /// The setup code, made (0600) if there is none yet.
    pub(crate) fn setup_code(&self) -> Result<SetupCode, BridgeError> {
        match std::fs::read_to_string(&self.setup_code) {
            Ok(text) => SetupCode::parse(text.trim()).map_err(|e| BridgeError::Corrupt {
                path: self.setup_code.clone(),
                reason: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let code = SetupCode::generate().map_err(|e| BridgeError::Corrupt {
                    path: self.setup_code.clone(),
                    reason: e.to_string(),
                })?;
                durable::write(&self.setup_code, code.digits().as_bytes(), 0o600)?;
                Ok(code)
            }
            Err(e) => Err(durable::FileError::at("read", &self.setup_code)(e).into()),
        }
    }

    /// The pairing record; the default when there is none.
    pub(crate) fn load(&self) -> Result<PairingRecord, BridgeError> {
        Ok(durable::read_json(&self.pairing)?.unwrap_or_default())
    }

    /// Stores the record durably.
    pub(crate) fn save(&self, record: &PairingRecord) -> Result<(), BridgeError> {
        Ok(durable::write_json(&self.pairing, record, 0o600)?)
    }
}

/// The QR payload for this device and code.
pub(crate) fn qr_payload(identity: &Identity, code: &SetupCode) -> String {
    QrPayload {
        device: DeviceFingerprint::of(identity.device_id()),
        code: code.clone(),
    }
    .render()
    .to_string()
}

/// What the owner's `Status` request shows. The status subsystem provides it; pairing does not
/// import it (it imports pairing's view).
pub(crate) trait OwnerStatus: Send + Sync {
    /// Seconds since the agent started, and the details document (GPU, capability, network,
    /// hardware).
    fn owner_status(&self) -> (u64, serde_json::Value);
}

/// What every connection shares.
struct Shared {
    record: PairingRecord,
    pairing: Option<DevicePairing>,
    next_conn: u64,
}

/// Serves pairing and the owner's control channel on a TCP listener.
pub(crate) struct BridgeTask {
    /// Bound by the caller (so the address can be shown before serving).
    pub listener: TcpListener,
    /// The device identity (pairing proof, session handshakes).
    pub identity: Arc<Identity>,
    /// Where its state lives.
    pub files: BridgeFiles,
    pub code: SetupCode,
    /// Status for the owner.
    pub status: Arc<dyn OwnerStatus>,
    /// Where the links and the Bluetooth loop run.
    pub tasks: Tasks,
    /// Where the owner's GPU policy changes go.
    pub scheduler: SchedulerHandle,
    pub hal: Hal,
    /// Config file and working directory, to validate the owner's config changes.
    pub config_path: Option<PathBuf>,
    /// Working directory of the agent.
    pub cwd: PathBuf,
    pub state_dir: PathBuf,
    /// Announce the listener over mDNS (`_edge-agent._tcp`).
    pub mdns: bool,
    /// Serve pairing and the control channel over Bluetooth LE too.
    pub ble: bool,
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
    /// Whether pairing is locked until a factory reset.
    pub locked: bool,
    /// The Bluetooth adapter pairing is served on, while it is.
    pub ble: Option<String>,
}

/// Shared with `/status`.
pub(crate) type BridgeStatus = Arc<Mutex<BridgeView>>;

impl BridgeTask {
    /// Serves until `shutdown`. `button` fires when the owner presses the pairing button.
    pub(crate) async fn run(
        self,
        status: BridgeStatus,
        mut button: tokio::sync::mpsc::Receiver<()>,
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
                let interfaces = self.hal.interfaces.clone();
                let id = self.identity.device_id().to_string();
                let window_open = record.owner_key.is_none();
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
        this.open_window("start");
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
                Some(()) = button.recv() => this.open_window("pairing button"),
                _ = tick.tick() => this.tick(),
                _ = look.tick(), if links.is_some() => {
                    if let Some((addr, watch)) = links.as_mut() {
                        this.check_links(*addr, watch).await;
                    }
                }
                accepted = this.task.listener.accept() => {
                    let Ok((stream, peer)) = accepted else { continue };
                    let _ = stream.set_nodelay(true);
                    match LanLink::new(stream) {
                        Ok(link) => this.spawn_link(link, peer.ip().to_string(), peer.to_string(), &shutdown),
                        Err(e) => tracing::debug!(%peer, error = %e, "owner link refused"),
                    }
                }
            }
        }
    }
}

struct Served {
    /// The announcement and the window state it last announced.
    advertiser: Mutex<(Option<Advertiser>, Option<bool>)>,
    task: BridgeTask,
    shared: Mutex<Shared>,
    status: BridgeStatus,
    listen: String,
    /// Links served at once.
    caps: LinkCaps,
}

/// Why a connection ended early.
#[derive(Debug, thiserror::Error)]
enum LinkError {
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error(transparent)]
    Store(#[from] BridgeError),
    #[error("the peer said nothing for {0:?}")]
    Idle(Duration),
    #[error("{0}")]
    Protocol(String),
}

fn error_reply(code: ErrorCode, message: impl Into<String>) -> Vec<u8> {
    Message::Response(Response::Error {
        code,
        message: message.into(),
    })
    .encode()
    .unwrap_or_default()
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
    fn lock(&self) -> MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts the announcement afresh once the links under it have changed and settled: the
    /// responder does not take up a link that came up after it started (Wi-Fi set up through
    /// the app, a cable plugged in late).
    async fn check_links(&self, addr: std::net::SocketAddr, watch: &mut LinkWatch) {
        let interfaces = self.task.hal.interfaces.clone();
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

    fn publish(&self, shared: &Shared) {
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
                locked: shared.record.failures >= edge_mobile_bridge::pairing::LOCK_AT,
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
    fn open_window(&self, why: &str) {
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

    fn tick(&self) {
        let mut shared = self.lock();
        if let Some(pairing) = shared.pairing.as_mut() {
            pairing.tick(Instant::now());
        }
        self.publish(&shared);
    }

    async fn save(&self, record: PairingRecord) -> Result<(), BridgeError> {
        let files = self.task.files.clone();
        let saved = record.clone();
        edge_tasks::blocking(move || files.save(&saved)).await?;
        let mut shared = self.lock();
        shared.record = record;
        self.publish(&shared);
        Ok(())
    }

    /// Serves one app's link until it ends or the agent shuts down; closes it at once when
    /// `host` (its IP or Bluetooth address) or everyone together has as many links as allowed.
    fn spawn_link<L: Link + 'static>(
        self: &Arc<Self>,
        link: L,
        host: String,
        peer: String,
        shutdown: &CancellationToken,
    ) {
        let Some(permit) = self.caps.admit(&host) else {
            // Debug, not warn: whoever floods the port must not flood the journal as well.
            tracing::debug!(%peer, "owner link closed: too many links at once");
            return;
        };
        let served = self.clone();
        let shutdown = shutdown.clone();
        self.task.tasks.spawn_logged("owner-link", async move {
            let _permit = permit;
            tokio::select! {
                () = shutdown.cancelled() => {}
                result = served.connection(link) => if let Err(e) = result {
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
                                    let peer = format!("ble:{address}");
                                    self.spawn_link(link, peer.clone(), peer, &shutdown);
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

    async fn connection<L: Link>(self: Arc<Self>, mut link: L) -> Result<(), LinkError> {
        let Some(first) = recv(&mut link).await? else {
            return Ok(());
        };
        if matches!(Message::decode(&first), Ok(Message::SessionHello(_))) {
            self.owner_session(link, &first).await
        } else {
            self.pairing(link, first).await
        }
    }

    async fn pairing<L: Link>(&self, mut link: L, first: Vec<u8>) -> Result<(), LinkError> {
        let conn = {
            let mut shared = self.lock();
            shared.next_conn += 1;
            ConnId(shared.next_conn)
        };
        let mut message = first;
        let result = loop {
            let step = {
                let mut shared = self.lock();
                match shared.pairing.as_mut() {
                    Some(p) => p.handle(Instant::now(), conn, &message, &self.task.identity),
                    None => Err(PairingError::WindowClosed {
                        reason: edge_mobile_bridge::pairing::CloseReason::Expired,
                    }),
                }
            };
            match step {
                Ok(DeviceStep::PersistThenSend { failures, reply }) => {
                    let record = PairingRecord {
                        failures,
                        ..self.lock().record.clone()
                    };
                    self.save(record).await?;
                    link.send(&reply).await?;
                }
                Ok(DeviceStep::Wait) => {}
                Ok(DeviceStep::Paired(paired)) => {
                    let record = PairingRecord {
                        owner_key: Some(edge_identity::hex::encode(&paired.owner_key)),
                        failures: paired.failures,
                    };
                    self.save(record).await?;
                    {
                        let mut shared = self.lock();
                        shared.pairing = None;
                        self.publish(&shared);
                    }
                    tracing::info!(owner = %edge_identity::hex::encode(&paired.owner_key[..8]), "paired with a new owner");
                    link.send(&paired.reply).await?;
                    return self.control(link, paired.channel, paired.owner_key).await;
                }
                Err(e) => {
                    tracing::info!(error = %e, "pairing attempt refused");
                    self.tick();
                    link.send(&e.reply()).await?;
                    break Ok(());
                }
            }
            match recv(&mut link).await {
                Ok(Some(next)) => message = next,
                Ok(None) => break Ok(()),
                Err(e) => break Err(e),
            }
        };
        if let Some(p) = self.lock().pairing.as_mut() {
            p.disconnected(conn);
        }
        self.tick();
        result
    }

    async fn owner_session<L: Link>(&self, mut link: L, hello: &[u8]) -> Result<(), LinkError> {
        let owner = self.owner_key();
        let accepted =
            DeviceHandshake::accept(Instant::now(), hello, &self.task.identity, owner.as_ref());
        let (handshake, accept) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                tracing::info!(error = %e, "owner session refused");
                link.send(&error_reply(e.code(), e.code().describe()))
                    .await?;
                return Ok(());
            }
        };
        link.send(&accept).await?;
        let Some(finish) = recv(&mut link).await? else {
            return Ok(());
        };
        let channel = match handshake.finish(Instant::now(), &finish) {
            Ok(channel) => channel,
            Err(e) => {
                link.send(&error_reply(e.code(), e.code().describe()))
                    .await?;
                return Ok(());
            }
        };
        let owner = owner.ok_or_else(|| LinkError::Protocol("owner vanished".into()))?;
        self.control(link, channel, owner).await
    }

    fn owner_key(&self) -> Option<[u8; 32]> {
        self.lock()
            .record
            .owner_key
            .as_deref()
            .and_then(edge_identity::hex::decode_array::<32>)
    }

    /// The owner's requests, until the link closes or the owner changes.
    async fn control<L: Link>(
        &self,
        mut link: L,
        mut channel: SecureChannel,
        owner: [u8; 32],
    ) -> Result<(), LinkError> {
        while let Some(wire) = recv(&mut link).await? {
            // A tampered, replayed or reordered record ends the session.
            let request = match channel.open(&wire) {
                Ok(Message::Request(request)) => request,
                Ok(other) => {
                    return Err(LinkError::Protocol(format!(
                        "{} on the control channel",
                        other.kind()
                    )));
                }
                Err(e) => return Err(LinkError::Protocol(e.to_string())),
            };
            let ends = matches!(request, Request::Unpair | Request::FactoryReset);
            let response = if self.owner_key() == Some(owner) {
                self.answer(request).await
            } else {
                Response::error(ErrorCode::NotOwner)
            };
            let sealed = channel
                .seal(&Message::Response(response))
                .map_err(|e| LinkError::Protocol(e.to_string()))?;
            link.send(&sealed).await?;
            if ends {
                return Ok(());
            }
        }
        Ok(())
    }

    async fn answer(&self, request: Request) -> Response {
        tracing::info!(?request, "owner request");
        match request {
            Request::Status => self.status_report(),
            Request::ConfigGet => self.config_get(),
            Request::ConfigSet { key, value } => self.config_set(key, value).await,
            Request::WifiScan => {
                let wifi = self.task.hal.wifi.clone();
                match edge_tasks::blocking(move || wifi.scan()).await {
                    Ok(networks) => Response::WifiNetworks(
                        networks
                            .into_iter()
                            .take(edge_mobile_bridge::message::MAX_NETWORKS)
                            .map(|n| WifiNetwork {
                                secured: n.security != edge_hal::wifi::Security::Open,
                                signal_dbm: edge_hal::wifi::percent_to_dbm(n.signal_percent),
                                ssid: n.ssid,
                            })
                            .collect(),
                    ),
                    Err(e) => wifi_error(e),
                }
            }
            Request::WifiSet { ssid, passphrase } => {
                let wifi = self.task.hal.wifi.clone();
                let passphrase = Passphrase::new(passphrase.as_str());
                match edge_tasks::blocking(move || wifi.connect(&ssid, &passphrase)).await {
                    Ok(()) => Response::Ok,
                    Err(e) => wifi_error(e),
                }
            }
            Request::Logs { max_lines } => Response::Logs {
                lines: crate::host::logging::recent(usize::from(max_lines))
                    .into_iter()
                    .map(|mut l| {
                        l.truncate(edge_mobile_bridge::message::MAX_LOG_LINE);
                        l
                    })
                    .collect(),
            },
            Request::Reboot => reboot(self.task.hal.power.clone()).await,
            Request::Unpair => self.unpair(false).await,
            Request::FactoryReset => self.unpair(true).await,
        }
    }

    fn status_report(&self) -> Response {
        let (uptime_s, details) = self.task.status.owner_status();
        Response::Status(StatusReport {
            device_id: self.task.identity.device_id().to_string(),
            agent_version: VERSIONS.agent.into(),
            uptime_s,
            details_json: details.to_string(),
        })
    }

    fn config_get(&self) -> Response {
        let path = crate::config::owner_file(&self.task.state_dir);
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        Response::Config { toml: text }
    }

    async fn config_set(&self, key: String, value: String) -> Response {
        let (path, cwd, dir) = (
            self.task.config_path.clone(),
            self.task.cwd.clone(),
            self.task.state_dir.clone(),
        );
        let result = edge_tasks::blocking(move || {
            let text = crate::config::set_owner_key(path.as_deref(), &cwd, &dir, &key, &value)
                .map_err(|e| {
                    SetFailed::Invalid(
                        e.problems
                            .iter()
                            .map(|p| format!("{}: {}", p.key.as_deref().unwrap_or(""), p.message))
                            .collect::<Vec<_>>()
                            .join("; "),
                    )
                })?;
            edge_identity::durable::write(&crate::config::owner_file(&dir), text.as_bytes(), 0o600)
                .map_err(|e| SetFailed::Device(e.to_string()))?;
            // The settings as they now stand, with the owner's file on top.
            crate::config::load(path.as_deref(), &cwd).map_err(|e| SetFailed::Device(e.to_string()))
        })
        .await;
        config_set_response(result, |config| {
            // GPU settings hold from the next job; the network ones at the next start.
            self.task
                .scheduler
                .set_policy(crate::gpu::scheduler::Policy::from(&config.gpu));
        })
    }

    /// Forgets the owner; a factory reset also erases Wi-Fi credentials, the owner's settings and
    /// the failure count. The identity stays.
    async fn unpair(&self, factory: bool) -> Response {
        let failures = if factory {
            0
        } else {
            self.lock().record.failures
        };
        if let Err(e) = self
            .save(PairingRecord {
                owner_key: None,
                failures,
            })
            .await
        {
            tracing::error!(error = %e, "unpair failed");
            return Response::error(ErrorCode::Internal);
        }
        if factory {
            let (wifi, owner_file) = (
                self.task.hal.wifi.clone(),
                crate::config::owner_file(&self.task.state_dir),
            );
            let erased = edge_tasks::blocking(move || {
                let _ = std::fs::remove_file(&owner_file);
                wifi.forget_all()
            })
            .await;
            if let Err(e) = erased {
                // No Wi-Fi manager on the box is not a failure of the reset.
                tracing::warn!(error = %e, "factory reset: Wi-Fi credentials not erased");
            }
            tracing::warn!("factory reset: owner, owner settings and pairing state erased");
        } else {
            tracing::info!("unpaired");
        }
        self.open_window(if factory { "factory reset" } else { "unpaired" });
        Response::Ok
    }
}

fn wifi_error(e: edge_hal::wifi::WifiError) -> Response {
    match e {
        e @ edge_hal::wifi::WifiError::Invalid { .. } => Response::Error {
            code: ErrorCode::BadRequest,
            message: e.to_string(),
        },
        edge_hal::wifi::WifiError::NotFound { .. } => Response::Error {
            code: ErrorCode::Unsupported,
            message: "this box has no Wi-Fi manager (NetworkManager or wpa_supplicant)".into(),
        },
        e => {
            tracing::error!(error = %e, "Wi-Fi request failed");
            Response::Error {
                code: ErrorCode::Internal,
                message: "the Wi-Fi request failed; see the device's logs".into(),
            }
        }
    }
}

async fn recv<L: Link>(link: &mut L) -> Result<Option<Vec<u8>>, LinkError> {
    match tokio::time::timeout(IDLE, link.recv()).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(LinkError::Idle(IDLE)),
    }
}

/// Why an owner's setting was not taken.
#[derive(Debug)]
enum SetFailed {
    /// The value is not valid: the owner is told what and where.
    Invalid(String),
    /// The device failed (disk, files): logged here, and the owner told only that it failed,
    /// since the reason names the device's paths.
    Device(String),
}

fn config_set_response(
    result: Result<crate::config::Config, SetFailed>,
    apply: impl FnOnce(&crate::config::Config),
) -> Response {
    match result {
        Ok(config) => {
            apply(&config);
            Response::Ok
        }
        Err(SetFailed::Invalid(message)) => Response::Error {
            code: ErrorCode::InvalidConfig,
            message,
        },
        Err(SetFailed::Device(reason)) => {
            tracing::error!(%reason, "the owner's setting could not be saved");
            Response::Error {
                code: ErrorCode::Internal,
                message: "the setting could not be saved; the device's log says why".into(),
            }
        }
    }
}

/// Asks for a reboot and says whether it was taken. Asking returns once systemd has queued the
/// reboot; the agent is stopped (SIGTERM, drain) only after that, so the owner's answer still goes
/// out. A refusal is logged with its reason and reported without it (the reason names programs and
/// paths, which are the device's business).
async fn reboot(power: Arc<dyn edge_hal::Power>) -> Response {
    match edge_tasks::blocking(move || power.reboot()).await {
        Ok(()) => Response::Ok,
        Err(e) => {
            tracing::error!(error = %e, "the owner's reboot was refused");
            Response::Error {
                code: ErrorCode::Internal,
                message: "the reboot could not be requested; the device's log says why".into(),
            }
        }
    }
}

/// Erases the owner, the owner's settings, the Wi-Fi credentials and the pairing failure count,
/// keeping the identity (`edge-agent factory-reset`, run with the agent stopped).
pub(crate) fn factory_reset(state_dir: &Path, hal: &Hal) -> Result<(), BridgeError> {
    let files = BridgeFiles::in_dir(state_dir);
    files.save(&PairingRecord::default())?;
    let owner = crate::config::owner_file(state_dir);
    match std::fs::remove_file(&owner) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(durable::FileError::at("remove", &owner)(e).into()),
    }
    if let Err(e) = hal.wifi.forget_all() {
        tracing::warn!(error = %e, "Wi-Fi credentials not erased");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct RefusingPower;

    impl edge_hal::Power for RefusingPower {
        fn reboot(&self) -> Result<(), edge_hal::power::PowerError> {
            Err(edge_hal::power::PowerError::Command {
                program: "/usr/bin/systemctl".into(),
                reason: "Access denied".into(),
            })
        }
    }

    #[tokio::test]
    async fn a_refused_reboot_is_an_error_for_the_owner_without_the_devices_details() {
        // Before: the reboot ran after an `Ok` reply and its failure was dropped (only the
        // blocking task's join was checked).
        match reboot(Arc::new(RefusingPower)).await {
            Response::Error { code, message } => {
                assert_eq!(code, ErrorCode::Internal);
                assert!(!message.contains("systemctl"), "{message}");
            }
            other => panic!("expected an error, got {other:?}"),
        }
        let fake = Arc::new(edge_hal::fake::FakePower::default());
        assert!(matches!(reboot(fake.clone()).await, Response::Ok));
        assert_eq!(fake.0.load(std::sync::atomic::Ordering::Relaxed), 1);
    }

    #[test]
    fn a_disk_failure_is_not_an_invalid_config_and_its_path_stays_on_the_device() {
        // Before: "cannot save: <path>: <os error>" went to the phone as InvalidConfig.
        let failed = SetFailed::Device(
            "cannot create /var/lib/edge-agent/.owner.toml.1.0.tmp: No space left on device".into(),
        );
        match config_set_response(Err(failed), |_| panic!("nothing applied")) {
            Response::Error { code, message } => {
                assert_eq!(code, ErrorCode::Internal);
                assert!(!message.contains("/var/lib"), "{message}");
            }
            other => panic!("expected an error, got {other:?}"),
        }
        let invalid = SetFailed::Invalid("gpu.max_duty: must be in (0, 1]".into());
        match config_set_response(Err(invalid), |_| panic!("nothing applied")) {
            Response::Error { code, message } => {
                assert_eq!(code, ErrorCode::InvalidConfig);
                assert!(message.contains("gpu.max_duty"), "{message}");
            }
            other => panic!("expected an error, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn the_fake_power_counts_reboots() {
        let fake = Arc::new(edge_hal::fake::FakePower::default());
        assert!(matches!(reboot(fake.clone()).await, Response::Ok));
        assert_eq!(fake.0.load(std::sync::atomic::Ordering::Relaxed), 1);
    }
}
