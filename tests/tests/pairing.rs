//! Pairing and the owner's control channel end to end: a real `edge-agent` listening on
//! loopback and `edgectl` playing the phone app.

#![allow(
    clippy::tests_outside_test_module,
    reason = "an integration test crate: its tests need no test module"
)]

use std::io::Read;
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::process::{Command, Output};
use std::time::Duration;

use edge_tests::hub::{HubDir, eventually};
use edge_tests::{NotifySocket, Running, Sandbox, bin, wait_exit};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const START: Duration = Duration::from_secs(120);

/// An agent listening for its owner on a free loopback port.
struct Box {
    sandbox: Sandbox,
    addr: String,
}

impl Box {
    fn new() -> Self {
        Self::with("")
    }

    /// A box with `extra` appended to its config.
    fn with(extra: &str) -> Self {
        let port = edge_tests::free_port();
        let addr = format!("127.0.0.1:{port}");
        let sandbox = Sandbox::new(&format!("[pairing]\nlisten = \"{addr}\"\n{extra}"));
        Self { sandbox, addr }
    }

    fn start(&self) -> Running {
        self.start_with(&[])
    }

    fn start_with(&self, env: &[(&str, &str)]) -> Running {
        let mut notify = NotifySocket::bind_fresh(self.sandbox.dir.path());
        let agent = self.sandbox.start(&notify, env);
        assert!(notify.wait_for("READY=1", START), "{:?}", notify.seen);
        agent
    }

    fn code(&self) -> serde_json::Value {
        let out = self
            .sandbox
            .agent(&["pairing-code", "--json"])
            .output()
            .expect("pairing-code");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("JSON")
    }

    fn qr(&self) -> String {
        self.code()["qr_payload"].as_str().expect("qr").to_owned()
    }

    fn pairing(&self) -> serde_json::Value {
        let out = self.sandbox.agent(&["status"]).output().expect("status");
        let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
        status["pairing"].clone()
    }
}

fn stop(mut agent: Running) {
    kill(Pid::from_raw(agent.id() as i32), Signal::SIGTERM).expect("SIGTERM");
    let status = wait_exit(&mut agent, Duration::from_secs(30));
    assert!(status.success(), "agent stopped with {status}");
}

/// `edgectl --config-dir <dir> <args>`.
fn edgectl(dir: &std::path::Path, args: &[&str]) -> Output {
    Command::new(bin("edgectl"))
        .arg("--config-dir")
        .arg(dir)
        .args(args)
        .output()
        .expect("run edgectl")
}

/// `edgectl [--device ID] pair --addr ADDR` with the label's `secret` (the QR payload, or with a
/// device id the manual code) on stdin.
fn pair(dir: &std::path::Path, device: Option<&str>, addr: &str, secret: &str) -> Output {
    let mut command = Command::new(bin("edgectl"));
    command.arg("--config-dir").arg(dir);
    if let Some(device) = device {
        command.args(["--device", device]);
    }
    command.args(["pair", "--addr", addr]);
    edge_tests::output_with_stdin(&mut command, secret)
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "edgectl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn refused(out: &Output, want: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains(want),
        "expected {want:?}, got: {err}"
    );
}

/// A code that passes the format check but is not this box's: another box's.
fn wrong_code_for(device: &Box) -> String {
    let other = Box::new();
    let theirs = other.code()["manual_code"]
        .as_str()
        .expect("code")
        .to_owned();
    assert_ne!(theirs, device.code()["manual_code"].as_str().expect("code"));
    theirs
}

