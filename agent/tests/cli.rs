//! The command line as a user meets it. (Also makes `cargo test --workspace` build the
//! `edge-agent` binary, which the workspace end-to-end tests in `tests/` run.)

#![allow(
    clippy::tests_outside_test_module,
    reason = "an integration test crate: its tests need no test module"
)]

use std::process::Command;

fn agent(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_edge-agent"))
        .args(args)
        .output()
        .expect("run edge-agent");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn help_lists_the_commands() {
    let (code, out, _) = agent(&["--help"]);
    assert_eq!(code, 0);
    for command in ["run", "check", "info", "id", "status", "run-job"] {
        assert!(out.contains(command), "{command} missing from:\n{out}");
    }
    // The GPU worker is its own binary now, not a hidden command of the daemon.
    assert!(!out.contains("gpu-worker"), "{out}");
}

#[test]
fn an_unknown_flag_is_a_usage_error_not_a_config_error() {
    let (code, _, err) = agent(&["--colour"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--colour"), "{err}");
}

#[test]
fn a_missing_explicit_config_exits_64_naming_it() {
    let (code, _, err) = agent(&["--config", "/nonexistent/edge.toml", "check"]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("/nonexistent/edge.toml: cannot read"), "{err}");
}

#[test]
fn info_discovers_the_gpu_through_the_worker_beside_the_agent() {
    let (code, out, err) = agent(&["info"]);
    assert_eq!(code, 0, "{err}");
    let info: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    let lavapipe = format!(
        "/usr/share/vulkan/icd.d/lvp_icd.{}.json",
        std::env::consts::ARCH
    );
    if std::path::Path::new(&lavapipe).exists() {
        assert_eq!(info["gpu"]["status"], "available", "{info}");
    } else {
        assert_eq!(info["gpu"]["status"], "unavailable", "{info}");
    }
}

#[test]
fn run_job_prints_a_receipt_that_verifies_or_says_what_is_wrong() {
    let lavapipe = format!(
        "/usr/share/vulkan/icd.d/lvp_icd.{}.json",
        std::env::consts::ARCH
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!("agent.state_dir = \"{}/state\"\n", dir.path().display()),
    )
    .expect("config");
    let config = config.to_str().expect("utf-8");

    let bad = dir.path().join("job.json");
    std::fs::write(&bad, "{\"version\": 1,\n \"id\": 5}").expect("job");
    let (code, _, err) = agent(&["--config", config, "run-job", bad.to_str().expect("utf-8")]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("job.json: job is not valid: line 2"), "{err}");
    let (code, _, err) = agent(&["--config", config, "run-job", "builtin:sgemm:100"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("m must be a positive multiple of 64, not 100"),
        "{err}"
    );

    if !std::path::Path::new(&lavapipe).exists() {
        eprintln!("SKIPPED (GPU part): {lavapipe} missing; install mesa-vulkan-drivers");
        return;
    }
    let out = dir.path().join("out.bin");
    let (code, receipt, err) = agent(&[
        "--config",
        config,
        "run-job",
        "builtin:hash_chain:256",
        "--output",
        out.to_str().expect("utf-8"),
    ]);
    assert_eq!(code, 0, "{err}");
    let receipt: edge_jobs::receipt::Receipt =
        serde_json::from_str(&receipt).expect("receipt JSON");
    edge_jobs::receipt::verify(&receipt).expect("receipt verifies");
    let bytes = std::fs::read(&out).expect("outputs written");
    assert_eq!(
        edge_jobs::digest::Sha256::of(&bytes),
        receipt.body.what.output_sha256
    );
    assert_eq!(
        edge_jobs::kernels::u32s(&bytes),
        edge_jobs::kernels::hash_chain_reference(0x5eed, 1000, 256)
    );
}

#[test]
fn sandbox_names_the_worker_socket_it_cannot_reach_and_a_relative_one_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("edge.toml");
    let write = |socket: &str| {
        std::fs::write(
            &config,
            format!(
                "[agent]\nstate_dir = \"{0}\"\nidentity_key = \"file://{0}/identity.key\"\n\
                 [status]\nsocket = \"\"\n[gpu]\nworker_socket = \"{socket}\"\n",
                dir.path().display()
            ),
        )
        .expect("config");
    };
    let config = config.to_str().expect("utf-8");
    write("/nonexistent/worker.sock");
    let (code, out, err) = agent(&["--config", config, "sandbox"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("cannot reach the GPU worker at /nonexistent/worker.sock"),
        "{err}"
    );
    write("run/worker.sock");
    let (code, _, err) = agent(&["--config", config, "sandbox"]);
    assert_eq!(code, 64, "{err}");
    assert!(
        err.contains("gpu.worker_socket") && err.contains("absolute"),
        "{err}"
    );
}
