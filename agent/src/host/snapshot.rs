//! The hardware snapshot: one read of every `hal` part, as shown by `/status` and `info`.
//!
//! A part that cannot be read is left out and its error listed, so one broken sensor never hides
//! the rest.

use edge_hal::net::Counters;
use edge_protocol::exposition::Exposition;
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

impl HardwareSnapshot {
    /// The `edge_host_*` families.
    pub(crate) fn write_metrics(&self, e: &mut Exposition) {
        if let Some(sys) = &self.system {
            e.family("edge_host_load_average", "gauge", "Load average.");
            for (window, load) in ["1m", "5m", "15m"].iter().zip(sys.load) {
                e.sample("edge_host_load_average", &[("window", window)], load);
            }
            e.family("edge_host_memory_total_bytes", "gauge", "Physical memory.")
                .sample(
                    "edge_host_memory_total_bytes",
                    &[],
                    sys.memory_total_bytes as f64,
                );
            e.family(
                "edge_host_memory_available_bytes",
                "gauge",
                "Memory available without swapping.",
            )
            .sample(
                "edge_host_memory_available_bytes",
                &[],
                sys.memory_available_bytes as f64,
            );
            e.family("edge_host_uptime_seconds", "gauge", "Seconds since boot.")
                .sample("edge_host_uptime_seconds", &[], sys.uptime_secs);
            e.family(
                "edge_host_cpu_frequency_hertz",
                "gauge",
                "Current CPU frequency.",
            );
            for cpu in &sys.cpus {
                if let Some(khz) = cpu.cur_khz {
                    e.sample(
                        "edge_host_cpu_frequency_hertz",
                        &[("cpu", &cpu.id.to_string())],
                        khz as f64 * 1e3,
                    );
                }
            }
        }
        type Counter = fn(&Counters) -> u64;
        let counters: [(&str, &str, Counter); 4] = [
            (
                "edge_host_network_receive_bytes_total",
                "Bytes received.",
                |c| c.rx_bytes,
            ),
            (
                "edge_host_network_transmit_bytes_total",
                "Bytes sent.",
                |c| c.tx_bytes,
            ),
            (
                "edge_host_network_receive_packets_total",
                "Packets received.",
                |c| c.rx_packets,
            ),
            (
                "edge_host_network_transmit_packets_total",
                "Packets sent.",
                |c| c.tx_packets,
            ),
        ];
        for (name, help, get) in counters {
            e.family(name, "counter", help);
            for iface in &self.interfaces {
                e.sample(
                    name,
                    &[("interface", &iface.name)],
                    get(&iface.counters) as f64,
                );
            }
        }
        if let Some(storage) = &self.storage {
            e.family(
                "edge_host_state_fs_size_bytes",
                "gauge",
                "Size of the state directory's filesystem.",
            )
            .sample(
                "edge_host_state_fs_size_bytes",
                &[],
                storage.total_bytes as f64,
            );
            e.family(
                "edge_host_state_fs_available_bytes",
                "gauge",
                "Free space on the state directory's filesystem.",
            )
            .sample(
                "edge_host_state_fs_available_bytes",
                &[],
                storage.available_bytes as f64,
            );
        }
        e.family(
            "edge_host_temperature_celsius",
            "gauge",
            "Thermal zone temperature.",
        );
        for zone in &self.thermal {
            e.sample(
                "edge_host_temperature_celsius",
                &[("zone", &zone.name), ("type", &zone.kind)],
                zone.celsius,
            );
        }
    }
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
