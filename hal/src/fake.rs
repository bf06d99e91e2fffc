//! In-memory fakes of every trait, for other crates' policy tests (feature `fake`).
//!
//! Each fake holds its answer behind a mutex so a test can change the world between calls.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use crate::Hal;
use crate::button::{Button, ButtonError, Buttons, Wait};
use crate::clock::Clock;
use crate::gpu::GpuProbe;
use crate::net::{Interface, Interfaces, NetError};
use crate::storage::{Storage, StorageError, StorageUsage};
use crate::system::{SystemError, SystemInfo, SystemSnapshot};
use crate::thermal::{Thermal, ThermalError, ThermalZone};
use crate::wifi::{self, Passphrase, Wifi, WifiError, WifiNetwork, WifiStatus};
use edge_identity::{Identity, KeyError, KeyStore, KeyUri};
use edge_jobs::adapter::GpuStatus;

use zeroize::Zeroizing;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A host with fixed, settable figures.
#[derive(Debug)]
pub struct FakeSystem(pub Mutex<SystemSnapshot>);

impl Default for FakeSystem {
    fn default() -> Self {
        Self(Mutex::new(SystemSnapshot {
            cpu_model: "Cortex-A55 x4 + Cortex-A77 x4".into(),
            cores: 8,
            cpus: Vec::new(),
            load: [0.5, 0.4, 0.3],
            memory_total_bytes: 12 << 30,
            memory_available_bytes: 10 << 30,
            uptime_secs: 3600.0,
            kernel: "6.1.0-fake".into(),
            os_release: "Fake OS".into(),
            boot_id: "00000000-0000-4000-8000-000000000000".into(),
        }))
    }
}

impl SystemInfo for FakeSystem {
    fn snapshot(&self) -> Result<SystemSnapshot, SystemError> {
        Ok(lock(&self.0).clone())
    }
}

/// Interfaces the test sets; [`Interfaces::list`] returns them as they are, unsorted.
#[derive(Debug, Default)]
pub struct FakeInterfaces(pub Mutex<Vec<Interface>>);

impl Interfaces for FakeInterfaces {
    fn list(&self) -> Result<Vec<Interface>, NetError> {
        Ok(lock(&self.0).clone())
    }
}

/// A filesystem of settable size.
#[derive(Debug)]
pub struct FakeStorage(pub Mutex<(u64, u64)>);

impl Default for FakeStorage {
    fn default() -> Self {
        Self(Mutex::new((256 << 30, 200 << 30)))
    }
}

impl Storage for FakeStorage {
    fn usage(&self, path: &Path) -> Result<StorageUsage, StorageError> {
        let (total_bytes, available_bytes) = *lock(&self.0);
        Ok(StorageUsage {
            path: path.to_owned(),
            total_bytes,
            available_bytes,
        })
    }
}

/// Thermal zones the test heats and cools.
#[derive(Debug, Default)]
pub struct FakeThermal(pub Mutex<Vec<ThermalZone>>);

impl FakeThermal {
    /// Sets every zone to `celsius`, creating one zone if there is none.
    pub fn set_all(&self, celsius: f64) {
        let mut zones = lock(&self.0);
        if zones.is_empty() {
            zones.push(ThermalZone {
                name: "thermal_zone0".into(),
                kind: "fake".into(),
                celsius,
            });
        }
        zones.iter_mut().for_each(|z| z.celsius = celsius);
    }
}

impl Thermal for FakeThermal {
    fn zones(&self) -> Result<Vec<ThermalZone>, ThermalError> {
        Ok(lock(&self.0).clone())
    }
}

/// A clock that moves only when [`FakeClock::advance`] is called.
#[derive(Debug)]
pub struct FakeClock(Mutex<(Duration, SystemTime)>);

impl Default for FakeClock {
    fn default() -> Self {
        // 2026-01-01T00:00:00Z
        Self(Mutex::new((
            Duration::ZERO,
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_767_225_600),
        )))
    }
}

impl FakeClock {
    /// Moves both clocks forward.
    pub fn advance(&self, by: Duration) {
        let mut t = lock(&self.0);
        t.0 += by;
        t.1 += by;
    }

    /// Sets the wall clock alone (an NTP step, a box booting in 1970).
    pub fn set_wall(&self, wall: SystemTime) {
        lock(&self.0).1 = wall;
    }
}

