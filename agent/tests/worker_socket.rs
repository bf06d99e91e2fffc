//! The GPU worker reached through a socket, as on the box: there an unprivileged agent cannot start
//! a process as another user, so the service manager starts one worker per connection under a unit
//! of its own (`images/rootfs/edge-gpu-worker.socket`). Here `systemd-socket-activate --accept
//! --inetd` plays the service manager, with the real worker on lavapipe.

#![allow(
    clippy::tests_outside_test_module,
    reason = "an integration test crate: its tests need no test module"
)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use edge_agent::gpu::worker::{GpuWorker, prepare};
use edge_hal::gpu::WorkerLaunch;
use edge_hal::{GpuProbe, IsolatedProbe};
use edge_jobs::adapter::GpuStatus;
use edge_jobs::kernels;
use edge_jobs::worker::Submitted;

/// The service manager's part: workers started on connections to `socket`.
struct Activator {
    child: Child,
    socket: PathBuf,
    dir: tempfile::TempDir,
}

impl Drop for Activator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Activator {
    /// The workers it has running now.
    fn workers(&self) -> Vec<u32> {
        let pid = self.child.id();
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    }

    fn launch(&self) -> WorkerLaunch {
        WorkerLaunch::Socket(self.socket.clone())
    }
}

/// Under qemu-user (the aarch64 tests on an x86 host) the worker runs unconfined, and says so.
fn emulated() -> bool {
    cfg!(target_arch = "aarch64")
        && std::fs::read_to_string("/proc/cpuinfo")
            .is_ok_and(|c| c.contains("GenuineIntel") || c.contains("AuthenticAMD"))
}

/// `None` (said loudly) where there is no GPU to test with; a missing activator fails.
fn activator() -> Option<Activator> {
    let worker = edge_hal::gpu::worker_beside(Path::new(env!("CARGO_BIN_EXE_edge-agent")));
    if let GpuStatus::Unavailable { reason } = IsolatedProbe::worker(&worker).discover() {
        eprintln!("SKIPPED: no Vulkan driver ({reason}); install mesa-vulkan-drivers");
        return None;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("worker.sock");
    let child = Command::new("systemd-socket-activate")
        .arg("--accept")
        .arg("--inetd")
        .arg("-l")
        .arg(&socket)
        .arg(&worker)
        .args(["serve", "--blobs"])
        .arg(dir.path().join("blobs"))
        .env_clear()
        .env("NODEVICE_SELECT", "1")
        .stderr(Stdio::null())
        .spawn()
        .expect("systemd-socket-activate (the systemd package) runs");
    let started = Instant::now();
    while !socket.exists() {
        assert!(started.elapsed() < Duration::from_secs(10), "no socket");
        std::thread::sleep(Duration::from_millis(20));
    }
    Some(Activator { child, socket, dir })
}

#[tokio::test]
async fn through_its_socket_the_worker_is_found_runs_jobs_and_reports_its_confinement() {
    let Some(activator) = activator() else { return };
    let probe = IsolatedProbe {
        launch: activator.launch(),
        timeout: Duration::from_secs(30),
    };
    assert!(
        matches!(probe.discover(), GpuStatus::Available(_)),
        "discovery through the socket"
    );

    let mut worker = GpuWorker::new(activator.launch());
    let key = activator.dir.path().join("identity.key");
    std::fs::write(&key, "not really a key").expect("key");
    let report = worker.sandbox_report(&key).await.expect("a report");
    if emulated() {
        eprintln!(
            "SKIPPED the confinement half of this test: qemu-user emulates neither seccomp nor \
             Landlock (the image's boot test checks the arm64 worker); got {report}"
        );
    } else {
        assert_eq!(report["seccomp"], 2, "{report}");
        for refused in ["open_probe", "socket_inet", "ptrace_parent"] {
            let outcome = report[refused].as_str().expect("outcome");
            assert!(outcome.starts_with("refused"), "{refused}: {report}");
        }
    }
    // The same worker then runs a job.
    let job = kernels::hash_chain(7, 10, 64).expect("job");
    let prepared = prepare(&Submitted { job, outputs: true }).expect("prepared");
    worker.send(&[&prepared], 256 << 20).await.expect("sent");
    let finished = worker
        .answer(tokio::time::Instant::now(), prepared.limit, 1 << 20)
        .await
        .expect("done");
    assert_eq!(
        finished.outputs.concat(),
        kernels::hash_chain_reference(7, 10, 64)
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect::<Vec<u8>>()
    );
    worker.release().await;
}

#[tokio::test]
async fn a_worker_wedged_in_a_dispatch_exits_when_the_agent_hangs_up() {
    let Some(activator) = activator() else { return };
    let mut worker = GpuWorker::new(activator.launch());
    // A kernel that would run for ten minutes, past any wait here: only the hang-up ends it.
    let prepared = prepare(&Submitted {
        job: kernels::runaway(600_000),
        outputs: true,
    })
    .expect("prepared");
    worker.send(&[&prepared], 256 << 20).await.expect("sent");
    // It is dispatching.
    let answer = tokio::time::timeout(
        Duration::from_secs(2),
        worker.answer(tokio::time::Instant::now(), prepared.limit, 1 << 20),
    )
    .await;
    assert!(answer.is_err(), "the runaway answered: {answer:?}");
    assert_eq!(activator.workers().len(), 1, "one worker is running");
    worker.kill().await;
    let hung_up = Instant::now();
    while !activator.workers().is_empty() {
        assert!(
            hung_up.elapsed() < Duration::from_secs(30),
            "the worker outlived the connection: {:?}",
            activator.workers()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
