//! Network namespaces made by a test: two hosts joined by a veth pair, with optional `tc tbf`
//! rate shaping and `nftables` random loss. Everything is removed on drop. Needs root, `ip`, `tc`
//! and (for loss) `nft`; [`unavailable`] says why a test cannot run here.

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Why namespaces cannot be made here, if they cannot. With `EDGE_REQUIRE_NETNS=1` (as in
/// `./devtool test`) a missing capability is a failure, not a skip.
pub fn unavailable(tools: &[&str]) -> Option<String> {
    let why = if !nix::unistd::geteuid().is_root() {
        Some("not root".to_owned())
    } else {
        tools
            .iter()
            .find(|tool| Command::new(tool).arg("-V").output().is_err())
            .map(|tool| format!("{tool} is not installed"))
    };
    if let Some(why) = &why
        && std::env::var("EDGE_REQUIRE_NETNS").is_ok_and(|v| v == "1")
    {
        panic!("network namespace test cannot run ({why}) and EDGE_REQUIRE_NETNS=1");
    }
    why
}

/// Whether this test runs under CPU emulation (qemu-user: an aarch64 build on an x86 host), where
/// TLS throughput is bound by the emulated CPU, not by the link.
pub fn emulated() -> bool {
    cfg!(target_arch = "aarch64")
        && std::fs::read_to_string("/proc/cpuinfo")
            .is_ok_and(|c| c.contains("GenuineIntel") || c.contains("AuthenticAMD"))
}

/// Two namespaces, `hub` and `device`, joined by a veth pair on a /24 of their own.
pub struct Link {
    /// The hub side's namespace.
    pub hub_ns: String,
    /// The device side's namespace.
    pub device_ns: String,
    /// The hub side's address.
    pub hub_ip: String,
    /// The device side's address.
    pub device_ip: String,
    hub_if: String,
    device_if: String,
}

fn sh(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect("run a network command");
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Link {
    /// Makes the namespaces and the link, both ends up, loopback up.
    pub fn new() -> Self {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let id = format!("{}x{n}", std::process::id());
        let subnet = format!("10.{}.{}", 200 + n % 50, std::process::id() % 250);
        let link = Self {
            hub_ns: format!("edge-h-{id}"),
            device_ns: format!("edge-d-{id}"),
            hub_ip: format!("{subnet}.1"),
            device_ip: format!("{subnet}.2"),
            hub_if: format!("eh{id}").chars().take(15).collect(),
            device_if: format!("ed{id}").chars().take(15).collect(),
        };
        sh(&["ip", "netns", "add", &link.hub_ns]);
        sh(&["ip", "netns", "add", &link.device_ns]);
        sh(&[
            "ip",
            "link",
            "add",
            &link.hub_if,
            "netns",
            &link.hub_ns,
            "type",
            "veth",
            "peer",
            "name",
            &link.device_if,
            "netns",
            &link.device_ns,
        ]);
        for (ns, dev, ip) in [
            (&link.hub_ns, &link.hub_if, &link.hub_ip),
            (&link.device_ns, &link.device_if, &link.device_ip),
        ] {
            sh(&[
                "ip",
                "-n",
                ns,
                "addr",
                "add",
                &format!("{ip}/24"),
                "dev",
                dev,
            ]);
            sh(&["ip", "-n", ns, "link", "set", dev, "up"]);
            sh(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        }
        link.settle();
        link
    }

    /// Waits (up to 5 s) until neither side has a tentative address: IPv6 duplicate address
    /// detection runs for about a second after a link comes up, and a multicast responder started
    /// before it ends may never use the link (seen with mdns-sd).
    fn settle(&self) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            let tentative = [&self.hub_ns, &self.device_ns].iter().any(|ns| {
                Command::new("ip")
                    .args(["-n", ns, "addr", "show", "tentative"])
                    .output()
                    .is_ok_and(|o| !o.stdout.is_empty())
            });
            if !tentative {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    /// The device side's interface (in `device_ns`).
    pub fn device_if(&self) -> String {
        self.device_if.clone()
    }

    /// Shapes both directions to `mbit` megabits per second with a token bucket.
    pub fn shape(&self, mbit: u32) {
        // Ten milliseconds of tokens: enough for the timer, small enough to keep the rate.
        let burst = format!("{}", (mbit as u64 * 1250).max(16 * 1024));
        for (ns, dev) in [
            (&self.hub_ns, &self.hub_if),
            (&self.device_ns, &self.device_if),
        ] {
            sh(&[
                "ip",
                "netns",
                "exec",
                ns,
                "tc",
                "qdisc",
                "add",
                "dev",
                dev,
                "root",
                "tbf",
                "rate",
                &format!("{mbit}mbit"),
                "burst",
                &burst,
                "latency",
                "50ms",
            ]);
        }
    }

    /// Drops one packet in `one_in` at random, leaving the device (nftables; this kernel has no
    /// netem).
    pub fn lose(&self, one_in: u32) {
        let nft = |args: &[&str]| {
            let mut all = vec!["ip", "netns", "exec", &self.device_ns, "nft"];
            all.extend_from_slice(args);
            sh(&all);
        };
        nft(&["add", "table", "inet", "lossy"]);
        nft(&[
            "add",
            "chain",
            "inet",
            "lossy",
            "out",
            "{ type filter hook output priority 0 ; }",
        ]);
        let one_in = one_in.to_string();
        nft(&[
            "add",
            "rule",
            "inet",
            "lossy",
            "out",
            "oifname",
            &self.device_if,
            "numgen",
            "random",
            "mod",
            &one_in,
            "==",
            "0",
            "counter",
            "drop",
        ]);
    }

    /// Packets the loss rule dropped so far.
    pub fn lost(&self) -> u64 {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.device_ns,
                "nft",
                "list",
                "table",
                "inet",
                "lossy",
            ])
            .output()
            .expect("nft list");
        let text = String::from_utf8_lossy(&out.stdout);
        text.split_whitespace()
            .skip_while(|w| *w != "packets")
            .nth(1)
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }
}

impl Default for Link {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        // Deleting a namespace deletes its end of the veth, and with it the other end.
        for ns in [&self.hub_ns, &self.device_ns] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}
