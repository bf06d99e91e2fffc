//! The `edge-agent` binary end to end: systemd notify protocol, status, signals, exit codes.

#![allow(
    clippy::tests_outside_test_module,
    reason = "an integration test crate: its tests need no test module"
)]

use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;
use std::time::{Duration, Instant};

use edge_tests::{NotifySocket, Sandbox, wait_exit};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Generous: under qemu-user the Vulkan probe alone takes seconds.
const START: Duration = Duration::from_secs(120);

fn stdout(cmd: &mut std::process::Command) -> (i32, String, String) {
    let out = cmd.output().expect("run edge-agent");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn ready_status_watchdog_then_clean_stop_on_sigterm() {
    let sandbox = Sandbox::new("");
    let mut notify = NotifySocket::bind(sandbox.dir.path());
    let mut agent = sandbox.start(&notify, &[("WATCHDOG_USEC", "1000000")]);

    assert!(
        notify.wait_for("READY=1", START),
        "no READY=1; got {:?}",
        notify.seen
    );
    assert!(
        notify
            .seen
            .iter()
            .any(|l| l.starts_with("STATUS=running: device ")),
        "{:?}",
        notify.seen
    );
    assert!(
        notify.wait_for("WATCHDOG=1", Duration::from_secs(10)),
        "{:?}",
        notify.seen
    );

    let (code, body, err) = stdout(&mut sandbox.agent(&["status"]));
    assert_eq!(code, 0, "status failed: {err}");
    let status: serde_json::Value = serde_json::from_str(&body).expect("status is JSON");
    let device_id = status["device_id"].as_str().expect("device_id");
    assert_eq!(device_id.len(), 32, "{status}");
    assert!(
        status["hardware"]["system"]["memory_total_bytes"].as_u64() > Some(0),
        "{status}"
    );
    assert!(
        status["hardware"]["interfaces"]
            .as_array()
            .expect("interfaces")
            .iter()
            .any(|i| i["name"] == "lo"),
        "{status}"
    );
    // The GPU is probed in a child process; with lavapipe installed it must be found.
    let lavapipe = format!(
        "/usr/share/vulkan/icd.d/lvp_icd.{}.json",
        std::env::consts::ARCH
    );
    if std::path::Path::new(&lavapipe).exists() {
        assert_eq!(status["gpu"]["status"], "available", "{status}");
    } else {
        eprintln!("NOTE: {lavapipe} missing; only checking that /status reports the GPU at all");
        assert!(status["gpu"]["status"].is_string(), "{status}");
    }

    let (code, metrics, _) = stdout(&mut sandbox.agent(&["status", "--metrics"]));
    assert_eq!(code, 0);
    assert!(
        metrics.contains(&format!("device_id=\"{device_id}\"")),
        "{metrics}"
    );
    assert!(
        metrics.contains("edge_host_network_receive_bytes_total{interface=\"lo\"}"),
        "{metrics}"
    );

    let (_, id, _) = stdout(&mut sandbox.agent(&["id"]));
    assert_eq!(id.trim(), device_id, "`id` and `/status` agree");

    let stop = Instant::now();
    kill(Pid::from_raw(agent.id() as i32), Signal::SIGTERM).expect("SIGTERM");
    let exit = wait_exit(&mut agent, Duration::from_secs(5 + 10));
    assert_eq!(exit.code(), Some(0), "clean stop exits 0");
    assert!(
        notify.wait_for("STOPPING=1", Duration::from_secs(1)),
        "{:?}",
        notify.seen
    );
    eprintln!("stopped {:?} after SIGTERM", stop.elapsed());
    assert!(
        !sandbox.dir.path().join("status.sock").exists(),
        "socket removed on exit"
    );
}

#[test]
fn a_second_agent_on_the_same_state_dir_is_refused() {
    let sandbox = Sandbox::new("");
    let mut notify = NotifySocket::bind(sandbox.dir.path());
    let mut first = sandbox.start(&notify, &[]);
    assert!(notify.wait_for("READY=1", START), "{:?}", notify.seen);

    let (code, _, err) = stdout(&mut sandbox.agent(&["run"]));
    assert_eq!(code, 75, "{err}");
    assert!(
        err.contains(&format!(
            "in use by another edge-agent (pid {})",
            first.id()
        )),
        "{err}"
    );

    kill(Pid::from_raw(first.id() as i32), Signal::SIGINT).expect("SIGINT");
    assert_eq!(
        wait_exit(&mut first, Duration::from_secs(15)).code(),
        Some(0)
    );
}

#[test]
fn bad_config_exits_64_listing_every_problem() {
    let sandbox = Sandbox::new("[telemetry]\nhub = 1\n");
    std::fs::create_dir(sandbox.dir.path().join("config.d")).expect("mkdir");
    std::fs::write(
        sandbox.dir.path().join("config.d/50-local.toml"),
        "agent.sample_interval_secs = \"often\"\nstatus.tcp = \"192.0.2.1:80\"\n",
    )
    .expect("write drop-in");
    let (code, _, err) = stdout(&mut sandbox.agent(&["run"]));
    assert_eq!(code, 64, "{err}");
    for want in [
        "3 problems",
        "config.toml: telemetry: unknown key",
        "50-local.toml: agent.sample_interval_secs: expected whole seconds",
        "50-local.toml: status.tcp: 192.0.2.1:80 is not a loopback address",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
    assert!(
        !sandbox.state().exists(),
        "a refused config creates nothing"
    );
}

#[test]
fn a_world_readable_key_stops_the_agent_with_65_naming_the_file() {
    let sandbox = Sandbox::new("");
    let (code, _, err) = stdout(&mut sandbox.agent(&["id"]));
    assert_eq!(code, 0, "{err}");
    let key = sandbox.state().join("identity.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let (code, _, err) = stdout(&mut sandbox.agent(&["--log-format", "json", "run"]));
    assert_eq!(code, 65, "{err}");
    assert!(
        err.contains(&key.display().to_string()) && err.contains("0644"),
        "{err}"
    );
    // Logs as JSON on request: the error is also a structured log line.
    let logged = err
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["level"] == "ERROR")
        .unwrap_or_else(|| panic!("no JSON error line in:\n{err}"));
    assert!(
        logged["fields"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("0644")),
        "{logged}"
    );

    let (code, out, _) = stdout(&mut sandbox.agent(&["check"]));
    assert_eq!(code, 1, "check fails on a refused key:\n{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("FAIL  identity") && l.contains("0644")),
        "{out}"
    );
}

#[test]
fn two_agents_making_the_key_at_once_end_with_one_key() {
    for round in 0..5 {
        let sandbox = Sandbox::new("");
        let children: Vec<_> = (0..2)
            .map(|_| {
                sandbox
                    .agent(&["id"])
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .expect("spawn")
            })
            .collect();
        let ids: Vec<String> = children
            .into_iter()
            .map(|c| {
                let out = c.wait_with_output().expect("wait");
                assert!(
                    out.status.success(),
                    "{}",
                    String::from_utf8_lossy(&out.stderr)
                );
                String::from_utf8_lossy(&out.stdout).trim().to_owned()
            })
            .collect();
        assert_eq!(ids[0], ids[1], "round {round}: two identities were made");
        let files: Vec<_> = std::fs::read_dir(sandbox.state())
            .expect("state dir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(files, ["identity.key"], "round {round}: stray files");
    }
}

/// Polls `/status` until `capability` is set, for at most `within`.
fn wait_for_capability(sandbox: &Sandbox, within: Duration) -> serde_json::Value {
    let deadline = Instant::now() + within;
    loop {
        let (code, body, err) = stdout(&mut sandbox.agent(&["status"]));
        assert_eq!(code, 0, "{err}");
        let status: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        if !status["capability"].is_null() {
            return status["capability"].clone();
        }
        assert!(
            Instant::now() < deadline,
            "no capability after {within:?}: {status}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// A worker socket served as systemd's `edge-gpu-worker.socket` (`Accept=yes`) serves it: each
/// connection a fresh `edge-gpu-worker serve` with the connection as its stdin and stdout. The
/// connections numbered in `refuse` (from 0) are closed at once, as by a worker that failed to
/// start. Returns the count of connections so far.
fn worker_socket(
    socket: &std::path::Path,
    blobs: &std::path::Path,
    refuse: &'static [usize],
) -> std::sync::Arc<std::sync::atomic::AtomicUsize> {
    use std::os::fd::OwnedFd;
    let listener = std::os::unix::net::UnixListener::bind(socket).expect("bind the worker socket");
    let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = count.clone();
    let blobs = blobs.to_owned();
    std::thread::spawn(move || {
        for (n, stream) in listener.incoming().enumerate() {
            let Ok(stream) = stream else { return };
            seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            if refuse.contains(&n) {
                continue;
            }
            let out = stream.try_clone().expect("dup the connection");
            let mut worker = std::process::Command::new(edge_tests::bin("edge-gpu-worker"))
                .args(["serve", "--blobs"])
                .arg(&blobs)
                .stdin(Stdio::from(OwnedFd::from(stream)))
                .stdout(Stdio::from(OwnedFd::from(out)))
                .env("NODEVICE_SELECT", "1")
                .spawn()
                .expect("start edge-gpu-worker");
            std::thread::spawn(move || worker.wait());
        }
    });
    count
}

fn lavapipe_missing() -> bool {
    let lavapipe = format!(
        "/usr/share/vulkan/icd.d/lvp_icd.{}.json",
        std::env::consts::ARCH
    );
    let missing = !std::path::Path::new(&lavapipe).exists();
    if missing {
        eprintln!("SKIPPED: {lavapipe} missing; install mesa-vulkan-drivers");
    }
    missing
}

#[test]
fn a_capability_measurement_that_fails_is_tried_again_until_it_succeeds() {
    if lavapipe_missing() {
        return;
    }
    let sockets = tempfile::tempdir().expect("tempdir");
    let socket = sockets.path().join("worker.sock");
    let blobs = sockets.path().join("blobs");
    std::fs::create_dir(&blobs).expect("blobs");
    // Connection 0 is the GPU probe at start; 1, the benchmark's first worker, fails.
    let connections = worker_socket(&socket, &blobs, &[1]);
    let sandbox = Sandbox::with_benchmark(
        &format!("worker_socket = {:?}\n", socket.display().to_string()),
        true,
    );
    let mut notify = NotifySocket::bind_fresh(sandbox.dir.path());
    let mut agent = sandbox.start(&notify, &[]);
    assert!(notify.wait_for("READY=1", START), "{:?}", notify.seen);
    let measured = wait_for_capability(&sandbox, Duration::from_secs(300));
    assert!(
        measured["sgemm_gflops"].as_f64().is_some_and(|v| v > 0.0),
        "{measured}"
    );
    let n = connections.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        n >= 3,
        "{n} connections: a worker after the one that failed"
    );
    kill(Pid::from_raw(agent.id() as i32), Signal::SIGTERM).expect("SIGTERM");
    assert_eq!(
        wait_exit(&mut agent, Duration::from_secs(15)).code(),
        Some(0)
    );
}

#[test]
fn the_gpu_capability_is_measured_once_and_then_cached() {
    if lavapipe_missing() {
        return;
    }
    let sandbox = Sandbox::with_benchmark("", true);
    let start = || {
        let mut notify = NotifySocket::bind_fresh(sandbox.dir.path());
        let agent = sandbox.start(&notify, &[]);
        assert!(notify.wait_for("READY=1", START), "{:?}", notify.seen);
        agent
    };
    let mut agent = start();
    let measured = wait_for_capability(&sandbox, Duration::from_secs(600));
    for figure in [
        "fp32_peak_gflops",
        "sgemm_gflops",
        "memory_bandwidth_gbps",
        "dispatch_round_trip_us",
    ] {
        assert!(
            measured[figure].as_f64().is_some_and(|v| v > 0.0),
            "{figure}: {measured}"
        );
    }
    let (_, metrics, _) = stdout(&mut sandbox.agent(&["status", "--metrics"]));
    assert!(
        metrics.contains("edge_gpu_capability{measure=\"sgemm_gflops\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("edge_gpu_jobs_total{outcome=\"done\"}"),
        "{metrics}"
    );
    kill(Pid::from_raw(agent.id() as i32), Signal::SIGTERM).expect("SIGTERM");
    assert_eq!(
        wait_exit(&mut agent, Duration::from_secs(15)).code(),
        Some(0)
    );
    assert!(sandbox.state().join("capability.json").exists());

    // Restarted with the same agent and driver: the figures come from the cache, unchanged.
    let mut agent = start();
    let cached = wait_for_capability(&sandbox, Duration::from_secs(30));
    assert_eq!(cached, measured);
    kill(Pid::from_raw(agent.id() as i32), Signal::SIGTERM).expect("SIGTERM");
    assert_eq!(
        wait_exit(&mut agent, Duration::from_secs(15)).code(),
        Some(0)
    );
}
