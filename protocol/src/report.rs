//! Report bodies: what the device tells the network.
//!
//! Figures are plain numbers with their unit in the field name. Every struct refuses unknown
//! fields, so a typo in a hand-made report is an error, not a silently missing value.

use edge_jobs::receipt::Receipt;
use serde::{Deserialize, Serialize};

/// Registration: binds the public key to its device id and to an owner.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Register {
    /// The Ed25519 public key, lowercase hex; it must hash to the envelope's device id.
    pub public_key: String,
    /// The owner binding token the owner got from the network.
    pub owner_token: String,
    /// The agent's version.
    pub agent_version: String,
}

/// The device is alive; what it is doing right now.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Heartbeat {
    /// Seconds since the OS booted.
    pub uptime_secs: u64,
    /// 1-minute load average.
    pub load_1m: f64,
    /// Memory available for new work, bytes.
    pub memory_available_bytes: u64,
    /// Hottest thermal zone, degrees Celsius; `null` where none can be read.
    pub max_temp_celsius: Option<f64>,
    /// Bytes received on all non-loopback interfaces since boot (passive throughput is the
    /// difference between two heartbeats over the time between them).
    pub rx_bytes: u64,
    /// Bytes sent on all non-loopback interfaces since boot.
    pub tx_bytes: u64,
    /// GPU jobs waiting.
    pub gpu_queued: u64,
    /// GPU jobs finished since the agent started.
    pub gpu_jobs_done: u64,
}

/// What the device offers. Sent at start, when something changes, and periodically.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Capability {
    /// The agent's version.
    pub agent_version: String,
    /// The GPU as measured by the capability benchmark; `null` without a GPU or before it ran.
    pub compute: Option<Compute>,
    /// Measured throughput to the network; `null` if not measured.
    pub bandwidth: Option<Bandwidth>,
    /// The public address as the network sees it; `null` if not measured.
    pub ip: Option<IpReport>,
    /// The host's CPU, memory, storage and OS; a figure that could not be read is 0 or empty.
    pub host: Host,
}

/// What the GPU measured (the capability benchmark).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Compute {
    /// Agent version that measured it.
    pub agent_version: String,
    /// The adapter's name as wgpu reports it, e.g. `Adreno (TM) 650`.
    pub adapter: String,
    /// The driver's version string, e.g. `Mesa 22.3.6 (LLVM 15.0.6)`. The agent measures again
    /// when this, `adapter` or its own version changes.
    pub driver: String,
    /// When, Unix seconds.
    pub measured_at_unix: u64,
    /// FP32 peak (`fma_peak`), GFLOPS.
    pub fp32_peak_gflops: f64,
    /// SGEMM at `sgemm_n`, GFLOPS.
    pub sgemm_gflops: f64,
    /// SGEMM matrix size.
    pub sgemm_n: u32,
    /// Device memory bandwidth (`copy`, read + write), GB/s.
    pub memory_bandwidth_gbps: f64,
    /// Median submit-to-read-back time of a tiny kernel, microseconds.
    pub dispatch_round_trip_us: f64,
}

/// Throughput between the device and a network test endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bandwidth {
    /// How it was measured: `https-multistream`.
    pub method: String,
    /// The test endpoint's base URL.
    pub server: String,
    /// Parallel HTTPS transfers per direction (`network.bandwidth_streams`).
    pub streams: u32,
    /// Download, megabits per second, over the measurement window (warm-up excluded).
    pub down_mbps: f64,
    /// Upload, megabits per second, over the measurement window (warm-up excluded).
    pub up_mbps: f64,
    /// Median round trip of a small request on an open connection, milliseconds.
    pub latency_ms: f64,
    /// Mean difference between consecutive round trips, milliseconds (RFC 3550 style).
    pub jitter_ms: f64,
    /// Warm-up left out of each direction, milliseconds (0 where the byte budget ran out before
    /// the warm-up ended: then the whole transfer is the window).
    pub warmup_ms: u64,
    /// Download measurement window, milliseconds.
    pub window_down_ms: u64,
    /// Upload measurement window, milliseconds.
    pub window_up_ms: u64,
    /// Bytes moved down, warm-up included: what the measurement cost.
    pub bytes_down: u64,
    /// Bytes moved up, warm-up included.
    pub bytes_up: u64,
    /// Download throughput per sample interval in the window, megabits per second.
    pub samples_down_mbps: Vec<f64>,
    /// Upload throughput per sample interval in the window, megabits per second.
    pub samples_up_mbps: Vec<f64>,
    /// The round trips behind `latency_ms`, milliseconds.
    pub rtt_ms: Vec<f64>,
    /// When, Unix milliseconds.
    pub measured_at_ms: u64,
}

