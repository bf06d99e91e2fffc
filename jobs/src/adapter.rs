//! The GPU as a job sees it: what discovery found, the adapter's identity and the limits that bound
//! the work it can take. Discovery itself (wgpu on Vulkan) runs in the GPU worker (`edge-gpu`).

use serde::{Deserialize, Serialize};

/// What discovery found; in JSON, `status` is `available` or `unavailable`.
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

impl GpuInfo {
    /// Driver and version as receipts name it, e.g. `llvmpipe / Mesa 22.3.6 (LLVM 15.0.6)`.
    pub fn driver_version(&self) -> String {
        format!("{} / {}", self.driver, self.driver_info)
    }
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
    /// Invocations per workgroup: the most a `@workgroup_size`'s three sizes may multiply to.
    pub max_compute_invocations_per_workgroup: u32,
    /// Workgroup size in x, y and z.
    pub max_compute_workgroup_size: [u32; 3],
    /// Workgroups per dispatch dimension; each of a job's `dispatch` must be at most this.
    pub max_compute_workgroups_per_dimension: u32,
}

/// lavapipe's limits (Mesa 22.3, the CPU Vulkan driver this project tests on), as discovery
/// reports them: for validating jobs in tests without a GPU.
pub fn lavapipe_limits() -> GpuLimits {
    GpuLimits {
        max_buffer_size: 2_147_483_647,
        max_storage_buffer_binding_size: 134_217_728,
        max_uniform_buffer_binding_size: 65_536,
        max_storage_buffers_per_shader_stage: 32,
        max_compute_workgroup_storage_size: 32_768,
        max_compute_invocations_per_workgroup: 1024,
        max_compute_workgroup_size: [1024, 1024, 1024],
        max_compute_workgroups_per_dimension: 65_535,
    }
}
