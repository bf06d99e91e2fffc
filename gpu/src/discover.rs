//! What an adapter is, in the agent's terms ([`GpuInfo`]): its name, driver and the limits jobs
//! are checked against. The worker says it in its first line ([`edge_jobs::worker::Hello`]) for
//! the adapter it opened, both when it serves jobs and when the agent discovers the GPU at start
//! (`edge-gpu-worker hello`, run as a child by `edge_hal::IsolatedProbe`: loading a Vulkan driver
//! maps it into the process for good, lavapipe's LLVM alone ~45 MiB resident, and a hung driver in
//! a child is killed at the deadline).

use edge_jobs::adapter::{GpuInfo, GpuLimits};

/// The adapter as the agent reports it.
pub fn info_of(adapter: &wgpu::Adapter) -> GpuInfo {
    let info = adapter.get_info();
    GpuInfo {
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
    }
}

/// Why no adapter was found, with the loader's ICD override where one is set (a wrong
/// `VK_ICD_FILENAMES` is the usual cause on a box set up by hand).
pub fn no_adapter(error: &impl std::fmt::Display) -> String {
    let icd = std::env::var("VK_ICD_FILENAMES")
        .map(|v| format!(" (VK_ICD_FILENAMES={v})"))
        .unwrap_or_default();
    format!("no Vulkan adapter found{icd}: {error}")
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
