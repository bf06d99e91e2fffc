//! Checking the merged files field by field into a typed [`Config`]: plain values (numbers,
//! booleans, strings) as the field table says, then what each section needs beyond that (paths,
//! URLs, addresses, the hours, keys that need each other). Every problem is collected, with its
//! key and the file it came from.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use edge_identity::KeyUri;
use toml::Value;

use super::fields::{self, Kind};
use super::{
    BandwidthConfig, ButtonConfig, Config, DEFAULT_STATE_DIR, GpuConfig, HubConfig, LogConfig,
    LogFormat, NetworkConfig, PairingConfig, Problem, StatusConfig,
};

/// Unix socket paths are limited to `sun_path`: 108 bytes with the terminating NUL.
const MAX_SOCKET_PATH: usize = 107;

pub(super) struct Check<'a> {
    pub(super) origins: &'a BTreeMap<String, PathBuf>,
    pub(super) problems: &'a mut Vec<Problem>,
    /// The files' values by dotted key, each a key of the field table.
    pub(super) raw: BTreeMap<&'static str, Value>,
}

impl Check<'_> {
    pub(super) fn fail(&mut self, key: &str, message: impl Into<String>) {
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

    /// The raw value of `key`, taken (each is read once).
    fn take(&mut self, key: &'static str) -> Option<Value> {
        self.raw.remove(key)
    }

    /// A string value, or a problem naming what was found.
    fn text(&mut self, key: &str, value: Value) -> Option<String> {
        match value {
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

    fn string(&mut self, key: &'static str) -> Option<String> {
        let value = self.take(key)?;
        self.text(key, value)
    }

    /// A whole number as the table bounds it; its default where absent.
    fn integer(&mut self, key: &'static str) -> Option<u64> {
        let Some(Kind::Integer {
            default,
            min,
            max,
            unit,
        }) = fields::field(key).map(|f| f.kind)
        else {
            self.fail(key, "internal error: not an integer key");
            return None;
        };
        match self.take(key) {
            None => default,
            Some(Value::Integer(n)) if u64::try_from(n).is_ok_and(|n| (min..=max).contains(&n)) => {
                Some(n as u64)
            }
            Some(Value::Integer(n)) => {
                self.fail(
                    key,
                    format!("{n} is out of range; expected {min} to {max} {unit}"),
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

    fn seconds(&mut self, key: &'static str) -> Option<Duration> {
        self.integer(key).map(Duration::from_secs)
    }

    fn boolean(&mut self, key: &'static str) -> Option<bool> {
        let Some(Kind::Bool { default }) = fields::field(key).map(|f| f.kind) else {
            self.fail(key, "internal error: not a boolean key");
            return None;
        };
        match self.take(key) {
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

    pub(super) fn config(&mut self, cwd: &Path, sources: Vec<PathBuf>) -> Option<Config> {
        let state_dir = self
            .string("agent.state_dir")
            .or_else(|| Some(DEFAULT_STATE_DIR.into()))
            .and_then(|dir| self.path("agent.state_dir", &dir, cwd));
        let identity_key = match self.string("agent.identity_key") {
            Some(uri) => KeyUri::parse(&uri)
                .map_err(|e| self.fail("agent.identity_key", e.to_string()))
                .ok(),
            None => state_dir
                .as_ref()
                .map(|d| KeyUri::file(d.join("identity.key"))),
        };
        let sample_interval = self.seconds("agent.sample_interval_secs");
        let shutdown_grace = self.seconds("agent.shutdown_grace_secs");

        let format = self
            .string("log.format")
            .map_or(Ok(LogFormat::Auto), |f| f.parse())
            .map_err(|e| self.fail("log.format", e))
            .ok();
        let level = self.string("log.level").unwrap_or_else(|| "info".into());
        if let Err(e) = level.parse::<tracing_subscriber::filter::Targets>() {
            self.fail(
                "log.level",
                format!("not a tracing filter ({e}); try \"info\" or \"debug\""),
            );
        }

        let socket = match self.string("status.socket") {
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
        let tcp = match self.string("status.tcp") {
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

        let gpu = self.gpu();
        let network = self.network(cwd);
        let pairing = self.pairing(cwd);
        Some(Config {
            owner_ignored: Vec::new(),
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

    fn pairing(&mut self, cwd: &Path) -> Option<PairingConfig> {
        let mdns = self.boolean("pairing.mdns");
        let ble = self.boolean("pairing.ble");
        let listen = match self.string("pairing.listen") {
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
        let device = match self.string("pairing.button") {
            None => Some(None),
            Some(s) if s.is_empty() => Some(None),
            Some(s) => self.path("pairing.button", &s, cwd).map(Some),
        };
        let max = edge_hal::button::KEY_MAX;
        let key = match self.take("pairing.button_key") {
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

    fn network(&mut self, cwd: &Path) -> Option<NetworkConfig> {
        let url = self
            .string("network.hub_url")
            .and_then(|u| self.https_url("network.hub_url", u));
        let ca_cert = self
            .string("network.ca_cert")
            .and_then(|p| self.path("network.ca_cert", &p, cwd));
        let owner_token = self.string("network.owner_token");
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
        let echo_urls = match self.take("network.echo_urls") {
            None => Some(Vec::new()),
            Some(Value::Array(items)) => items
                .into_iter()
                .enumerate()
                .map(|(i, item)| {
                    let key = format!("network.echo_urls[{i}]");
                    self.text(&key, item).and_then(|u| self.https_url(&key, u))
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
        let heartbeat = self.integer("network.heartbeat_secs");
        let capability = self.integer("network.capability_secs");
        let ip_check = self.integer("network.ip_check_secs");
        let batch = self.integer("network.batch_size");
        let queue_max = self.integer("network.queue_max_reports");
        let max_age = self.integer("network.queue_max_age_hours");
        let backoff = self.seconds("network.backoff_max_secs");
        let measure = self.boolean("network.measure_bandwidth");
        let streams = self.integer("network.bandwidth_streams");
        let warmup = self.integer("network.bandwidth_warmup_secs");
        let window = self.seconds("network.bandwidth_window_secs");
        let max_mib = self.integer("network.bandwidth_max_mib");
        let accept_jobs = self.boolean("network.accept_jobs");
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
        https_base_url(&url).map_err(|why| self.fail(key, why)).ok()
    }

    fn gpu(&mut self) -> Option<GpuConfig> {
        let budget = self.integer("gpu.memory_budget_mib");
        let capacity = self.integer("gpu.queue_capacity");
        let duty = self.integer("gpu.max_duty_percent");
        let pause = self.integer("gpu.pause_above_celsius");
        let resume = self.integer("gpu.resume_below_celsius");
        if let (Some(pause), Some(resume)) = (pause, resume)
            && resume >= pause
        {
            self.fail(
                "gpu.resume_below_celsius",
                format!("{resume} must be below gpu.pause_above_celsius ({pause}), or the GPU would flap"),
            );
        }
        let idle = self.seconds("gpu.idle_release_secs");
        let measure = self.boolean("gpu.measure_capability");
        let socket = match self.string("gpu.worker_socket") {
            None => Some(None),
            Some(text) if !text.starts_with('/') => {
                self.fail(
                    "gpu.worker_socket",
                    format!("{text:?} must be an absolute path"),
                );
                None
            }
            Some(text) => self
                .path("gpu.worker_socket", &text, Path::new("/"))
                .map(Some),
        };
        let hours = match self.string("gpu.allowed_hours_utc") {
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
            worker_socket: socket?,
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

pub(super) fn describe(value: &Value) -> String {
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

/// `url` as a network base URL (`https://host[:port]`, no trailing slash), or why it is not one:
/// the agent talks to the network over TLS only. The config's `network.hub_url` and the owner's
/// binding are checked alike.
pub(crate) fn https_base_url(url: &str) -> Result<String, String> {
    let rest = url.strip_prefix("https://");
    if rest.is_none_or(|r| r.is_empty() || r.contains(char::is_whitespace)) {
        return Err(format!(
            "{url:?} is not an https:// URL; the agent talks to the network over TLS only"
        ));
    }
    Ok(url.trim_end_matches('/').to_owned())
}