impl Clock for FakeClock {
    fn monotonic(&self) -> Duration {
        lock(&self.0).0
    }

    fn wall(&self) -> SystemTime {
        lock(&self.0).1
    }
}

/// Keys made in memory, one per URI, never written anywhere.
#[derive(Debug, Default)]
pub struct FakeKeyStore(Mutex<BTreeMap<String, Zeroizing<Vec<u8>>>>);

impl KeyStore for FakeKeyStore {
    fn open_or_create(&self, uri: &KeyUri) -> Result<Identity, KeyError> {
        let mut keys = lock(&self.0);
        let pkcs8 = match keys.get(&uri.to_string()) {
            Some(pkcs8) => pkcs8.clone(),
            None => {
                let made = Identity::generate_ephemeral()?.pkcs8().clone();
                keys.insert(uri.to_string(), made.clone());
                made
            }
        };
        Identity::from_pkcs8(uri.clone(), Path::new("(fake)"), pkcs8)
    }

    fn open(&self, uri: &KeyUri) -> Result<Identity, KeyError> {
        let pkcs8 = lock(&self.0).get(&uri.to_string()).cloned();
        let pkcs8 = pkcs8.ok_or_else(|| KeyError::Io {
            op: "open key",
            path: PathBuf::from(uri.to_string()),
            source: std::io::ErrorKind::NotFound.into(),
        })?;
        Identity::from_pkcs8(uri.clone(), Path::new("(fake)"), pkcs8)
    }
}

/// A GPU probe that answers what the test set.
#[derive(Debug)]
pub struct FakeGpu(pub Mutex<GpuStatus>);

impl Default for FakeGpu {
    fn default() -> Self {
        Self(Mutex::new(GpuStatus::Unavailable {
            reason: "fake: no GPU".into(),
        }))
    }
}

impl GpuProbe for FakeGpu {
    fn discover(&self) -> GpuStatus {
        lock(&self.0).clone()
    }
}

/// One accepted [`Wifi::connect`], without the secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeConnect {
    /// The SSID as passed to [`Wifi::connect`].
    pub ssid: String,
    /// Whether a passphrase was given (false: an open network).
    pub with_passphrase: bool,
}

/// What [`FakeWifi`] holds.
#[derive(Debug, Clone, Default)]
pub struct FakeWifiState {
    /// What [`Wifi::scan`] returns.
    pub networks: Vec<WifiNetwork>,
    /// Every accepted connect since the last [`Wifi::forget_all`], oldest first.
    pub connects: Vec<FakeConnect>,
    /// The network [`Wifi::status`] reports: the last one connected to.
    pub connected: Option<String>,
    /// When set, every call fails with [`WifiError::Rejected`] carrying this reply.
    pub fail: Option<String>,
}

/// A Wi-Fi manager in memory: validates like the real ones, records connects, never keeps a
/// passphrase.
#[derive(Debug, Default)]
pub struct FakeWifi(pub Mutex<FakeWifiState>);

impl FakeWifi {
    /// Sets what scans return.
    pub fn set_networks(&self, networks: Vec<WifiNetwork>) {
        lock(&self.0).networks = networks;
    }

    /// The connects recorded so far.
    pub fn connects(&self) -> Vec<FakeConnect> {
        lock(&self.0).connects.clone()
    }

    /// Makes every later call fail (`Some`) or succeed again (`None`).
    pub fn set_failure(&self, reply: Option<&str>) {
        lock(&self.0).fail = reply.map(str::to_owned);
    }

    fn state(&self) -> Result<MutexGuard<'_, FakeWifiState>, WifiError> {
        let state = lock(&self.0);
        match &state.fail {
            Some(reply) => Err(WifiError::Rejected {
                program: "fake-wifi".into(),
                command: String::new(),
                reply: reply.clone(),
            }),
            None => Ok(state),
        }
    }
}

impl Wifi for FakeWifi {
    fn scan(&self) -> Result<Vec<WifiNetwork>, WifiError> {
        let state = self.state()?;
        let mut networks = state.networks.clone();
        for n in &mut networks {
            n.in_use = state.connected.as_deref() == Some(n.ssid.as_str());
        }
        Ok(networks)
    }

