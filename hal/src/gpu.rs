//! GPU adapter discovery through wgpu's Vulkan backend.
//!
//! [`WgpuProbe`] enumerates adapters in this process, on its own thread with a deadline, so a
//! driver that hangs or panics yields [`GpuStatus::Unavailable`] with the reason instead of stalling
//! the caller (a hung thread cannot be killed; it is left behind and the reason says so).
//!
//! [`IsolatedProbe`] runs the same discovery in a child process and reads its answer. A daemon
//! should use it: loading a Vulkan driver maps it into the process for good (lavapipe's LLVM alone
//! is ~45 MiB resident, and the loader does not unmap it on `vkDestroyInstance`), and a hung driver
//! in a child is killed at the deadline instead of being abandoned.

use std::ffi::OsString;
use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// What discovery found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum GpuStatus {
    /// An adapter the agent can use.
    Available(GpuInfo),
    /// No usable adapter, and why.
    Unavailable {
        /// Human-readable reason, e.g. the loader's error.
        reason: String,
    },
}

/// The adapter's identity and the limits that bound the work it can take.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuInfo {
    /// Adapter name, e.g. `Adreno (TM) 650` or `llvmpipe (LLVM 15.0.6, 256 bits)`.
    pub name: String,
    /// Graphics API backend (`vulkan`).
    pub backend: String,
    /// `discrete`, `integrated`, `virtual`, `cpu` or `other`.
    pub device_type: String,
    /// Driver name, e.g. `llvmpipe` or `Qualcomm Technologies Inc. Adreno Vulkan Driver`.
    pub driver: String,
    /// Driver version string, e.g. `Mesa 22.3.6 (LLVM 15.0.6)`.
    pub driver_info: String,
    /// PCI-style vendor id.
    pub vendor_id: u32,
    /// PCI-style device id.
    pub device_id: u32,
    /// Limits relevant to compute work.
    pub limits: GpuLimits,
}

/// Compute-relevant adapter limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuLimits {
    /// Largest buffer, in bytes.
    pub max_buffer_size: u64,
    /// Largest storage buffer binding, in bytes.
    pub max_storage_buffer_binding_size: u64,
    /// Largest uniform buffer binding, in bytes.
    pub max_uniform_buffer_binding_size: u64,
    /// Storage buffers per shader stage.
    pub max_storage_buffers_per_shader_stage: u32,
    /// Workgroup shared memory, in bytes.
    pub max_compute_workgroup_storage_size: u32,
    /// Invocations per workgroup.
    pub max_compute_invocations_per_workgroup: u32,
    /// Workgroup size in x, y and z.
    pub max_compute_workgroup_size: [u32; 3],
    /// Workgroups per dispatch dimension.
    pub max_compute_workgroups_per_dimension: u32,
}

/// GPU adapter discovery.
pub trait GpuProbe: Send + Sync {
    /// The best adapter, or why there is none. Never panics, never blocks past its deadline.
    fn discover(&self) -> GpuStatus;
}

/// Discovery through wgpu on the Vulkan backend, honouring the loader's `VK_ICD_FILENAMES`.
#[derive(Debug, Clone)]
pub struct WgpuProbe {
    /// How long enumeration may take before the driver is presumed hung.
    pub timeout: Duration,
}

impl Default for WgpuProbe {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(20),
        }
    }
}

impl GpuProbe for WgpuProbe {
    fn discover(&self) -> GpuStatus {
        let (tx, rx) = mpsc::sync_channel(1);
        let spawned = std::thread::Builder::new()
            .name("gpu-probe".into())
            .spawn(move || {
                let status = std::panic::catch_unwind(probe).unwrap_or_else(|panic| {
                    let what = panic
                        .downcast_ref::<&str>()
                        .map(|s| (*s).to_owned())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_default();
                    GpuStatus::Unavailable {
                        reason: format!("the Vulkan driver panicked during discovery: {what}"),
                    }
                });
                let _ = tx.send(status);
            });
        if let Err(e) = spawned {
            return GpuStatus::Unavailable {
                reason: format!("cannot start the discovery thread: {e}"),
            };
        }
        rx.recv_timeout(self.timeout)
            .unwrap_or_else(|_| GpuStatus::Unavailable {
                reason: format!(
                    "the Vulkan driver did not answer within {:?}; its thread is abandoned",
                    self.timeout
                ),
            })
    }
}

