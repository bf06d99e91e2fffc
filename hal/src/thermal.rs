//! Thermal zones from `/sys/class/thermal`.

use std::path::PathBuf;

use serde::Serialize;

use crate::sysfs;

/// Errors listing thermal zones.
#[derive(Debug, thiserror::Error)]
pub enum ThermalError {
    /// The thermal class directory exists but cannot be read.
    #[error("cannot list thermal zones in {path}: {source}")]
    List {
        /// `<sysfs>/class/thermal`; a missing one is an empty list, not this error.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// One thermal zone and its current temperature.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ThermalZone {
    /// Directory name, e.g. `thermal_zone0`.
    pub name: String,
    /// What the zone measures (`type`), e.g. `cpu-0-0-usr` on the Snapdragon.
    pub kind: String,
    /// Temperature in degrees Celsius.
    pub celsius: f64,
}

/// Temperatures: [`SysfsThermal`], or the fakes' for tests.
pub trait Thermal: Send + Sync {
    /// All readable zones; an empty list where the machine has none (VMs, containers).
    fn zones(&self) -> Result<Vec<ThermalZone>, ThermalError>;
}

/// Reads `<root>/class/thermal/thermal_zone*/{type,temp}` (millidegrees Celsius).
#[derive(Debug, Clone)]
pub struct SysfsThermal {
    /// The sysfs mount point, `/sys` on a real system.
    pub sysfs: PathBuf,
}

impl Default for SysfsThermal {
    fn default() -> Self {
        Self {
            sysfs: PathBuf::from("/sys"),
        }
    }
}

impl Thermal for SysfsThermal {
    fn zones(&self) -> Result<Vec<ThermalZone>, ThermalError> {
        let dir = self.sysfs.join("class/thermal");
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(ThermalError::List { path: dir, source }),
        };
        let mut zones: Vec<ThermalZone> = entries
            .filter_map(Result::ok)
            .filter_map(|entry| {
                let name = entry.file_name().to_string_lossy().into_owned();
                if !name.starts_with("thermal_zone") {
                    return None;
                }
                // A zone whose sensor is off answers EINVAL or ENODATA: skip it, keep the rest.
                let milli = sysfs::read_i64(&entry.path().join("temp"))?;
                let kind = sysfs::read_trimmed(&entry.path().join("type")).unwrap_or_default();
                Some(ThermalZone {
                    name,
                    kind,
                    celsius: milli as f64 / 1000.0,
                })
            })
            .collect();
        zones.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(zones)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zone(root: &std::path::Path, name: &str, kind: &str, temp: &str) {
        let dir = root.join("class/thermal").join(name);
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(dir.join("type"), kind).expect("type");
        std::fs::write(dir.join("temp"), temp).expect("temp");
    }

    #[test]
    fn reads_zones_in_order_and_skips_broken_sensors() {
        let root = tempfile::tempdir().expect("tempdir");
        zone(root.path(), "thermal_zone1", "gpuss-0-usr\n", "48500\n");
        zone(root.path(), "thermal_zone0", "cpu-0-0-usr\n", "41200\n");
        zone(root.path(), "thermal_zone2", "broken\n", "");
        std::fs::create_dir_all(root.path().join("class/thermal/cooling_device0")).expect("mkdir");
        let zones = SysfsThermal {
            sysfs: root.path().to_owned(),
        }
        .zones()
        .expect("zones");
        assert_eq!(
            zones,
            vec![
                ThermalZone {
                    name: "thermal_zone0".into(),
                    kind: "cpu-0-0-usr".into(),
                    celsius: 41.2
                },
                ThermalZone {
                    name: "thermal_zone1".into(),
                    kind: "gpuss-0-usr".into(),
                    celsius: 48.5
                },
            ]
        );
    }

    #[test]
    fn no_thermal_class_is_an_empty_list() {
        let root = tempfile::tempdir().expect("tempdir");
        let zones = SysfsThermal {
            sysfs: root.path().to_owned(),
        }
        .zones()
        .expect("zones");
        assert!(zones.is_empty());
    }

    #[test]
    fn this_machine_reads_without_error() {
        // Zones may or may not exist here (VMs often have none); either answer is fine, an
        // error is not.
        SysfsThermal::default().zones().expect("thermal zones");
    }
}