#[test]
fn the_owner_pairs_over_the_lan_and_only_the_owner_is_answered() {
    let device = Box::new();
    let agent = device.start();
    let owner = tempfile::tempdir().expect("tempdir");
    let stranger = tempfile::tempdir().expect("tempdir");

    let paired = ok(&pair(owner.path(), None, &device.addr, &device.qr()));
    let id = device.code()["device_id"].as_str().expect("id").to_owned();
    assert!(paired.contains(&id), "{paired}");
    let status: serde_json::Value =
        serde_json::from_str(&ok(&edgectl(owner.path(), &["status"]))).expect("status JSON");
    assert_eq!(status["device_id"], id.as_str());
    assert!(
        status["details"]["hardware"]["system"].is_object(),
        "{status}"
    );
    assert_eq!(device.pairing()["owned"], true);

    // The window closed with the pairing: nobody else can pair.
    refused(
        &pair(stranger.path(), None, &device.addr, &device.qr()),
        "WindowClosed",
    );
    // A stranger who knows the box's key and address is still not the owner.
    std::fs::copy(
        owner.path().join("devices.json"),
        stranger.path().join("devices.json"),
    )
    .expect("copy");
    refused(&edgectl(stranger.path(), &["status"]), "NotOwner");

    // Settings are validated like the config file; only owner keys; saved, and the GPU ones hold
    // at once (from the next job).
    let policy = |device: &Box| {
        let out = device.sandbox.agent(&["status"]).output().expect("status");
        let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
        status["gpu_policy"].clone()
    };
    assert_eq!(policy(&device)["max_duty_percent"], 100.0);
    ok(&edgectl(
        owner.path(),
        &["config", "set", "gpu.max_duty_percent", "50"],
    ));
    assert_eq!(policy(&device)["max_duty_percent"], 50.0);
    refused(
        &edgectl(
            owner.path(),
            &["config", "set", "gpu.max_duty_percent", "500"],
        ),
        "out of range",
    );
    refused(
        &edgectl(
            owner.path(),
            &["config", "set", "agent.state_dir", "\"/tmp\""],
        ),
        "not settable by the owner",
    );
    let settings = ok(&edgectl(owner.path(), &["config", "get"]));
    assert!(settings.contains("max_duty_percent = 50"), "{settings}");
    let logs = ok(&edgectl(owner.path(), &["logs", "-n", "20"]));
    assert!(logs.contains("paired with a new owner"), "{logs}");
    refused(&edgectl(owner.path(), &["wifi", "scan"]), "Unsupported");

    // Unpair: the owner is forgotten, the window opens again, and someone else can pair.
    ok(&edgectl(owner.path(), &["unpair"]));
    assert_eq!(device.pairing()["owned"], false);
    assert_eq!(device.pairing()["window_open"], true);
    std::fs::remove_file(stranger.path().join("devices.json")).expect("rm");
    ok(&pair(stranger.path(), None, &device.addr, &device.qr()));
    // The old owner kept nothing it could use.
    std::fs::copy(
        stranger.path().join("devices.json"),
        owner.path().join("devices.json"),
    )
    .expect("copy");
    refused(&edgectl(owner.path(), &["status"]), "NotOwner");
    stop(agent);
}

/// A TCP connection to `addr` from the loopback address `127.0.<net>.<host>`, silent.
fn connect_from(net: u8, host: u8, addr: &str) -> TcpStream {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, SockaddrIn, bind, connect, socket};
    let fd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .expect("socket");
    bind(fd.as_raw_fd(), &SockaddrIn::new(127, 0, net, host, 0)).expect("bind");
    let to: std::net::SocketAddrV4 = addr.parse().expect("address");
    connect(fd.as_raw_fd(), &SockaddrIn::from(to)).expect("connect");
    TcpStream::from(fd)
}

/// `count` silent connections from `127.0.<net>.<host>`.
fn links_from(net: u8, host: u8, count: usize, addr: &str) -> Vec<TcpStream> {
    (0..count).map(|_| connect_from(net, host, addr)).collect()
}

/// Whether the agent closed `stream` within `within` (it is still open otherwise).
fn closed_by_agent(stream: &mut TcpStream, within: Duration) -> bool {
    stream.set_read_timeout(Some(within)).expect("timeout");
    let mut byte = [0; 1];
    loop {
        match stream.read(&mut byte) {
            Ok(0) => return true,
            // A reply (to a PakeStart, say): read on to the close.
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return false;
            }
            Err(e) => panic!("reading: {e}"),
        }
    }
}

/// Silent links still open a moment after they connected (so served, not closed at once).
fn still_served(links: &mut [TcpStream]) -> bool {
    links
        .iter_mut()
        .all(|l| !closed_by_agent(l, Duration::from_millis(50)))
}