/// The public address, as seen from outside.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IpReport {
    /// What each echo endpoint answered.
    pub observations: Vec<IpObservation>,
    /// The address the endpoints agree on; `null` if they disagree or none answered.
    pub public_ip: Option<String>,
    /// Whether at least two endpoints answered and all answers were the same address.
    pub agree: bool,
    /// `ipv4` or `ipv6` of `public_ip`.
    pub family: Option<String>,
    /// Whether `public_ip` is not an address of any of the device's interfaces (the device sits
    /// behind NAT); `null` without a `public_ip`.
    pub behind_nat: Option<bool>,
    /// When, Unix milliseconds.
    pub measured_at_ms: u64,
}

/// One echo endpoint's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IpObservation {
    /// The echo endpoint's URL, as configured in `network.echo_urls`.
    pub endpoint: String,
    /// The address it saw, or `null` if it failed.
    pub ip: Option<String>,
    /// The HTTP client's error when it failed; `null` when `ip` is set.
    pub error: Option<String>,
}

/// The host the agent runs on.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Host {
    /// CPU model (core types on Arm).
    pub cpu_model: String,
    /// Logical CPUs.
    pub cores: u32,
    /// Physical memory, bytes.
    pub memory_total_bytes: u64,
    /// Size of the filesystem holding the state directory, bytes.
    pub storage_total_bytes: u64,
    /// Free space there, bytes.
    pub storage_available_bytes: u64,
    /// Hottest thermal zone, degrees Celsius.
    pub max_temp_celsius: Option<f64>,
    /// Seconds since boot.
    pub uptime_secs: u64,
    /// Kernel release (`/proc/sys/kernel/osrelease`, e.g. `6.1.0-18-arm64`).
    pub kernel: String,
    /// OS name (os-release `PRETTY_NAME`); `unknown` where the image has no os-release.
    pub os: String,
}

/// The device's report queue dropped reports before they were delivered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dropped {
    /// How many reports were dropped, over every drop not yet reported.
    pub count: u64,
    /// Lowest sequence number dropped. Merged drops give one range, which can span reports that
    /// were delivered.
    pub first_seq: u64,
    /// Highest sequence number dropped.
    pub last_seq: u64,
    /// Why, comma-separated when drops of several kinds were merged:
    /// - `full` (over the size bound) or `expired` (over the age bound);
    /// - `lost`: the queue file was unreadable and was set aside; `count` is 0 (unknown) and the
    ///   range is every number handed out before (some were delivered);
    /// - `unwritten` (could not be stored: a disk error) or `low_space` (a heartbeat or
    ///   capability report not stored while space was low): they never had numbers; the range is
    ///   the number of the first report stored after them.
    pub reason: String,
}

/// The end of a job the network handed out: its receipt, or why there is none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobReport {
    /// The job's id, as handed out.
    pub job_id: String,
    /// Its receipt if it ran, or the error that stopped it; the JSON's `status` says which.
    pub outcome: JobOutcome,
}

/// What became of a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case", deny_unknown_fields)]
pub enum JobOutcome {
    /// It ran; the receipt is signed by the device key (`docs/jobs.md`).
    Done {
        /// The receipt as the agent signed it; the hub checks it names this job and this device.
        receipt: Box<Receipt>,
    },
    /// The agent refused it before it ran (invalid, no GPU, queue full, past its deadline).
    Refused {
        /// The agent's error as displayed, e.g. the worker's shader problems with their positions.
        error: String,
    },
    /// It started and failed (driver error, time limit, cancelled).
    Failed {
        /// The agent's error as displayed, e.g. the driver's message or the time limit hit.
        error: String,
    },
}
