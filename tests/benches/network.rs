//! Network figures, in namespaces this bench makes (root, `ip`, `tc`, `iperf3` needed):
//!
//! 1. bandwidth: `edge-agent measure` against the hub over a `tc tbf` link shaped to 20 and
//!    100 Mbit/s, next to `iperf3` (4 streams, 1 s omitted, same duration) on the same link in the
//!    same run: error against the shaped rate and bytes spent by each;
//! 2. the agent's cost of reporting at the default intervals: CPU time and bytes on the wire over
//!    a window, next to the same agent with no hub configured, run side by side.
//!
//!     cargo build --release -p edge-agent -p edge-hub && cargo bench -p edge-tests --bench network

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use edge_tests::hub::Across;
use edge_tests::netns::{Link, unavailable};
use edge_tests::{NotifySocket, Running, Sandbox, bin, cpu_secs, in_ns};

const WARMUP_SECS: u64 = 1;
const WINDOW_SECS: u64 = 5;

fn main() {
    if let Some(why) = unavailable(&["ip", "tc", "iperf3"]) {
        eprintln!("SKIPPED network bench: {why}");
        std::process::exit(1);
    }
    let window: u64 = std::env::var("EDGE_COST_WINDOW_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(120);
    println!(
        "bandwidth over a tc tbf link ({WARMUP_SECS} s warm-up left out, {WINDOW_SECS} s measured, 4 streams):"
    );
    println!(
        "{:>7}  {:>22}  {:>22}  {:>10}  {:>10}",
        "shaped", "agent down/up Mbit/s", "iperf3 down/up Mbit/s", "agent MB", "iperf3 MB"
    );
    for mbit in [20u32, 100] {
        bandwidth_row(mbit);
    }
    reporting_cost(window);
}

fn wire_bytes(ns: &str, dev: &str) -> u64 {
    ["rx_bytes", "tx_bytes"]
        .iter()
        .map(|f| {
            let out = Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    ns,
                    "cat",
                    &format!("/sys/class/net/{dev}/statistics/{f}"),
                ])
                .output()
                .expect("read counters");
            String::from_utf8_lossy(&out.stdout)
                .trim()
                .parse::<u64>()
                .unwrap_or(0)
        })
        .sum()
}

fn iperf3(link: &Link, reverse: bool) -> (f64, u64) {
    let mut server = in_ns(&link.hub_ns, "iperf3")
        .args(["-s", "-1", "-B", &link.hub_ip, "-p", "5201"])
        .stdout(Stdio::null())
        .spawn()
        .expect("iperf3 server");
    std::thread::sleep(Duration::from_millis(300));
    let before = wire_bytes(&link.device_ns, &link.device_if());
    let mut client = in_ns(&link.device_ns, "iperf3");
    client.args(["-c", &link.hub_ip, "-p", "5201", "-P", "4", "-J"]);
    client.args([
        "-O",
        &WARMUP_SECS.to_string(),
        "-t",
        &WINDOW_SECS.to_string(),
    ]);
    if reverse {
        client.arg("-R");
    }
    let out = client.output().expect("iperf3 client");
    let _ = server.wait();
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("iperf3 JSON");
    let bps = json["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or(0.0);
    (
        bps / 1e6,
        wire_bytes(&link.device_ns, &link.device_if()) - before,
    )
}

fn bandwidth_row(mbit: u32) {
    let link = Link::new();
    link.shape(mbit);
    let across = Across::link(&link);
    let sandbox = across.agent_sandbox(
        &format!("bandwidth_warmup_secs = {WARMUP_SECS}\nbandwidth_window_secs = {WINDOW_SECS}\nbandwidth_streams = 4\n"),
    );
    let before = wire_bytes(&link.device_ns, &link.device_if());
    let out = in_ns(&link.device_ns, bin("edge-agent"))
        .arg("--config")
        .arg(sandbox.config())
        .arg("measure")
        .env("NODEVICE_SELECT", "1")
        .output()
        .expect("edge-agent measure");
    let agent_bytes = wire_bytes(&link.device_ns, &link.device_if()) - before;
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("measure JSON");
    let b = &report["bandwidth"];
    let (down, up) = (
        b["down_mbps"].as_f64().unwrap_or(0.0),
        b["up_mbps"].as_f64().unwrap_or(0.0),
    );
    let (idown, ibytes_down) = iperf3(&link, true);
    let (iup, ibytes_up) = iperf3(&link, false);
    let err = |x: f64| (x - f64::from(mbit)) / f64::from(mbit) * 100.0;
    println!(
        "{:>4} Mb  {:>6.1} ({:+.1}%) / {:>5.1} ({:+.1}%)  {:>6.1} ({:+.1}%) / {:>5.1} ({:+.1}%)  {:>10.1}  {:>10.1}",
        mbit,
        down,
        err(down),
        up,
        err(up),
        idown,
        err(idown),
        iup,
        err(iup),
        agent_bytes as f64 / 1e6,
        (ibytes_down + ibytes_up) as f64 / 1e6,
    );
}

fn start_agent(sandbox: &Sandbox, ns: Option<&str>) -> Running {
    let mut notify = NotifySocket::bind_fresh(sandbox.dir.path());
    let child = sandbox.start_in(ns, &notify, &[]);
    assert!(
        notify.wait_for("READY=1", Duration::from_secs(60)),
        "agent not ready"
    );
    child
}

fn reporting_cost(window: u64) {
    let link = Link::new();
    let across = Across::link(&link);
    // Defaults for everything that costs: heartbeat 30 s, capability at start, job long-poll on.
    let reporting = Sandbox::new(&format!(
        "[network]\nhub_url = \"{}\"\nca_cert = \"{}\"\nowner_token = \"{}\"\nmeasure_bandwidth = false\n",
        across.url(),
        across.hub.ca().display(),
        across.hub.token
    ));
    let quiet = Sandbox::new("");
    let mut agents = [
        start_agent(&reporting, Some(&link.device_ns)),
        start_agent(&quiet, Some(&link.device_ns)),
    ];
    // Past registration and the first capability report: the steady state.
    std::thread::sleep(Duration::from_secs(10));
    let pids = [agents[0].id(), agents[1].id()];
    let cpu0 = pids.map(cpu_secs);
    let bytes0 = wire_bytes(&link.device_ns, &link.device_if());
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(window));
    let secs = t0.elapsed().as_secs_f64();
    let cpu = [cpu_secs(pids[0]) - cpu0[0], cpu_secs(pids[1]) - cpu0[1]];
    let bytes = wire_bytes(&link.device_ns, &link.device_if()) - bytes0;
    for agent in &mut agents {
        let _ = agent.kill();
        let _ = agent.wait();
    }
    let per_hour = 3600.0 / secs;
    println!(
        "\nreporting cost at the default intervals, {secs:.0} s steady-state window (extrapolated to an hour):"
    );
    println!(
        "  agent reporting to a hub:  {:.2} CPU s/h ({:.3}% of a core), {:.0} KB/h on the wire",
        cpu[0] * per_hour,
        cpu[0] / secs * 100.0,
        bytes as f64 * per_hour / 1e3
    );
    println!(
        "  same agent, no hub:        {:.2} CPU s/h ({:.3}% of a core)",
        cpu[1] * per_hour,
        cpu[1] / secs * 100.0
    );
}
