//! GPU discovery in a child process: the GPU worker (`edge-gpu-worker hello`) opens the device as
//! it does to serve jobs, prints the first line it would serve with (an
//! [`edge_jobs::worker::Hello`]: the adapter, its driver and limits, or why there is no GPU) and
//! exits. A daemon must not discover in-process: loading a Vulkan driver maps it into the process
//! for good (lavapipe's LLVM alone is ~45 MiB resident, and the loader does not unmap it on
//! `vkDestroyInstance`), and a hung driver in a child is killed at the deadline instead of being
//! abandoned.

use std::ffi::OsString;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use edge_jobs::adapter::GpuStatus;
use edge_jobs::worker::Hello;

/// GPU adapter discovery.
pub trait GpuProbe: Send + Sync {
    /// The best adapter, or why there is none. Never panics, never blocks past its deadline.
    fn discover(&self) -> GpuStatus;
}

/// Discovery in a worker process that says the worker's hello (one JSON line).
#[derive(Debug, Clone)]
pub struct IsolatedProbe {
    /// How the worker is reached.
    pub launch: WorkerLaunch,
    /// Deadline; a child is killed, a socket closed, when it passes.
    pub timeout: Duration,
}

/// How the agent gets a GPU worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkerLaunch {
    /// A child process: program and arguments, the program first, started with
    /// [`worker_command`]; it talks on its stdin and stdout. How a build tree and the tests run
    /// it.
    Command(Vec<OsString>),
    /// A connection to a socket on which the service manager starts one worker per connection,
    /// under a unit of its own (its own user, no network, a memory cgroup: the image's
    /// `edge-gpu-worker.socket`); the worker talks on the connection and exits when it closes.
    /// How the box runs it: an unprivileged agent cannot start a process as another user.
    Socket(PathBuf),
}

impl WorkerLaunch {
    /// The worker beside this program, run as `worker ARGS`; or the socket, when one is
    /// configured.
    pub fn new(socket: Option<&Path>, args: &[&str]) -> Self {
        match socket {
            Some(socket) => Self::Socket(socket.to_owned()),
            None => {
                let mut command = vec![worker_beside_this_program().into_os_string()];
                command.extend(args.iter().map(OsString::from));
                Self::Command(command)
            }
        }
    }

    /// The program or the socket, for messages.
    pub fn shown(&self) -> String {
        match self {
            Self::Command(command) => command
                .first()
                .map_or_else(String::new, |p| p.to_string_lossy().into_owned()),
            Self::Socket(path) => path.display().to_string(),
        }
    }
}

/// The GPU worker's file name; it is installed beside the agent.
pub const WORKER_NAME: &str = "edge-gpu-worker";

/// What of the agent's environment the worker gets: the GPU stack's settings (Mesa, the Vulkan
/// loader, llvmpipe, the device-select layer) and where its shader cache goes. Nothing else: the
/// agent's environment is none of a shader's business.
pub const WORKER_ENV: &[&str] = &[
    "MESA_",
    "VK_",
    "LP_",
    "NODEVICE_SELECT",
    "HOME",
    "XDG_CACHE_HOME",
    "RUST_BACKTRACE",
];

/// `program` with a cleared environment but for [`WORKER_ENV`] (a name, or a prefix ending in
/// `_`): how the agent starts the GPU worker, for discovery and for jobs.
pub fn worker_command(program: &std::ffi::OsStr) -> Command {
    let mut command = Command::new(program);
    command.env_clear();
    for (name, value) in std::env::vars_os() {
        let text = name.to_string_lossy();
        let passed = WORKER_ENV.iter().any(|allowed| {
            if allowed.ends_with('_') {
                text.starts_with(allowed)
            } else {
                text == *allowed
            }
        });
        if passed {
            command.env(name, value);
        }
    }
    command
}

