//! No file, disk or clock can take the box down: a real `edge-agent` (and a real `edge-hub` where
//! reporting is involved) started on damaged state, a deleted queue, a full filesystem and owner
//! settings from another release. Each case stopped the agent, at every start, before.

#![allow(
    clippy::tests_outside_test_module,
    reason = "an integration test crate: its tests need no test module"
)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use edge_tests::hub::{HubDir, HubProcess, eventually};
use edge_tests::netns::unavailable;
use edge_tests::{NotifySocket, Running, Sandbox, wait_exit};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const START: Duration = Duration::from_secs(120);

fn start(sandbox: &Sandbox) -> Running {
    let mut notify = NotifySocket::bind_fresh(sandbox.dir.path());
    let agent = sandbox.start(&notify, &[]);
    assert!(notify.wait_for("READY=1", START), "{:?}", notify.seen);
    agent
}

fn stop(mut agent: Running) {
    kill(Pid::from_raw(agent.id() as i32), Signal::SIGTERM).expect("SIGTERM");
    let status = wait_exit(&mut agent, Duration::from_secs(30));
    assert!(status.success(), "agent stopped with {status}");
}

/// A hub on loopback and an agent reporting to it.
fn reporting() -> (HubDir, HubProcess, Sandbox) {
    let hub = HubDir::init(&["127.0.0.1"]);
    let server = hub.serve("127.0.0.1:0", "127.0.0.1:0", None);
    let sandbox = hub.agent_sandbox(&format!("https://127.0.0.1:{}", server.main.port()), "");
    (hub, server, sandbox)
}

/// What the hub stored for `device`: (seq, body) in seq order.
fn stored(hub: &HubDir, device: &str) -> Vec<(u64, serde_json::Value)> {
    hub.reports(device)
        .iter()
        .map(|r| {
            let envelope: serde_json::Value =
                serde_json::from_str(r["envelope"].as_str().expect("envelope")).expect("JSON");
            (r["seq"].as_u64().expect("seq"), envelope["body"].clone())
        })
        .collect()
}

/// Runs the agent until the hub has `n` of its heartbeats, then stops it; the highest seq stored.
fn report_a_while(hub: &HubDir, sandbox: &Sandbox, n: usize) -> (String, u64) {
    let agent = start(sandbox);
    let id = sandbox.status()["device_id"]
        .as_str()
        .expect("id")
        .to_owned();
    eventually(Duration::from_secs(60), || {
        let heartbeats = stored(hub, &id)
            .iter()
            .filter(|(_, b)| b["type"] == "heartbeat")
            .count();
        (heartbeats >= n).then_some(())
    })
    .expect("heartbeats reach the hub");
    stop(agent);
    let last = stored(hub, &id).last().expect("some").0;
    (id, last)
}

/// Waits until the hub holds heartbeats numbered above `above`, and a `dropped` report for which
/// `note` holds; the body of that report.
fn after_restart(
    hub: &HubDir,
    id: &str,
    above: u64,
    note: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    eventually(Duration::from_secs(60), || {
        let reports = stored(hub, id);
        let fresh = reports
            .iter()
            .filter(|(seq, b)| *seq > above && b["type"] == "heartbeat")
            .count();
        let found = reports
            .iter()
            .find(|(_, b)| b["type"] == "dropped" && note(b))
            .map(|(_, b)| b.clone());
        found.filter(|_| fresh >= 2)
    })
    .unwrap_or_else(|| {
        panic!(
            "no fresh heartbeats and note at the hub: {:?}",
            stored(hub, id)
        )
    })
}

fn remove_queue(state: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(state.join(format!("outbox.db{suffix}")));
    }
}

