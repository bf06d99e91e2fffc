//! CPU, memory, load, uptime, kernel and OS release from procfs, sysfs and `os-release`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::sysfs;

/// Errors reading system information.
#[derive(Debug, thiserror::Error)]
pub enum SystemError {
    /// A file that every Linux system has could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file under [`LinuxSystem::procfs`], e.g. `<procfs>/meminfo`.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A file was read but did not say what it should.
    #[error("{path}: {what}")]
    Parse {
        /// The file that did not parse: `<procfs>/loadavg`, `meminfo` or `uptime`.
        path: PathBuf,
        /// What was missing or malformed.
        what: String,
    },
}

/// One logical CPU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Cpu {
    /// Logical CPU number.
    pub id: u32,
    /// Current frequency in kHz, where cpufreq reports it.
    pub cur_khz: Option<u64>,
    /// Highest frequency in kHz, where cpufreq reports it.
    pub max_khz: Option<u64>,
}

/// A point-in-time view of the host.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SystemSnapshot {
    /// CPU model: `model name` on x86, the core types (e.g. `Cortex-A77 x4 + Cortex-A55 x4`) on Arm.
    pub cpu_model: String,
    /// Logical CPU count.
    pub cores: u32,
    /// Per-CPU frequencies.
    pub cpus: Vec<Cpu>,
    /// Load averages over 1, 5 and 15 minutes.
    pub load: [f64; 3],
    /// Physical memory in bytes (`MemTotal`).
    pub memory_total_bytes: u64,
    /// Memory available for new work without swapping, in bytes (`MemAvailable`).
    pub memory_available_bytes: u64,
    /// Seconds since boot, with fractions (the first field of `/proc/uptime`).
    pub uptime_secs: f64,
    /// Kernel release, e.g. `6.1.0-27-arm64`.
    pub kernel: String,
    /// `PRETTY_NAME` from os-release, e.g. `Debian GNU/Linux 12 (bookworm)`.
    pub os_release: String,
    /// This boot's random id (`/proc/sys/kernel/random/boot_id`), new at every boot.
    pub boot_id: String,
}

/// Host information: [`LinuxSystem`], or the fakes' for tests.
pub trait SystemInfo: Send + Sync {
    /// Reads everything now. A missing procfs file is an error; a missing os-release reads as
    /// `unknown`.
    fn snapshot(&self) -> Result<SystemSnapshot, SystemError>;
}

/// Reads procfs, sysfs and os-release under configurable roots (tests point them at fixtures).
#[derive(Debug, Clone)]
pub struct LinuxSystem {
    /// procfs mount point, `/proc`.
    pub procfs: PathBuf,
    /// sysfs mount point, `/sys`.
    pub sysfs: PathBuf,
    /// The os-release file, `/etc/os-release`.
    pub os_release: PathBuf,
}

impl Default for LinuxSystem {
    fn default() -> Self {
        Self {
            procfs: PathBuf::from("/proc"),
            sysfs: PathBuf::from("/sys"),
            os_release: PathBuf::from("/etc/os-release"),
        }
    }
}

fn read(path: PathBuf) -> Result<(String, PathBuf), SystemError> {
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok((text, path)),
        Err(source) => Err(SystemError::Read { path, source }),
    }
}

fn parse_err(path: &Path, what: impl Into<String>) -> SystemError {
    SystemError::Parse {
        path: path.to_owned(),
        what: what.into(),
    }
}

impl SystemInfo for LinuxSystem {
    fn snapshot(&self) -> Result<SystemSnapshot, SystemError> {
        let (cpuinfo, _) = read(self.procfs.join("cpuinfo"))?;
        let (cpu_model, ids) = parse_cpuinfo(&cpuinfo);
        let cpus = ids
            .iter()
            .map(|&id| {
                let freq = self
                    .sysfs
                    .join(format!("devices/system/cpu/cpu{id}/cpufreq"));
                Cpu {
                    id,
                    cur_khz: sysfs::read_u64(&freq.join("scaling_cur_freq")),
                    max_khz: sysfs::read_u64(&freq.join("cpuinfo_max_freq")),
                }
            })
            .collect::<Vec<_>>();

        let (loadavg, path) = read(self.procfs.join("loadavg"))?;
        let mut fields = loadavg.split_whitespace().map(str::parse::<f64>);
        let mut load = [0.0; 3];
        for slot in &mut load {
            *slot = fields
                .next()
                .and_then(Result::ok)
                .ok_or_else(|| parse_err(&path, "expected three load averages"))?;
        }

        let (meminfo, path) = read(self.procfs.join("meminfo"))?;
        let mem = parse_meminfo(&meminfo);
        let kib = |key: &str| {
            mem.get(key)
                .map(|k| k * 1024)
                .ok_or_else(|| parse_err(&path, format!("no {key} line")))
        };
        let memory_total_bytes = kib("MemTotal")?;
        let memory_available_bytes = kib("MemAvailable")?;

        let (uptime, path) = read(self.procfs.join("uptime"))?;
        let uptime_secs = uptime
            .split_whitespace()
            .next()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| parse_err(&path, "expected seconds since boot"))?;

        let (kernel, _) = read(self.procfs.join("sys/kernel/osrelease"))?;
        let (boot_id, _) = read(self.procfs.join("sys/kernel/random/boot_id"))?;
        // A minimal image may lack os-release: say so rather than fail the whole snapshot.
        let os_release = std::fs::read_to_string(&self.os_release)
            .ok()
            .and_then(|text| parse_os_release(&text))
            .unwrap_or_else(|| "unknown".to_owned());

