//! `edgectl` as a person meets it before any box answers: its commands, and clear refusals
//! (this also makes `cargo test --workspace` build the binary the end-to-end tests drive).

#![allow(
    clippy::tests_outside_test_module,
    reason = "an integration test crate: its tests need no test module"
)]

use std::process::Command;

fn edgectl(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_edgectl"))
        .arg("--config-dir")
        .arg(dir)
        .args(args)
        .output()
        .expect("run edgectl")
}

#[test]
fn help_lists_every_command() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = edgectl(dir.path(), &["--help"]);
    let text = String::from_utf8_lossy(&out.stdout);
    for command in [
        "pair",
        "status",
        "config",
        "wifi",
        "logs",
        "reboot",
        "unpair",
        "factory-reset",
    ] {
        assert!(text.contains(command), "{command} missing from:\n{text}");
    }
}

#[test]
fn without_a_paired_box_it_says_what_to_do_and_keeps_its_key_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let out = edgectl(dir.path(), &["status"]);
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("run `edgectl pair` first"), "{err}");
    let mode = std::fs::metadata(dir.path().join("owner.key"))
        .expect("the owner key was made")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

/// `edgectl --config-dir DIR ARGS` with `input` on its stdin.
fn edgectl_fed(dir: &std::path::Path, args: &[&str], input: &str) -> std::process::Output {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_edgectl"))
        .arg("--config-dir")
        .arg(dir)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run edgectl");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(input.as_bytes()).expect("write");
    drop(stdin);
    child.wait_with_output().expect("wait")
}

#[test]
fn the_setup_code_is_never_taken_on_the_command_line() {
    // Before, `--code` and `--qr` put the label's secret in /proc/*/cmdline and shell histories.
    let dir = tempfile::tempdir().expect("tempdir");
    for flag in ["--code", "--qr"] {
        let out = edgectl(dir.path(), &["pair", "--addr", "127.0.0.1:9", flag, "1234"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("unexpected argument"),
            "{flag}: {err}"
        );
    }
    let nothing = edgectl_fed(dir.path(), &["pair", "--addr", "127.0.0.1:9"], "");
    assert_eq!(nothing.status.code(), Some(64));
    let err = String::from_utf8_lossy(&nothing.stderr);
    assert!(err.contains("from stdin"), "{err}");
    let bad = edgectl_fed(
        dir.path(),
        &["pair", "--addr", "127.0.0.1:9"],
        "EDGE:1:zz:1\n",
    );
    assert_eq!(
        bad.status.code(),
        Some(64),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
}
