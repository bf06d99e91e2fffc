//! Every config key once: its section, its kind (type, default, range, unit), whether the owner
//! may set it from the app, and what the example config says about it. The key lists of
//! unknown-key errors, the owner's keys, the checks of plain values, and
//! `agent/config/config.example.toml` itself come from this table (a test holds the file to it).

use edge_hal::button::KEY_MAX;

/// What a key takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A whole number, `min` to `max` `unit`s; `default` where the key has one.
    Integer {
        default: Option<u64>,
        min: u64,
        max: u64,
        unit: &'static str,
    },
    /// `true` or `false`.
    Bool { default: bool },
    /// A string, read further by its section (a path, a URL, an address, hours).
    Text,
    /// An array of strings.
    TextList,
}

/// One key.
#[derive(Debug)]
pub(crate) struct Field {
    /// The dotted key, `section.name`.
    pub(crate) key: &'static str,
    pub(crate) kind: Kind,
    /// Settable by the owner from the paired app (`config set`).
    pub(crate) owner: bool,
    /// The example config's comment above the key, a line each; empty: the key shares the
    /// comment of the one before it.
    #[cfg_attr(
        not(test),
        expect(dead_code, reason = "the example config's test reads it")
    )]
    pub(crate) doc: &'static [&'static str],
    /// The key's line in the example config: set, or commented out where the example leaves it
    /// at its default (or at none).
    #[cfg_attr(
        not(test),
        expect(dead_code, reason = "the example config's test reads it")
    )]
    pub(crate) example: &'static str,
}

impl Field {
    /// The section it lives in.
    pub(crate) fn section(&self) -> &'static str {
        self.key
            .split_once('.')
            .map_or(self.key, |(section, _)| section)
    }

    /// Its name within the section.
    pub(crate) fn name(&self) -> &'static str {
        self.key.split_once('.').map_or(self.key, |(_, name)| name)
    }
}

/// The top-level tables, in the example's order.
pub(crate) const SECTIONS: [&str; 6] = ["agent", "log", "status", "gpu", "network", "pairing"];

/// The example config's opening comment.
#[cfg(test)]
const HEADER: &[&str] = &[
    "edge-agent configuration: /etc/edge-agent/config.toml",
    "",
    "Drop-ins in /etc/edge-agent/config.d/*.toml are read after this file in name order; a key set",
    "in a later file overrides the same key set earlier. Every key is optional: a missing key takes",
    "the default shown. Check a config without starting the agent: `edge-agent --config FILE check`.",
];

