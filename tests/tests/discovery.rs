//! The owner's app finds the box over mDNS (`_edge-agent._tcp`), in network namespaces the test
//! makes (multicast never leaves them): the box in one, `edgectl` in the other.

#![allow(
    clippy::tests_outside_test_module,
    reason = "an integration test crate: its tests need no test module"
)]

use std::process::Command;
use std::time::Duration;

use edge_tests::hub::eventually;
use edge_tests::netns::{Link, emulated, unavailable};
use edge_tests::{NotifySocket, Running, Sandbox, bin, in_ns, wait_exit};

/// Why this test cannot run here (then it says so, loudly), if it cannot.
fn skip(test: &str) -> bool {
    if let Some(why) = unavailable(&["ip"]) {
        eprintln!("SKIPPED {test}: {why}");
        return true;
    }
    if emulated() {
        // Seen failing under qemu-user (nothing discovered) while it passes natively; the cause is
        // not found yet (the emulator's handling of multicast socket options is the suspect).
        eprintln!(
            "SKIPPED {test}: fails under qemu-user emulation, cause not yet found; runs natively"
        );
        return true;
    }
    false
}

/// `edgectl discover` from the hub's side until `device_id` is seen with its window `pairing`
/// (`open`, `closed`), for up to `within`; the box's JSON line.
fn discover(
    link: &Link,
    app: &std::path::Path,
    device_id: &str,
    pairing: &str,
    within: Duration,
) -> Option<serde_json::Value> {
    eventually(within, || {
        let out = in_ns(&link.hub_ns, bin("edgectl"))
            .arg("--config-dir")
            .arg(app)
            .args(["discover", "--timeout", "3", "--json"])
            .output()
            .expect("edgectl");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|b| b["device_id"] == device_id && b["pairing"] == pairing)
    })
}

/// An agent in the link's device namespace, listening for its owner on the link's address.
struct Device {
    agent: Running,
    listen: String,
    /// `edge-agent pairing-code --json`.
    code: serde_json::Value,
    _sandbox: Sandbox,
}

impl Device {
    fn start(link: &Link) -> Self {
        let listen = format!("{}:7466", link.device_ip);
        let sandbox = Sandbox::new(&format!("[pairing]\nlisten = \"{listen}\"\n"));
        let mut notify = NotifySocket::bind_fresh(sandbox.dir.path());
        let agent = sandbox.start_in(Some(&link.device_ns), &notify, &[]);
        assert!(
            notify.wait_for("READY=1", Duration::from_secs(120)),
            "{:?}",
            notify.seen
        );
        let code = sandbox
            .agent(&["pairing-code", "--json"])
            .output()
            .expect("code");
        let code = serde_json::from_slice(&code.stdout).expect("JSON");
        Self {
            agent,
            listen,
            code,
            _sandbox: sandbox,
        }
    }

    fn id(&self) -> String {
        self.code["device_id"].as_str().expect("id").to_owned()
    }

    /// Asserts that a discovered box (`edgectl discover --json`) is announced at our address.
    fn is_announced_in(&self, found: &serde_json::Value) {
        assert!(
            found["addresses"]
                .as_array()
                .is_some_and(|a| a.iter().any(|x| x == self.listen.as_str())),
            "{found}"
        );
    }

    fn stop(mut self) {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.agent.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .expect("SIGTERM");
        assert!(wait_exit(&mut self.agent, Duration::from_secs(30)).success());
    }
}

#[test]
fn the_app_finds_the_box_over_mdns_and_sees_when_it_can_pair() {
    if skip("the_app_finds_the_box_over_mdns_and_sees_when_it_can_pair") {
        return;
    }
    let link = Link::new();
    let device = Device::start(&link);
    let (listen, code, id) = (&device.listen, &device.code, device.id());
    let app = tempfile::tempdir().expect("tempdir");
    let seen = |pairing: &str| discover(&link, app.path(), &id, pairing, Duration::from_secs(30));
    let found = seen("open").expect("the box is announced with its window open");
    device.is_announced_in(&found);

    let qr = code["qr_payload"].as_str().expect("qr");
    let paired = edge_tests::output_with_stdin(
        in_ns(&link.hub_ns, bin("edgectl"))
            .arg("--config-dir")
            .arg(app.path())
            .args(["pair", "--addr", listen]),
        qr,
    );
    assert!(
        paired.status.success(),
        "{}",
        String::from_utf8_lossy(&paired.stderr)
    );
    seen("closed").expect("after pairing the announcement says the window is closed");

    device.stop();
}

#[test]
fn a_link_that_comes_up_after_the_agent_started_is_announced() {
    let test = "a_link_that_comes_up_after_the_agent_started_is_announced";
    if skip(test) {
        return;
    }
    // The box's side of the link is down when the agent starts (its address already set, so the
    // listener can bind to it): the responder finds no usable link and has to start again later.
    let link = Link::new();
    let ip = |args: &[&str]| {
        let status = Command::new("ip")
            .args(["-n", &link.device_ns, "link", "set", &link.device_if()])
            .args(args)
            .status()
            .expect("ip");
        assert!(status.success(), "ip link set {args:?}");
    };
    ip(&["down"]);
    let device = Device::start(&link);
    let id = device.id();
    // Let the responder settle on what it sees now: no link.
    std::thread::sleep(Duration::from_secs(3));
    ip(&["up"]);
    let app = tempfile::tempdir().expect("tempdir");
    let found = discover(&link, app.path(), &id, "open", Duration::from_secs(30))
        .expect("the box is announced on the link that came up");
    device.is_announced_in(&found);
    device.stop();
}
