//! Reporting end to end: a real `edge-agent` and a real `edge-hub` over TLS on loopback or
//! across network namespaces: registration, heartbeats, capability reports, store-and-forward
//! through hub outages, `kill -9`, loss and delay.

#![allow(
    clippy::tests_outside_test_module,
    reason = "an integration test crate: its tests need no test module"
)]

use std::collections::BTreeSet;
use std::time::Duration;

use edge_tests::hub::{Across, DelayProxy, HubDir, eventually, outbox};
use edge_tests::netns::{Link, unavailable};
use edge_tests::{NotifySocket, Running, Sandbox, wait_exit};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const START: Duration = Duration::from_secs(120);

fn start(sandbox: &Sandbox) -> (Running, NotifySocket) {
    let mut notify = NotifySocket::bind_fresh(sandbox.dir.path());
    let agent = sandbox.start(&notify, &[]);
    assert!(notify.wait_for("READY=1", START), "{:?}", notify.seen);
    (agent, notify)
}

fn device_id(sandbox: &Sandbox) -> String {
    sandbox.status()["device_id"]
        .as_str()
        .expect("id")
        .to_owned()
}

fn stop(mut agent: Running) {
    kill(Pid::from_raw(agent.id() as i32), Signal::SIGTERM).expect("SIGTERM");
    assert!(wait_exit(&mut agent, Duration::from_secs(30)).success());
}

/// Seqs the hub stored for `device`.
fn stored(hub: &HubDir, device: &str) -> Vec<u64> {
    hub.reports(device)
        .iter()
        .map(|r| r["seq"].as_u64().expect("seq"))
        .collect()
}

/// Waits until the agent's queue is empty (everything delivered).
fn drained(sandbox: &Sandbox, within: Duration) -> bool {
    eventually(within, || {
        (sandbox.status()["network"]["queue"]["queued"] == 0).then_some(())
    })
    .is_some()
}

#[test]
fn the_agent_registers_and_its_reports_arrive_signed() {
    let hub = HubDir::init(&["127.0.0.1"]);
    let server = hub.serve("127.0.0.1:0", "127.0.0.1:0", None);
    let sandbox = hub.agent_sandbox(&format!("https://127.0.0.1:{}", server.main.port()), "");
    let (agent, _notify) = start(&sandbox);
    let id = device_id(&sandbox);

    let seen = eventually(Duration::from_secs(60), || {
        let device = hub.device(&id)?;
        let heartbeats = device["reports"]["heartbeat"].as_u64().unwrap_or(0);
        (heartbeats >= 3 && !device["latest_capability"].is_null()).then_some(device)
    })
    .expect("three heartbeats and a capability report reach the hub");
    assert_eq!(seen["owner"], "alice");
    assert_eq!(seen["latest_heartbeat"]["signature"], "valid", "{seen}");
    let capability = &seen["latest_capability"];
    assert_eq!(capability["signature"], "valid", "{seen}");
    let ip = &capability["body"]["ip"];
    assert_eq!(ip["public_ip"], "127.0.0.1", "{ip}");
    assert_eq!(ip["agree"], true, "two echo listeners agree: {ip}");
    assert_eq!(
        ip["behind_nat"], false,
        "127.0.0.1 is the device's own: {ip}"
    );
    assert!(capability["body"]["host"]["cores"].as_u64() > Some(0));

    let network = &sandbox.status()["network"];
    assert_eq!(network["registered"], true, "{network}");
    assert_eq!(network["owner"], "alice");
    let metrics = String::from_utf8(
        sandbox
            .agent(&["status", "--metrics"])
            .output()
            .expect("metrics")
            .stdout,
    )
    .expect("utf8");
    assert!(
        metrics.contains("edge_reports_delivered_total"),
        "{metrics}"
    );
    stop(agent);
}

