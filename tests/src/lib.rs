//! Helpers for the workspace end-to-end tests: find the built binaries, write a config for a
//! throwaway agent, listen on a `NOTIFY_SOCKET` like systemd does, and run a hub.

pub mod hub;
pub mod netns;

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

/// Path of a workspace binary built for the same target and profile as this test.
///
/// `cargo test --workspace` builds `edge-agent` and `edge-hub` beside the test executables
/// (`target/<..>/deps/..` for tests, `target/<..>/<name>` for binaries). `EDGE_BIN_DIR` overrides
/// the directory.
pub fn bin(name: &str) -> PathBuf {
    if let Ok(dir) = std::env::var("EDGE_BIN_DIR") {
        return PathBuf::from(dir).join(name);
    }
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target directory");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is not built; run `cargo test --workspace` (or `cargo build -p edge-agent`) first",
        path.display()
    );
    path
}

/// A temporary directory holding an agent's config, state and sockets.
pub struct Sandbox {
    /// The directory; removed on drop.
    pub dir: tempfile::TempDir,
}

impl Sandbox {
    /// A sandbox whose `config.toml` is `extra` appended to a base that keeps everything inside
    /// and skips the GPU capability benchmark.
    pub fn new(extra: &str) -> Self {
        Self::with_benchmark(extra, false)
    }

    /// As [`Sandbox::new`], choosing whether the agent measures its GPU at start.
    pub fn with_benchmark(extra: &str, measure: bool) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let base = format!(
            "[agent]\nstate_dir = \"{0}/state\"\nsample_interval_secs = 1\nshutdown_grace_secs = 5\n\
             [log]\nformat = \"text\"\nlevel = \"info\"\n[status]\nsocket = \"{0}/status.sock\"\n\
             [gpu]\nmeasure_capability = {measure}\n{extra}",
            dir.path().display()
        );
        std::fs::write(dir.path().join("config.toml"), base).expect("write config");
        Self { dir }
    }

    /// The config file.
    pub fn config(&self) -> PathBuf {
        self.dir.path().join("config.toml")
    }

    /// The state directory.
    pub fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// `edge-agent status` of the agent running in this sandbox, as JSON.
    pub fn status(&self) -> serde_json::Value {
        let out = self.agent(&["status"]).output().expect("status");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("status JSON")
    }

    /// `edge-agent --config <config> <args>`, with Mesa's device-select layer quietened.
    pub fn agent(&self, args: &[&str]) -> Command {
        self.agent_in(None, args)
    }

    /// [`Sandbox::agent`] in the network namespace `ns` (here when `None`).
    pub fn agent_in(&self, ns: Option<&str>, args: &[&str]) -> Command {
        let mut cmd = match ns {
            Some(ns) => in_ns(ns, bin("edge-agent")),
            None => Command::new(bin("edge-agent")),
        };
        cmd.arg("--config").arg(self.config()).args(args);
        cmd.env("NODEVICE_SELECT", "1")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC");
        cmd
    }
}

/// Runs `command` with `input` on its stdin (a secret it must not take on its command line) and
/// returns its output.
pub fn output_with_stdin(command: &mut Command, input: &str) -> std::process::Output {
    use std::io::Write;
    let mut child = command
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin
        .write_all(format!("{input}\n").as_bytes())
        .expect("write stdin");
    drop(stdin);
    child.wait_with_output().expect("wait")
}

/// `program` run in the network namespace `ns` (`ip netns exec`).
pub fn in_ns(ns: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns]).arg(program);
    cmd
}

/// A process a test started, killed if the test ends (or panics) without reaping it, so a failed
/// test never leaves an agent behind holding the test runner's output open.
pub struct Running(pub Child);

impl std::ops::Deref for Running {
    type Target = Child;

    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Running {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

impl Sandbox {
    /// Starts the daemon with `notify` as its `NOTIFY_SOCKET`, extra environment `env`, and its
    /// logs discarded.
    pub fn start(&self, notify: &NotifySocket, env: &[(&str, &str)]) -> Running {
        self.start_in(None, notify, env)
    }

    /// [`Sandbox::start`] in the network namespace `ns` (here when `None`).
    pub fn start_in(
        &self,
        ns: Option<&str>,
        notify: &NotifySocket,
        env: &[(&str, &str)],
    ) -> Running {
        let mut cmd = self.agent_in(ns, &[]);
        cmd.env("NOTIFY_SOCKET", &notify.path)
            .stderr(std::process::Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        Running(cmd.spawn().expect("start edge-agent"))
    }
}

/// A datagram socket standing in for systemd's notify socket.
pub struct NotifySocket {
    socket: UnixDatagram,
    /// Its path, for `NOTIFY_SOCKET`.
    pub path: PathBuf,
    /// Every message received so far, one entry per `KEY=value` line.
    pub seen: Vec<String>,
}

impl NotifySocket {
    /// Binds `notify.sock` in `dir`.
    pub fn bind(dir: &Path) -> Self {
        let path = dir.join("notify.sock");
        let socket = UnixDatagram::bind(&path).expect("bind notify socket");
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        Self {
            socket,
            path,
            seen: Vec::new(),
        }
    }

    /// Binds a notify socket in `dir`, replacing one left by an earlier agent run.
    pub fn bind_fresh(dir: &Path) -> Self {
        let _ = std::fs::remove_file(dir.join("notify.sock"));
        Self::bind(dir)
    }

    /// Reads until a line equal to `want` arrives (true) or `within` passes (false).
    pub fn wait_for(&mut self, want: &str, within: Duration) -> bool {
        if self.seen.iter().any(|l| l == want) {
            return true;
        }
        let deadline = Instant::now() + within;
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline {
            if let Ok(n) = self.socket.recv(&mut buf) {
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                let found = text.lines().any(|l| l == want);
                self.seen.extend(text.lines().map(str::to_owned));
                if found {
                    return true;
                }
            }
        }
        false
    }
}

/// Waits for `child` to exit, up to `within`; kills it and panics if it does not.
pub fn wait_exit(child: &mut Child, within: Duration) -> ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("process {} did not exit within {within:?}", child.id());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A loopback port free right now (bound and released), for a server a test starts later.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// CPU seconds process `pid` has used so far (utime + stime from `/proc/<pid>/stat`).
pub fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or(vec![], |(_, rest)| rest.split_whitespace().collect());
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // After the command name: state is field 0, utime 11, stime 12 (in clock ticks of 1/100 s).
    (ticks(11) + ticks(12)) / 100.0
}
