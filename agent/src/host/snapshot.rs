//! The hardware snapshot: one read of every `hal` part, as shown by `/status` and `info`.
//!
//! A part that cannot be read is left out and its error listed, so one broken sensor never hides
//! the rest.

use std::path::Path;

use edge_hal::net::Interface;
use edge_hal::{Hal, StorageUsage, SystemSnapshot, ThermalZone};
use serde::Serialize;

/// Everything the HAL says about the host right now (the GPU is probed separately, once).
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct HardwareSnapshot {
    /// CPU, memory, load, uptime, kernel, OS.
    pub system: Option<SystemSnapshot>,
    /// Network interfaces and counters.
    pub interfaces: Vec<Interface>,
    /// The state directory's filesystem.
    pub storage: Option<StorageUsage>,
    /// Thermal zones (empty where the machine has none).
    pub thermal: Vec<ThermalZone>,
    /// Parts that could not be read, and why.
    pub errors: Vec<String>,
}

impl HardwareSnapshot {
    /// Reads every part now. Blocking (file reads): call from a blocking context.
    pub(crate) fn collect(hal: &Hal, state_dir: &Path) -> Self {
        let mut errors = Vec::new();
        let system = keep(&mut errors, hal.system.snapshot());
        let interfaces = keep(&mut errors, hal.interfaces.list()).unwrap_or_default();
        let storage = keep(&mut errors, hal.storage.usage(state_dir));
        let thermal = keep(&mut errors, hal.thermal.zones()).unwrap_or_default();
        Self {
            system,
            interfaces,
            storage,
            thermal,
            errors,
        }
    }
}

fn keep<T>(errors: &mut Vec<String>, read: Result<T, impl std::fmt::Display>) -> Option<T> {
    read.map_err(|e| errors.push(e.to_string())).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fake_device_reads_whole() {
        let snap = HardwareSnapshot::collect(&Hal::fake(), Path::new("/state"));
        assert!(snap.errors.is_empty(), "{:?}", snap.errors);
        assert_eq!(snap.system.expect("system").cores, 8);
        assert_eq!(snap.storage.expect("storage").path, Path::new("/state"));
    }

    #[test]
    fn an_unreadable_part_is_listed_and_the_rest_still_read() {
        let snap = HardwareSnapshot::collect(&Hal::linux(), Path::new("/nonexistent/state"));
        assert!(snap.storage.is_none());
        assert_eq!(snap.errors.len(), 1, "{:?}", snap.errors);
        assert!(
            snap.errors[0].contains("/nonexistent/state"),
            "{:?}",
            snap.errors
        );
        assert!(snap.system.is_some() && !snap.interfaces.is_empty());
    }
}