#[test]
fn reports_queued_while_the_hub_is_down_arrive_once_and_in_order() {
    let hub = HubDir::init(&["127.0.0.1"]);
    let server = hub.serve("127.0.0.1:0", "127.0.0.1:0", None);
    let port = server.main.port();
    let sandbox = hub.agent_sandbox(&format!("https://127.0.0.1:{port}"), "");
    let (agent, _notify) = start(&sandbox);
    let id = device_id(&sandbox);
    eventually(Duration::from_secs(60), || hub.device(&id)).expect("registered");

    server.kill();
    let backlog = eventually(Duration::from_secs(30), || {
        let queued = outbox(&sandbox.state());
        (queued.len() >= 4).then_some(queued)
    })
    .expect("heartbeats queue up while the hub is down");
    let network = &sandbox.status()["network"];
    assert!(network["last_error"].is_string(), "{network}");

    let _server = hub.serve(&format!("127.0.0.1:{port}"), "127.0.0.1:0", None);
    assert!(
        drained(&sandbox, Duration::from_secs(60)),
        "the backlog drains"
    );
    stop(agent);

    let reports = hub.reports(&id);
    let seqs: Vec<u64> = reports
        .iter()
        .map(|r| r["seq"].as_u64().expect("seq"))
        .collect();
    let unique: BTreeSet<u64> = seqs.iter().copied().collect();
    assert_eq!(unique.len(), seqs.len(), "no report stored twice: {seqs:?}");
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "in order: {seqs:?}");
    for (seq, text) in &backlog {
        let report = reports
            .iter()
            .find(|r| r["seq"].as_u64() == Some(*seq))
            .unwrap_or_else(|| panic!("queued report {seq} never arrived; hub has {seqs:?}"));
        assert_eq!(
            report["envelope"].as_str(),
            Some(text.as_str()),
            "delivered as signed"
        );
    }
    assert_eq!(outbox(&sandbox.state()), [], "nothing left behind");
}

#[test]
fn kill_9_with_a_backlog_then_restart_loses_nothing_and_duplicates_nothing() {
    let hub = HubDir::init(&["127.0.0.1"]);
    // Take a free port for the hub, which is not up yet.
    let port = edge_tests::free_port();
    let sandbox = hub.agent_sandbox(&format!("https://127.0.0.1:{port}"), "");
    let (mut agent, _notify) = start(&sandbox);
    let id = device_id(&sandbox);
    eventually(Duration::from_secs(30), || {
        (outbox(&sandbox.state()).len() >= 3).then_some(())
    })
    .expect("a backlog builds up with no hub");
    agent.kill().expect("SIGKILL");
    agent.wait().expect("reap");
    let backlog = outbox(&sandbox.state());
    assert!(backlog.len() >= 3);

    let _server = hub.serve(&format!("127.0.0.1:{port}"), "127.0.0.1:0", None);
    let (agent, _notify) = start(&sandbox);
    assert!(
        drained(&sandbox, Duration::from_secs(60)),
        "the backlog drains after restart"
    );
    stop(agent);

    let reports = hub.reports(&id);
    let seqs = stored(&hub, &id);
    for (seq, text) in &backlog {
        let report = reports
            .iter()
            .find(|r| r["seq"].as_u64() == Some(*seq))
            .unwrap_or_else(|| {
                panic!("report {seq} from before the kill is lost; hub has {seqs:?}")
            });
        assert_eq!(report["envelope"].as_str(), Some(text.as_str()));
    }
    // After the restart, sequence numbers carry on above the old ones: no seq reused for a
    // different report.
    let texts: BTreeSet<&str> = reports
        .iter()
        .filter_map(|r| r["envelope"].as_str())
        .collect();
    assert_eq!(
        texts.len(),
        reports.len(),
        "every stored report is distinct"
    );
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
}