#[test]
fn strangers_over_a_cap_evict_the_oldest_in_scope_and_the_owner_still_pairs() {
    let device = Box::new();
    let agent = device.start();
    // All of this happens well within the 5 s a silent link may hold its place. Strangers: 4 per
    // address, 8 per /24, 12 in all. Connections are accepted in the order they were made.
    let mut a = links_from(0, 2, 4, &device.addr);
    a.extend(links_from(0, 2, 1, &device.addr));
    assert!(
        closed_by_agent(&mut a[0], Duration::from_secs(3)),
        "a fifth link from one address evicts that address's oldest"
    );
    assert!(
        still_served(&mut a[1..]),
        "the four newest from it are served"
    );
    // 127.0.0.0/24 is full with 8 (a[1..], b); a ninth from there evicts the oldest of them.
    let mut b = links_from(0, 3, 4, &device.addr);
    let mut c = links_from(0, 4, 1, &device.addr);
    assert!(
        closed_by_agent(&mut a[1], Duration::from_secs(3)),
        "the /24's oldest"
    );
    assert!(still_served(&mut b) && still_served(&mut c));
    // Other networks: 127.0.1.0/24 and 127.0.2.0/24 bring the strangers to 12; the thirteenth
    // evicts the oldest of all.
    let mut d = links_from(1, 1, 4, &device.addr);
    let mut e = links_from(2, 1, 1, &device.addr);
    assert!(
        closed_by_agent(&mut a[2], Duration::from_secs(3)),
        "the oldest of all"
    );
    assert!(still_served(&mut d) && still_served(&mut e));
    // The owner, the newest link, pairs and is answered while every stranger's place is taken.
    let owner = tempfile::tempdir().expect("tempdir");
    ok(&pair(owner.path(), None, &device.addr, &device.qr()));
    ok(&edgectl(owner.path(), &["status"]));
    stop(agent);
}

#[test]
fn the_owner_is_answered_while_strangers_hold_every_place() {
    let device = Box::new();
    let agent = device.start();
    let owner = tempfile::tempdir().expect("tempdir");
    ok(&pair(owner.path(), None, &device.addr, &device.qr()));
    // Four hosts in four networks, four links each, all silent: before, they held all 16 places
    // (4 per address, 16 in all) and the owner's link was closed at once.
    let mut held = Vec::new();
    for net in 1..=4 {
        held.extend(links_from(net, 1, 4, &device.addr));
    }
    let status: serde_json::Value =
        serde_json::from_str(&ok(&edgectl(owner.path(), &["status"]))).expect("status JSON");
    assert!(
        status["details"]["hardware"]["system"].is_object(),
        "{status}"
    );
    // Strangers hold 12 places at most: the last four made room among themselves, and the
    // owner's link, a stranger until its handshake, made room too. The oldest went, in order.
    // (Evicted links are closed already: a short look at each tells them apart.)
    let closed = held
        .iter_mut()
        .map(|l| closed_by_agent(l, Duration::from_millis(20)))
        .collect::<Vec<_>>();
    let expected: Vec<bool> = (0..16).map(|n| n < 5).collect();
    assert_eq!(closed, expected, "which strangers were evicted");
    stop(agent);
}

/// A valid `PakeStart` (with some other box's code), framed for the LAN.
fn framed_pake_start(device_id: &str) -> Vec<u8> {
    use edge_mobile_bridge::frame::{Fragmenter, LAN_MAX_FRAME, stream_encode};
    use edge_mobile_bridge::pairing::ClientPairing;
    use edge_mobile_bridge::setup_code::{DeviceFingerprint, SetupCode};
    let code = SetupCode::generate().expect("code");
    let device = DeviceFingerprint::parse(device_id).expect("device id");
    let (_, start) = ClientPairing::start(&code, device).expect("PakeStart");
    let mut out = Vec::new();
    for frame in Fragmenter::new(LAN_MAX_FRAME)
        .expect("fragmenter")
        .fragment(&start)
        .expect("frames")
    {
        out.extend(stream_encode(&frame).expect("frame"));
    }
    out
}

#[test]
fn a_stalled_pake_start_holds_the_window_for_seconds_not_a_minute() {
    use std::io::Write;
    let device = Box::new();
    let agent = device.start();
    let id = device.code()["device_id"].as_str().expect("id").to_owned();
    // A stranger begins a handshake, reads the reply, and stalls: it holds the window's one slot.
    let mut stalled = connect_from(0, 9, &device.addr);
    stalled
        .write_all(&framed_pake_start(&id))
        .expect("PakeStart");
    stalled
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    assert!(
        stalled.read(&mut [0; 64]).expect("PakeReply") > 0,
        "a reply"
    );
    let owner = tempfile::tempdir().expect("tempdir");
    refused(
        &pair(owner.path(), None, &device.addr, &device.qr()),
        "another session is in progress",
    );
    // Before, the slot was held for 60 s (one PakeStart a minute held it for good). Now the
    // handshake deadline (10 s) frees it and closes the stalled link; the owner then pairs.
    assert!(
        closed_by_agent(&mut stalled, Duration::from_secs(30)),
        "the stalled handshake's link outlived its deadline"
    );
    ok(&pair(owner.path(), None, &device.addr, &device.qr()));
    assert_eq!(device.pairing()["owned"], true);
    stop(agent);
}

