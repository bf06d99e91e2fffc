//! Configuration: `/etc/edge-agent/config.toml` plus sorted `config.d/*.toml` drop-ins.
//!
//! Loading has no side effects: files are read and merged (later drop-ins override earlier keys;
//! `files`), each value is matched to its key in the one table of fields (`fields`: kind, range,
//! default, the owner's keys, the example config), then checked field by field into a typed
//! [`Config`] (`check`). Every problem in every file is collected and reported at once,
//! each with its key path and the file it came from, so a person fixes the file in one pass.
//! With no config file and no drop-ins at all the agent runs on embedded defaults.

mod check;
mod fields;
mod files;

pub(crate) use check::https_base_url;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use edge_identity::KeyUri;
use toml::{Table, Value};

use self::files::{Loader, load_files};

/// Where the agent looks for its config when `--config` is not given.
pub const DEFAULT_PATH: &str = "/etc/edge-agent/config.toml";

/// State directory of the embedded defaults: `edge-agent-state` under the working directory.
pub const DEFAULT_STATE_DIR: &str = "edge-agent-state";

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
    /// Settings of the owner's file that were left out, each with why (logged at start, shown in
    /// `/status` and counted in `/metrics`).
    pub owner_ignored: Vec<Problem>,
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
    /// Reach the GPU worker through this socket instead of starting it as a child.
    pub worker_socket: Option<PathBuf>,
}

/// Loads the config: `path` (which must exist) or the default path (which may be absent), then
/// the `config.d/*.toml` drop-ins beside it in name order, then the owner's settings
/// (`<state_dir>/owner.toml`, written through the paired app; only the keys the field table marks
/// as the owner's). `cwd` resolves relative paths.
///
/// The owner's file never stops the agent: a key this release does not know (a newer release
/// wrote it, and this one runs after a rollback), a value it refuses, or a file that is not TOML
/// is left out and listed in [`Config::owner_ignored`], and the rest apply. Only the files under
/// `/etc` (the image's, a person's) can make the config invalid.
pub fn load(path: Option<&Path>, cwd: &Path) -> Result<Config, ConfigError> {
    let files = load_files(path);
    let config = files.clone().finish(cwd)?;
    let owner = owner_file(&config.state_dir);
    match std::fs::read_to_string(&owner) {
        Ok(text) => Ok(with_owner(&files, cwd, &owner, &text, config)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(config),
        Err(e) => Ok(Config {
            owner_ignored: vec![Problem {
                file: Some(owner),
                key: None,
                message: format!("cannot read: {e}"),
            }],
            ..config
        }),
    }
}

/// The jobs' blob store in `state_dir`: input blobs named by their SHA-256, fetched from the hub
/// for a job, read by the scheduler and (bound read-only) by the GPU worker.
pub fn blobs_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("blobs")
}

/// The owner's settings file in `state_dir`.
pub fn owner_file(state_dir: &Path) -> PathBuf {
    state_dir.join("owner.toml")
}

/// `base` (the config of `files`) with every usable key of the owner's `text` on top, in the
/// file's order: a key is kept when the settings with it still check, so one bad value (or two
/// that disagree, such as a resume temperature above the pause) cannot take the others with it.
fn with_owner(files: &Loader, cwd: &Path, owner_path: &Path, text: &str, base: Config) -> Config {
    let mut ignored = Vec::new();
    let mut config = base;
    let table = match text.parse::<Table>() {
        Ok(table) => table,
        Err(e) => {
            let message = e.to_string().trim_end().replace('\n', " ");
            ignored.push(Problem {
                file: Some(owner_path.to_owned()),
                key: None,
                message: format!("not valid TOML, every owner setting ignored: {message}"),
            });
            Table::new()
        }
    };
    let owner_keys = fields::owner_keys();
    let mut accepted = Table::new();
    for (key, value) in leaf_values(&table, "") {
        if !owner_keys.contains(&key.as_str()) {
            ignored.push(Problem {
                file: Some(owner_path.to_owned()),
                key: Some(key),
                message: format!(
                    "not an owner setting of this release (ignored); settable: {}",
                    owner_keys.join(", ")
                ),
            });
            continue;
        }
        let mut trial = accepted.clone();
        insert_dotted(&mut trial, &key, value);
        let mut loader = files.clone();
        loader.merge_table(owner_path, trial.clone());
        match loader.finish(cwd) {
            Ok(with_key) => {
                accepted = trial;
                config = with_key;
            }
            // Each problem is put on the key that was left out, even when the check reported it at
            // another (a pause below the owner's resume temperature is the pause's problem).
            Err(e) => ignored.extend(e.problems.into_iter().map(|p| Problem {
                message: match &p.key {
                    Some(at) if *at != key => format!("{at}: {} (ignored)", p.message),
                    _ => format!("{} (ignored)", p.message),
                },
                file: Some(owner_path.to_owned()),
                key: Some(key.clone()),
            })),
        }
    }
    config.owner_ignored = ignored;
    config
}

/// Every leaf of `table` with its dotted key, in the table's order.
fn leaf_values(table: &Table, prefix: &str) -> Vec<(String, Value)> {
    table
        .iter()
        .flat_map(|(key, value)| {
            let path = if prefix.is_empty() {
                key.clone()
            } else {
                format!("{prefix}.{key}")
            };
            match value {
                Value::Table(inner) => leaf_values(inner, &path),
                _ => vec![(path, value.clone())],
            }
        })
        .collect()
}

