//! Time from `edgectl pair` start to an authenticated status reply, on loopback, with the release
//! binaries: pair, then `status` over a fresh session; next to `status` alone (session handshake
//! and one request) in the same run. Prints figures; asserts nothing about time.
//!
//!     cargo build --release -p edge-agent -p edgectl && cargo bench -p edge-tests --bench pairing

use std::process::Command;
use std::time::{Duration, Instant};

use edge_tests::{NotifySocket, Sandbox, bin};

const ROUNDS: u32 = 10;

/// `edgectl --config-dir DIR ARGS`, with `stdin` fed to it.
fn edgectl(dir: &std::path::Path, args: &[&str], stdin: &str) {
    let out = edge_tests::output_with_stdin(
        Command::new(bin("edgectl"))
            .arg("--config-dir")
            .arg(dir)
            .args(args),
        stdin,
    );
    assert!(
        out.status.success(),
        "edgectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn main() {
    let port = edge_tests::free_port();
    let addr = format!("127.0.0.1:{port}");
    let sandbox = Sandbox::new(&format!("[pairing]\nlisten = \"{addr}\"\n"));
    let mut notify = NotifySocket::bind(sandbox.dir.path());
    let mut agent = sandbox.start(&notify, &[]);
    assert!(notify.wait_for("READY=1", Duration::from_secs(60)));
    let out = sandbox
        .agent(&["pairing-code", "--json"])
        .output()
        .expect("code");
    let code: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let qr = code["qr_payload"].as_str().expect("qr").to_owned();

    let (mut pair_total, mut pair_max, mut status_total) =
        (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    for _ in 0..ROUNDS {
        let owner = tempfile::tempdir().expect("tempdir");
        let t = Instant::now();
        edgectl(owner.path(), &["pair", "--addr", &addr], &qr);
        edgectl(owner.path(), &["status"], "");
        let took = t.elapsed();
        pair_total += took;
        pair_max = pair_max.max(took);
        let t = Instant::now();
        edgectl(owner.path(), &["status"], "");
        status_total += t.elapsed();
        edgectl(owner.path(), &["unpair"], "");
    }
    let _ = agent.kill();
    let _ = agent.wait();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "edgectl on loopback, release build, {ROUNDS} rounds (each a new owner; unpaired between):"
    );
    println!(
        "  status alone (process start, session handshake, one request)  {:>7.1} ms",
        ms(status_total / ROUNDS)
    );
    println!(
        "  pair, then status: start to authenticated reply              {:>7.1} ms mean, {:.1} ms worst",
        ms(pair_total / ROUNDS),
        ms(pair_max)
    );
}
