//! GPU discovery as the agent runs it: the real `edge-gpu-worker probe` binary against the real
//! Vulkan loader (which reads `VK_ICD_FILENAMES` once per process, so each case is its own child).

#![allow(
    clippy::tests_outside_test_module,
    reason = "an integration test crate: its tests need no test module"
)]

use std::path::PathBuf;
use std::process::Command;

fn discover_with_icd(icd: &str) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_edge-gpu-worker"))
        .arg("probe")
        .env("VK_ICD_FILENAMES", icd)
        .env("NODEVICE_SELECT", "1")
        .output()
        .expect("run edge-gpu-worker probe");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "probe failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).expect("one GPU status as JSON")
}

#[test]
fn no_driver_is_reported_as_no_gpu_with_a_reason() {
    let status = discover_with_icd("/nonexistent.json");
    assert_eq!(status["status"], "unavailable", "{status}");
    let reason = status["reason"].as_str().expect("reason");
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
    let status = discover_with_icd(icd.to_str().expect("utf-8 path"));
    assert_eq!(status["status"], "available", "{status}");
    assert_eq!(status["backend"], "vulkan", "{status}");
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
}

#[test]
fn unavailable_status_serialises_with_its_reason() {
    let status = edge_jobs::adapter::GpuStatus::Unavailable { reason: "x".into() };
    assert_eq!(
        serde_json::to_value(&status).expect("json"),
        serde_json::json!({"status": "unavailable", "reason": "x"})
    );
}