#[test]
fn a_link_that_says_nothing_is_closed_within_seconds_not_a_minute() {
    let device = Box::new();
    let agent = device.start();
    // Before, a silent link held its place for 60 s: four addresses reconnecting every 55 s held
    // all sixteen for good.
    let mut silent = connect_from(0, 6, &device.addr);
    assert!(
        closed_by_agent(&mut silent, Duration::from_secs(30)),
        "a silent link outlived the first-message deadline"
    );
    stop(agent);
}

#[test]
fn a_factory_reset_erases_owner_and_settings_and_keeps_the_identity() {
    let device = Box::new();
    let agent = device.start();
    let owner = tempfile::tempdir().expect("tempdir");
    let id = device.code()["device_id"].as_str().expect("id").to_owned();
    ok(&pair(owner.path(), None, &device.addr, &device.qr()));
    ok(&edgectl(
        owner.path(),
        &["config", "set", "network.accept_jobs", "false"],
    ));
    let state = device.sandbox.state();
    assert!(state.join("owner.toml").exists());
    // Files set aside as corrupt hold the owner's data too (an old queue, an old record).
    for aside in ["outbox.db.corrupt", "pairing.json.corrupt"] {
        std::fs::write(state.join(aside), b"the previous owner's").expect("set aside");
    }

    ok(&edgectl(owner.path(), &["factory-reset"]));
    assert!(!state.join("owner.toml").exists(), "owner settings erased");
    for aside in ["outbox.db.corrupt", "pairing.json.corrupt"] {
        assert!(!state.join(aside).exists(), "{aside} erased");
    }
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(state.join("pairing.json")).expect("read"))
            .expect("JSON");
    assert_eq!(record["owner_key"], serde_json::Value::Null);
    assert_eq!(device.code()["device_id"], id.as_str(), "identity kept");
    assert_eq!(device.pairing()["window_open"], true);
    assert!(
        ok(&edgectl(owner.path(), &["devices"])).is_empty(),
        "edgectl forgot it too"
    );
    stop(agent);
}

#[test]
fn a_factory_reset_that_fails_half_way_keeps_the_owner_who_can_try_again() {
    let device = Box::new();
    let agent = device.start();
    let owner = tempfile::tempdir().expect("tempdir");
    ok(&pair(owner.path(), None, &device.addr, &device.qr()));
    // The owner's settings cannot be erased (here a directory where the file should be).
    let settings = device.sandbox.state().join("owner.toml");
    std::fs::create_dir(&settings).expect("dir");
    std::fs::write(settings.join("stuck"), b"x").expect("file");

    let out = edgectl(owner.path(), &["factory-reset"]);
    assert!(!out.status.success(), "the reset said it was done");
    // Before, the owner was forgotten first and the error ignored: the box was nobody's, its
    // settings still there, and no one could finish the reset.
    ok(&edgectl(owner.path(), &["status"]));
    assert_eq!(device.pairing()["owned"], true, "{}", device.pairing());
    std::fs::remove_dir_all(&settings).expect("cleared");
    ok(&edgectl(owner.path(), &["factory-reset"]));
    assert_eq!(device.pairing()["window_open"], true);
    stop(agent);
}

/// `edgectl bind --hub URL --ca FILE` with the owner token on stdin.
fn bind(dir: &std::path::Path, hub: &str, ca: &std::path::Path, token: &str) -> Output {
    let mut command = Command::new(bin("edgectl"));
    command
        .arg("--config-dir")
        .arg(dir)
        .args(["bind", "--hub", hub, "--ca"])
        .arg(ca);
    edge_tests::output_with_stdin(&mut command, token)
}

