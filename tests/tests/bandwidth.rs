//! Bandwidth measurement against a link shaped with `tc tbf` in namespaces the test makes:
//! the figure must be within 10% of the shaped rate, both ways.

#![allow(
    clippy::tests_outside_test_module,
    reason = "an integration test crate: its tests need no test module"
)]

use std::time::Duration;

use edge_tests::NotifySocket;
use edge_tests::hub::{Across, eventually};
use edge_tests::netns::{Link, emulated, unavailable};

/// Runs `edge-agent measure` in the device namespace against a hub in the hub namespace, over a
/// link shaped to `mbit`; returns the bandwidth JSON. The hub serves its bandwidth tests to
/// registered devices only: the agent runs first, until it has registered.
pub fn measure_over(mbit: u32) -> serde_json::Value {
    let link = Link::new();
    link.shape(mbit);
    let across = Across::link(&link);
    let sandbox = across.agent_sandbox(
        "bandwidth_warmup_secs = 1\nbandwidth_window_secs = 4\nbandwidth_streams = 4\n",
    );
    let mut notify = NotifySocket::bind(sandbox.dir.path());
    let mut agent = sandbox.start_in(Some(&link.device_ns), &notify, &[]);
    assert!(
        notify.wait_for("READY=1", Duration::from_secs(120)),
        "{:?}",
        notify.seen
    );
    let registered = eventually(Duration::from_secs(60), || {
        (sandbox.status()["network"]["registered"] == true).then_some(())
    });
    let _ = agent.kill();
    let _ = agent.wait();
    assert!(
        registered.is_some(),
        "the agent did not register with the hub"
    );
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &link.device_ns])
        .arg(edge_tests::bin("edge-agent"))
        .arg("--config")
        .arg(sandbox.config())
        .arg("measure")
        .env("NODEVICE_SELECT", "1")
        .output()
        .expect("edge-agent measure");
    assert!(
        out.status.success(),
        "measure failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let ip = &report["ip"];
    assert_eq!(
        ip["public_ip"].as_str(),
        Some(link.device_ip.as_str()),
        "{ip}"
    );
    assert_eq!(ip["behind_nat"], false, "{ip}");
    report["bandwidth"].clone()
}

#[test]
fn measured_bandwidth_is_within_ten_percent_of_the_shaped_rate() {
    if let Some(why) = unavailable(&["ip", "tc"]) {
        eprintln!("SKIPPED measured_bandwidth_is_within_ten_percent_of_the_shaped_rate: {why}");
        return;
    }
    if emulated() {
        eprintln!(
            "SKIPPED measured_bandwidth_is_within_ten_percent_of_the_shaped_rate: under qemu-user \
             the emulated CPU, not the link, limits TLS throughput"
        );
        return;
    }
    // The link is shaped, but the debug-built agent and hub share two cores with whatever else
    // runs: a measurement outside the bound is taken once more, and both are printed.
    let errors = |bandwidth: &serde_json::Value, mbit: u32| -> Vec<(String, f64, f64)> {
        ["down_mbps", "up_mbps"]
            .iter()
            .map(|key| {
                let got = bandwidth[*key].as_f64().expect("figure");
                let error = (got - f64::from(mbit)).abs() / f64::from(mbit);
                eprintln!(
                    "shaped {mbit} Mbit/s: {key} {got:.1} (error {:.1}%)",
                    error * 100.0
                );
                ((*key).to_owned(), got, error)
            })
            .collect()
    };
    for mbit in [20u32, 100] {
        let mut bandwidth = measure_over(mbit);
        if errors(&bandwidth, mbit).iter().any(|(_, _, e)| *e > 0.10) {
            eprintln!("shaped {mbit} Mbit/s: outside 10%, measuring again");
            bandwidth = measure_over(mbit);
        }
        for (key, got, error) in errors(&bandwidth, mbit) {
            assert!(
                error <= 0.10,
                "{key} {got:.1} Mbit/s is not within 10% of the shaped {mbit}: {bandwidth}"
            );
        }
        assert!(bandwidth["warmup_ms"].as_u64() >= Some(900), "{bandwidth}");
    }
}
