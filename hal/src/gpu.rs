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

/// Discovery in a child process that prints the worker's hello (one JSON line) on stdout.
#[derive(Debug, Clone)]
pub struct IsolatedProbe {
    /// Program and arguments, the program first; [`IsolatedProbe::worker`] makes `<worker> hello`.
    pub command: Vec<OsString>,
    /// Deadline; the child is killed when it passes.
    pub timeout: Duration,
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
    /// `worker hello`, killed after 30 s (a driver that takes longer is taken for hung).
    pub fn worker(worker: &Path) -> Self {
        Self {
            command: vec![worker.into(), "hello".into()],
            timeout: Duration::from_secs(30),
        }
    }
}

impl GpuProbe for IsolatedProbe {
    fn discover(&self) -> GpuStatus {
        let unavailable = |reason: String| GpuStatus::Unavailable { reason };
        let Some((program, args)) = self.command.split_first() else {
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
            Ok(Hello::Ready { gpu }) => GpuStatus::Available(gpu),
            Ok(Hello::NoGpu { reason }) => unavailable(reason),
            Err(e) => unavailable(format!(
                "the answer of the GPU probe {shown} is not the worker's hello: {e}"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn isolated(script: &str, timeout_ms: u64) -> GpuStatus {
        IsolatedProbe {
            command: ["sh", "-c", script].map(OsString::from).to_vec(),
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
            command: vec!["/nonexistent/probe".into()],
            timeout: Duration::from_secs(1),
        };
        assert!(reason(missing.discover()).contains("/nonexistent/probe"));
    }
}