/// Heartbeats the hub has stored for `id`.
fn heartbeats(hub: &HubDir, id: &str) -> u64 {
    hub.device(id)
        .and_then(|d| d["reports"]["heartbeat"].as_u64())
        .unwrap_or(0)
}

#[test]
fn the_owner_binds_the_box_to_the_network_and_a_factory_reset_unbinds_it() {
    let hub = HubDir::init(&["127.0.0.1"]);
    let server = hub.serve("127.0.0.1:0", "127.0.0.1:0", None);
    let url = format!("https://127.0.0.1:{}", server.main.port());
    // As the image ships: the owner's channel, and no network in the config.
    let device = Box::with(
        "[network]\nheartbeat_secs = 1\nbackoff_max_secs = 2\nmeasure_bandwidth = false\n",
    );
    let agent = device.start();
    let id = device.code()["device_id"].as_str().expect("id").to_owned();
    let network = &device.sandbox.status()["network"];
    assert_eq!(
        network["hub"],
        serde_json::Value::Null,
        "unbound: {network}"
    );
    let owner = tempfile::tempdir().expect("tempdir");
    ok(&pair(owner.path(), None, &device.addr, &device.qr()));

    // Refused with what is wrong, and nothing kept.
    refused(
        &bind(
            owner.path(),
            &url.replace("https", "http"),
            &hub.ca(),
            &hub.token,
        ),
        "hub_url",
    );
    let not_a_ca = owner.path().join("not-a-ca.pem");
    std::fs::write(&not_a_ca, "hello").expect("write");
    refused(
        &bind(owner.path(), &url, &not_a_ca, &hub.token),
        "no certificate",
    );
    refused(&bind(owner.path(), &url, &hub.ca(), ""), "owner_token");
    let binding = device.sandbox.state().join("binding.json");
    assert!(!binding.exists());

    ok(&bind(owner.path(), &url, &hub.ca(), &hub.token));
    let seen = eventually(Duration::from_secs(60), || {
        let device = hub.device(&id)?;
        (device["reports"]["heartbeat"].as_u64() >= Some(2)).then_some(device)
    })
    .expect("the box registers with the owner's network and its heartbeats arrive");
    assert_eq!(seen["owner"], "alice");
    let network = eventually(Duration::from_secs(30), || {
        let network = device.sandbox.status()["network"].clone();
        (network["registered"] == true).then_some(network)
    })
    .expect("registered");
    assert_eq!(
        (&network["hub"], &network["bound_by"], &network["owner"]),
        (&url.as_str().into(), &"owner".into(), &"alice".into()),
        "{network}"
    );
    let status: serde_json::Value =
        serde_json::from_str(&ok(&edgectl(owner.path(), &["status"]))).expect("status JSON");
    assert_eq!(
        status["details"]["network"]["bound_by"], "owner",
        "edgectl shows it: {status}"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&binding)
        .expect("kept")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the owner token is the owner's secret");

    // Kept across a restart.
    stop(agent);
    let before = heartbeats(&hub, &id);
    let agent = device.start();
    eventually(Duration::from_secs(60), || {
        (heartbeats(&hub, &id) > before).then_some(())
    })
    .expect("still reporting after a restart");

    // Reports queue while the network is away; a factory reset erases them, the binding, and the
    // recent logs that name the network.
    let port = server.main.port();
    server.kill();
    eventually(Duration::from_secs(30), || {
        (device.sandbox.status()["network"]["queue"]["queued"].as_u64() >= Some(2)).then_some(())
    })
    .expect("heartbeats queue up while the network is away");
    let logs = ok(&edgectl(owner.path(), &["logs", "-n", "256"]));
    assert!(logs.contains("registered with the hub"), "{logs}");
    ok(&edgectl(owner.path(), &["factory-reset"]));
    assert!(!binding.exists(), "the binding is erased");
    let network = eventually(Duration::from_secs(10), || {
        let network = device.sandbox.status()["network"].clone();
        (network["queue"]["queued"] == 0).then_some(network)
    })
    .expect("the queue is erased");
    assert_eq!(
        network["hub"],
        serde_json::Value::Null,
        "unbound: {network}"
    );
    let after_reset = heartbeats(&hub, &id);
    let _server = hub.serve(&format!("127.0.0.1:{port}"), "127.0.0.1:0", None);
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(
        heartbeats(&hub, &id),
        after_reset,
        "nothing reaches the old network"
    );
    let next = tempfile::tempdir().expect("tempdir");
    ok(&pair(next.path(), None, &device.addr, &device.qr()));
    let logs = ok(&edgectl(next.path(), &["logs", "-n", "256"]));
    assert!(
        !logs.contains("registered with the hub"),
        "the next owner sees: {logs}"
    );
    stop(agent);
}

