//! Configuration: `/etc/edge-agent/config.toml` plus sorted `config.d/*.toml` drop-ins.
//!
//! Loading has no side effects: files are read, merged (later drop-ins override earlier keys),
//! deserialised into raw structs whose leaves are untyped TOML values, then checked field by
//! field into a typed [`Config`]. Every problem in every file is collected and reported at once,
//! each with its key path and the file it came from, so a person fixes the file in one pass.
//! With no config file and no drop-ins at all the agent runs on embedded defaults.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use edge_identity::KeyUri;
use serde::Deserialize;
use toml::{Table, Value};

/// Where the agent looks for its config when `--config` is not given.
pub const DEFAULT_PATH: &str = "/etc/edge-agent/config.toml";

/// State directory of the embedded defaults: `edge-agent-state` under the working directory.
pub const DEFAULT_STATE_DIR: &str = "edge-agent-state";

/// The top-level tables.
const SECTIONS: [&str; 6] = ["agent", "log", "status", "gpu", "network", "pairing"];

/// Unix socket paths are limited to `sun_path`: 108 bytes with the terminating NUL.
const MAX_SOCKET_PATH: usize = 107;

/// One problem found while loading.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The file the bad value came from, where known.
    pub file: Option<PathBuf>,
    /// The key path, e.g. `status.tcp`; `None` for a whole-file problem (unreadable, bad TOML).
    pub key: Option<String>,
    /// What is wrong, and what would be right.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(file) = &self.file {
            write!(f, "{}: ", file.display())?;
        }
        if let Some(key) = &self.key {
            write!(f, "{key}: ")?;
        }
        f.write_str(&self.message)
    }
}

/// The config could not be loaded; every problem found is listed.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    /// All problems, in file then key order.
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid configuration ({} problem", self.problems.len())?;
        f.write_str(if self.problems.len() == 1 { ")" } else { "s)" })?;
        self.problems.iter().try_for_each(|p| write!(f, "\n  {p}"))
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// journald under systemd, coloured text on a terminal, plain text otherwise.
    Auto,
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
    /// Native journald fields.
    Journald,
}

impl std::str::FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            "journald" => Ok(Self::Journald),
            other => Err(format!(
                "unknown log format {other:?}; expected auto, text, json or journald"
            )),
        }
    }
}

/// Logging settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// Output format.
    pub format: LogFormat,
    /// A `tracing` filter directive, e.g. `info` or `info,edge_agent=debug`.
    pub level: String,
}

/// The local, read-only status endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusConfig {
    /// Unix socket path; `None` when disabled.
    pub socket: Option<PathBuf>,
    /// Optional loopback TCP address.
    pub tcp: Option<SocketAddr>,
}

/// The validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Files it was loaded from, main file first; empty for embedded defaults.
    pub sources: Vec<PathBuf>,
    /// Directory for the key, the lock file and caches (absolute).
    pub state_dir: PathBuf,
    /// The identity key.
    pub identity_key: KeyUri,
    /// How often the hardware is sampled (and the watchdog's notion of progress).
    pub sample_interval: Duration,
    /// How long tasks get to finish after SIGTERM.
    pub shutdown_grace: Duration,
    /// Logging.
    pub log: LogConfig,
    /// Status endpoint.
    pub status: StatusConfig,
    /// The owner's GPU policy.
    pub gpu: GpuConfig,
    /// Reporting to the network.
    pub network: NetworkConfig,
    /// The owner's app: pairing and the control channel over the LAN.
    pub pairing: PairingConfig,
}

/// Where the owner's app reaches the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairingConfig {
    /// TCP address for pairing and the control channel; `None`: no listener.
    pub listen: Option<SocketAddr>,
    /// Announce the listener over mDNS (not for loopback listeners).
    pub mdns: bool,
    /// Serve pairing over Bluetooth LE too.
    pub ble: bool,
    /// The pairing button's input device; `None`: SIGUSR1 only.
    pub button: Option<ButtonConfig>,
}

/// The pairing button: a key on a Linux input device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ButtonConfig {
    /// The evdev device, e.g. `/dev/input/by-path/platform-gpio-keys-event`.
    pub device: PathBuf,
    /// The key code its press sends (`EV_KEY`), 1 to `KEY_MAX`.
    pub key: u16,
}

/// Reporting to the network: where, how often, and how the queue and measurements are bounded.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkConfig {
    /// The hub; `None`: the agent reports to no one (it still measures nothing and queues nothing).
    pub hub: Option<HubConfig>,
    /// Time between heartbeats.
    pub heartbeat_interval: Duration,
    /// Time between capability reports when nothing changed.
    pub capability_interval: Duration,
    /// Time between public IP checks (a change sends a capability report).
    pub ip_check_interval: Duration,
    /// IP echo endpoints; empty: the ones the hub names at registration.
    pub echo_urls: Vec<String>,
    /// Reports per delivery request.
    pub batch_size: usize,
    /// Reports the queue holds before it drops the oldest.
    pub queue_max_reports: u64,
    /// Reports older than this are dropped undelivered.
    pub queue_max_age: Duration,
    /// Longest wait between delivery attempts.
    pub backoff_max: Duration,
    /// The bandwidth measurement.
    pub bandwidth: BandwidthConfig,
    /// Take GPU jobs from the hub (they run under the `[gpu]` policy).
    pub accept_jobs: bool,
}

/// The hub the agent reports to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubConfig {
    /// Base URL, `https://host:port`, without a trailing slash.
    pub url: String,
    /// The network's CA certificate (PEM); the only root the agent trusts for the hub.
    pub ca_cert: PathBuf,
    /// The owner binding token.
    pub owner_token: String,
}

/// How bandwidth is measured against the hub's test endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BandwidthConfig {
    /// Measure at start and with each periodic capability report.
    pub measure: bool,
    /// Parallel streams per direction.
    pub streams: u32,
    /// Left out at the start of each direction.
    pub warmup: Duration,
    /// Measured after the warm-up, per direction.
    pub window: Duration,
    /// Most bytes per direction, warm-up included.
    pub max_bytes: u64,
}

