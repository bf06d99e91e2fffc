//! The boxes this owner paired with: id, identity key and address, in `devices.json` (0600).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use edge_mobile_bridge::client::PairedDevice;
use edge_mobile_bridge::setup_code::DeviceFingerprint;
use serde::{Deserialize, Serialize};

/// One paired box as `devices.json` keeps it: its id, its identity key, and the address it was
/// paired at (where later sessions go).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Known {
    pub device_id: String,
    /// Its Ed25519 identity key, hex (learned, and proven, at pairing).
    pub device_key: String,
    pub addr: SocketAddr,
}

impl Known {
    /// What the protocol needs to open a session.
    pub(crate) fn paired(&self) -> Result<PairedDevice, String> {
        let device_key = edge_identity::hex::decode_array::<32>(&self.device_key)
            .ok_or_else(|| format!("devices.json: bad key for {}", self.device_id))?;
        let device_id = DeviceFingerprint::parse(&self.device_id).map_err(|e| e.to_string())?;
        Ok(PairedDevice {
            device_id,
            device_key,
        })
    }
}

/// The file and what is in it.
pub(crate) struct Devices {
    path: PathBuf,
    known: Vec<Known>,
}

impl Devices {
    /// Reads `devices.json` in `dir` (none yet: empty).
    pub(crate) fn load(dir: &Path) -> Result<Self, String> {
        let path = dir.join("devices.json");
        let known = match std::fs::read(&path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", path.display()))?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        Ok(Self { path, known })
    }

    /// Writes the file back, durably.
    pub(crate) fn save(&self) -> Result<(), String> {
        let bytes = serde_json::to_vec_pretty(&self.known).unwrap_or_default();
        edge_identity::durable::write(&self.path, &bytes, 0o600)
            .map_err(|e| format!("{}: {e}", self.path.display()))
    }

    /// Adds or replaces a box.
    pub(crate) fn remember(&mut self, known: Known) {
        self.forget(&known.device_id);
        self.known.push(known);
    }

    /// Drops the box with this id, if known; the file changes only at [`Devices::save`].
    pub(crate) fn forget(&mut self, device_id: &str) {
        self.known.retain(|k| k.device_id != device_id);
    }

    /// Every box, oldest pairing first (pairing a box again moves it last).
    pub(crate) fn all(&self) -> &[Known] {
        &self.known
    }

    /// The box named, or the only one.
    pub(crate) fn pick(&self, device_id: Option<&str>) -> Result<Known, String> {
        match (device_id, self.known.as_slice()) {
            (Some(id), known) => known
                .iter()
                .find(|k| k.device_id == id)
                .cloned()
                .ok_or_else(|| format!("no paired box {id}; `edgectl devices` lists them")),
            (None, [only]) => Ok(only.clone()),
            (None, []) => Err("no paired box; run `edgectl pair` first".into()),
            (None, _) => Err("several paired boxes; say which with --device".into()),
        }
    }
}