#[test]
fn wrong_codes_close_the_window_count_across_restarts_and_only_slow_pairing_down() {
    let device = Box::new();
    let wrong = wrong_code_for(&device);
    let id = device.code()["device_id"].as_str().expect("id").to_owned();
    let agent = device.start();
    let attacker = tempfile::tempdir().expect("tempdir");
    let attempt = || pair(attacker.path(), Some(&id), &device.addr, &wrong);
    for _ in 0..20 {
        refused(&attempt(), "refused");
    }
    refused(&attempt(), "WindowClosed");
    assert_eq!(device.pairing()["failures"], 20);
    assert_eq!(device.pairing()["window_open"], false);
    stop(agent);

    // The count is on disk, and the first window was used up: a restart opens none by itself, a
    // press of the button (here SIGUSR1) does.
    let press = |agent: &Running| {
        kill(Pid::from_raw(agent.id() as i32), Signal::SIGUSR1).expect("press");
        edge_tests::hub::eventually(Duration::from_secs(10), || {
            (device.pairing()["window_open"] == true).then_some(())
        })
        .expect("the press opens a window");
    };
    let agent = device.start();
    assert_eq!(device.pairing()["failures"], 20);
    assert_eq!(device.pairing()["window_open"], false);
    press(&agent);
    stop(agent);

    // Far past the old lock (100 failures locked pairing for good, and the box has no shell):
    // attempts are paced, never refused for good.
    let record = device.sandbox.state().join("pairing.json");
    std::fs::write(&record, r#"{"owner_key":null,"failures":99}"#).expect("write");
    let agent = device.start();
    press(&agent);
    refused(&attempt(), "refused");
    assert_eq!(device.pairing()["slowed"], true);
    refused(&attempt(), "Slowed");
    std::thread::sleep(Duration::from_secs(7));
    let owner = tempfile::tempdir().expect("tempdir");
    ok(&pair(owner.path(), None, &device.addr, &device.qr()));
    // The local reset needs the agent stopped.
    let busy = device
        .sandbox
        .agent(&["factory-reset"])
        .output()
        .expect("reset");
    assert_eq!(
        busy.status.code(),
        Some(75),
        "{}",
        String::from_utf8_lossy(&busy.stderr)
    );
    stop(agent);
}

/// One `struct input_event` as the kernel writes it (time left zero): two `long`s of `timeval`,
/// then type, code and value in native byte order.
fn input_event(kind: u16, code: u16, value: i32) -> Vec<u8> {
    let mut record = vec![0u8; 2 * std::mem::size_of::<usize>()];
    record.extend_from_slice(&kind.to_ne_bytes());
    record.extend_from_slice(&code.to_ne_bytes());
    record.extend_from_slice(&value.to_ne_bytes());
    record
}

const EV_KEY: u16 = 1;
const KEY_CONNECT: u16 = 218;

/// A box whose pairing button is a FIFO (standing in for its input device), started, and the
/// FIFO's write end.
fn box_with_a_button() -> (Box, Running, std::fs::File, tempfile::TempDir) {
    use std::os::unix::fs::OpenOptionsExt;
    let input = tempfile::tempdir().expect("tempdir");
    let fifo = input.path().join("gpio-keys-event");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("mkfifo");
    let addr = format!("127.0.0.1:{}", edge_tests::free_port());
    let device = Box {
        sandbox: Sandbox::new(&format!(
            "[pairing]\nlisten = \"{addr}\"\nbutton = \"{}\"\nbutton_key = {KEY_CONNECT}\n",
            fifo.display()
        )),
        addr,
    };
    let agent = device.start();
    // The agent opened the read end before READY, so this neither blocks nor fails.
    let button = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits())
        .open(&fifo)
        .expect("the agent reads the button's device");
    (device, agent, button, input)
}

