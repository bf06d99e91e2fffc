//! `edge-agent check`: the diagnostics a support person runs first. Each line is ok, warn or fail
//! with the reason; any fail makes the command exit non-zero. Nothing is created or changed.

use std::fmt;
use std::path::Path;
use std::time::{Duration, SystemTime};

use edge_hal::Hal;
use edge_identity::KeyError;
use edge_jobs::adapter::GpuStatus;

use crate::config::Config;

/// Free space under which the state directory is a failure, and under which it is a warning.
const FREE_FAIL: u64 = 64 << 20;
const FREE_WARN: u64 = 1 << 30;

/// Outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Level {
    Ok,
    /// Works, but worth a look.
    Warn,
    /// Broken: the agent will not run properly.
    Fail,
}

/// One line of the report.
#[derive(Debug, Clone)]
pub(super) struct Line {
    /// ok, warn or fail.
    pub level: Level,
    pub name: &'static str,
    pub detail: String,
}

impl fmt::Display for Line {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let level = match self.level {
            Level::Ok => "ok  ",
            Level::Warn => "warn",
            Level::Fail => "FAIL",
        };
        write!(f, "{level}  {:<12} {}", self.name, self.detail)
    }
}

fn line(level: Level, name: &'static str, detail: impl Into<String>) -> Line {
    Line {
        level,
        name,
        detail: detail.into(),
    }
}

/// Runs every check. `resolv_conf` is `/etc/resolv.conf` outside tests.
pub(super) fn run(config: &Config, hal: &Hal, resolv_conf: &Path) -> Vec<Line> {
    vec![
        config_line(config),
        state_dir(config, hal),
        identity(config, hal),
        clock(hal.clock.wall()),
        gpu(hal.gpu.discover()),
        interfaces(hal),
        dns(resolv_conf),
    ]
}

fn config_line(config: &Config) -> Line {
    match config.sources.as_slice() {
        [] => line(Level::Ok, "config", "no config file: embedded defaults"),
        [main, dropins @ ..] => line(
            Level::Ok,
            "config",
            format!("{} (+{} drop-ins), valid", main.display(), dropins.len()),
        ),
    }
}

fn state_dir(config: &Config, hal: &Hal) -> Line {
    let dir = &config.state_dir;
    // Capacity and writability are those of the nearest existing ancestor.
    let existing = dir
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"));
    let probe = existing.join(format!(".edge-agent-check.{}", std::process::id()));
    let writable = std::fs::File::create(&probe).map(|_| std::fs::remove_file(&probe));
    if let Err(e) = writable {
        return line(
            Level::Fail,
            "state dir",
            format!("{} is not writable: {e}", existing.display()),
        );
    }
    let created = if existing == dir.as_path() {
        String::new()
    } else {
        " (will be created)".to_owned()
    };
    match hal.storage.usage(existing) {
        Ok(u) => {
            let free = u.available_bytes;
            let level = match free {
                f if f < FREE_FAIL => Level::Fail,
                f if f < FREE_WARN => Level::Warn,
                _ => Level::Ok,
            };
            line(
                level,
                "state dir",
                format!(
                    "{}{created}: writable, {} MiB free of {} MiB",
                    dir.display(),
                    free >> 20,
                    u.total_bytes >> 20
                ),
            )
        }
        Err(e) => line(
            Level::Warn,
            "state dir",
            format!("{}{created}: writable; {e}", dir.display()),
        ),
    }
}

