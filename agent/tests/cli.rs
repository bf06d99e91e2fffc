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