#[test]
fn a_garbage_queue_is_set_aside_and_the_hub_hears_which_numbers_were_lost() {
    let (hub, _server, sandbox) = reporting();
    let (id, last) = report_a_while(&hub, &sandbox, 2);
    remove_queue(&sandbox.state());
    std::fs::write(
        sandbox.state().join("outbox.db"),
        b"SQLite format 3\0 and then a power cut",
    )
    .expect("garbage");

    // Before: `file is not a database`, exit 73, at every start.
    let agent = start(&sandbox);
    let queue = &sandbox.status()["network"]["queue"];
    assert_eq!(queue["set_aside"], true, "{queue}");
    assert_eq!(queue["on_disk"], true, "{queue}");
    assert!(sandbox.state().join("outbox.db.corrupt").exists());
    let note = after_restart(&hub, &id, last, |b| b["reason"] == "lost");
    assert!(
        note["last_seq"].as_u64() >= Some(last),
        "the lost range covers every number handed out: {note}"
    );
    stop(agent);
}

#[test]
fn a_deleted_queue_resumes_above_the_old_numbers_and_the_hub_takes_them() {
    let (hub, _server, sandbox) = reporting();
    let (id, last) = report_a_while(&hub, &sandbox, 2);
    remove_queue(&sandbox.state());
    let agent = start(&sandbox);
    eventually(Duration::from_secs(60), || {
        let fresh = stored(&hub, &id)
            .iter()
            .filter(|(seq, b)| *seq > last && b["type"] == "heartbeat")
            .count();
        (fresh >= 3).then_some(())
    })
    .expect("heartbeats numbered above the old ones reach the hub");
    // Every report the agent counts as delivered since the restart is one the hub stored anew.
    // Before, the new queue started at 1 again: the hub took the reused numbers for duplicates of
    // the old reports, the agent forgot them as delivered, and they were lost.
    let queue = sandbox.status()["network"]["queue"].clone();
    let fresh = stored(&hub, &id)
        .iter()
        .filter(|(seq, _)| *seq > last)
        .count() as u64;
    let delivered = queue["delivered"].as_u64().expect("delivered");
    assert!(
        delivered <= fresh,
        "{delivered} delivered but only {fresh} stored anew: {queue}"
    );
    assert_eq!(queue["rejected"], 0, "{queue}");
    stop(agent);
}

/// A tmpfs mounted on a directory for the test's life.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Self {
        std::fs::create_dir_all(at).expect("mount point");
        let ok = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(at)
            .status()
            .expect("mount")
            .success();
        assert!(ok, "mount tmpfs on {}", at.display());
        Self(at.to_owned())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fills the filesystem of `dir` with one file, to the last byte; returns it.
fn fill(dir: &Path) -> PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut file = std::fs::File::create(&path).expect("filler");
    let block = vec![0u8; 64 << 10];
    while file.write_all(&block).is_ok() {}
    while file.write_all(&block[..512]).is_ok() {}
    while file.write_all(&block[..1]).is_ok() {}
    path
}

#[test]
fn a_full_state_filesystem_degrades_reporting_not_the_agent() {
    if let Some(why) = unavailable(&["mount", "umount"]) {
        eprintln!("SKIPPED a_full_state_filesystem_degrades_reporting_not_the_agent: {why}");
        return;
    }
    let hub = HubDir::init(&["127.0.0.1"]);
    let server = hub.serve("127.0.0.1:0", "127.0.0.1:0", None);
    let pairing = format!("127.0.0.1:{}", edge_tests::free_port());
    let sandbox = hub.agent_sandbox(
        &format!("https://127.0.0.1:{}", server.main.port()),
        &format!("[pairing]\nlisten = \"{pairing}\"\n"),
    );
    let _tmpfs = Tmpfs::mount(&sandbox.state(), "32m");
    let agent = start(&sandbox);
    let id = sandbox.status()["device_id"]
        .as_str()
        .expect("id")
        .to_owned();
    eventually(Duration::from_secs(60), || hub.device(&id)).expect("registered");
    let filler = fill(&sandbox.state());

    // Heartbeats every second: a few are refused; before, the heartbeat task failed and the agent
    // exited every ~30 s.
    let unwritten = eventually(Duration::from_secs(60), || {
        let n = sandbox.status()["network"]["queue"]["unwritten"]
            .as_u64()
            .unwrap_or(0);
        (n >= 3).then_some(n)
    })
    .expect("heartbeats counted as unwritten");
    std::thread::sleep(Duration::from_secs(3));
    let mut agent = agent;
    assert!(
        agent.try_wait().expect("wait").is_none(),
        "the agent stopped on a full disk"
    );
    let last = stored(&hub, &id).last().map_or(0, |r| r.0);

    // The owner can still pair: the pairing record is written into the state directory's reserve.
    // Before, the save failed with ENOSPC and the pairing with it.
    let code = sandbox
        .agent(&["pairing-code", "--json"])
        .output()
        .expect("pairing-code");
    let code: serde_json::Value = serde_json::from_slice(&code.stdout).expect("code JSON");
    let phone = tempfile::tempdir().expect("phone");
    let paired = edge_tests::output_with_stdin(
        Command::new(edge_tests::bin("edgectl"))
            .arg("--config-dir")
            .arg(phone.path())
            .args(["pair", "--addr", &pairing]),
        code["qr_payload"].as_str().expect("qr"),
    );
    assert!(
        paired.status.success(),
        "pairing on a full disk: {}",
        String::from_utf8_lossy(&paired.stderr)
    );
    assert_eq!(sandbox.status()["pairing"]["owned"], true);

    std::fs::remove_file(filler).expect("free the space");
    let note = after_restart(&hub, &id, last, |b| {
        b["reason"]
            .as_str()
            .is_some_and(|r| r.contains("low_space") || r.contains("unwritten"))
    });
    assert!(note["count"].as_u64() >= Some(unwritten), "{note}");
    stop(agent);
}