fn identity(config: &Config, hal: &Hal) -> Line {
    match hal.keys.open(&config.identity_key) {
        Ok(id) => line(
            Level::Ok,
            "identity",
            format!(
                "{} (mode 0600), device id {}",
                config.identity_key,
                id.device_id()
            ),
        ),
        Err(KeyError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => line(
            Level::Warn,
            "identity",
            format!(
                "{} does not exist yet; it is made on first start",
                config.identity_key
            ),
        ),
        Err(e) => line(Level::Fail, "identity", e.to_string()),
    }
}

fn clock(wall: SystemTime) -> Line {
    let secs = wall
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs();
    if secs < edge_hal::CLOCK_FLOOR_UNIX_S {
        line(
            Level::Fail,
            "clock",
            format!(
                "wall clock reads {secs} s since 1970, before 2026: is NTP running? TLS and signed reports need a true clock"
            ),
        )
    } else {
        line(
            Level::Ok,
            "clock",
            format!("wall clock {secs} s since 1970"),
        )
    }
}

fn gpu(status: GpuStatus) -> Line {
    match status {
        GpuStatus::Available(info) => line(
            Level::Ok,
            "gpu",
            format!(
                "{} ({}, {}, {})",
                info.name, info.backend, info.device_type, info.driver_info
            ),
        ),
        GpuStatus::Unavailable { reason } => line(
            Level::Warn,
            "gpu",
            format!("no GPU: {reason}; compute work will be refused"),
        ),
    }
}

fn interfaces(hal: &Hal) -> Line {
    match hal.interfaces.list() {
        Ok(list) => {
            let up: Vec<String> = list
                .iter()
                .filter(|i| i.name != "lo" && i.oper_state == "up" && !i.addresses.is_empty())
                .map(|i| {
                    let ips: Vec<String> = i
                        .addresses
                        .iter()
                        .map(|a| format!("{}/{}", a.ip, a.prefix))
                        .collect();
                    format!("{} {}", i.name, ips.join(" "))
                })
                .collect();
            if up.is_empty() {
                line(
                    Level::Warn,
                    "network",
                    "no interface is up with an address besides lo",
                )
            } else {
                line(Level::Ok, "network", up.join("; "))
            }
        }
        Err(e) => line(Level::Fail, "network", e.to_string()),
    }
}

fn dns(resolv_conf: &Path) -> Line {
    match std::fs::read_to_string(resolv_conf) {
        Ok(text) => {
            let servers: Vec<&str> = text
                .lines()
                .filter_map(|l| l.trim().strip_prefix("nameserver"))
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .collect();
            if servers.is_empty() {
                line(
                    Level::Fail,
                    "dns",
                    format!("{} lists no nameserver", resolv_conf.display()),
                )
            } else {
                line(
                    Level::Ok,
                    "dns",
                    format!("nameservers {}", servers.join(", ")),
                )
            }
        }
        Err(e) => line(
            Level::Fail,
            "dns",
            format!("cannot read {}: {e}", resolv_conf.display()),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use edge_hal::fake::FakeClock;
    use std::sync::Arc;

    fn config(dir: &Path) -> Config {
        crate::config::from_str("", dir).expect("defaults")
    }

    #[test]
    fn a_fresh_machine_warns_about_the_missing_key_but_fails_nothing_else() {
        let dir = tempfile::tempdir().expect("tempdir");
        let resolv = dir.path().join("resolv.conf");
        std::fs::write(&resolv, "# generated\nnameserver 10.0.0.1\n").expect("write");
        let hal = Hal::fake();
        let lines = run(&config(dir.path()), &hal, &resolv);
        let by_name = |n| lines.iter().find(|l| l.name == n).expect("line");
        assert_eq!(
            by_name("state dir").level,
            Level::Ok,
            "{:?}",
            by_name("state dir")
        );
        assert!(by_name("state dir").detail.contains("will be created"));
        assert_eq!(by_name("dns").level, Level::Ok);
        assert_eq!(by_name("gpu").level, Level::Warn);
        assert_eq!(by_name("clock").level, Level::Ok);
    }

    #[test]
    fn an_empty_resolver_and_a_1970_clock_fail() {
        let dir = tempfile::tempdir().expect("tempdir");
        let resolv = dir.path().join("resolv.conf");
        std::fs::write(&resolv, "search lan\n").expect("write");
        let clock = Arc::new(FakeClock::default());
        clock.set_wall(SystemTime::UNIX_EPOCH + Duration::from_secs(86_400));
        let hal = Hal {
            clock,
            ..Hal::fake()
        };
        let lines = run(&config(dir.path()), &hal, &resolv);
        let fails: Vec<&str> = lines
            .iter()
            .filter(|l| l.level == Level::Fail)
            .map(|l| l.name)
            .collect();
        assert_eq!(fails, ["clock", "dns"]);
    }

    #[test]
    fn a_refused_key_fails_naming_the_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let config = config(dir.path());
        let edge_identity::KeyUri::File(path) = &config.identity_key;
        edge_identity::KeyStore::open_or_create(&edge_identity::FileKeyStore, &config.identity_key)
            .expect("make key");
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o640)).expect("chmod");
        let hal = Hal {
            keys: Arc::new(edge_identity::FileKeyStore),
            ..Hal::fake()
        };
        let id = identity(&config, &hal);
        assert_eq!(id.level, Level::Fail);
        assert!(
            id.detail.contains(&path.display().to_string()),
            "{}",
            id.detail
        );
    }
}
