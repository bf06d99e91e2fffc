//! A real `edge-hub` process for end-to-end tests, and what it stored.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::netns::Link;
use crate::{Sandbox, bin};

/// A hub's directory (certificates, database) with one owner, `alice`.
pub struct HubDir {
    /// The directory; removed on drop.
    pub dir: tempfile::TempDir,
    /// Alice's owner binding token.
    pub token: String,
}

/// A running hub; killed on drop.
pub struct HubProcess {
    child: Child,
    /// The main listener.
    pub main: SocketAddr,
    /// The echo listener.
    pub echo: SocketAddr,
}

/// A hub serving inside a [`Link`]'s hub namespace, for an agent in its device namespace.
pub struct Across {
    /// The hub's directory.
    pub hub: HubDir,
    /// The hub, listening on the link's hub address (main and echo).
    pub server: HubProcess,
}

impl Across {
    /// `edge-hub init` and `serve` on `link`'s hub side.
    pub fn link(link: &Link) -> Self {
        let hub = HubDir::init(&[&link.hub_ip]);
        let any_port = format!("{}:0", link.hub_ip);
        let server = hub.serve(&any_port, &any_port, Some(&link.hub_ns));
        Self { hub, server }
    }

    /// The hub's main URL as the device namespace reaches it.
    pub fn url(&self) -> String {
        format!("https://{}", self.server.main)
    }

    /// [`HubDir::agent_sandbox`] pointed at this hub.
    pub fn agent_sandbox(&self, extra: &str) -> Sandbox {
        self.hub.agent_sandbox(&self.url(), extra)
    }
}

impl HubDir {
    /// `edge-hub init` for `names` (e.g. `127.0.0.1`), then `owner add alice`.
    pub fn init(names: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut init = Self::command(dir.path());
        init.arg("init");
        for name in names {
            init.args(["--name", name]);
        }
        run(&mut init);
        let token = run(Self::command(dir.path()).args(["owner", "add", "alice"]))
            .trim()
            .to_owned();
        Self { dir, token }
    }

    fn command(dir: &Path) -> Command {
        let mut cmd = Command::new(bin("edge-hub"));
        cmd.arg("--dir").arg(dir);
        cmd
    }

    /// The CA agents pin.
    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// Serves on `listen` and `echo` (port 0 for any), optionally inside network namespace
    /// `netns`; returns once it listens.
    pub fn serve(&self, listen: &str, echo: &str, netns: Option<&str>) -> HubProcess {
        self.serve_with(listen, echo, netns, &[])
    }