        Ok(SystemSnapshot {
            cpu_model,
            cores: cpus.len() as u32,
            cpus,
            load,
            memory_total_bytes,
            memory_available_bytes,
            uptime_secs,
            kernel: kernel.trim().to_owned(),
            os_release,
            boot_id: boot_id.trim().to_owned(),
        })
    }
}

/// The CPU model and the logical CPU numbers from `/proc/cpuinfo`.
fn parse_cpuinfo(text: &str) -> (String, Vec<u32>) {
    let mut ids = Vec::new();
    let mut model_name = None;
    let mut hardware = None;
    // Arm kernels give no model name: count cores per (implementer, part) instead.
    let mut parts: BTreeMap<(String, String), u32> = BTreeMap::new();
    let mut implementer = String::new();
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let (key, value) = (key.trim(), value.trim());
        match key {
            "processor" => {
                if let Ok(id) = value.parse() {
                    ids.push(id);
                }
            }
            "model name" if model_name.is_none() => model_name = Some(value.to_owned()),
            "Hardware" => hardware = Some(value.to_owned()),
            "CPU implementer" => implementer = value.to_owned(),
            "CPU part" => {
                *parts
                    .entry((implementer.clone(), value.to_owned()))
                    .or_default() += 1
            }
            _ => {}
        }
    }
    let model = model_name.or(hardware).unwrap_or_else(|| {
        let mut kinds: Vec<(u32, String)> = parts
            .iter()
            .map(|((imp, part), n)| (*n, arm_core_name(imp, part)))
            .collect();
        kinds.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
        let named: Vec<String> = kinds.iter().map(|(n, k)| format!("{k} x{n}")).collect();
        if named.is_empty() {
            "unknown".to_owned()
        } else {
            named.join(" + ")
        }
    });
    (model, ids)
}

/// Names for the Arm cores this project meets; others are shown by their ids.
fn arm_core_name(implementer: &str, part: &str) -> String {
    let name = match (implementer, part) {
        ("0x41", "0xd03") => "Cortex-A53",
        ("0x41", "0xd05") => "Cortex-A55",
        ("0x41", "0xd08") => "Cortex-A72",
        ("0x41", "0xd0b") => "Cortex-A76",
        ("0x41", "0xd0d") => "Cortex-A77",
        ("0x41", "0xd41") => "Cortex-A78",
        ("0x41", "0xd44") => "Cortex-X1",
        ("0x41", "0xd0c") => "Neoverse-N1",
        _ => return format!("cpu {implementer}/{part}"),
    };
    name.to_owned()
}

fn parse_meminfo(text: &str) -> BTreeMap<&str, u64> {
    text.lines()
        .filter_map(|line| {
            let (key, rest) = line.split_once(':')?;
            let kib = rest.split_whitespace().next()?.parse().ok()?;
            Some((key, kib))
        })
        .collect()
}

fn parse_os_release(text: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let value = line.strip_prefix("PRETTY_NAME=")?;
        Some(value.trim().trim_matches('"').to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapdragon_865_cpuinfo_names_its_cores() {
        let text = include_str!("../tests/data/cpuinfo-sm8250.txt");
        let (model, ids) = parse_cpuinfo(text);
        assert_eq!(model, "Cortex-A55 x4 + Cortex-A77 x4");
        assert_eq!(ids, (0..8).collect::<Vec<_>>());
    }

    #[test]
    fn x86_cpuinfo_uses_model_name() {
        let text = "processor\t: 0\nmodel name\t: AMD EPYC 7B13\n\nprocessor\t: 1\nmodel name\t: AMD EPYC 7B13\n";
        assert_eq!(
            parse_cpuinfo(text),
            ("AMD EPYC 7B13".to_owned(), vec![0, 1])
        );
    }

    #[test]
    fn os_release_pretty_name_is_unquoted() {
        let text = "NAME=\"Debian GNU/Linux\"\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n";
        assert_eq!(
            parse_os_release(text).as_deref(),
            Some("Debian GNU/Linux 12 (bookworm)")
        );
    }

    #[test]
    fn this_machine_reports_plausible_figures() {
        let s = LinuxSystem::default().snapshot().expect("snapshot");
        let threads = std::thread::available_parallelism().expect("cpus").get() as u32;
        assert!(
            s.cores >= threads,
            "{} cores listed, {threads} usable",
            s.cores
        );
        assert!(s.memory_total_bytes > 64 << 20, "{s:?}");
        assert!(s.memory_available_bytes <= s.memory_total_bytes, "{s:?}");
        assert!(s.uptime_secs > 0.0, "{s:?}");
        assert!(s.load.iter().all(|l| *l >= 0.0), "{s:?}");
        assert!(!s.kernel.is_empty() && s.cpu_model != "unknown", "{s:?}");
    }

    #[test]
    fn missing_procfs_names_the_file() {
        let root = tempfile::tempdir().expect("tempdir");
        let err = LinuxSystem {
            procfs: root.path().to_owned(),
            ..LinuxSystem::default()
        }
        .snapshot()
        .expect_err("no cpuinfo");
        assert!(err.to_string().contains("cpuinfo"), "{err}");
    }
}