/// Every key, in the example's order.
pub(crate) const FIELDS: &[Field] = &[
    Field {
        key: "agent.state_dir",
        kind: Kind::Text,
        owner: false,
        doc: &[
            "Directory for the identity key, the lock file and caches. Created with mode 0700.",
            "Relative paths are taken from the working directory. Default: \"edge-agent-state\".",
        ],
        example: "state_dir = \"/var/lib/edge-agent\"",
    },
    Field {
        key: "agent.identity_key",
        kind: Kind::Text,
        owner: false,
        doc: &[
            "The device identity key (Ed25519), made on first start with mode 0600. A key that others can",
            "read, or that is truncated or corrupt, is refused: the agent will not silently change identity.",
            "Default: \"file://<state_dir>/identity.key\".",
        ],
        example: "identity_key = \"file:///var/lib/edge-agent/identity.key\"",
    },
    Field {
        key: "agent.sample_interval_secs",
        kind: Kind::Integer {
            default: Some(10),
            min: 1,
            max: 3600,
            unit: "seconds",
        },
        owner: false,
        doc: &[
            "Seconds between hardware samples (1 to 3600). The systemd watchdog is only fed while these",
            "samples keep arriving. Default: 10.",
        ],
        example: "sample_interval_secs = 10",
    },
    Field {
        key: "agent.shutdown_grace_secs",
        kind: Kind::Integer {
            default: Some(10),
            min: 1,
            max: 300,
            unit: "seconds",
        },
        owner: false,
        doc: &[
            "Seconds running tasks get to finish after SIGTERM or SIGINT (1 to 300). Default: 10.",
        ],
        example: "shutdown_grace_secs = 10",
    },
    Field {
        key: "log.format",
        kind: Kind::Text,
        owner: false,
        doc: &[
            "\"auto\" (journald under systemd, text otherwise), \"text\", \"json\" or \"journald\". Default: \"auto\".",
        ],
        example: "format = \"auto\"",
    },
    Field {
        key: "log.level",
        kind: Kind::Text,
        owner: false,
        doc: &[
            "A tracing filter: \"info\", \"debug\", or per module, \"info,edge_agent=debug\". Default: \"info\".",
        ],
        example: "level = \"info\"",
    },
    Field {
        key: "status.socket",
        kind: Kind::Text,
        owner: false,
        doc: &[
            "Unix socket for the read-only status endpoint (GET /status, GET /metrics); \"\" disables it.",
            "Mode 0660. Default: \"<state_dir>/status.sock\".",
        ],
        example: "socket = \"/run/edge-agent/status.sock\"",
    },
    Field {
        key: "status.tcp",
        kind: Kind::Text,
        owner: false,
        doc: &[
            "Optional loopback TCP listener for the same endpoint, e.g. for a local Prometheus.",
            "Only loopback addresses are accepted. Default: none.",
        ],
        example: "# tcp = \"127.0.0.1:9464\"",
    },
    Field {
        key: "gpu.memory_budget_mib",
        kind: Kind::Integer {
            default: Some(2048),
            min: 16,
            max: 65_536,
            unit: "MiB",
        },
        owner: true,
        doc: &[
            "GPU memory lent to jobs, in MiB: a job's buffers plus the read-back copies of its outputs must",
            "fit (16 to 65536). On the box the GPU shares the 12 GB of RAM. Default: 2048.",
        ],
        example: "memory_budget_mib = 2048",
    },
    Field {
        key: "gpu.queue_capacity",
        kind: Kind::Integer {
            default: Some(64),
            min: 1,
            max: 10_000,
            unit: "jobs",
        },
        owner: false,
        doc: &[
            "Jobs that may wait for the GPU (1 to 10000); more are refused, not queued. Default: 64.",
        ],
        example: "queue_capacity = 64",
    },
    Field {
        key: "gpu.max_duty_percent",
        kind: Kind::Integer {
            default: Some(100),
            min: 1,
            max: 100,
            unit: "percent",
        },
        owner: true,
        doc: &[
            "Largest share of time the GPU may be busy, percent (1 to 100): after a job that ran for t,",
            "the GPU rests t * (100 - p) / p. Default: 100.",
        ],
        example: "max_duty_percent = 100",
    },
    Field {
        key: "gpu.allowed_hours_utc",
        kind: Kind::Text,
        owner: true,
        doc: &[
            "Hours (UTC) when jobs may start, \"START-END\", wrapping past midnight, e.g. \"22-7\".",
            "Default: any time.",
        ],
        example: "# allowed_hours_utc = \"22-7\"",
    },
    Field {
        key: "gpu.pause_above_celsius",
        kind: Kind::Integer {
            default: Some(85),
            min: 40,
            max: 120,
            unit: "degrees",
        },
        owner: true,
        doc: &[
            "No job starts while any thermal zone is at or above pause_above_celsius (40 to 120), until",
            "every zone is below resume_below_celsius (30 to 110, lower than the pause). Defaults: 85, 75.",
        ],
        example: "pause_above_celsius = 85",
    },
    Field {
        key: "gpu.resume_below_celsius",
        kind: Kind::Integer {
            default: Some(75),
            min: 30,
            max: 110,
            unit: "degrees",
        },
        owner: true,
        doc: &[],
        example: "resume_below_celsius = 75",
    },
    Field {
        key: "gpu.idle_release_secs",
        kind: Kind::Integer {
            default: Some(60),
            min: 1,
            max: 3600,
            unit: "seconds",
        },
        owner: false,
        doc: &[
            "Seconds without work after which the GPU worker process exits and frees the driver's memory",
            "(1 to 3600). Default: 60.",
        ],
        example: "idle_release_secs = 60",
    },
    Field {
        key: "gpu.measure_capability",
        kind: Kind::Bool { default: true },
        owner: false,
        doc: &[
            "Measure FP32 peak, SGEMM, memory bandwidth and dispatch latency at start, when the cached",
            "figures (state_dir/capability.json) are missing or from another agent version or driver.",
            "Default: true.",
        ],
        example: "measure_capability = true",
    },
    Field {
        key: "gpu.worker_socket",
        kind: Kind::Text,
        owner: false,
        doc: &[
            "Reach the GPU worker through this Unix socket (absolute path), on which the service manager",
            "starts one worker per connection under a unit of its own (its own user, no network, a memory",
            "cgroup): how the box runs it (the image's edge-gpu-worker.socket). Default: none, the agent",
            "starts edge-gpu-worker beside itself as its child.",
        ],
        example: "# worker_socket = \"/run/edge-gpu-worker.sock\"",
    },
    Field {
        key: "network.hub_url",
        kind: Kind::Text,
        owner: false,
        doc: &[
            "The hub (network endpoint) this device reports to, https:// only. Without it the agent reports",
            "to no one: no queue, no measurements, no jobs from the network. Host names are ASCII (write an",
            "internationalised name in its xn-- form). Default: none.",
        ],
        example: "# hub_url = \"https://hub.example.net:8443\"",
    },
    Field {
        key: "network.ca_cert",
        kind: Kind::Text,
        owner: false,
        doc: &[
            "The network's CA certificate (PEM), pinned: the only root the agent trusts for the hub.",
            "Required with hub_url.",
        ],
        example: "# ca_cert = \"/etc/edge-agent/network-ca.pem\"",
    },
    Field {
        key: "network.owner_token",
        kind: Kind::Text,
        owner: false,
        doc: &["The owner binding token the owner got from the network. Required with hub_url."],
        example: "# owner_token = \"owner-...\"",
    },
    Field {
        key: "network.heartbeat_secs",
        kind: Kind::Integer {
            default: Some(30),
            min: 1,
            max: 3600,
            unit: "seconds",
        },
        owner: false,
        doc: &["Seconds between heartbeats (1 to 3600). Default: 30."],
        example: "heartbeat_secs = 30",
    },
    Field {
        key: "network.capability_secs",
        kind: Kind::Integer {
            default: Some(21_600),
            min: 60,
            max: 604_800,
            unit: "seconds",
        },
        owner: false,
        doc: &[
            "Seconds between capability reports when nothing changed (60 to 604800); one is also sent at",
            "start, when the public address changes and when the GPU figures change. Default: 21600 (6 h).",
        ],
        example: "capability_secs = 21600",
    },
    Field {
        key: "network.ip_check_secs",
        kind: Kind::Integer {
            default: Some(900),
            min: 60,
            max: 86_400,
            unit: "seconds",
        },
        owner: false,
        doc: &[
            "Seconds between public address checks against the echo endpoints (60 to 86400). Default: 900.",
        ],
        example: "ip_check_secs = 900",
    },
    Field {
        key: "network.echo_urls",
        kind: Kind::TextList,
        owner: false,
        doc: &[
            "IP echo endpoints (https://), used as given. Default: the ones the hub names (at least two where",
            "it has them), of which only https:// ones on the hub's own host are used.",
        ],
        example: "# echo_urls = [\"https://echo-a.example.net/v1/ip\", \"https://echo-b.example.net/v1/ip\"]",
    },
    Field {
        key: "network.batch_size",
        kind: Kind::Integer {
            default: Some(64),
            min: 1,
            max: 256,
            unit: "reports",
        },
        owner: false,
        doc: &["Reports per delivery request (1 to 256). Default: 64."],
        example: "batch_size = 64",
    },
    Field {
        key: "network.queue_max_reports",
        kind: Kind::Integer {
            default: Some(10_000),
            min: 100,
            max: 1_000_000,
            unit: "reports",
        },
        owner: false,
        doc: &[
            "The report queue (state_dir/outbox.db) holds at most this many undelivered reports; when full",
            "the oldest are dropped (and the drop is reported). 100 to 1000000. Default: 10000.",
        ],
        example: "queue_max_reports = 10000",
    },
    Field {
        key: "network.queue_max_age_hours",
        kind: Kind::Integer {
            default: Some(168),
            min: 1,
            max: 8760,
            unit: "hours",
        },
        owner: false,
        doc: &[
            "Undelivered reports older than this many hours are dropped (and reported). 1 to 8760.",
            "Default: 168.",
        ],
        example: "queue_max_age_hours = 168",
    },
    Field {
        key: "network.backoff_max_secs",
        kind: Kind::Integer {
            default: Some(300),
            min: 1,
            max: 3600,
            unit: "seconds",
        },
        owner: false,
        doc: &[
            "Longest wait between delivery attempts while the hub is unreachable, seconds (1 to 3600):",
            "the wait doubles from 1 s with jitter up to this. Default: 300.",
        ],
        example: "backoff_max_secs = 300",
    },
    Field {
        key: "network.measure_bandwidth",
        kind: Kind::Bool { default: true },
        owner: true,
        doc: &[
            "Measure bandwidth against the hub at start and with each periodic capability report.",
            "Default: true.",
        ],
        example: "measure_bandwidth = true",
    },
    Field {
        key: "network.bandwidth_streams",
        kind: Kind::Integer {
            default: Some(4),
            min: 1,
            max: 16,
            unit: "streams",
        },
        owner: false,
        doc: &[
            "Bandwidth test: parallel streams per direction (1 to 16), warm-up left out (0 to 10 s), measured",
            "time per direction (1 to 60 s), most MiB per direction (1 to 4096). Defaults: 4, 1, 5, 256.",
        ],
        example: "bandwidth_streams = 4",
    },
    Field {
        key: "network.bandwidth_warmup_secs",
        kind: Kind::Integer {
            default: Some(1),
            min: 0,
            max: 10,
            unit: "seconds",
        },
        owner: false,
        doc: &[],
        example: "bandwidth_warmup_secs = 1",
    },
    Field {
        key: "network.bandwidth_window_secs",
        kind: Kind::Integer {
            default: Some(5),
            min: 1,
            max: 60,
            unit: "seconds",
        },
        owner: false,
        doc: &[],
        example: "bandwidth_window_secs = 5",
    },
    Field {
        key: "network.bandwidth_max_mib",
        kind: Kind::Integer {
            default: Some(256),
            min: 1,
            max: 4096,
            unit: "MiB",
        },
        owner: false,
        doc: &[],
        example: "bandwidth_max_mib = 256",
    },
    Field {
        key: "network.accept_jobs",
        kind: Kind::Bool { default: true },
        owner: true,
        doc: &[
            "Take GPU jobs from the hub (a long-poll; jobs run under the [gpu] policy above). Default: true.",
        ],
        example: "accept_jobs = true",
    },
    Field {
        key: "pairing.listen",
        kind: Kind::Text,
        owner: false,
        doc: &[
            "Where the owner's app (or edgectl) reaches the box on the LAN: pairing while the box has no",
            "owner, then the owner's encrypted control channel. \"\" disables it. Default: disabled.",
        ],
        example: "listen = \"0.0.0.0:7466\"",
    },
    Field {
        key: "pairing.mdns",
        kind: Kind::Bool { default: true },
        owner: false,
        doc: &[
            "Announce the listener as _edge-agent._tcp over mDNS, with the device id and whether a pairing",
            "window is open, so the app finds the box. Never for a loopback listener. Default: true.",
        ],
        example: "mdns = true",
    },
    Field {
        key: "pairing.ble",
        kind: Kind::Bool { default: false },
        owner: false,
        doc: &[
            "Serve pairing and the control channel over Bluetooth LE as well: a GATT service (BlueZ, through",
            "D-Bus) advertised as \"edge-<first 12 characters of the device id>\", with the same protocol and",
            "frames as the LAN. Where BlueZ or an adapter is missing the agent says so and tries again every",
            "minute; the LAN keeps working. Needs listen. Default: false.",
        ],
        example: "ble = false",
    },
    Field {
        key: "pairing.button",
        kind: Kind::Text,
        owner: false,
        doc: &[
            "The pairing button: a key on a Linux input device (evdev). A press (key-down, no hold) opens the",
            "pairing window, as SIGUSR1 does (`systemctl kill -s USR1 edge-agent`), which keeps working. Held",
            "down 10 s it resets the box (the factory reset). A device that is missing or unreadable is a",
            "warning at start; the agent runs on with SIGUSR1 only.",
            "Needs listen. Default: none.",
        ],
        example: "# button = \"/dev/input/by-path/platform-gpio-keys-event\"",
    },
    Field {
        key: "pairing.button_key",
        kind: Kind::Integer {
            default: None,
            min: 1,
            max: KEY_MAX as u64,
            unit: "key code",
        },
        owner: false,
        doc: &[
            "The key code the button sends (EV_KEY, 1 to 767; `evtest` shows it), e.g. 218 for KEY_CONNECT.",
            "Required with button.",
        ],
        example: "# button_key = 218",
    },
];

