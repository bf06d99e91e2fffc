//! GPU adapter discovery through wgpu's Vulkan backend.
//!
//! Discovery runs on its own thread with a deadline, so a driver that hangs or panics while
//! being enumerated yields [`GpuStatus::Unavailable`] with the reason instead of stalling the agent.
//! A hung driver thread cannot be killed; it is left behind and the reason says so.

use std::sync::mpsc;
use std::time::Duration;

use serde::Serialize;

/// What discovery found.
#[derive(Debug, Clone, PartialEq, Serialize)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GpuLimits {
    /// Largest buffer, in bytes.
    pub max_buffer_size: u64,
    /// Largest storage buffer binding, in bytes.
    pub max_storage_buffer_binding_size: u64,
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
    let l = adapter.limits();
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
        limits: GpuLimits {
            max_buffer_size: l.max_buffer_size,
            max_storage_buffer_binding_size: l.max_storage_buffer_binding_size,
            max_storage_buffers_per_shader_stage: l.max_storage_buffers_per_shader_stage,
            max_compute_workgroup_storage_size: l.max_compute_workgroup_storage_size,
            max_compute_invocations_per_workgroup: l.max_compute_invocations_per_workgroup,
            max_compute_workgroup_size: [
                l.max_compute_workgroup_size_x,
                l.max_compute_workgroup_size_y,
                l.max_compute_workgroup_size_z,
            ],
            max_compute_workgroups_per_dimension: l.max_compute_workgroups_per_dimension,
        },
    })
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
