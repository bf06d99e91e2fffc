//! The command line as a user meets it. (Also makes `cargo test --workspace` build the
//! `edge-agent` binary, which the workspace end-to-end tests in `tests/` run.)

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
fn help_lists_the_commands_and_hides_the_internal_ones() {
    let (code, out, _) = agent(&["--help"]);
    assert_eq!(code, 0);
    for command in ["run", "check", "info", "id", "status"] {
        assert!(out.contains(command), "{command} missing from:\n{out}");
    }
    assert!(!out.contains("probe-gpu"), "internal command shown:\n{out}");
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
fn probe_gpu_answers_one_json_status() {
    let (code, out, _) = agent(&["probe-gpu"]);
    assert_eq!(code, 0);
    let status: serde_json::Value = serde_json::from_str(out.trim()).expect("one JSON line");
    assert!(
        status["status"] == "available" || status["status"] == "unavailable",
        "{status}"
    );
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
    let receipt: edge_gpu::receipt::Receipt = serde_json::from_str(&receipt).expect("receipt JSON");
    edge_gpu::receipt::verify(&receipt).expect("receipt verifies");
    let bytes = std::fs::read(&out).expect("outputs written");
    assert_eq!(
        edge_gpu::digest::Sha256::of(&bytes),
        receipt.body.what.output_sha256
    );
    assert_eq!(
        edge_gpu::kernels::u32s(&bytes),
        edge_gpu::kernels::hash_chain_reference(0x5eed, 1000, 256)
    );
}
