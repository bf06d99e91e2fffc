//! `edge-hal`: the edge box seen through small traits.
//!
//! Every piece of hardware or OS state the agent reads or sets goes through one trait here, with a
//! real Linux implementation (procfs, sysfs, `statvfs`, `getifaddrs`, the GPU worker's discovery, files on disk,
//! `nmcli`/`wpa_cli`, evdev input devices) and, behind the `fake` feature, an in-memory fake in [`fake`] for other
//! crates' policy tests.
//! The agent is handed a [`Hal`] and never reaches for the OS itself.
//!
//! Limits today: Linux only; one identity key store (`file://` URIs, in `edge-identity`); GPU
//! discovery through the Vulkan backend only (the box's Adreno 650 speaks Vulkan 1.1); Wi-Fi through `nmcli` or
//! `wpa_cli`, personal (PSK/SAE) networks only.

pub mod button;
pub mod clock;
pub mod gpu;
pub mod journal;
pub mod net;
pub mod power;
pub mod storage;
pub mod system;
pub mod thermal;
pub mod wifi;

mod sysfs;

#[cfg(feature = "fake")]
pub mod fake;

use std::sync::Arc;

use edge_identity::{FileKeyStore, KeyStore};

pub use button::{Button, ButtonError, Buttons, EvdevButton, EvdevButtons, Wait};
pub use clock::{CLOCK_FLOOR_UNIX_S, Clock, SystemClock};
pub use gpu::{GpuProbe, IsolatedProbe};
pub use journal::{SystemLog, SystemdJournal};
pub use net::{Interface, Interfaces, LinuxInterfaces};
pub use power::{Power, SystemdPower};
pub use storage::{LinuxStorage, Storage, StorageUsage};
pub use system::{LinuxSystem, SystemInfo, SystemSnapshot};
pub use thermal::{SysfsThermal, Thermal, ThermalZone};
pub use wifi::{
    LinuxWifi, NetworkManagerWifi, Passphrase, Security, Wifi, WifiError, WifiManager, WifiNetwork,
    WifiStatus, WpaSupplicantWifi,
};

/// Everything the agent may ask of the device, each behind its trait.
///
/// Cloning is cheap: the parts are shared.
#[derive(Clone)]
pub struct Hal {
    /// CPU, memory, load, uptime, kernel and OS release.
    pub system: Arc<dyn SystemInfo>,
    /// Network interfaces and their counters.
    pub interfaces: Arc<dyn Interfaces>,
    /// Capacity of the filesystem holding a path.
    pub storage: Arc<dyn Storage>,
    /// Thermal zones and their temperatures; an empty list on machines without any.
    pub thermal: Arc<dyn Thermal>,
    /// Monotonic and wall time; the fake's moves only when a test advances it.
    pub clock: Arc<dyn Clock>,
    /// Opens and creates the identity key (files with mode 0600 on the real device).
    pub keys: Arc<dyn KeyStore>,
    /// GPU adapter discovery.
    pub gpu: Arc<dyn GpuProbe>,
    /// Wi-Fi scanning and provisioning.
    pub wifi: Arc<dyn Wifi>,
    /// Reboots the box (`systemctl reboot` on the real device).
    pub power: Arc<dyn Power>,
    /// Erases the system journal at a factory reset (an erase unit, where the image installs it).
    pub journal: Arc<dyn SystemLog>,
    /// Input devices: the pairing button.
    pub buttons: Arc<dyn Buttons>,
}

impl Hal {
    /// The real device: procfs/sysfs at `/`, files for keys, the GPU worker beside this program for
    /// GPU discovery,
    /// NetworkManager or wpa_supplicant for Wi-Fi, whichever is installed, and evdev for buttons.
    pub fn linux() -> Self {
        Self {
            system: Arc::new(LinuxSystem::default()),
            interfaces: Arc::new(LinuxInterfaces::default()),
            storage: Arc::new(LinuxStorage),
            thermal: Arc::new(SysfsThermal::default()),
            clock: Arc::new(SystemClock),
            keys: Arc::new(FileKeyStore),
            gpu: Arc::new(IsolatedProbe::worker(&gpu::worker_beside_this_program())),
            wifi: Arc::new(LinuxWifi::default()),
            power: Arc::new(SystemdPower::default()),
            journal: Arc::new(SystemdJournal::default()),
            buttons: Arc::new(EvdevButtons),
        }
    }
}