/// Discovery in a child process that prints one [`GpuStatus`] as JSON on stdout (for the agent:
/// its own binary with a hidden `probe-gpu` command that runs [`WgpuProbe`]).
#[derive(Debug, Clone)]
pub struct IsolatedProbe {
    /// Program and arguments.
    pub command: Vec<OsString>,
    /// Deadline; the child is killed when it passes.
    pub timeout: Duration,
}

impl GpuProbe for IsolatedProbe {
    fn discover(&self) -> GpuStatus {
        let unavailable = |reason: String| GpuStatus::Unavailable { reason };
        let Some((program, args)) = self.command.split_first() else {
            return unavailable("no probe command configured".into());
        };
        let shown = program.to_string_lossy();
        let mut child = match Command::new(program)
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
        serde_json::from_str(out.trim()).unwrap_or_else(|e| {
            unavailable(format!(
                "the answer of the GPU probe {shown} is not a GPU status: {e}"
            ))
        })
    }
}

fn probe() -> GpuStatus {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
    desc.backends = wgpu::Backends::VULKAN;
    let instance = wgpu::Instance::new(desc);
    let adapters = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::VULKAN));
    let Some(adapter) = adapters
        .into_iter()
        .max_by_key(|a| rank(a.get_info().device_type))
    else {
        let detail = match pollster::block_on(
            instance.request_adapter(&wgpu::RequestAdapterOptions::default()),
        ) {
            Err(e) => e.to_string(),
            Ok(_) => "enumeration and request disagree".to_owned(),
        };
        let icd = std::env::var("VK_ICD_FILENAMES")
            .map(|v| format!(" (VK_ICD_FILENAMES={v})"))
            .unwrap_or_default();
        return GpuStatus::Unavailable {
            reason: format!("no Vulkan adapter found{icd}: {detail}"),
        };
    };
    let info = adapter.get_info();
    GpuStatus::Available(GpuInfo {
        name: info.name,
        backend: info.backend.to_str().to_owned(),
        device_type: match info.device_type {
            wgpu::DeviceType::DiscreteGpu => "discrete",
            wgpu::DeviceType::IntegratedGpu => "integrated",
            wgpu::DeviceType::VirtualGpu => "virtual",
            wgpu::DeviceType::Cpu => "cpu",
            wgpu::DeviceType::Other => "other",
        }
        .to_owned(),
        driver: info.driver,
        driver_info: info.driver_info,
        vendor_id: info.vendor,
        device_id: info.device,
        limits: limits_of(&adapter.limits()),
    })
}

/// The compute-relevant subset of wgpu's limits.
pub fn limits_of(l: &wgpu::Limits) -> GpuLimits {
    GpuLimits {
        max_buffer_size: l.max_buffer_size,
        max_storage_buffer_binding_size: l.max_storage_buffer_binding_size,
        max_uniform_buffer_binding_size: l.max_uniform_buffer_binding_size,
        max_storage_buffers_per_shader_stage: l.max_storage_buffers_per_shader_stage,
        max_compute_workgroup_storage_size: l.max_compute_workgroup_storage_size,
        max_compute_invocations_per_workgroup: l.max_compute_invocations_per_workgroup,
        max_compute_workgroup_size: [
            l.max_compute_workgroup_size_x,
            l.max_compute_workgroup_size_y,
            l.max_compute_workgroup_size_z,
        ],
        max_compute_workgroups_per_dimension: l.max_compute_workgroups_per_dimension,
    }
}

/// Prefer real GPUs over software rasterisers.
fn rank(t: wgpu::DeviceType) -> u8 {
    match t {
        wgpu::DeviceType::DiscreteGpu => 4,
        wgpu::DeviceType::IntegratedGpu => 3,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Other => 1,
        wgpu::DeviceType::Cpu => 0,
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
        let status = isolated(
            r#"echo '{"status":"unavailable","reason":"no driver"}'"#,
            10_000,
        );
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
        assert!(reason(isolated("echo hello", 10_000)).contains("not a GPU status"));
        let missing = IsolatedProbe {
            command: vec!["/nonexistent/probe".into()],
            timeout: Duration::from_secs(1),
        };
        assert!(reason(missing.discover()).contains("/nonexistent/probe"));
    }
}