/// The field of a dotted key.
pub(crate) fn field(key: &str) -> Option<&'static Field> {
    FIELDS.iter().find(|f| f.key == key)
}

/// The names of a section's keys.
pub(crate) fn names(section: &str) -> Vec<&'static str> {
    FIELDS
        .iter()
        .filter(|f| f.section() == section)
        .map(Field::name)
        .collect()
}

/// The keys the owner may set.
pub(crate) fn owner_keys() -> Vec<&'static str> {
    FIELDS.iter().filter(|f| f.owner).map(|f| f.key).collect()
}

/// `agent/config/config.example.toml`, as the table says it.
#[cfg(test)]
pub(crate) fn example() -> String {
    let mut out = String::new();
    let comment = |out: &mut String, line: &str| {
        out.push('#');
        if !line.is_empty() {
            out.push(' ');
            out.push_str(line);
        }
        out.push('\n');
    };
    HEADER.iter().for_each(|line| comment(&mut out, line));
    for section in SECTIONS {
        out.push_str(&format!("\n[{section}]\n"));
        let fields = FIELDS.iter().filter(|f| f.section() == section);
        for (i, field) in fields.enumerate() {
            if i > 0 && !field.doc.is_empty() {
                out.push('\n');
            }
            field.doc.iter().for_each(|line| comment(&mut out, line));
            out.push_str(field.example);
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_config_is_the_table() {
        let file = include_str!("../../config/config.example.toml");
        let made = example();
        if file != made {
            let line = file
                .lines()
                .zip(made.lines())
                .position(|(a, b)| a != b)
                .map_or(file.lines().count().min(made.lines().count()), |i| i);
            panic!(
                "agent/config/config.example.toml differs from config::fields at line {}:\n file: {:?}\ntable: {:?}",
                line + 1,
                file.lines().nth(line),
                made.lines().nth(line)
            );
        }
    }

    #[test]
    fn every_key_is_in_a_section_once_and_its_example_names_it() {
        for (i, field) in FIELDS.iter().enumerate() {
            assert!(SECTIONS.contains(&field.section()), "{}", field.key);
            assert!(
                FIELDS[..i].iter().all(|f| f.key != field.key),
                "{} twice",
                field.key
            );
            let line = field.example.trim_start_matches("# ");
            assert!(
                line.starts_with(&format!("{} = ", field.name())),
                "{}: {:?}",
                field.key,
                field.example
            );
            if let Kind::Integer {
                default, min, max, ..
            } = field.kind
            {
                assert!(min <= max, "{}", field.key);
                assert!(
                    default.is_none_or(|d| (min..=max).contains(&d)),
                    "{}",
                    field.key
                );
            }
        }
    }
}
