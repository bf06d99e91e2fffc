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

#[test]
fn pair_needs_a_qr_payload_or_a_code_with_a_device() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = edgectl(
        dir.path(),
        &["pair", "--addr", "127.0.0.1:9", "--code", "1234"],
    );
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--code with --device"), "{err}");
    let bad = edgectl(
        dir.path(),
        &["pair", "--addr", "127.0.0.1:9", "--qr", "EDGE:1:zz:1"],
    );
    assert_eq!(
        bad.status.code(),
        Some(64),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
}
