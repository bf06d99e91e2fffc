//! GPU adapter discovery through wgpu's Vulkan backend, in the worker binary
//! (`edge-gpu-worker probe`): the agent runs it as a child process (`edge_hal::IsolatedProbe`),
//! because loading a Vulkan driver maps it into the process for good (lavapipe's LLVM alone is
//! ~45 MiB resident) and a hung driver in a child is killed at the deadline.
//!
//! [`WgpuProbe`] enumerates adapters on its own thread with a deadline, so a driver that hangs or
//! panics yields [`GpuStatus::Unavailable`] with the reason instead of stalling the caller.

use std::sync::mpsc;
use std::time::Duration;

use edge_jobs::adapter::{GpuInfo, GpuLimits, GpuStatus};

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

impl WgpuProbe {
    /// The best adapter, or why there is none. Never panics, never blocks past its deadline.
    pub fn discover(&self) -> GpuStatus {
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