/// The GPU worker beside the running program (`/usr/bin/edge-gpu-worker` beside
/// `/usr/bin/edge-agent`; `target/debug/` beside `target/debug/` in a build tree).
pub fn worker_beside_this_program() -> PathBuf {
    worker_beside(&std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/usr/bin/edge-agent")))
}

/// The GPU worker beside `program`.
pub fn worker_beside(program: &Path) -> PathBuf {
    program.with_file_name(WORKER_NAME)
}

impl IsolatedProbe {
    /// `worker hello`, killed after [`PROBE_TIMEOUT`].
    pub fn worker(worker: &Path) -> Self {
        Self {
            launch: WorkerLaunch::Command(vec![worker.into(), "hello".into()]),
            timeout: PROBE_TIMEOUT,
        }
    }
}

/// How long discovery may take (a driver that takes longer is taken for hung).
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(30);

/// Most bytes of a hello (a real one is well under 4 KiB).
const HELLO_LIMIT: u64 = 64 << 10;

impl GpuProbe for IsolatedProbe {
    fn discover(&self) -> GpuStatus {
        let unavailable = |reason: String| GpuStatus::Unavailable { reason };
        let command = match &self.launch {
            WorkerLaunch::Command(command) => command,
            WorkerLaunch::Socket(socket) => {
                return match hello_from_socket(socket, self.timeout) {
                    Ok(hello) => hello.into(),
                    Err(reason) => unavailable(reason),
                };
            }
        };
        let Some((program, args)) = command.split_first() else {
            return unavailable("no probe command configured".into());
        };
        let shown = program.to_string_lossy();
        let mut child = match worker_command(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
        {
            Ok(child) => child,
            Err(e) => return unavailable(format!("cannot run the GPU probe {shown}: {e}")),
        };
        let deadline = Instant::now() + self.timeout;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Ok(None) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return unavailable(format!(
                        "the Vulkan driver did not answer within {:?}; the probe was killed",
                        self.timeout
                    ));
                }
                Err(e) => return unavailable(format!("cannot wait for the GPU probe: {e}")),
            }
        };
        let mut out = String::new();
        if let Some(mut stdout) = child.stdout.take() {
            let _ = stdout.read_to_string(&mut out);
        }
        if !status.success() {
            return unavailable(format!(
                "the GPU probe {shown} failed ({status}); the driver may have crashed"
            ));
        }
        match serde_json::from_str::<Hello>(out.trim()) {
            Ok(hello) => hello.into(),
            Err(e) => unavailable(format!(
                "the answer of the GPU probe {shown} is not the worker's hello: {e}"
            )),
        }
    }
}

/// The first line of a worker reached through `socket`, within `timeout`; the connection is then
/// closed, and the worker with it.
fn hello_from_socket(socket: &Path, timeout: Duration) -> Result<Hello, String> {
    use std::io::BufRead;
    let shown = socket.display();
    let stream = std::os::unix::net::UnixStream::connect(socket)
        .map_err(|e| format!("cannot reach the GPU worker at {shown}: {e}"))?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|e| format!("{shown}: {e}"))?;
    let mut line = String::new();
    std::io::BufReader::new(stream.take(HELLO_LIMIT))
        .read_line(&mut line)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => format!(
                "the Vulkan driver did not answer within {timeout:?}; the GPU worker at {shown} \
                 was left"
            ),
            _ => format!("reading the GPU worker's hello from {shown}: {e}"),
        })?;
    if line.is_empty() {
        return Err(format!(
            "the GPU worker at {shown} closed the connection before its hello; the driver may \
             have crashed"
        ));
    }
    serde_json::from_str(line.trim())
        .map_err(|e| format!("the answer of the GPU worker at {shown} is not its hello: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn isolated(script: &str, timeout_ms: u64) -> GpuStatus {
        IsolatedProbe {
            launch: WorkerLaunch::Command(["sh", "-c", script].map(OsString::from).to_vec()),
            timeout: Duration::from_millis(timeout_ms),
        }
        .discover()
    }

    fn reason(status: GpuStatus) -> String {
        match status {
            GpuStatus::Unavailable { reason } => reason,
            other => panic!("expected unavailable, got {other:?}"),
        }
    }

    #[test]
    fn isolated_probe_reads_the_childs_answer() {
        let status = isolated(r#"echo '{"no_gpu":{"reason":"no driver"}}'"#, 10_000);
        assert_eq!(reason(status), "no driver");
    }

    #[test]
    fn a_hung_probe_is_killed_at_the_deadline() {
        let start = Instant::now();
        let why = reason(isolated("sleep 30", 300));
        assert!(
            why.contains("did not answer") && why.contains("killed"),
            "{why}"
        );
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "not killed: {:?}",
            start.elapsed()
        );
    }

    #[test]
    fn a_crashing_or_babbling_probe_is_no_gpu_with_the_reason() {
        let crashed = reason(isolated("kill -SEGV $$", 10_000));
        assert!(
            crashed.contains("probe sh failed") && crashed.contains("SIGSEGV"),
            "{crashed}"
        );
        assert!(reason(isolated("echo hello", 10_000)).contains("not the worker's hello"));
        let missing = IsolatedProbe {
            launch: WorkerLaunch::Command(vec!["/nonexistent/probe".into()]),
            timeout: Duration::from_secs(1),
        };
        assert!(reason(missing.discover()).contains("/nonexistent/probe"));
    }
}