#[test]
fn reports_cross_a_lossy_link() {
    if let Some(why) = unavailable(&["ip", "nft"]) {
        eprintln!("SKIPPED reports_cross_a_lossy_link: {why}");
        return;
    }
    let link = Link::new();
    link.lose(10);
    let across = Across::link(&link);
    let hub = &across.hub;
    let sandbox = across.agent_sandbox("");
    let mut notify = NotifySocket::bind_fresh(sandbox.dir.path());
    let mut cmd = std::process::Command::new("ip");
    cmd.args(["netns", "exec", &link.device_ns])
        .arg(edge_tests::bin("edge-agent"))
        .arg("--config")
        .arg(sandbox.config())
        .env("NODEVICE_SELECT", "1")
        .env("NOTIFY_SOCKET", &notify.path)
        .stderr(std::process::Stdio::null());
    let agent = Running(cmd.spawn().expect("agent in the device namespace"));
    assert!(notify.wait_for("READY=1", START), "{:?}", notify.seen);
    let id = device_id(&sandbox);
    // Loss is random: a few heartbeats on one connection can cross without a drop (a few percent
    // of runs did), so wait until the link has really dropped something as well.
    let device = eventually(Duration::from_secs(120), || {
        let device = hub.device(&id)?;
        let heartbeats = device["reports"]["heartbeat"].as_u64();
        (heartbeats >= Some(8) && link.lost() > 0).then_some(device)
    })
    .expect("heartbeats arrive across 10% loss, and the link drops some packets");
    assert!(drained(&sandbox, Duration::from_secs(60)));
    stop(agent);
    let seqs = stored(hub, &id);
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    assert!(outbox(&sandbox.state()).is_empty(), "{device}");
}

#[test]
fn reports_cross_a_slow_link() {
    let hub = HubDir::init(&["127.0.0.1"]);
    let server = hub.serve("127.0.0.1:0", "127.0.0.1:0", None);
    // 250 ms per chunk each way: a TLS handshake alone takes over a second.
    let proxy = DelayProxy::start(server.main, Duration::from_millis(250));
    let sandbox = hub.agent_sandbox(&format!("https://127.0.0.1:{}", proxy.addr.port()), "");
    let (agent, _notify) = start(&sandbox);
    let id = device_id(&sandbox);
    eventually(Duration::from_secs(90), || {
        (hub.device(&id)?["reports"]["heartbeat"].as_u64() >= Some(5)).then_some(())
    })
    .expect("heartbeats arrive over the slow link");
    assert!(drained(&sandbox, Duration::from_secs(60)));
    stop(agent);
    let seqs = stored(&hub, &id);
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    assert!(outbox(&sandbox.state()).is_empty());
}

const DOUBLE_JOB: &str = r#"{
  "version": 1,
  "id": "ID",
  "kernel": {
    "wgsl": "@group(0) @binding(0) var<storage, read> src: array<f32>;\n@group(0) @binding(1) var<storage, read_write> dst: array<f32>;\n@compute @workgroup_size(64)\nfn main(@builtin(global_invocation_id) id: vec3<u32>) { dst[id.x] = src[id.x] * 2.0; }",
    "entry_point": "main"
  },
  "bindings": [
    {"binding": 0, "kind": "storage_read", "size": 256, "input": {"base64": "AACAPwAAAEA="}},
    {"binding": 1, "kind": "storage_read_write", "size": 256}
  ],
  "dispatch": [1, 1, 1]
}"#;

/// Every job the hub holds, once none is queued or out with a device (within 120 s).
fn finished_jobs(hub: &HubDir) -> Vec<serde_json::Value> {
    eventually(Duration::from_secs(120), || {
        let jobs = hub.jobs();
        jobs.iter()
            .all(|j| j["state"] != "queued" && j["state"] != "assigned")
            .then_some(jobs)
    })
    .expect("every job comes back")
}

/// The job `id` of `jobs`, as the hub lists it.
fn job(jobs: &[serde_json::Value], id: &str) -> serde_json::Value {
    jobs.iter()
        .find(|j| j["job_id"] == id)
        .unwrap_or_else(|| panic!("job {id} listed"))
        .clone()
}

