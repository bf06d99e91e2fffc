//! GPU discovery as the agent runs it: the real `edge-gpu-worker hello` binary against the real
//! Vulkan loader (which reads `VK_ICD_FILENAMES` once per process, so each case is its own child),
//! and the same line at the start of `serve`.

#![allow(
    clippy::tests_outside_test_module,
    reason = "an integration test crate: its tests need no test module"
)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// The first line `edge-gpu-worker MODE` writes with this loader configuration, as JSON.
fn first_line(mode: &str, icd: &str) -> serde_json::Value {
    let mut child = Command::new(env!("CARGO_BIN_EXE_edge-gpu-worker"))
        .args(mode.split(' '))
        .env("VK_ICD_FILENAMES", icd)
        .env("NODEVICE_SELECT", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run edge-gpu-worker");
    let mut line = String::new();
    let stdout = child.stdout.take().expect("stdout");
    BufReader::new(stdout).read_line(&mut line).expect("read");
    // Closing its input ends `serve`; `hello` has exited already.
    drop(child.stdin.take());
    let status = child.wait().expect("wait");
    assert!(
        status.success(),
        "edge-gpu-worker {mode}: {status}; said {line}"
    );
    serde_json::from_str(line.trim()).expect("one JSON line")
}

#[test]
fn no_driver_is_reported_as_no_gpu_with_a_reason() {
    let hello = first_line("hello", "/nonexistent.json");
    let reason = hello["no_gpu"]["reason"]
        .as_str()
        .expect("no_gpu with a reason");
    assert!(reason.contains("no Vulkan adapter"), "{reason}");
    assert!(reason.contains("/nonexistent.json"), "{reason}");
}

#[test]
fn lavapipe_is_found_when_mesa_is_installed() {
    let icd = PathBuf::from(format!(
        "/usr/share/vulkan/icd.d/lvp_icd.{}.json",
        std::env::consts::ARCH
    ));
    if !icd.exists() {
        // Loud, not silent: .ci/run installs mesa-vulkan-drivers, so this only shows on a machine
        // set up by hand.
        eprintln!(
            "SKIPPED lavapipe_is_found_when_mesa_is_installed: {} is missing; install mesa-vulkan-drivers (see cross/README.md)",
            icd.display()
        );
        return;
    }
    let icd = icd.to_str().expect("utf-8 path");
    let hello = first_line("hello", icd);
    let status = &hello["ready"]["gpu"];
    assert_eq!(status["backend"], "vulkan", "{hello}");
    assert_eq!(status["device_type"], "cpu", "{status}");
    assert!(
        status["name"].as_str().expect("name").contains("llvmpipe"),
        "{status}"
    );
    assert!(
        status["limits"]["max_storage_buffer_binding_size"]
            .as_u64()
            .expect("limit")
            >= 1 << 27,
        "{status}"
    );
    // The worker that runs jobs starts with the same line: jobs are checked against the limits
    // of the adapter they run on.
    let tmp = std::env::temp_dir();
    let serving = first_line(&format!("serve --blobs {}", tmp.display()), icd);
    assert_eq!(serving, hello);
}

#[test]
fn unavailable_status_serialises_with_its_reason() {
    let status = edge_jobs::adapter::GpuStatus::Unavailable { reason: "x".into() };
    assert_eq!(
        serde_json::to_value(&status).expect("json"),
        serde_json::json!({"status": "unavailable", "reason": "x"})
    );
}
