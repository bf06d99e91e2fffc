//! What pairing keeps in the state directory: `setup-code` (the per-device setup secret, 0600,
//! made on first start; the label's QR code and manual code come from it) and `pairing.json` (the
//! owner's public key and the persistent failure count, 0600, written durably before any reply
//! that depends on them).

use std::path::{Path, PathBuf};

use edge_hal::Hal;
use edge_identity::{Identity, durable};
use edge_mobile_bridge::setup_code::{DeviceFingerprint, QrPayload, SetupCode};
use serde::{Deserialize, Serialize};

/// Errors of the bridge's storage.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    /// A state file could not be read or written.
    #[error(transparent)]
    File(#[from] durable::FileError),
    /// A state file holds something else.
    #[error("{path}: {reason}")]
    Corrupt { path: PathBuf, reason: String },
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
