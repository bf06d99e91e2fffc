//! GPU discovery against the real Vulkan loader, in child processes: the loader reads
//! `VK_ICD_FILENAMES` once per process, so each case runs this test binary again with its own
//! environment and reads the answer from the child's stdout.

use std::path::PathBuf;
use std::process::Command;

use edge_hal::{GpuProbe, GpuStatus, WgpuProbe};

const MARK: &str = "GPU-STATUS ";

/// Not a test: the body of the child process (run with `--ignored --exact`).
#[test]
#[ignore = "helper run in a child process by the tests below"]
fn probe_in_child() {
    let status = WgpuProbe::default().discover();
    println!("{MARK}{}", serde_json::to_string(&status).expect("json"));
}

fn discover_with_icd(icd: &str) -> serde_json::Value {
    let out = Command::new(std::env::current_exe().expect("test binary"))
        .args(["--ignored", "--exact", "probe_in_child", "--nocapture"])
        .env("VK_ICD_FILENAMES", icd)
        .env("NODEVICE_SELECT", "1")
        .output()
        .expect("run child");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "child failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout
        .lines()
        .find_map(|l| l.split_once(MARK).map(|(_, json)| json.to_owned()))
        .unwrap_or_else(|| panic!("no status line in child output:\n{stdout}"));
    serde_json::from_str(&line).expect("status json")
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
    let status = GpuStatus::Unavailable { reason: "x".into() };
    assert_eq!(
        serde_json::to_value(&status).expect("json"),
        serde_json::json!({"status": "unavailable", "reason": "x"})
    );
}
