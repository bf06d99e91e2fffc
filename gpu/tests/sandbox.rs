//! The GPU worker's confinement, seen from inside the worker (`edge-gpu-worker sandbox`, started
//! as the agent starts it): before this, a shader that reached a driver bug ran as the agent's
//! user with every capability, could read the identity key, open sockets into the owner's LAN and
//! trace the agent.

#![allow(
    clippy::tests_outside_test_module,
    reason = "an integration test crate: its tests need no test module"
)]

use std::path::{Path, PathBuf};

use edge_gpu::sandbox::{ADDRESS_SPACE, OPEN_FILES};
use edge_hal::gpu::WORKER_ENV;

fn worker() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_edge-gpu-worker"))
}

/// Under qemu-user (the aarch64 tests on an x86 host) seccomp and Landlock are not emulated: the
/// worker there runs unconfined, and says so.
fn emulated() -> bool {
    cfg!(target_arch = "aarch64")
        && std::fs::read_to_string("/proc/cpuinfo")
            .is_ok_and(|c| c.contains("GenuineIntel") || c.contains("AuthenticAMD"))
}

#[test]
fn the_worker_cannot_read_the_key_open_a_socket_or_trace_the_agent() {
    if emulated() {
        eprintln!(
            "SKIPPED the_worker_cannot_read_the_key_open_a_socket_or_trace_the_agent: qemu-user \
             emulates neither seccomp nor Landlock (the image's boot test checks the arm64 worker)"
        );
        return;
    }
    let state = tempfile::tempdir().expect("state dir");
    let key = state.path().join("identity.key");
    std::fs::write(&key, "not really a key").expect("key");
    let blobs = state.path().join("blobs");
    std::fs::create_dir(&blobs).expect("blobs");
    let out = edge_hal::gpu::worker_command(worker().as_os_str())
        .args(["sandbox", "--blobs"])
        .arg(&blobs)
        .arg("--probe")
        .arg(&key)
        .output()
        .expect("run the worker");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("report JSON");
    assert_eq!(report["seccomp"], 2, "a seccomp filter: {report}");
    assert_eq!(report["no_new_privs"], 1, "{report}");
    assert_eq!(
        report["confined"],
        serde_json::json!({"landlock": "fully", "seccomp": "fully"}),
        "{report}"
    );
    for refused in ["open_probe", "socket_inet", "ptrace_parent"] {
        let outcome = report[refused].as_str().expect("outcome");
        assert!(outcome.starts_with("refused"), "{refused}: {report}");
    }
    assert_eq!(
        report["rlimits"],
        serde_json::json!([0, OPEN_FILES, ADDRESS_SPACE]),
        "no core dumps, bounded files and address space: {report}"
    );
    // The test's own environment (PATH at least) did not reach it.
    for name in report["env"].as_array().expect("env") {
        let name = name.as_str().expect("name");
        assert!(
            WORKER_ENV
                .iter()
                .any(|allowed| name == *allowed
                    || (allowed.ends_with('_') && name.starts_with(allowed))),
            "{name} reached the worker: {report}"
        );
    }
}

#[test]
fn the_blobs_stay_readable_and_the_rest_of_the_state_dir_does_not() {
    if emulated() {
        eprintln!(
            "SKIPPED the_blobs_stay_readable_and_the_rest_of_the_state_dir_does_not: qemu-user"
        );
        return;
    }
    let state = tempfile::tempdir().expect("state dir");
    let blobs = state.path().join("blobs");
    std::fs::create_dir(&blobs).expect("blobs");
    let blob = blobs.join("inputs");
    std::fs::write(&blob, [7u8; 16]).expect("blob");
    assert_eq!(probe(&blobs, &blob)["open_probe"], "allowed");
}

/// The report of a worker confined with `blobs` that tried to open `file`.
fn probe(blobs: &Path, file: &Path) -> serde_json::Value {
    let out = edge_hal::gpu::worker_command(worker().as_os_str())
        .args(["sandbox", "--blobs"])
        .arg(blobs)
        .arg("--probe")
        .arg(file)
        .output()
        .expect("run the worker");
    serde_json::from_slice(&out.stdout).expect("report JSON")
}

#[test]
fn of_etc_and_dev_the_worker_opens_only_what_a_driver_needs() {
    if emulated() {
        eprintln!("SKIPPED of_etc_and_dev_the_worker_opens_only_what_a_driver_needs: qemu-user");
        return;
    }
    let blobs = tempfile::tempdir().expect("blobs");
    // Secrets under /etc (here the password hashes; on the box Wi-Fi keyfiles and the fleet's
    // config), and devices that are not the GPU (here a memory device; on the box the disk).
    for file in ["/etc/shadow", "/etc/hostname", "/dev/zero", "/dev/full"] {
        if !Path::new(file).exists() {
            continue;
        }
        let report = probe(blobs.path(), Path::new(file));
        let outcome = report["open_probe"].as_str().expect("outcome");
        assert!(outcome.starts_with("refused"), "{file}: {report}");
    }
    // What the Vulkan loader reads stays readable.
    let report = probe(blobs.path(), Path::new("/etc/ld.so.cache"));
    assert_eq!(report["open_probe"], "allowed", "{report}");
}