/// The receipt of the job in `file` run by hand (`edge-agent run-job`) with the sandbox's config.
fn run_here(sandbox: &Sandbox, file: &std::path::Path) -> serde_json::Value {
    let out = sandbox
        .agent(&["run-job", file.to_str().expect("utf8")])
        .output()
        .expect("run-job");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("receipt")
}

#[test]
fn jobs_from_the_hub_run_on_the_gpu_and_come_back_with_verified_receipts() {
    let hub = HubDir::init(&["127.0.0.1"]);
    let server = hub.serve("127.0.0.1:0", "127.0.0.1:0", None);
    let sandbox = hub.agent_sandbox(&format!("https://127.0.0.1:{}", server.main.port()), "");
    let (agent, _notify) = start(&sandbox);
    let id = device_id(&sandbox);
    eventually(Duration::from_secs(60), || hub.device(&id)).expect("registered");

    let good = sandbox.dir.path().join("good.json");
    std::fs::write(&good, DOUBLE_JOB.replace("\"ID\"", "\"double-1\"")).expect("write job");
    let bad = sandbox.dir.path().join("bad.json");
    std::fs::write(
        &bad,
        DOUBLE_JOB
            .replace("\"ID\"", "\"broken-1\"")
            .replace("* 2.0; }", "* 2.0 }"),
    )
    .expect("write job");
    for file in [&good, &bad] {
        hub.submit(&id, file);
    }
    let jobs = finished_jobs(&hub);
    let find = |id: &str| job(&jobs, id);
    let done = find("double-1");
    assert_eq!(done["state"], "done", "{done}");
    assert_eq!(done["receipt_status"], "valid", "{done}");
    let broken = find("broken-1");
    assert_eq!(broken["state"], "refused", "{broken}");
    assert!(
        broken["error"]
            .as_str()
            .unwrap_or_default()
            .contains("kernel.wgsl:"),
        "the refusal says where: {broken}"
    );

    // The same job run by hand gives the same output hash: results are reproducible.
    let local = run_here(&sandbox, &good);
    assert_eq!(local["output_sha256"], done["receipt"]["output_sha256"]);
    stop(agent);
}