#[test]
fn the_pairing_button_opens_a_window_that_failures_closed() {
    use std::io::Write;

    let (device, agent, mut button, _input) = box_with_a_button();
    let wrong = wrong_code_for(&device);
    let id = device.code()["device_id"].as_str().expect("id").to_owned();

    let attacker = tempfile::tempdir().expect("tempdir");
    for _ in 0..20 {
        refused(
            &pair(attacker.path(), Some(&id), &device.addr, &wrong),
            "refused",
        );
    }
    assert_eq!(device.pairing()["window_open"], false);

    // Not presses: a release, an auto-repeat, another key, another event type with the code.
    let noise = [
        input_event(EV_KEY, KEY_CONNECT, 0),
        input_event(EV_KEY, KEY_CONNECT, 2),
        input_event(EV_KEY, KEY_CONNECT + 1, 1),
        input_event(4, 4, i32::from(KEY_CONNECT)),
        input_event(0, 0, 0),
    ]
    .concat();
    button.write_all(&noise).expect("write");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(device.pairing()["window_open"], false, "no press yet");

    // A press: down, then up (held, it would be a reset).
    button
        .write_all(&input_event(EV_KEY, KEY_CONNECT, 1))
        .expect("press");
    let opened = edge_tests::hub::eventually(Duration::from_secs(10), || {
        (device.pairing()["window_open"] == true).then_some(())
    });
    button
        .write_all(&input_event(EV_KEY, KEY_CONNECT, 0))
        .expect("release");
    assert!(opened.is_some(), "{}", device.pairing());
    let owner = tempfile::tempdir().expect("tempdir");
    ok(&pair(owner.path(), None, &device.addr, &device.qr()));
    stop(agent);
}

#[test]
fn the_pairing_button_held_ten_seconds_resets_the_box_for_its_next_owner() {
    use std::io::Write;

    let (device, agent, mut button, _input) = box_with_a_button();
    let seller = tempfile::tempdir().expect("tempdir");
    ok(&pair(seller.path(), None, &device.addr, &device.qr()));
    ok(&edgectl(
        seller.path(),
        &["config", "set", "network.accept_jobs", "false"],
    ));
    let state = device.sandbox.state();
    assert!(state.join("owner.toml").exists());
    // Before, only the owner's app or a shell could reset a box: a buyer whose seller did not
    // could never pair it.
    button
        .write_all(&input_event(EV_KEY, KEY_CONNECT, 1))
        .expect("hold");
    let reset = edge_tests::hub::eventually(Duration::from_secs(30), || {
        (device.pairing()["owned"] == false).then_some(())
    });
    assert!(reset.is_some(), "not reset: {}", device.pairing());
    assert!(!state.join("owner.toml").exists(), "owner settings erased");
    assert_eq!(device.pairing()["window_open"], true);
    refused(&edgectl(seller.path(), &["status"]), "Unauthorized");
    let buyer = tempfile::tempdir().expect("tempdir");
    ok(&pair(buyer.path(), None, &device.addr, &device.qr()));
    stop(agent);
}

#[test]
fn bluetooth_le_without_bluez_is_a_warning_and_the_lan_still_pairs() {
    let addr = format!("127.0.0.1:{}", edge_tests::free_port());
    let device = Box {
        sandbox: Sandbox::new(&format!("[pairing]\nlisten = \"{addr}\"\nble = true\n")),
        addr,
    };
    // No system bus here (and none at this address anywhere): BlueZ cannot be reached.
    let agent = device.start_with(&[(
        "DBUS_SYSTEM_BUS_ADDRESS",
        "unix:path=/nonexistent/system_bus_socket",
    )]);
    let owner = tempfile::tempdir().expect("tempdir");
    ok(&pair(owner.path(), None, &device.addr, &device.qr()));
    let logs = ok(&edgectl(owner.path(), &["logs"]));
    assert!(
        logs.contains("Bluetooth LE unavailable; pairing is served on the LAN only"),
        "{logs}"
    );
    assert_eq!(device.pairing()["ble"], serde_json::Value::Null);
    stop(agent);
}