    /// As [`HubDir::serve`], with extra `serve` arguments (e.g. `--max-body-bytes`).
    pub fn serve_with(
        &self,
        listen: &str,
        echo: &str,
        netns: Option<&str>,
        extra: &[&str],
    ) -> HubProcess {
        let hub = bin("edge-hub");
        let mut cmd = match netns {
            Some(ns) => {
                let mut cmd = Command::new("ip");
                cmd.args(["netns", "exec", ns]).arg(hub);
                cmd
            }
            None => Command::new(hub),
        };
        cmd.arg("--dir")
            .arg(self.dir.path())
            .args(["serve", "--listen", listen, "--echo-listen", echo])
            .args(["--rate", "1000", "--burst", "1000"])
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd.spawn().expect("start edge-hub");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read the hub's first line");
        let addr = |key: &str| -> SocketAddr {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(key))
                .and_then(|a| a.parse().ok())
                .unwrap_or_else(|| panic!("no {key} in the hub's first line {line:?}"))
        };
        let (main, echo) = (addr("main="), addr("echo="));
        HubProcess { child, main, echo }
    }

    /// An agent sandbox reporting to this hub at `hub_url`: heartbeat every second, backoff
    /// capped at 2 s, no bandwidth test in the capability reports; `extra` is appended to
    /// `[network]`.
    pub fn agent_sandbox(&self, hub_url: &str, extra: &str) -> Sandbox {
        Sandbox::new(&format!(
            "[network]\nhub_url = \"{hub_url}\"\nca_cert = \"{}\"\nowner_token = \"{}\"\n\
             heartbeat_secs = 1\nbackoff_max_secs = 2\nmeasure_bandwidth = false\n{extra}",
            self.ca().display(),
            self.token
        ))
    }

    /// Every report the hub stored for `device`, in seq order (JSON objects).
    pub fn reports(&self, device: &str) -> Vec<serde_json::Value> {
        run(Self::command(self.dir.path()).args(["reports", device]))
            .lines()
            .map(|l| serde_json::from_str(l).expect("report line is JSON"))
            .collect()
    }

    /// Queues the job in `file` for `device` (`edge-hub job submit`).
    pub fn submit(&self, device: &str, file: &Path) {
        run(Self::command(self.dir.path())
            .args(["job", "submit", "--device", device])
            .arg(file));
    }

    /// Adds `file` as a job input blob (`edge-hub blob add`); its SHA-256, the blob's name.
    pub fn add_blob(&self, file: &Path) -> String {
        run(Self::command(self.dir.path())
            .args(["blob", "add"])
            .arg(file))
        .trim()
        .to_owned()
    }

    /// Where the hub keeps the blob named `sha256` (`edge_hub::blobs_dir`).
    pub fn blob_file(&self, sha256: &str) -> std::path::PathBuf {
        self.dir.path().join("blobs").join(sha256)
    }

    /// `edge-hub jobs`: every job, newest first.
    pub fn jobs(&self) -> Vec<serde_json::Value> {
        run(Self::command(self.dir.path()).arg("jobs"))
            .lines()
            .map(|l| serde_json::from_str(l).expect("job line is JSON"))
            .collect()
    }

    /// `edge-hub device <id>`, or `None` if the hub does not know it yet.
    pub fn device(&self, device: &str) -> Option<serde_json::Value> {
        let out = Self::command(self.dir.path())
            .args(["device", device])
            .output()
            .expect("run edge-hub");
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).expect("device is JSON"))
    }
}

impl HubProcess {
    /// Stops the hub at once (SIGKILL).
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for HubProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run edge-hub");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Polls `check` every 100 ms until it returns `Some` or `within` passes.
pub fn eventually<T>(within: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = std::time::Instant::now() + within;
    loop {
        if let Some(value) = check() {
            return Some(value);
        }
        if std::time::Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The reports waiting in an agent's queue (`state/outbox.db`): seq and signed text.
pub fn outbox(state_dir: &Path) -> Vec<(u64, String)> {
    let conn = rusqlite::Connection::open_with_flags(
        state_dir.join("outbox.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .expect("open outbox");
    let mut stmt = conn
        .prepare("SELECT seq, envelope FROM outbox ORDER BY seq")
        .expect("query");
    stmt.query_map([], |r| Ok((r.get::<_, i64>(0)? as u64, r.get(1)?)))
        .expect("rows")
        .collect::<Result<_, _>>()
        .expect("rows")
}

/// A TCP proxy that holds every chunk it forwards for `delay`, each way: a slow link.
pub struct DelayProxy {
    /// Where clients connect.
    pub addr: SocketAddr,
}

impl DelayProxy {
    /// Forwards connections on a fresh loopback port to `upstream`. Its threads end with the
    /// test process.
    pub fn start(upstream: SocketAddr, delay: Duration) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let addr = listener.local_addr().expect("addr");
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = std::net::TcpStream::connect(upstream) else {
                    continue;
                };
                for (from, to) in [
                    (client.try_clone(), server.try_clone()),
                    (server.try_clone(), client.try_clone()),
                ] {
                    let (Ok(mut from), Ok(mut to)) = (from, to) else {
                        continue;
                    };
                    std::thread::spawn(move || {
                        use std::io::{Read, Write};
                        let mut buf = [0u8; 16 * 1024];
                        while let Ok(n) = from.read(&mut buf) {
                            if n == 0 {
                                break;
                            }
                            std::thread::sleep(delay);
                            if to.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                        let _ = to.shutdown(std::net::Shutdown::Write);
                    });
                }
            }
        });
        Self { addr }
    }
}