#[test]
fn a_jobs_input_blob_comes_from_the_hub_checked_against_its_name_and_is_not_kept() {
    let hub = HubDir::init(&["127.0.0.1"]);
    let server = hub.serve("127.0.0.1:0", "127.0.0.1:0", None);
    let sandbox = hub.agent_sandbox(&format!("https://127.0.0.1:{}", server.main.port()), "");
    let (agent, _notify) = start(&sandbox);
    let id = device_id(&sandbox);
    eventually(Duration::from_secs(60), || hub.device(&id)).expect("registered");

    let dir = sandbox.dir.path();
    let blob = |name: &str, bytes: &[u8]| {
        let file = dir.join(name);
        std::fs::write(&file, bytes).expect("write blob");
        hub.add_blob(&file)
    };
    // The inline job's input, [1.0, 2.0] as f32, as a blob.
    let input = blob("input.bin", &[0, 0, 0x80, 0x3f, 0, 0, 0, 0x40]);
    let tampered = blob("tampered.bin", &[1; 8]);
    let oversize = blob("oversize.bin", &[4; 8]);
    let missing = blob("missing.bin", &[3; 8]);
    let inline = dir.join("inline.json");
    std::fs::write(&inline, DOUBLE_JOB.replace("\"ID\"", "\"inline\"")).expect("write job");
    for (job, sha256) in [
        ("from-blob", &input),
        ("tampered", &tampered),
        ("oversize", &oversize),
        ("missing", &missing),
    ] {
        let file = dir.join(format!("{job}.json"));
        let text = DOUBLE_JOB.replace("\"ID\"", &format!("\"{job}\"")).replace(
            r#"{"base64": "AACAPwAAAEA="}"#,
            &format!(r#"{{"sha256": "{sha256}"}}"#),
        );
        std::fs::write(&file, text).expect("write job");
        hub.submit(&id, &file);
    }
    // After submission (which reads every blob a job names): one changed, one grown, one gone.
    std::fs::write(hub.blob_file(&tampered), [2; 8]).expect("the hub's copy changes");
    std::fs::write(hub.blob_file(&oversize), [4; 300]).expect("the hub's copy grows");
    std::fs::remove_file(hub.blob_file(&missing)).expect("the hub's copy goes");
    let jobs = finished_jobs(&hub);
    let find = |id: &str| job(&jobs, id);
    let done = find("from-blob");
    assert_eq!(done["state"], "done", "{done}");
    assert_eq!(done["receipt_status"], "valid", "{done}");
    for (job, says) in [
        ("tampered", "not to its name"),
        ("oversize", "over 256 bytes"),
        ("missing", "no blob"),
    ] {
        let refused = find(job);
        assert_eq!(refused["state"], "refused", "{refused}");
        let error = refused["error"].as_str().unwrap_or_default();
        assert!(
            error.contains(says) && error.contains("binding 0"),
            "{job}: {refused}"
        );
    }

    // The same input inline gives the same input and output hashes: the blob's bytes ran.
    let local = run_here(&sandbox, &inline);
    for hash in ["input_sha256", "output_sha256"] {
        assert_eq!(local[hash], done["receipt"][hash], "{hash}");
    }
    stop(agent);
    let left: Vec<_> = std::fs::read_dir(sandbox.state().join("blobs"))
        .expect("the blob store")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert!(
        left.is_empty(),
        "fetched blobs are removed once their job ran: {left:?}"
    );
}

#[test]
fn a_backlog_drains_through_a_hub_that_takes_only_small_requests() {
    let hub = HubDir::init(&["127.0.0.1"]);
    let port = edge_tests::free_port();
    let sandbox = hub.agent_sandbox(&format!("https://127.0.0.1:{port}"), "");
    let (agent, _notify) = start(&sandbox);
    let id = device_id(&sandbox);
    eventually(Duration::from_secs(30), || {
        (outbox(&sandbox.state()).len() >= 6).then_some(())
    })
    .expect("a backlog builds up with no hub");
    // About two heartbeats per request fit: the agent's batch of 64 is refused until it shrinks.
    let _server = hub.serve_with(
        &format!("127.0.0.1:{port}"),
        "127.0.0.1:0",
        None,
        &["--max-body-bytes", "1500"],
    );
    assert!(
        drained(&sandbox, Duration::from_secs(60)),
        "the backlog drains in small batches"
    );
    stop(agent);
    let heartbeats = hub.device(&id).expect("device")["reports"]["heartbeat"]
        .as_u64()
        .unwrap_or(0);
    assert!(heartbeats >= 6, "{heartbeats} heartbeats arrived");
}

#[test]
fn the_hub_cannot_send_the_box_to_another_host_for_its_echo() {
    // Where a hub that wanted to probe the owner's LAN would send the box: another host (here a
    // second loopback address, so nothing leaves the machine) and plain http on the hub's host.
    // Both listen, so that a box that went there would be seen.
    let lan = std::net::TcpListener::bind("127.0.0.2:0").expect("127.0.0.2");
    let plain = std::net::TcpListener::bind("127.0.0.1:0").expect("listener");
    for listener in [&lan, &plain] {
        listener.set_nonblocking(true).expect("nonblocking");
    }
    let port = {
        let free = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
        free.local_addr().expect("addr").port()
    };
    let own = format!("https://127.0.0.1:{port}{}", edge_protocol::api::IP_ECHO);
    let elsewhere = format!(
        "https://{}{}",
        lan.local_addr().expect("addr"),
        edge_protocol::api::IP_ECHO
    );
    let http = format!(
        "http://{}{}",
        plain.local_addr().expect("addr"),
        edge_protocol::api::IP_ECHO
    );
    let hub = HubDir::init(&["127.0.0.1"]);
    let _server = hub.serve_with(
        &format!("127.0.0.1:{port}"),
        "127.0.0.1:0",
        None,
        &[
            "--echo-url",
            &own,
            "--echo-url",
            &elsewhere,
            "--echo-url",
            &http,
        ],
    );
    let sandbox = hub.agent_sandbox(&format!("https://127.0.0.1:{port}"), "");
    let (agent, _notify) = start(&sandbox);
    let id = device_id(&sandbox);
    let capability = eventually(Duration::from_secs(60), || {
        let device = hub.device(&id)?;
        (!device["latest_capability"].is_null()).then(|| device["latest_capability"].clone())
    })
    .expect("a capability report reaches the hub");
    stop(agent);
    let endpoints: Vec<&str> = capability["body"]["ip"]["observations"]
        .as_array()
        .expect("observations")
        .iter()
        .filter_map(|o| o["endpoint"].as_str())
        .collect();
    assert_eq!(endpoints, [own.as_str()], "{capability}");
    for (what, listener) in [("another host", &lan), ("plain http", &plain)] {
        assert!(
            listener.accept().is_err(),
            "the box connected to {what} the hub named"
        );
    }
}

#[test]
fn a_box_whose_clock_is_off_the_hubs_still_takes_jobs() {
    // The hub's clock 15 minutes ahead: the box's is as far behind, three times what the hub
    // accepts in a signed poll. A box without NTP (or a battery-backed clock) sees this.
    let hub = HubDir::init(&["127.0.0.1"]);
    let server = hub.serve_with(
        "127.0.0.1:0",
        "127.0.0.1:0",
        None,
        &["--clock-offset-secs", "900"],
    );
    let sandbox = hub.agent_sandbox(&format!("https://127.0.0.1:{}", server.main.port()), "");
    let (agent, _notify) = start(&sandbox);
    let id = device_id(&sandbox);
    eventually(Duration::from_secs(60), || hub.device(&id)).expect("registered");
    let offset = eventually(Duration::from_secs(30), || {
        sandbox.status()["network"]["clock_offset_ms"].as_i64()
    })
    .expect("the offset is shown");
    assert!(
        (870_000..=930_000).contains(&offset),
        "the hub is 900 s ahead, the box says {offset} ms"
    );
    let job = sandbox.dir.path().join("job.json");
    std::fs::write(&job, DOUBLE_JOB.replace("\"ID\"", "\"skewed-1\"")).expect("write job");
    hub.submit(&id, &job);
    let done = eventually(Duration::from_secs(60), || {
        hub.jobs()
            .into_iter()
            .find(|j| j["job_id"] == "skewed-1" && j["state"] == "done")
    });
    stop(agent);
    let done = done.expect("the job was polled, ran and came back");
    assert_eq!(done["receipt_status"], "valid", "{done}");
}

#[test]
fn a_hub_reply_larger_than_the_agent_takes_is_not_read() {
    // A hub (or whoever answers in its place) that answers its info with over 256 KiB: here three
    // echo URLs of 100 KiB each. Before, the agent read any reply whole.
    let long = |i: usize| format!("https://127.0.0.1/{i}{}", "x".repeat(100 << 10));
    let urls: Vec<String> = (0..3).map(long).collect();
    let mut args = Vec::new();
    for url in &urls {
        args.extend(["--echo-url", url.as_str()]);
    }
    let hub = HubDir::init(&["127.0.0.1"]);
    let server = hub.serve_with("127.0.0.1:0", "127.0.0.1:0", None, &args);
    let sandbox = hub.agent_sandbox(&format!("https://127.0.0.1:{}", server.main.port()), "");
    let (agent, _notify) = start(&sandbox);
    let error = eventually(Duration::from_secs(60), || {
        let network = sandbox.status()["network"].clone();
        network["last_error"].as_str().map(str::to_owned)
    });
    let registered = sandbox.status()["network"]["registered"].clone();
    stop(agent);
    let error = error.expect("the agent says why it is not registered");
    assert!(
        error.contains("/v1/info") && error.contains("over 262144 bytes"),
        "{error}"
    );
    assert_eq!(registered, false, "an info it could not read");
}