/// What the owner lends to GPU jobs, and when.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuConfig {
    /// GPU memory per job (buffers and read-back), bytes.
    pub memory_budget: u64,
    /// Jobs that may wait.
    pub queue_capacity: usize,
    /// Largest fraction of time the GPU may be busy, in (0, 1].
    pub max_duty: f64,
    /// Jobs start only within `[start, end)` hours UTC; `None`: any time.
    pub allowed_hours_utc: Option<(u8, u8)>,
    /// No job starts while a thermal zone is at or above this.
    pub pause_above_celsius: f64,
    /// Jobs resume once every zone is below this.
    pub resume_below_celsius: f64,
    /// The GPU worker is released after this long without work.
    pub idle_release: Duration,
    /// Measure the capability at start when it is not cached.
    pub measure_capability: bool,
}

/// The file as written: every leaf an untyped value, so that a wrong type is one more problem
/// in the list rather than the end of parsing.
#[derive(Debug, Default, Deserialize)]
struct RawConfig {
    /// `[agent]`: identity and state.
    #[serde(default)]
    agent: RawAgent,
    /// `[log]`: log format and level.
    #[serde(default)]
    log: RawLog,
    /// `[status]`: the local status endpoint.
    #[serde(default)]
    status: RawStatus,
    /// `[gpu]`: what the owner lends to GPU jobs.
    #[serde(default)]
    gpu: RawGpu,
    /// `[network]`: reporting to the network.
    #[serde(default)]
    network: RawNetwork,
    /// `[pairing]`: the owner's app.
    #[serde(default)]
    pairing: RawPairing,
    #[serde(flatten)]
    unknown: BTreeMap<String, Value>,
}

#[derive(Debug, Default, Deserialize)]
struct RawAgent {
    /// State directory; relative paths are taken from the working directory.
    /// Default `edge-agent-state`.
    state_dir: Option<Value>,
    /// Identity key URI. Default `file://<state_dir>/identity.key`.
    identity_key: Option<Value>,
    /// Seconds between hardware samples, 1 to 3600. Default 10.
    sample_interval_secs: Option<Value>,
    /// Seconds tasks get to drain after SIGTERM, 1 to 300. Default 10.
    shutdown_grace_secs: Option<Value>,
    #[serde(flatten)]
    unknown: BTreeMap<String, Value>,
}

#[derive(Debug, Default, Deserialize)]
struct RawLog {
    /// `auto`, `text`, `json` or `journald`. Default `auto`.
    format: Option<Value>,
    /// A `tracing` filter directive. Default `info`.
    level: Option<Value>,
    #[serde(flatten)]
    unknown: BTreeMap<String, Value>,
}

#[derive(Debug, Default, Deserialize)]
struct RawStatus {
    /// Unix socket path; `""` disables it. Default `<state_dir>/status.sock`.
    socket: Option<Value>,
    /// Loopback `address:port` for TCP, e.g. `127.0.0.1:9464`. Default: none.
    tcp: Option<Value>,
    #[serde(flatten)]
    unknown: BTreeMap<String, Value>,
}

#[derive(Debug, Default, Deserialize)]
struct RawGpu {
    /// GPU memory lent to jobs, in MiB (buffers and read-back), 16 to 65536. Default 2048.
    memory_budget_mib: Option<Value>,
    /// Jobs that may wait, 1 to 10000. Default 64.
    queue_capacity: Option<Value>,
    /// Largest share of time the GPU may be busy, percent, 1 to 100. Default 100.
    max_duty_percent: Option<Value>,
    /// `"START-END"` hours UTC when jobs may start, e.g. `"22-7"`. Default: any time.
    allowed_hours_utc: Option<Value>,
    /// Pause at or above this many degrees Celsius on any zone, 40 to 120. Default 85.
    pause_above_celsius: Option<Value>,
    /// Resume when every zone is below this, 30 to 110, below the pause. Default 75.
    resume_below_celsius: Option<Value>,
    /// Release the GPU worker after this many idle seconds, 1 to 3600. Default 60.
    idle_release_secs: Option<Value>,
    /// Measure the GPU's capability at start (when not cached). Default true.
    measure_capability: Option<Value>,
    #[serde(flatten)]
    unknown: BTreeMap<String, Value>,
}

#[derive(Debug, Default, Deserialize)]
struct RawPairing {
    /// `address:port` for pairing and the owner's control channel over the LAN, e.g.
    /// `"0.0.0.0:7466"`; `""` disables it. Default: disabled.
    listen: Option<Value>,
    /// Announce the listener as `_edge-agent._tcp` over mDNS. Default true.
    mdns: Option<Value>,
    /// Serve pairing and the control channel over Bluetooth LE too (BlueZ). Needs `listen`.
    /// Default false.
    ble: Option<Value>,
    /// The pairing button's evdev device, e.g. `"/dev/input/by-path/platform-gpio-keys-event"`;
    /// `""` disables it. Needs `listen`. Default: none (SIGUSR1 only).
    button: Option<Value>,
    /// The key code of the button (`EV_KEY`, 1 to 767, e.g. 218 for `KEY_CONNECT`). Required
    /// with `button`.
    button_key: Option<Value>,
    #[serde(flatten)]
    unknown: BTreeMap<String, Value>,
}

#[derive(Debug, Default, Deserialize)]
struct RawNetwork {
    /// The hub's base URL, `https://host:port`. Default: none (no reporting).
    hub_url: Option<Value>,
    /// Path of the hub's CA certificate (PEM), pinned. Required with `hub_url`.
    ca_cert: Option<Value>,
    /// The owner binding token from the network. Required with `hub_url`.
    owner_token: Option<Value>,
    /// Seconds between heartbeats, 1 to 3600. Default 30.
    heartbeat_secs: Option<Value>,
    /// Seconds between capability reports when nothing changed, 60 to 604800. Default 21600.
    capability_secs: Option<Value>,
    /// Seconds between public IP checks, 60 to 86400. Default 900.
    ip_check_secs: Option<Value>,
    /// IP echo URLs (`https://...`). Default: those the hub names.
    echo_urls: Option<Value>,
    /// Reports per delivery request, 1 to 256. Default 64.
    batch_size: Option<Value>,
    /// Reports queued before the oldest are dropped, 100 to 1000000. Default 10000.
    queue_max_reports: Option<Value>,
    /// Hours a report may wait before it is dropped, 1 to 8760. Default 168.
    queue_max_age_hours: Option<Value>,
    /// Longest wait between delivery attempts, seconds, 1 to 3600. Default 300.
    backoff_max_secs: Option<Value>,
    /// Measure bandwidth at start and with each periodic capability report. Default true.
    measure_bandwidth: Option<Value>,
    /// Parallel streams per direction, 1 to 16. Default 4.
    bandwidth_streams: Option<Value>,
    /// Warm-up left out of each direction, seconds, 0 to 10. Default 1.
    bandwidth_warmup_secs: Option<Value>,
    /// Measured time per direction after the warm-up, seconds, 1 to 60. Default 5.
    bandwidth_window_secs: Option<Value>,
    /// Most MiB moved per direction, 1 to 4096. Default 256.
    bandwidth_max_mib: Option<Value>,
    /// Take GPU jobs from the hub. Default true.
    accept_jobs: Option<Value>,
    #[serde(flatten)]
    unknown: BTreeMap<String, Value>,
}