/// Sets `section.field` in `table`, making the section a table where it is not one.
fn insert_dotted(table: &mut Table, key: &str, value: Value) {
    let (section, field) = key.split_once('.').unwrap_or((key, ""));
    let entry = table
        .entry(section.to_owned())
        .or_insert_with(|| Value::Table(Table::new()));
    if !entry.is_table() {
        *entry = Value::Table(Table::new());
    }
    if let Value::Table(inner) = entry {
        inner.insert(field.to_owned(), value);
    }
}

/// The owner's settings with `key` set to `value` (TOML syntax), checked like the config file
/// with everything else; the new file's text, or why the new value was refused. Keys already in
/// the file that this release ignores (see [`load`]) stay in it and do not block the new one.
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
    let owner_keys = fields::owner_keys();
    if !owner_keys.contains(&key) {
        return Err(one(format!(
            "not settable by the owner; settable: {}",
            owner_keys.join(", ")
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
    insert_dotted(&mut table, key, parsed);
    let text = toml::to_string(&table).map_err(|e| one(e.to_string()))?;
    let files = load_files(path);
    let base = files.clone().finish(cwd)?;
    let config = with_owner(&files, cwd, &owner_path, &text, base);
    let refused: Vec<Problem> = config
        .owner_ignored
        .into_iter()
        .filter(|p| p.key.as_deref() == Some(key))
        .map(|p| Problem {
            message: p.message.trim_end_matches(" (ignored)").to_owned(),
            ..p
        })
        .collect();
    if refused.is_empty() {
        Ok(text)
    } else {
        Err(ConfigError { problems: refused })
    }
}

/// Validates one TOML document on its own (used for tests and for checking a file by hand).
pub fn from_str(text: &str, cwd: &Path) -> Result<Config, ConfigError> {
    let mut loader = Loader::default();
    loader.merge_file(Path::new("(inline)"), text);
    loader.finish(cwd)
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

    /// Each text has exactly one problem, which starts with its wanted message.
    fn each_refused_with(cases: &[(&str, &str)]) {
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

    /// A config file whose state directory holds `owner` as `owner.toml`.
    fn with_owner_file(owner: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = dir.path().join("state");
        std::fs::create_dir(&state).expect("state dir");
        std::fs::write(owner_file(&state), owner).expect("owner file");
        let config = dir.path().join("config.toml");
        let text = format!("[agent]\nstate_dir = \"{}\"\n", state.display());
        std::fs::write(&config, text).expect("config");
        (dir, config)
    }

    fn ignored_keys(config: &Config) -> Vec<Option<&str>> {
        config
            .owner_ignored
            .iter()
            .map(|p| p.key.as_deref())
            .collect()
    }

    #[test]
    fn an_owner_file_from_a_newer_release_or_with_a_bad_value_leaves_the_rest_working() {
        // Before, each of these stopped the agent with exit 64 at every start (and the unit
        // does not restart on 64): the box was gone until someone with a shell came.
        let (dir, config) = with_owner_file(
            "[gpu]\nmax_duty_percent = 50\nmemory_budget_mib = -3\nshader_cache = true\n\
             [network]\naccept_jobs = false\n[render]\nfps = 60\n",
        );
        let c = load(Some(&config), dir.path()).expect("loads");
        assert!((c.gpu.max_duty - 0.5).abs() < 1e-9, "{:?}", c.gpu.max_duty);
        assert!(!c.network.accept_jobs);
        assert_eq!(c.gpu.memory_budget, 2048 << 20, "the bad value is left out");
        assert_eq!(
            ignored_keys(&c),
            [
                Some("gpu.memory_budget_mib"),
                Some("gpu.shader_cache"),
                Some("render.fps")
            ],
            "{:?}",
            c.owner_ignored
        );
    }

    #[test]
    fn two_owner_values_that_disagree_keep_the_first() {
        let (dir, config) =
            with_owner_file("[gpu]\nresume_below_celsius = 70\npause_above_celsius = 60\n");
        let c = load(Some(&config), dir.path()).expect("loads");
        assert_eq!(c.gpu.resume_below_celsius, 70.0);
        assert_eq!(c.gpu.pause_above_celsius, 85.0);
        assert_eq!(ignored_keys(&c), [Some("gpu.pause_above_celsius")]);
    }

    #[test]
    fn an_owner_file_that_is_not_toml_is_ignored_whole() {
        let (dir, config) = with_owner_file("\u{0}\u{0}garbage = = [");
        let c = load(Some(&config), dir.path()).expect("loads");
        assert_eq!(c.gpu.max_duty, 1.0);
        assert_eq!(ignored_keys(&c), [None]);
        assert!(c.owner_ignored[0].message.contains("not valid TOML"));
    }

    #[test]
    fn setting_a_key_keeps_a_newer_releases_keys_and_refuses_only_a_bad_value() {
        let (dir, config) = with_owner_file("[render]\nfps = 60\n");
        let state = dir.path().join("state");
        let text = set_owner_key(
            Some(&config),
            dir.path(),
            &state,
            "gpu.max_duty_percent",
            "40",
        )
        .expect("set");
        assert!(
            text.contains("fps = 60") && text.contains("max_duty_percent = 40"),
            "{text}"
        );
        let refused = set_owner_key(
            Some(&config),
            dir.path(),
            &state,
            "gpu.max_duty_percent",
            "400",
        )
        .expect_err("out of range");
        assert_eq!(refused.problems.len(), 1, "{refused}");
        assert!(
            !refused.problems[0].message.contains("ignored"),
            "{refused}"
        );
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
        each_refused_with(&cases);
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
        each_refused_with(&cases);
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
