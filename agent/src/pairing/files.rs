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
    /// No setup code could be made (the system's random source failed).
    #[error("{path}: cannot make a setup code: {reason}")]
    Random { path: PathBuf, reason: String },
}

/// What pairing leaves on disk.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PairingRecord {
    /// The owner's Ed25519 public key, hex; `None` while unowned.
    pub owner_key: Option<String>,
    /// Failed pairing attempts over the box's life (reset by a factory reset).
    pub failures: u32,
    /// Whether the box has had an owner since its last factory reset (or may have: its record
    /// was unreadable). Then no pairing window opens at start; only the pairing button opens one.
    #[serde(default)]
    pub paired_before: bool,
}

impl PairingRecord {
    /// Whether a pairing window opens by itself when the agent starts: only on a box never paired
    /// whose first window was not used up by wrong codes. After that, a press of the pairing
    /// button (someone at the box) opens each one.
    pub(crate) fn opens_window_at_start(&self) -> bool {
        self.owner_key.is_none()
            && !self.paired_before
            && self.failures < edge_mobile_bridge::pairing::MAX_WINDOW_FAILURES
    }
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

    /// The setup code, made (0600) if there is none yet. An unreadable one is set aside and a new
    /// one made: the label's code no longer works, and `edge-agent pairing-code` shows the new
    /// one (a box with a screen would show it there), but the box keeps running and reporting.
    pub(crate) fn setup_code(&self) -> Result<SetupCode, BridgeError> {
        match std::fs::read_to_string(&self.setup_code) {
            Ok(text) => match SetupCode::parse(text.trim()) {
                Ok(code) => Ok(code),
                Err(e) => {
                    tracing::error!(path = %self.setup_code.display(), error = %e, "the setup code is unreadable; it is set aside and a new one made (the label's no longer works)");
                    durable::set_aside(&self.setup_code)?;
                    self.new_setup_code()
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => self.new_setup_code(),
            Err(e) => Err(durable::FileError::at("read", &self.setup_code)(e).into()),
        }
    }

    fn new_setup_code(&self) -> Result<SetupCode, BridgeError> {
        let code = SetupCode::generate().map_err(|e| BridgeError::Random {
            path: self.setup_code.clone(),
            reason: e.to_string(),
        })?;
        durable::write(&self.setup_code, code.digits().as_bytes(), 0o600)?;
        Ok(code)
    }

    /// The pairing record; the default when there is none. An unreadable one is set aside and
    /// replaced by an unowned record that may have had an owner (so only the pairing button opens
    /// a window): nobody nearby can take the box because its file was damaged, and the owner
    /// pairs again with a press.
    pub(crate) fn load(&self) -> Result<PairingRecord, BridgeError> {
        match durable::read_json(&self.pairing) {
            Ok(record) => Ok(record.unwrap_or_default()),
            Err(e) if e.op == "parse" => {
                tracing::error!(error = %e, "the pairing record is unreadable; it is set aside, and pairing needs the button");
                durable::set_aside(&self.pairing)?;
                let record = PairingRecord {
                    paired_before: true,
                    ..PairingRecord::default()
                };
                self.save(&record)?;
                Ok(record)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Stores the record durably, on a full disk too (the state directory's reserve).
    pub(crate) fn save(&self, record: &PairingRecord) -> Result<(), BridgeError> {
        let dir = self.pairing.parent().unwrap_or(Path::new("/"));
        Ok(crate::host::reserve::write_critical(dir, || {
            durable::write_json(&self.pairing, record, 0o600)
        })?)
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

/// Erases the owner, the owner's settings, the owner's network binding and report queue, the
/// Wi-Fi credentials, the pairing failure count and every file set aside as corrupt, keeping the
/// identity (`edge-agent factory-reset`, run with the agent stopped). The owner goes last: a reset
/// that fails half-way leaves the box with its owner, who can try again, never with nobody able to
/// finish it.
pub(crate) fn factory_reset(state_dir: &Path, hal: &Hal) -> Result<(), BridgeError> {
    erase_owner_data(state_dir)?;
    // The owner's network binding and queued reports; `seq-floor` stays, so numbers never go back.
    for file in [
        crate::network::binding::FILE,
        "outbox.db",
        "outbox.db-wal",
        "outbox.db-shm",
    ] {
        durable::remove(&state_dir.join(file))?;
    }
    if let Err(e) = hal.wifi.forget_all() {
        tracing::warn!(error = %e, "Wi-Fi credentials not erased");
    }
    BridgeFiles::in_dir(state_dir).save(&PairingRecord::default())?;
    erase_journal(hal.journal.as_ref());
    Ok(())
}

/// Erases the system journal, last in a reset (it holds the owner's networks, binding and
/// addresses, but a reset that could not erase it has still forgotten the owner). Says what it
/// did; whether the journal was erased.
pub(crate) fn erase_journal(journal: &dyn edge_hal::SystemLog) -> bool {
    match journal.erase() {
        Ok(edge_hal::journal::Erased::Journal) => true,
        Ok(edge_hal::journal::Erased::NoUnit) => {
            tracing::info!(
                unit = edge_hal::journal::ERASE_UNIT,
                "no journal erase unit installed: the system journal is not this agent's to erase"
            );
            false
        }
        Err(e) => {
            tracing::warn!(error = %e, "factory reset: the system journal not erased");
            false
        }
    }
}

/// What a reset erases of the owner's besides the binding, in both resets (the agent's and the
/// owner's app's): the owner's settings, and the files set aside as corrupt (`*.corrupt`: an old
/// queue, pairing record or settings, which hold the owner's data too).
pub(crate) fn erase_owner_data(state_dir: &Path) -> Result<(), BridgeError> {
    durable::remove(&crate::config::owner_file(state_dir))?;
    let entries =
        std::fs::read_dir(state_dir).map_err(|e| durable::FileError::at("read", state_dir)(e))?;
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().ends_with(".corrupt") {
            durable::remove(&entry.path())?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_factory_reset_erases_the_system_journal_last() {
        let dir = tempfile::tempdir().expect("tempdir");
        let journal = Arc::new(edge_hal::fake::FakeJournal::default());
        let hal = Hal {
            journal: journal.clone(),
            ..Hal::fake()
        };
        let files = BridgeFiles::in_dir(dir.path());
        files
            .save(&PairingRecord {
                owner_key: Some("07".repeat(32)),
                failures: 3,
                paired_before: true,
            })
            .expect("owned");
        factory_reset(dir.path(), &hal).expect("reset");
        assert_eq!(journal.0.load(std::sync::atomic::Ordering::Relaxed), 1);
        assert_eq!(files.load().expect("record"), PairingRecord::default());
    }

    #[test]
    fn an_unreadable_record_is_set_aside_and_pairing_then_needs_the_button() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = BridgeFiles::in_dir(dir.path());
        std::fs::write(&files.pairing, b"{\"owner_key\": \"ab").expect("torn write");
        // Before, this was an error that stopped the agent at every start (exit 65).
        let record = files.load().expect("a fresh record");
        assert_eq!(
            record,
            PairingRecord {
                owner_key: None,
                failures: 0,
                paired_before: true
            }
        );
        assert!(dir.path().join("pairing.json.corrupt").exists());
        assert_eq!(files.load().expect("reads back"), record);
    }

    #[test]
    fn an_unreadable_setup_code_is_replaced_by_a_new_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = BridgeFiles::in_dir(dir.path());
        std::fs::write(&files.setup_code, b"12x").expect("garbage");
        let code = files.setup_code().expect("a new code");
        assert!(dir.path().join("setup-code.corrupt").exists());
        assert_eq!(
            files.setup_code().expect("the same code").digits(),
            code.digits()
        );
    }

    #[test]
    fn a_record_of_an_older_release_reads_as_never_paired_before() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = BridgeFiles::in_dir(dir.path());
        std::fs::write(&files.pairing, b"{\"owner_key\": null, \"failures\": 2}").expect("old");
        assert_eq!(
            files.load().expect("reads"),
            PairingRecord {
                owner_key: None,
                failures: 2,
                paired_before: false
            }
        );
    }
}