#[test]
fn out_of_descriptors_the_pairing_listener_pauses_instead_of_spinning() {
    let device = Box::new();
    let agent = device.start();
    let pid = agent.id();
    let open_fds = || {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .expect("fds")
            .count()
    };
    // Two descriptors to spare, then silent links from here take them: the third connection waits
    // in the backlog and every accept fails with EMFILE.
    let limit = open_fds() + 2;
    let set_limit = |n: usize| {
        let out = Command::new("prlimit")
            .args(["--pid", &pid.to_string(), &format!("--nofile={n}:")])
            .output()
            .expect("prlimit");
        assert!(
            out.status.success(),
            "prlimit: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    set_limit(limit);
    let held: Vec<TcpStream> = (0..4)
        .map(|_| TcpStream::connect(&device.addr).expect("connect"))
        .collect();
    // Measured within the 5 s the silent links may live.
    std::thread::sleep(Duration::from_secs(1));
    let before = edge_tests::cpu_secs(pid);
    std::thread::sleep(Duration::from_secs(3));
    let used = edge_tests::cpu_secs(pid) - before;
    // A spinning accept loop burns a whole core (about 3 s here); paused, almost nothing. Not a
    // timing: the bound is half of what the bug costs.
    assert!(
        used < 1.5,
        "{used:.2} s of CPU in 3 s: the accept loop spins"
    );
    drop(held);
    set_limit(1024);
    let owner = tempfile::tempdir().expect("tempdir");
    ok(&pair(owner.path(), None, &device.addr, &device.qr()));
    stop(agent);
}

/// A TCP relay to `upstream` whose first connection loses the box's second message (the
/// `DeviceProof` after a pairing): it passes the first of the box's LAN frames (a u16 length and
/// the frame), then closes both sides. Later connections pass everything.
fn relay_losing_the_proof(upstream: &str) -> String {
    use std::io::Write;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let upstream = upstream.to_owned();
    std::thread::spawn(move || {
        for (n, client) in listener.incoming().enumerate() {
            let Ok(client) = client else { continue };
            let Ok(device) = TcpStream::connect(&upstream) else {
                continue;
            };
            let (mut up_in, mut up_out) = (
                client.try_clone().expect("clone"),
                device.try_clone().expect("clone"),
            );
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut up_in, &mut up_out);
                let _ = up_out.shutdown(std::net::Shutdown::Write);
            });
            let (mut down_in, mut down_out) = (device, client);
            std::thread::spawn(move || {
                if n > 0 {
                    let _ = std::io::copy(&mut down_in, &mut down_out);
                    let _ = down_out.shutdown(std::net::Shutdown::Write);
                    return;
                }
                let mut len = [0u8; 2];
                if down_in.read_exact(&mut len).is_ok() {
                    let mut frame = vec![0u8; usize::from(u16::from_be_bytes(len))];
                    if down_in.read_exact(&mut frame).is_ok() {
                        let _ = down_out.write_all(&len);
                        let _ = down_out.write_all(&frame);
                    }
                    // The next frame is the proof: the link goes before it arrives.
                    let _ = down_in.read_exact(&mut len);
                }
                let _ = down_out.shutdown(std::net::Shutdown::Both);
                let _ = down_in.shutdown(std::net::Shutdown::Both);
            });
        }
    });
    addr
}

#[test]
fn a_pairing_whose_proof_is_lost_ends_in_a_session_that_proves_the_box() {
    let device = Box::new();
    let agent = device.start();
    let owner = tempfile::tempdir().expect("tempdir");
    let id = device.code()["device_id"].as_str().expect("id").to_owned();

    // The box takes the owner, and its proof never arrives. Before, `edgectl pair` failed here,
    // the box was owned and its window closed: nobody could reach it without the button.
    let relay = relay_losing_the_proof(&device.addr);
    let out = pair(owner.path(), None, &relay, &device.qr());
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(ok(&out).contains(&id));
    assert!(said.contains("the box had taken this owner"), "{said}");
    let status: serde_json::Value =
        serde_json::from_str(&ok(&edgectl(owner.path(), &["status"]))).expect("status JSON");
    assert_eq!(status["device_id"], id.as_str());

    // The owner's app forgot the box (or crashed before saving it): pairing again ends the same
    // way, through the owner's session, since the window is closed.
    std::fs::remove_file(owner.path().join("devices.json")).expect("forget");
    let out = pair(owner.path(), None, &device.addr, &device.qr());
    assert!(ok(&out).contains(&id));
    // Someone else with the label gets no session out of it.
    let stranger = tempfile::tempdir().expect("tempdir");
    refused(
        &pair(stranger.path(), None, &device.addr, &device.qr()),
        "does not take this client as its owner",
    );
    assert!(!stranger.path().join("devices.json").exists());
    stop(agent);
}