/// Loads the config: `path` (which must exist) or the default path (which may be absent), then
/// the `config.d/*.toml` drop-ins beside it in name order. `cwd` resolves relative paths.
/// Loads the config: `path` (which must exist) or the default path (which may be absent), then
/// the `config.d/*.toml` drop-ins beside it in name order, then the owner's settings
/// (`<state_dir>/owner.toml`, written through the paired app; only [`OWNER_KEYS`]). `cwd`
/// resolves relative paths.
pub fn load(path: Option<&Path>, cwd: &Path) -> Result<Config, ConfigError> {
    let config = load_files(path).finish(cwd)?;
    let owner = owner_file(&config.state_dir);
    match std::fs::read_to_string(&owner) {
        Ok(text) => load_with_owner(path, cwd, &owner, &text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(config),
        Err(e) => Err(ConfigError {
            problems: vec![Problem {
                file: Some(owner),
                key: None,
                message: format!("cannot read: {e}"),
            }],
        }),
    }
}

/// The owner's settings file in `state_dir`.
pub fn owner_file(state_dir: &Path) -> PathBuf {
    state_dir.join("owner.toml")
}

/// Keys the owner may set from the app (`config set`): resource limits, duty cycle, hours, roles.
pub const OWNER_KEYS: [&str; 7] = [
    "gpu.memory_budget_mib",
    "gpu.max_duty_percent",
    "gpu.allowed_hours_utc",
    "gpu.pause_above_celsius",
    "gpu.resume_below_celsius",
    "network.accept_jobs",
    "network.measure_bandwidth",
];

/// Loads the config files with `owner_text` (the would-be contents of `owner_path`) on top.
pub fn load_with_owner(
    path: Option<&Path>,
    cwd: &Path,
    owner_path: &Path,
    owner_text: &str,
) -> Result<Config, ConfigError> {
    let mut loader = load_files(path);
    if let Ok(table) = owner_text.parse::<Table>() {
        for key in leaf_keys(&table, "") {
            if !OWNER_KEYS.contains(&key.as_str()) {
                loader.problem(
                    Some(owner_path),
                    Some(&key),
                    format!(
                        "not settable by the owner; settable: {}",
                        OWNER_KEYS.join(", ")
                    ),
                );
            }
        }
    }
    loader.merge_file(owner_path, owner_text);
    loader.finish(cwd)
}

fn leaf_keys(table: &Table, prefix: &str) -> Vec<String> {
    table
        .iter()
        .flat_map(|(key, value)| {
            let path = if prefix.is_empty() {
                key.clone()
            } else {
                format!("{prefix}.{key}")
            };
            match value {
                Value::Table(inner) => leaf_keys(inner, &path),
                _ => vec![path],
            }
        })
        .collect()
}

/// The owner's settings with `key` set to `value` (TOML syntax), checked like the config file
/// with everything else; the new file's text, or every problem.
pub fn set_owner_key(
    path: Option<&Path>,
    cwd: &Path,
    state_dir: &Path,
    key: &str,
    value: &str,
) -> Result<String, ConfigError> {
    let owner_path = owner_file(state_dir);
    let one = |message: String| ConfigError {
        problems: vec![Problem {
            file: None,
            key: Some(key.to_owned()),
            message,
        }],
    };
    if !OWNER_KEYS.contains(&key) {
        return Err(one(format!(
            "not settable by the owner; settable: {}",
            OWNER_KEYS.join(", ")
        )));
    }
    let parsed = format!("v = {value}")
        .parse::<Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .ok_or_else(|| {
            one(format!(
                "{value:?} is not a TOML value (strings need quotes)"
            ))
        })?;
    let mut table = match std::fs::read_to_string(&owner_path) {
        Ok(text) => text.parse::<Table>().unwrap_or_default(),
        Err(_) => Table::new(),
    };
    let (section, field) = key.split_once('.').unwrap_or((key, ""));
    let entry = table
        .entry(section.to_owned())
        .or_insert_with(|| Value::Table(Table::new()));
    if let Value::Table(inner) = entry {
        inner.insert(field.to_owned(), parsed);
    }
    let text = toml::to_string(&table).map_err(|e| one(e.to_string()))?;
    load_with_owner(path, cwd, &owner_path, &text)?;
    Ok(text)
}

fn load_files(path: Option<&Path>) -> Loader {
    let main = path.map_or_else(|| PathBuf::from(DEFAULT_PATH), Path::to_owned);
    let mut loader = Loader::default();
    match std::fs::read_to_string(&main) {
        Ok(text) => loader.merge_file(&main, &text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && path.is_none() => {}
        Err(e) => loader.problem(Some(&main), None, format!("cannot read: {e}")),
    }
    let dropins = main.parent().unwrap_or(Path::new("/")).join("config.d");
    match std::fs::read_dir(&dropins) {
        Ok(entries) => {
            let mut files: Vec<PathBuf> = entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "toml"))
                .collect();
            files.sort();
            for file in files {
                match std::fs::read_to_string(&file) {
                    Ok(text) => loader.merge_file(&file, &text),
                    Err(e) => loader.problem(Some(&file), None, format!("cannot read: {e}")),
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => loader.problem(Some(&dropins), None, format!("cannot list drop-ins: {e}")),
    }
    loader
}

/// Validates one TOML document on its own (used for tests and for checking a file by hand).
pub fn from_str(text: &str, cwd: &Path) -> Result<Config, ConfigError> {
    let mut loader = Loader::default();
    loader.merge_file(Path::new("(inline)"), text);
    loader.finish(cwd)
}

#[derive(Default)]
struct Loader {
    merged: Table,
    /// Which file set each leaf (by dotted key), for error messages.
    origins: BTreeMap<String, PathBuf>,
    sources: Vec<PathBuf>,
    problems: Vec<Problem>,
}

impl Loader {
    fn problem(&mut self, file: Option<&Path>, key: Option<&str>, message: String) {
        self.problems.push(Problem {
            file: file.map(Path::to_owned),
            key: key.map(str::to_owned),
            message,
        });
    }

    fn merge_file(&mut self, file: &Path, text: &str) {
        match text.parse::<Table>() {
            Ok(table) => {
                self.sources.push(file.to_owned());
                merge(&mut self.merged, table, file, "", &mut self.origins);
            }
            Err(e) => {
                let message = e.to_string().trim_end().replace('\n', "\n    ");
                self.problem(Some(file), None, format!("not valid TOML: {message}"));
            }
        }
    }

    fn finish(mut self, cwd: &Path) -> Result<Config, ConfigError> {
        // A section that is not a table is one problem, reported at its key; the rest still load.
        for section in SECTIONS {
            if let Some(value) = self.merged.get(section)
                && !value.is_table()
            {
                let message = format!("expected a table [{section}], found {}", describe(value));
                let file = self.origins.get(section).cloned();
                self.merged.remove(section);
                self.problems.push(Problem {
                    file,
                    key: Some(section.to_owned()),
                    message,
                });
            }
        }
        let raw = match RawConfig::deserialize(Value::Table(std::mem::take(&mut self.merged))) {
            Ok(raw) => raw,
            Err(e) => {
                self.problem(None, None, format!("wrong shape: {e}"));
                RawConfig::default()
            }
        };
        let mut check = Check {
            origins: &self.origins,
            problems: &mut self.problems,
        };
        let config = check.config(raw, cwd, std::mem::take(&mut self.sources));
        if self.problems.is_empty() {
            config.ok_or_else(unreachable_problem)
        } else {
            Err(ConfigError {
                problems: self.problems,
            })
        }
    }
}

fn unreachable_problem() -> ConfigError {
    ConfigError {
        problems: vec![Problem {
            file: None,
            key: None,
            message: "internal error: config incomplete without a reported problem".into(),
        }],
    }
}

fn merge(
    into: &mut Table,
    from: Table,
    file: &Path,
    prefix: &str,
    origins: &mut BTreeMap<String, PathBuf>,
) {
    for (key, value) in from {
        let path = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        match (into.get_mut(&key), value) {
            (Some(Value::Table(existing)), Value::Table(table)) => {
                merge(existing, table, file, &path, origins);
            }
            (_, value) => {
                record_origins(&value, &path, file, origins);
                into.insert(key, value);
            }
        }
    }
}

fn record_origins(value: &Value, path: &str, file: &Path, origins: &mut BTreeMap<String, PathBuf>) {
    if let Value::Table(table) = value {
        for (key, value) in table {
            record_origins(value, &format!("{path}.{key}"), file, origins);
        }
    } else {
        origins.insert(path.to_owned(), file.to_owned());
    }
}

struct Check<'a> {
    origins: &'a BTreeMap<String, PathBuf>,
    problems: &'a mut Vec<Problem>,
}

impl Check<'_> {
    fn fail(&mut self, key: &str, message: impl Into<String>) {
        // Origins are recorded per leaf: a table's origin is that of its first leaf.
        let prefix = format!("{key}.");
        let origin = self.origins.get(key).or_else(|| {
            self.origins
                .range(prefix.clone()..)
                .next()
                .filter(|(k, _)| k.starts_with(&prefix))
                .map(|(_, file)| file)
        });
        self.problems.push(Problem {
            file: origin.cloned(),
            key: Some(key.to_owned()),
            message: message.into(),
        });
    }

    fn unknown(&mut self, section: &str, unknown: BTreeMap<String, Value>, known: &[&str]) {
        for key in unknown.into_keys() {
            let path = if section.is_empty() {
                key
            } else {
                format!("{section}.{key}")
            };
            self.fail(
                &path,
                format!("unknown key; expected one of: {}", known.join(", ")),
            );
        }
    }

    fn string(&mut self, key: &str, value: Option<Value>) -> Option<String> {
        match value? {
            Value::String(s) => Some(s),
            other => {
                self.fail(
                    key,
                    format!("expected a string, found {}", describe(&other)),
                );
                None
            }
        }
    }

    fn integer(
        &mut self,
        key: &str,
        value: Option<Value>,
        default: u64,
        range: std::ops::RangeInclusive<u64>,
        unit: &str,
    ) -> Option<u64> {
        match value {
            None => Some(default),
            Some(Value::Integer(n)) if u64::try_from(n).is_ok_and(|n| range.contains(&n)) => {
                Some(n as u64)
            }
            Some(Value::Integer(n)) => {
                let (lo, hi) = (range.start(), range.end());
                self.fail(
                    key,
                    format!("{n} is out of range; expected {lo} to {hi} {unit}"),
                );
                None
            }
            Some(other) => {
                self.fail(
                    key,
                    format!("expected whole {unit}, found {}", describe(&other)),
                );
                None
            }
        }
    }

    fn seconds(
        &mut self,
        key: &str,
        value: Option<Value>,
        default: u64,
        max: u64,
    ) -> Option<Duration> {
        self.integer(key, value, default, 1..=max, "seconds")
            .map(Duration::from_secs)
    }

    fn config(&mut self, raw: RawConfig, cwd: &Path, sources: Vec<PathBuf>) -> Option<Config> {
        self.unknown("", raw.unknown, &SECTIONS);
        let gpu = self.gpu(raw.gpu);
        let network = self.network(raw.network, cwd);
        let pairing = self.pairing(raw.pairing, cwd);
        let RawAgent {
            state_dir,
            identity_key,
            sample_interval_secs,
            shutdown_grace_secs,
            unknown,
        } = raw.agent;
        self.unknown(
            "agent",
            unknown,
            &[
                "state_dir",
                "identity_key",
                "sample_interval_secs",
                "shutdown_grace_secs",
            ],
        );
        let state_dir = self
            .string("agent.state_dir", state_dir)
            .or_else(|| Some(DEFAULT_STATE_DIR.into()))
            .and_then(|dir| self.path("agent.state_dir", &dir, cwd));
        let identity_key = match self.string("agent.identity_key", identity_key) {
            Some(uri) => KeyUri::parse(&uri)
                .map_err(|e| self.fail("agent.identity_key", e.to_string()))
                .ok(),
            None => state_dir
                .as_ref()
                .map(|d| KeyUri::file(d.join("identity.key"))),
        };
        let sample_interval =
            self.seconds("agent.sample_interval_secs", sample_interval_secs, 10, 3600);
        let shutdown_grace =
            self.seconds("agent.shutdown_grace_secs", shutdown_grace_secs, 10, 300);

        self.unknown("log", raw.log.unknown, &["format", "level"]);
        let format = self
            .string("log.format", raw.log.format)
            .map_or(Ok(LogFormat::Auto), |f| f.parse())
            .map_err(|e| self.fail("log.format", e))
            .ok();
        let level = self
            .string("log.level", raw.log.level)
            .unwrap_or_else(|| "info".into());
        if let Err(e) = level.parse::<tracing_subscriber::filter::Targets>() {
            self.fail(
                "log.level",
                format!("not a tracing filter ({e}); try \"info\" or \"debug\""),
            );
        }

        self.unknown("status", raw.status.unknown, &["socket", "tcp"]);
        let socket = match self.string("status.socket", raw.status.socket) {
            Some(s) if s.is_empty() => Some(None),
            Some(s) => self.path("status.socket", &s, cwd).map(Some),
            None => state_dir.as_ref().map(|d| Some(d.join("status.sock"))),
        };
        if let Some(Some(path)) = &socket {
            let len = path.as_os_str().len();
            if len > MAX_SOCKET_PATH {
                self.fail(
                    "status.socket",
                    format!("{} is {len} bytes long; a Unix socket path must be at most {MAX_SOCKET_PATH}", path.display()),
                );
            }
        }
        let tcp = match self.string("status.tcp", raw.status.tcp) {
            None => Some(None),
            Some(s) => match s.parse::<SocketAddr>() {
                Ok(addr) if addr.ip().is_loopback() => Some(Some(addr)),
                Ok(addr) => {
                    self.fail(
                        "status.tcp",
                        format!("{addr} is not a loopback address; the status endpoint is local only (use 127.0.0.1 or [::1])"),
                    );
                    None
                }
                Err(_) => {
                    self.fail(
                        "status.tcp",
                        format!("{s:?} is not address:port, e.g. \"127.0.0.1:9464\""),
                    );
                    None
                }
            },
        };

        Some(Config {
            sources,
            state_dir: state_dir?,
            identity_key: identity_key?,
            sample_interval: sample_interval?,
            shutdown_grace: shutdown_grace?,
            log: LogConfig {
                format: format?,
                level,
            },
            status: StatusConfig {
                socket: socket?,
                tcp: tcp?,
            },
            gpu: gpu?,
            network: network?,
            pairing: pairing?,
        })
    }

    fn pairing(&mut self, raw: RawPairing, cwd: &Path) -> Option<PairingConfig> {
        self.unknown(
            "pairing",
            raw.unknown,
            &["listen", "mdns", "ble", "button", "button_key"],
        );
        let mdns = self.boolean("pairing.mdns", raw.mdns, true);
        let ble = self.boolean("pairing.ble", raw.ble, false);
        let listen = match self.string("pairing.listen", raw.listen) {
            None => Some(None),
            Some(s) if s.is_empty() => Some(None),
            Some(s) => match s.parse::<SocketAddr>() {
                Ok(addr) => Some(Some(addr)),
                Err(_) => {
                    self.fail(
                        "pairing.listen",
                        format!("{s:?} is not address:port, e.g. \"0.0.0.0:7466\""),
                    );
                    None
                }
            },
        };
        let device = match self.string("pairing.button", raw.button) {
            None => Some(None),
            Some(s) if s.is_empty() => Some(None),
            Some(s) => self.path("pairing.button", &s, cwd).map(Some),
        };
        let max = edge_hal::button::KEY_MAX;
        let key = match raw.button_key {
            None => Some(None),
            Some(Value::Integer(n)) => match u16::try_from(n) {
                Ok(code) if (1..=max).contains(&code) => Some(Some(code)),
                _ => {
                    self.fail(
                        "pairing.button_key",
                        format!("{n} is not a key code; expected 1 to {max} (KEY_MAX)"),
                    );
                    None
                }
            },
            Some(other) => {
                self.fail(
                    "pairing.button_key",
                    format!(
                        "expected a key code (an integer), found {}",
                        describe(&other)
                    ),
                );
                None
            }
        };
        let button = match (device?, key?) {
            (None, _) => None,
            (Some(_), None) => {
                self.fail(
                    "pairing.button_key",
                    "required with pairing.button: the key code the button sends, e.g. 218 (KEY_CONNECT); `evtest` shows it",
                );
                return None;
            }
            (Some(device), Some(key)) => Some(ButtonConfig { device, key }),
        };
        if button.is_some() && listen == Some(None) {
            self.fail(
                "pairing.button",
                "needs pairing.listen: the button opens the pairing window of that listener",
            );
            return None;
        }
        if ble == Some(true) && listen == Some(None) {
            self.fail(
                "pairing.ble",
                "needs pairing.listen: Bluetooth LE is served by the same bridge as the LAN",
            );
            return None;
        }
        Some(PairingConfig {
            listen: listen?,
            mdns: mdns?,
            ble: ble?,
            button,
        })
    }

    fn network(&mut self, raw: RawNetwork, cwd: &Path) -> Option<NetworkConfig> {
        let keys = [
            "hub_url",
            "ca_cert",
            "owner_token",
            "heartbeat_secs",
            "capability_secs",
            "ip_check_secs",
            "echo_urls",
            "batch_size",
            "queue_max_reports",
            "queue_max_age_hours",
            "backoff_max_secs",
            "measure_bandwidth",
            "bandwidth_streams",
            "bandwidth_warmup_secs",
            "bandwidth_window_secs",
            "bandwidth_max_mib",
            "accept_jobs",
        ];
        self.unknown("network", raw.unknown, &keys);
        let url = self
            .string("network.hub_url", raw.hub_url)
            .and_then(|u| self.https_url("network.hub_url", u));
        let ca_cert = self
            .string("network.ca_cert", raw.ca_cert)
            .and_then(|p| self.path("network.ca_cert", &p, cwd));
        let owner_token = self.string("network.owner_token", raw.owner_token);
        if owner_token.as_ref().is_some_and(|t| t.trim().is_empty()) {
            self.fail("network.owner_token", "must not be empty");
        }
        let hub = match (url, ca_cert, owner_token) {
            (Some(url), Some(ca_cert), Some(owner_token)) => Some(HubConfig {
                url,
                ca_cert,
                owner_token,
            }),
            (Some(_), ca, token) => {
                if ca.is_none() {
                    self.fail(
                        "network.ca_cert",
                        "required with network.hub_url: the hub's CA certificate (PEM) to pin",
                    );
                }
                if token.is_none() {
                    self.fail(
                        "network.owner_token",
                        "required with network.hub_url: the owner binding token from the network",
                    );
                }
                None
            }
            (None, _, _) => None,
        };
        let echo_urls = match raw.echo_urls {
            None => Some(Vec::new()),
            Some(Value::Array(items)) => items
                .into_iter()
                .enumerate()
                .map(|(i, item)| {
                    let key = format!("network.echo_urls[{i}]");
                    self.string(&key, Some(item))
                        .and_then(|u| self.https_url(&key, u))
                })
                .collect::<Vec<_>>()
                .into_iter()
                .collect(),
            Some(other) => {
                self.fail(
                    "network.echo_urls",
                    format!("expected an array of URLs, found {}", describe(&other)),
                );
                None
            }
        };
        let heartbeat = self.integer(
            "network.heartbeat_secs",
            raw.heartbeat_secs,
            30,
            1..=3600,
            "seconds",
        );
        let capability = self.integer(
            "network.capability_secs",
            raw.capability_secs,
            21_600,
            60..=604_800,
            "seconds",
        );
        let ip_check = self.integer(
            "network.ip_check_secs",
            raw.ip_check_secs,
            900,
            60..=86_400,
            "seconds",
        );
        let batch = self.integer("network.batch_size", raw.batch_size, 64, 1..=256, "reports");
        let queue_max = self.integer(
            "network.queue_max_reports",
            raw.queue_max_reports,
            10_000,
            100..=1_000_000,
            "reports",
        );
        let max_age = self.integer(
            "network.queue_max_age_hours",
            raw.queue_max_age_hours,
            168,
            1..=8760,
            "hours",
        );
        let backoff = self.seconds("network.backoff_max_secs", raw.backoff_max_secs, 300, 3600);
        let measure = self.boolean("network.measure_bandwidth", raw.measure_bandwidth, true);
        let streams = self.integer(
            "network.bandwidth_streams",
            raw.bandwidth_streams,
            4,
            1..=16,
            "streams",
        );
        let warmup = self.integer(
            "network.bandwidth_warmup_secs",
            raw.bandwidth_warmup_secs,
            1,
            0..=10,
            "seconds",
        );
        let window = self.seconds(
            "network.bandwidth_window_secs",
            raw.bandwidth_window_secs,
            5,
            60,
        );
        let max_mib = self.integer(
            "network.bandwidth_max_mib",
            raw.bandwidth_max_mib,
            256,
            1..=4096,
            "MiB",
        );
        let accept_jobs = self.boolean("network.accept_jobs", raw.accept_jobs, true);
        let secs = Duration::from_secs;
        Some(NetworkConfig {
            hub,
            heartbeat_interval: secs(heartbeat?),
            capability_interval: secs(capability?),
            ip_check_interval: secs(ip_check?),
            echo_urls: echo_urls?,
            batch_size: batch? as usize,
            queue_max_reports: queue_max?,
            queue_max_age: secs(max_age? * 3600),
            backoff_max: backoff?,
            bandwidth: BandwidthConfig {
                measure: measure?,
                streams: streams? as u32,
                warmup: secs(warmup?),
                window: window?,
                max_bytes: max_mib? << 20,
            },
            accept_jobs: accept_jobs?,
        })
    }

    /// An `https://` URL, without a trailing slash.
    fn https_url(&mut self, key: &str, url: String) -> Option<String> {
        let rest = url.strip_prefix("https://");
        if rest.is_none_or(|r| r.is_empty() || r.contains(char::is_whitespace)) {
            self.fail(
                key,
                format!(
                    "{url:?} is not an https:// URL; the agent talks to the network over TLS only"
                ),
            );
            return None;
        }
        Some(url.trim_end_matches('/').to_owned())
    }

    fn boolean(&mut self, key: &str, value: Option<Value>, default: bool) -> Option<bool> {
        match value {
            None => Some(default),
            Some(Value::Boolean(b)) => Some(b),
            Some(other) => {
                self.fail(
                    key,
                    format!("expected true or false, found {}", describe(&other)),
                );
                None
            }
        }
    }

    fn gpu(&mut self, raw: RawGpu) -> Option<GpuConfig> {
        let keys = [
            "memory_budget_mib",
            "queue_capacity",
            "max_duty_percent",
            "allowed_hours_utc",
            "pause_above_celsius",
            "resume_below_celsius",
            "idle_release_secs",
            "measure_capability",
        ];
        self.unknown("gpu", raw.unknown, &keys);
        let budget = self.integer(
            "gpu.memory_budget_mib",
            raw.memory_budget_mib,
            2048,
            16..=65_536,
            "MiB",
        );
        let capacity = self.integer(
            "gpu.queue_capacity",
            raw.queue_capacity,
            64,
            1..=10_000,
            "jobs",
        );
        let duty = self.integer(
            "gpu.max_duty_percent",
            raw.max_duty_percent,
            100,
            1..=100,
            "percent",
        );
        let pause = self.integer(
            "gpu.pause_above_celsius",
            raw.pause_above_celsius,
            85,
            40..=120,
            "degrees",
        );
        let resume = self.integer(
            "gpu.resume_below_celsius",
            raw.resume_below_celsius,
            75,
            30..=110,
            "degrees",
        );
        if let (Some(pause), Some(resume)) = (pause, resume)
            && resume >= pause
        {
            self.fail(
                "gpu.resume_below_celsius",
                format!("{resume} must be below gpu.pause_above_celsius ({pause}), or the GPU would flap"),
            );
        }
        let idle = self.seconds("gpu.idle_release_secs", raw.idle_release_secs, 60, 3600);
        let measure = self.boolean("gpu.measure_capability", raw.measure_capability, true);
        let hours = match self.string("gpu.allowed_hours_utc", raw.allowed_hours_utc) {
            None => Some(None),
            Some(text) => {
                let parsed = text
                    .split_once('-')
                    .and_then(|(a, b)| {
                        Some((a.trim().parse::<u8>().ok()?, b.trim().parse::<u8>().ok()?))
                    })
                    .filter(|&(a, b)| a < 24 && b < 24 && a != b);
                if parsed.is_none() {
                    self.fail(
                        "gpu.allowed_hours_utc",
                        format!("{text:?} is not START-END in whole hours 0 to 23, e.g. \"22-7\""),
                    );
                }
                parsed.map(Some)
            }
        };
        Some(GpuConfig {
            memory_budget: budget? << 20,
            queue_capacity: capacity? as usize,
            max_duty: duty? as f64 / 100.0,
            allowed_hours_utc: hours?,
            pause_above_celsius: pause? as f64,
            resume_below_celsius: resume? as f64,
            idle_release: idle?,
            measure_capability: measure?,
        })
    }

    fn path(&mut self, key: &str, value: &str, cwd: &Path) -> Option<PathBuf> {
        if value.is_empty() {
            self.fail(key, "must not be empty");
            return None;
        }
        if value.contains('\0') {
            self.fail(key, "must not contain a NUL byte");
            return None;
        }
        Some(cwd.join(value))
    }
}

fn describe(value: &Value) -> String {
    match value {
        Value::String(s) => format!("string {s:?}"),
        Value::Integer(n) => format!("integer {n}"),
        Value::Float(x) => format!("float {x}"),
        Value::Boolean(b) => format!("boolean {b}"),
        Value::Datetime(d) => format!("datetime {d}"),
        Value::Array(_) => "an array".into(),
        Value::Table(_) => "a table".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(text: &str) -> Vec<String> {
        from_str(text, Path::new("/cwd"))
            .expect_err("should be refused")
            .problems
            .iter()
            .map(|p| format!("{}: {}", p.key.as_deref().unwrap_or("-"), p.message))
            .collect()
    }

    #[test]
    fn empty_file_gives_the_embedded_defaults() {
        let c = from_str("", Path::new("/cwd")).expect("defaults");
        assert_eq!(c.state_dir, Path::new("/cwd/edge-agent-state"));
        assert_eq!(
            c.identity_key,
            KeyUri::file("/cwd/edge-agent-state/identity.key")
        );
        assert_eq!(
            c.status.socket.as_deref(),
            Some(Path::new("/cwd/edge-agent-state/status.sock"))
        );
        assert_eq!(c.status.tcp, None);
        assert_eq!(c.sample_interval, Duration::from_secs(10));
        assert_eq!(c.log.format, LogFormat::Auto);
        assert_eq!(c.gpu.memory_budget, 2048 << 20);
        assert_eq!(c.gpu.allowed_hours_utc, None);
        assert_eq!(c.gpu.max_duty, 1.0);
    }

    #[test]
    fn the_example_config_is_valid() {
        let c = from_str(
            include_str!("../../config/config.example.toml"),
            Path::new("/"),
        )
        .expect("example config must validate");
        assert_eq!(c.state_dir, Path::new("/var/lib/edge-agent"));
        assert_eq!(
            c.status.socket.as_deref(),
            Some(Path::new("/run/edge-agent/status.sock"))
        );
    }

    #[test]
    fn a_hub_needs_https_its_ca_and_an_owner_token() {
        let c = from_str(
            "[network]\nhub_url = \"https://hub.example:8443/\"\nca_cert = \"ca.pem\"\n\
             owner_token = \"t\"\necho_urls = [\"https://a/v1/ip\"]\n",
            Path::new("/etc/edge-agent"),
        )
        .expect("valid");
        let hub = c.network.hub.expect("hub");
        assert_eq!(
            hub.url, "https://hub.example:8443",
            "trailing slash dropped"
        );
        assert_eq!(hub.ca_cert, Path::new("/etc/edge-agent/ca.pem"));
        assert_eq!(c.network.heartbeat_interval, Duration::from_secs(30));
        assert_eq!(c.network.echo_urls, ["https://a/v1/ip"]);
        assert!(c.network.accept_jobs && c.network.bandwidth.measure);

        let err = from_str(
            "[network]\nhub_url = \"http://hub.example\"\necho_urls = [\"https://ok\", 3]\n",
            Path::new("/"),
        )
        .expect_err("plain http");
        let text = err.to_string();
        assert!(
            text.contains("network.hub_url: \"http://hub.example\" is not an https:// URL"),
            "{text}"
        );
        assert!(
            text.contains("network.echo_urls[1]: expected a string"),
            "{text}"
        );
        let err =
            from_str("[network]\nhub_url = \"https://h\"\n", Path::new("/")).expect_err("alone");
        let text = err.to_string();
        assert!(
            text.contains("network.ca_cert: required with network.hub_url"),
            "{text}"
        );
        assert!(
            text.contains("network.owner_token: required with network.hub_url"),
            "{text}"
        );
        assert!(
            from_str("", Path::new("/"))
                .expect("defaults")
                .network
                .hub
                .is_none()
        );
    }

    #[test]
    fn each_kind_of_bad_value_is_reported_with_its_path() {
        let cases = [
            (
                "agent.sample_interval_secs = \"ten\"",
                "agent.sample_interval_secs: expected whole seconds, found string \"ten\"",
            ),
            (
                "agent.sample_interval_secs = 0",
                "agent.sample_interval_secs: 0 is out of range",
            ),
            (
                "agent.shutdown_grace_secs = 301",
                "agent.shutdown_grace_secs: 301 is out of range",
            ),
            (
                "agent.state_dir = 7",
                "agent.state_dir: expected a string, found integer 7",
            ),
            (
                "agent.state_dir = \"\"",
                "agent.state_dir: must not be empty",
            ),
            (
                "agent.identity_key = \"/etc/key\"",
                "agent.identity_key: key URI \"/etc/key\": only file:// URIs",
            ),
            (
                "log.format = \"xml\"",
                "log.format: unknown log format \"xml\"",
            ),
            ("log.level = \"info,=[\"", "log.level: not a tracing filter"),
            (
                "status.tcp = \"0.0.0.0:9464\"",
                "status.tcp: 0.0.0.0:9464 is not a loopback address",
            ),
            (
                "status.tcp = \"localhost\"",
                "status.tcp: \"localhost\" is not address:port",
            ),
            (
                &format!("status.socket = \"/{}\"", "s".repeat(120)),
                "status.socket: /sss",
            ),
            (
                "agent.colour = \"blue\"",
                "agent.colour: unknown key; expected one of: state_dir",
            ),
            ("[bogus]\nhub = 1", "bogus: unknown key"),
            (
                "gpu.memory_budget_mib = 8",
                "gpu.memory_budget_mib: 8 is out of range; expected 16 to 65536 MiB",
            ),
            (
                "gpu.memory_budget_mib = 1.5",
                "gpu.memory_budget_mib: expected whole MiB, found float 1.5",
            ),
        ];
        for (text, want) in cases {
            let got = problems(text);
            assert_eq!(got.len(), 1, "{text}: {got:?}");
            assert!(
                got[0].starts_with(want),
                "{text}:\n got {:?}\nwant {want:?}",
                got[0]
            );
        }
    }

    #[test]
    fn the_pairing_button_is_a_device_and_a_key_code_beside_a_listener() {
        let c = from_str(
            "[pairing]\nlisten = \"0.0.0.0:7466\"\nbutton = \"/dev/input/event2\"\nbutton_key = 218\n",
            Path::new("/"),
        )
        .expect("valid");
        assert_eq!(
            c.pairing.button,
            Some(ButtonConfig {
                device: PathBuf::from("/dev/input/event2"),
                key: 218
            })
        );
        assert_eq!(
            from_str("", Path::new("/"))
                .expect("defaults")
                .pairing
                .button,
            None
        );
        let cases = [
            (
                "pairing.listen = \"0.0.0.0:1\"\npairing.button = \"/dev/input/event2\"",
                "pairing.button_key: required with pairing.button",
            ),
            (
                "pairing.listen = \"0.0.0.0:1\"\npairing.button = \"/e\"\npairing.button_key = 0",
                "pairing.button_key: 0 is not a key code; expected 1 to 767",
            ),
            (
                "pairing.listen = \"0.0.0.0:1\"\npairing.button = \"/e\"\npairing.button_key = \"KEY_CONNECT\"",
                "pairing.button_key: expected a key code (an integer), found string",
            ),
            (
                "pairing.button = \"/e\"\npairing.button_key = 218",
                "pairing.button: needs pairing.listen",
            ),
            (
                "pairing.listen = \"0.0.0.0:1\"\npairing.button = 3\npairing.button_key = 218",
                "pairing.button: expected a string, found integer 3",
            ),
        ];
        for (text, want) in cases {
            let got = problems(text);
            assert_eq!(got.len(), 1, "{text}: {got:?}");
            assert!(
                got[0].starts_with(want),
                "{text}:\n got {:?}\nwant {want:?}",
                got[0]
            );
        }
    }

    #[test]
    fn a_section_of_the_wrong_type_is_one_problem_among_others() {
        let got = problems("agent = \"x\"\nlog.format = \"xml\"\n");
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(
            got[0],
            "agent: expected a table [agent], found string \"x\""
        );
        assert!(
            got[1].starts_with("log.format: unknown log format"),
            "{got:?}"
        );
    }

    #[test]
    fn several_bad_fields_are_all_reported() {
        let got = problems(
            "[agent]\nsample_interval_secs = -1\nshutdown_grace_secs = true\n[log]\nformat = 3\n[status]\ntcp = \"8.8.8.8:53\"\n",
        );
        let keys: Vec<&str> = got
            .iter()
            .map(|p| p.split(':').next().unwrap_or(""))
            .collect();
        assert_eq!(
            keys,
            [
                "agent.sample_interval_secs",
                "agent.shutdown_grace_secs",
                "log.format",
                "status.tcp"
            ]
        );
    }

    #[test]
    fn syntax_errors_say_where() {
        let err = from_str("[agent\nstate_dir = 1", Path::new("/")).expect_err("bad toml");
        let text = err.to_string();
        assert!(text.contains("(inline): not valid TOML"), "{text}");
        assert!(text.contains("line 1"), "{text}");
    }

    #[test]
    fn dropins_override_in_name_order_and_problems_name_their_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let main = dir.path().join("config.toml");
        std::fs::write(
            &main,
            "[agent]\nsample_interval_secs = 5\nstate_dir = \"/var/lib/a\"\n",
        )
        .expect("write");
        std::fs::create_dir(dir.path().join("config.d")).expect("mkdir");
        std::fs::write(
            dir.path().join("config.d/20-b.toml"),
            "agent.sample_interval_secs = 7\n",
        )
        .expect("write");
        std::fs::write(
            dir.path().join("config.d/10-a.toml"),
            "agent.sample_interval_secs = 6\n",
        )
        .expect("write");
        std::fs::write(dir.path().join("config.d/README"), "not toml, ignored").expect("write");
        let c = load(Some(&main), dir.path()).expect("valid");
        assert_eq!(c.sample_interval, Duration::from_secs(7));
        assert_eq!(c.state_dir, Path::new("/var/lib/a"));
        assert_eq!(c.sources.len(), 3);

        std::fs::write(
            dir.path().join("config.d/30-bad.toml"),
            "log.format = \"yaml\"\n[agent\n",
        )
        .expect("write");
        std::fs::write(
            dir.path().join("config.d/40-bad.toml"),
            "log.format = \"yaml\"\n",
        )
        .expect("write");
        let err = load(Some(&main), dir.path()).expect_err("invalid");
        let text = err.to_string();
        assert!(text.contains("30-bad.toml: not valid TOML"), "{text}");
        assert!(
            text.contains("40-bad.toml: log.format: unknown log format \"yaml\""),
            "{text}"
        );
    }

    #[test]
    fn an_explicit_config_path_must_exist_but_the_default_may_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = load(Some(&dir.path().join("missing.toml")), dir.path()).expect_err("missing");
        assert!(
            err.to_string().contains("missing.toml: cannot read"),
            "{err}"
        );
    }
}