    fn connect(&self, ssid: &str, passphrase: &Passphrase) -> Result<(), WifiError> {
        wifi::validate(ssid, passphrase)?;
        let mut state = self.state()?;
        state.connects.push(FakeConnect {
            ssid: ssid.to_owned(),
            with_passphrase: !passphrase.is_empty(),
        });
        state.connected = Some(ssid.to_owned());
        Ok(())
    }

    fn status(&self) -> Result<WifiStatus, WifiError> {
        let state = self.state()?;
        Ok(WifiStatus {
            connected_ssid: state.connected.clone(),
            interface: Some("wlan0".into()),
        })
    }

    fn forget_all(&self) -> Result<(), WifiError> {
        let mut state = self.state()?;
        state.connects.clear();
        state.connected = None;
        Ok(())
    }
}

impl Hal {
    /// A device made entirely of fakes.
    pub fn fake() -> Self {
        Self {
            system: Arc::new(FakeSystem::default()),
            interfaces: Arc::new(FakeInterfaces::default()),
            storage: Arc::new(FakeStorage::default()),
            thermal: Arc::new(FakeThermal::default()),
            clock: Arc::new(FakeClock::default()),
            keys: Arc::new(FakeKeyStore::default()),
            gpu: Arc::new(FakeGpu::default()),
            wifi: Arc::new(FakeWifi::default()),
            power: Arc::new(FakePower::default()),
            journal: Arc::new(FakeJournal::default()),
            buttons: Arc::new(FakeButtons::default()),
        }
    }
}

/// Counts reboot requests; every one succeeds.
#[derive(Debug, Default)]
pub struct FakePower(pub std::sync::atomic::AtomicU32);

impl crate::power::Power for FakePower {
    fn reboot(&self) -> Result<(), crate::power::PowerError> {
        self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }
}

/// Counts journal erases; every one succeeds.
#[derive(Debug, Default)]
pub struct FakeJournal(pub std::sync::atomic::AtomicU32);

impl crate::journal::SystemLog for FakeJournal {
    fn erase(&self) -> Result<crate::journal::Erased, crate::power::PowerError> {
        self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(crate::journal::Erased::Journal)
    }
}

/// Buttons the test presses: every button opened reports each [`FakeButtons::press`] and
/// [`FakeButtons::hold`].
#[derive(Debug, Default)]
pub struct FakeButtons {
    opened: Mutex<Vec<(PathBuf, u16, std::sync::mpsc::Sender<Wait>)>>,
    /// `open` fails as for a missing device.
    pub missing: std::sync::atomic::AtomicBool,
}

impl FakeButtons {
    /// Presses every open button; how many were still waited on.
    pub fn press(&self) -> usize {
        self.send(Wait::Pressed)
    }

    /// Says every open button has been held down for the hold time (a press comes first).
    pub fn hold(&self) -> usize {
        self.send(Wait::Held)
    }

    fn send(&self, what: Wait) -> usize {
        let mut opened = lock(&self.opened);
        opened.retain(|(.., tx)| tx.send(what).is_ok());
        opened.len()
    }

    /// Ends every open button's input, as when the device goes away.
    pub fn unplug(&self) {
        lock(&self.opened).clear();
    }

    /// The device and key of each open button.
    pub fn opened(&self) -> Vec<(PathBuf, u16)> {
        lock(&self.opened)
            .iter()
            .map(|(path, key, _)| (path.clone(), *key))
            .collect()
    }
}

impl Buttons for FakeButtons {
    fn open(&self, device: &Path, key: u16) -> Result<Box<dyn Button>, ButtonError> {
        if self.missing.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(ButtonError::Open {
                path: device.to_owned(),
                source: std::io::ErrorKind::NotFound.into(),
            });
        }
        let (tx, rx) = std::sync::mpsc::channel();
        lock(&self.opened).push((device.to_owned(), key, tx));
        Ok(Box::new(FakeButton(rx)))
    }
}

/// A button opened by [`FakeButtons`].
#[derive(Debug)]
pub struct FakeButton(std::sync::mpsc::Receiver<Wait>);

impl Button for FakeButton {
    fn wait(&mut self, timeout: Duration) -> Result<Wait, ButtonError> {
        match self.0.recv_timeout(timeout) {
            Ok(what) => Ok(what),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => Ok(Wait::TimedOut),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => Ok(Wait::Ended),
        }
    }
}