#[test]
fn owner_settings_from_a_newer_release_or_out_of_range_do_not_stop_the_agent() {
    let sandbox = Sandbox::new("");
    std::fs::create_dir_all(sandbox.state()).expect("state");
    std::fs::write(
        sandbox.state().join("owner.toml"),
        "[gpu]\nmax_duty_percent = 50\nmemory_budget_mib = 0\n[render]\nfps = 60\n",
    )
    .expect("owner file");
    // Before: exit 64 at every start, and the unit did not restart on 64.
    let agent = start(&sandbox);
    let status = sandbox.status();
    let ignored = status["owner_settings_ignored"]
        .as_array()
        .expect("a list")
        .iter()
        .map(|p| p.as_str().expect("text").to_owned())
        .collect::<Vec<_>>();
    assert_eq!(ignored.len(), 2, "{ignored:?}");
    assert!(ignored[0].contains("gpu.memory_budget_mib"), "{ignored:?}");
    assert!(ignored[1].contains("render.fps"), "{ignored:?}");
    assert_eq!(status["gpu_policy"]["max_duty_percent"], 50.0, "{status}");
    stop(agent);

    std::fs::write(sandbox.state().join("owner.toml"), "\u{0}not toml = = =").expect("garbage");
    let agent = start(&sandbox);
    stop(agent);
}

#[test]
fn unreadable_pairing_files_are_replaced_and_only_the_button_opens_a_window() {
    let addr = format!("127.0.0.1:{}", edge_tests::free_port());
    let sandbox = Sandbox::new(&format!("[pairing]\nlisten = \"{addr}\"\n"));
    std::fs::create_dir_all(sandbox.state()).expect("state");
    std::fs::write(
        sandbox.state().join("pairing.json"),
        b"{\"owner_key\": \"8f3a",
    )
    .expect("torn");
    std::fs::write(sandbox.state().join("setup-code"), b"not digits").expect("garbage");
    // Before: exit 65 at every start, a permanent stop under the unit.
    let agent = start(&sandbox);
    let pairing = &sandbox.status()["pairing"];
    assert_eq!(pairing["owned"], false, "{pairing}");
    assert_eq!(
        pairing["window_open"], false,
        "a damaged record must not hand the box to whoever is nearby: {pairing}"
    );
    assert!(sandbox.state().join("pairing.json.corrupt").exists());
    assert!(sandbox.state().join("setup-code.corrupt").exists());
    kill(Pid::from_raw(agent.id() as i32), Signal::SIGUSR1).expect("press");
    let opened = eventually(Duration::from_secs(10), || {
        (sandbox.status()["pairing"]["window_open"] == true).then_some(())
    });
    assert!(opened.is_some(), "the button opens a window");
    stop(agent);
}
