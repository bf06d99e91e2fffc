//! Checks a job against its own shader (parsed and validated by naga), then against the adapter's
//! limits and the owner's memory budget ([`edge_jobs::check`]), before anything is allocated on the
//! GPU. Runs in the GPU worker: untrusted WGSL is parsed only in the process that can be killed.

use std::collections::BTreeMap;

use edge_jobs::adapter::GpuLimits;
use edge_jobs::check::{Inputs, Problem, Problems, Refused, ShaderCheck, check_job, gpu_bytes};
use edge_jobs::digest::Sha256;
use edge_jobs::job::{BindingKind, BlobStore, Job, Kernel};
use naga::valid::{Capabilities, ValidationFlags, Validator};
use naga::{AddressSpace, ShaderStage, StorageAccess};

/// A job that passed every check, with its inputs resolved and padded.
#[derive(Debug, Clone)]
pub struct ValidJob {
    /// The job as sent, unchanged; its inputs resolved are in `inputs`.
    pub job: Job,
    /// SHA-256 of the WGSL source: the pipeline cache key and the receipt's kernel hash.
    pub kernel_sha256: Sha256,
    /// Initial contents of each binding (in `job.bindings` order), exactly `size` bytes.
    pub inputs: Vec<Vec<u8>>,
    /// GPU memory the job needs: its buffers plus read-back copies of its outputs.
    pub gpu_bytes: u64,
}

impl ValidJob {
    /// SHA-256 over every binding's initial contents, in binding order.
    pub fn input_sha256(&self) -> Sha256 {
        Sha256::of_parts(self.inputs.iter().map(Vec::as_slice))
    }
}

/// Where a shader error is, as `kernel.wgsl:LINE:COLUMN` (or just `kernel.wgsl`).
fn shader_at(location: Option<naga::SourceLocation>) -> String {
    location.map_or_else(
        || "kernel.wgsl".to_owned(),
        |l| format!("kernel.wgsl:{}:{}", l.line_number, l.line_position),
    )
}

/// Shader checks already made, by kernel SHA-256 and entry point. Bounded: cleared when full.
#[derive(Debug, Default)]
pub struct ShaderCache(std::collections::HashMap<(Sha256, String), ShaderCheck>);

/// Kernels remembered before the cache starts over.
const SHADER_CACHE_ENTRIES: usize = 64;

impl ShaderCache {
    fn check(&mut self, kernel: &Kernel, limits: &GpuLimits) -> &ShaderCheck {
        let key = (
            Sha256::of(kernel.wgsl.as_bytes()),
            kernel.entry_point.clone(),
        );
        if self.0.len() >= SHADER_CACHE_ENTRIES && !self.0.contains_key(&key) {
            self.0.clear();
        }
        self.0.entry(key).or_insert_with(|| {
            // naga parses untrusted source: a panic there refuses the job, it does not take the
            // agent down.
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| analyze(kernel, limits)))
                .unwrap_or_else(|_| ShaderCheck {
                    problems: vec![Problem {
                        at: "kernel.wgsl".into(),
                        message: "the shader validator crashed on this source".into(),
                    }],
                    used: BTreeMap::new(),
                    ok: false,
                })
        })
    }
}

fn analyze(kernel: &Kernel, limits: &GpuLimits) -> ShaderCheck {
    // A source over the bound is not given to the compiler at all (`check_job` says why).
    if kernel.wgsl.len() > edge_jobs::check::MAX_WGSL_BYTES {
        return ShaderCheck::default();
    }
    // The shader: parse, validate, find the entry point and the bindings it uses.
    let mut problems = Problems(Vec::new());
    let mut used: BTreeMap<u32, (BindingKind, u64, String)> = BTreeMap::new();
    let mut shader_ok = false;
    match naga::front::wgsl::parse_str(&kernel.wgsl) {
        Err(e) => problems.fail(&shader_at(e.location(&kernel.wgsl)), e.message().to_owned()),
        Ok(module) => {
            let validated =
                Validator::new(ValidationFlags::all(), Capabilities::default()).validate(&module);
            match validated {
                Err(e) => problems.fail(
                    &shader_at(e.location(&kernel.wgsl)),
                    e.as_inner().to_string(),
                ),
                Ok(info) => {
                    let entry = module.entry_points.iter().enumerate().find(|(_, ep)| {
                        ep.name == kernel.entry_point && ep.stage == ShaderStage::Compute
                    });
                    match entry {
                        None => {
                            let names: Vec<&str> = module
                                .entry_points
                                .iter()
                                .filter(|ep| ep.stage == ShaderStage::Compute)
                                .map(|ep| ep.name.as_str())
                                .collect();
                            problems.fail(
                                "kernel.entry_point",
                                format!(
                                    "no @compute function {:?}; the shader has: {}",
                                    kernel.entry_point,
                                    names.join(", ")
                                ),
                            );
                        }
                        Some((index, ep)) => {
                            shader_ok = true;
                            let [x, y, z] = ep.workgroup_size;
                            let invocations = u64::from(x) * u64::from(y) * u64::from(z);
                            let max = limits.max_compute_workgroup_size;
                            if x > max[0] || y > max[1] || z > max[2] {
                                problems.fail("kernel.wgsl", format!("@workgroup_size({x}, {y}, {z}) exceeds the adapter's {max:?}"));
                            }
                            if invocations > u64::from(limits.max_compute_invocations_per_workgroup)
                            {
                                problems.fail(
                                    "kernel.wgsl",
                                    format!(
                                        "@workgroup_size has {invocations} invocations; the adapter allows {}",
                                        limits.max_compute_invocations_per_workgroup
                                    ),
                                );
                            }
                            let uses = info.get_entry_point(index);
                            let shared: u64 = module
                                .global_variables
                                .iter()
                                .filter(|(h, v)| {
                                    v.space == AddressSpace::WorkGroup && !uses[*h].is_empty()
                                })
                                .map(|(_, v)| {
                                    u64::from(module.types[v.ty].inner.size(module.to_ctx()))
                                })
                                .sum();
                            if shared > u64::from(limits.max_compute_workgroup_storage_size) {
                                problems.fail(
                                    "kernel.wgsl",
                                    format!(
                                        "var<workgroup> uses {shared} bytes; the adapter allows {}",
                                        limits.max_compute_workgroup_storage_size
                                    ),
                                );
                            }
                            for (handle, var) in module.global_variables.iter() {
                                let Some(rb) = &var.binding else { continue };
                                if uses[handle].is_empty() {
                                    continue;
                                }
                                let name = var.name.clone().unwrap_or_default();
                                if rb.group != 0 {
                                    problems.fail(
                                        "kernel.wgsl",
                                        format!(
                                            "{name} is in @group({}); only @group(0) is supported",
                                            rb.group
                                        ),
                                    );
                                    continue;
                                }
                                let kind = match var.space {
                                    AddressSpace::Uniform => BindingKind::Uniform,
                                    AddressSpace::Storage { access }
                                        if access.contains(StorageAccess::STORE) =>
                                    {
                                        BindingKind::StorageReadWrite
                                    }
                                    AddressSpace::Storage { .. } => BindingKind::StorageRead,
                                    _ => {
                                        problems.fail("kernel.wgsl", format!("{name} (@binding({})) is not a buffer; only storage and uniform buffers are supported", rb.binding));
                                        continue;
                                    }
                                };
                                let min_size =
                                    u64::from(module.types[var.ty].inner.size(module.to_ctx()));
                                used.insert(rb.binding, (kind, min_size, name));
                            }
                        }
                    }
                }
            }
        }
    }

    ShaderCheck {
        problems: problems.0,
        used,
        ok: shader_ok,
    }
}

/// Checks `job` for an adapter with `limits` and a GPU memory `budget`; inputs named by hash come
/// from `blobs`.
pub fn validate(
    job: Job,
    limits: &GpuLimits,
    budget: u64,
    blobs: &BlobStore,
) -> Result<ValidJob, Refused> {
    validate_cached(job, limits, budget, blobs, &mut ShaderCache::default())
}

/// [`validate`], reusing shader checks from `cache` (the scheduler and the worker keep one).
pub fn validate_cached(
    job: Job,
    limits: &GpuLimits,
    budget: u64,
    blobs: &BlobStore,
    cache: &mut ShaderCache,
) -> Result<ValidJob, Refused> {
    let shader = cache.check(&job.kernel, limits).clone();
    let inputs = check_job(&job, limits, budget, blobs, &shader, Inputs::Load)?;
    let kernel_sha256 = Sha256::of(job.kernel.wgsl.as_bytes());
    let gpu_bytes = gpu_bytes(&job);
    Ok(ValidJob {
        job,
        kernel_sha256,
        inputs,
        gpu_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use edge_jobs::adapter::lavapipe_limits as limits;
    use edge_jobs::job::{Binding, Blob, JobLimits, Kernel};

    const DOUBLE: &str = "@group(0) @binding(0) var<storage, read> src: array<f32>;
@group(0) @binding(1) var<storage, read_write> dst: array<f32>;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
    dst[id.x] = src[id.x] * 2.0;
}
";

    fn job(wgsl: &str) -> Job {
        Job {
            version: 1,
            id: "t1".into(),
            kernel: Kernel {
                wgsl: wgsl.into(),
                entry_point: "main".into(),
            },
            bindings: vec![
                Binding {
                    binding: 0,
                    kind: BindingKind::StorageRead,
                    size: 256,
                    input: Some(Blob::inline(&[1, 2, 3, 4])),
                },
                Binding {
                    binding: 1,
                    kind: BindingKind::StorageReadWrite,
                    size: 256,
                    input: None,
                },
            ],
            dispatch: [1, 1, 1],
            priority: 0,
            deadline_unix_ms: None,
            limits: JobLimits::default(),
        }
    }

    fn refused(job: Job, budget: u64) -> Vec<String> {
        let store = BlobStore {
            dir: "/nonexistent".into(),
        };
        validate(job, &limits(), budget, &store)
            .expect_err("should be refused")
            .problems
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn a_good_job_passes_with_padded_inputs() {
        let store = BlobStore {
            dir: "/nonexistent".into(),
        };
        let valid = validate(job(DOUBLE), &limits(), 1 << 20, &store).expect("valid");
        assert_eq!(valid.inputs[0].len(), 256);
        assert_eq!(&valid.inputs[0][..4], &[1, 2, 3, 4]);
        assert_eq!(valid.gpu_bytes, 256 * 3);
    }

    #[test]
    fn a_wgsl_syntax_error_names_line_and_column() {
        let got = refused(job(&DOUBLE.replace("* 2.0;", "* 2.0")), 1 << 20);
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(
            got[0].starts_with("kernel.wgsl:6:1: expected `;`"),
            "{got:?}"
        );
    }

    #[test]
    fn a_type_error_is_caught_by_the_validator() {
        let got = refused(job(&DOUBLE.replace("* 2.0", "* 2u")), 1 << 20);
        assert!(got[0].starts_with("kernel.wgsl"), "{got:?}");
    }

    #[test]
    fn a_binding_the_shader_uses_but_the_job_lacks() {
        let mut j = job(DOUBLE);
        j.bindings.remove(0);
        let got = refused(j, 1 << 20);
        assert_eq!(
            got,
            ["bindings: the shader uses src (@binding(0)) but the job does not declare it"]
        );
    }

    #[test]
    fn kind_mismatch_and_unused_bindings() {
        let mut j = job(DOUBLE);
        j.bindings[0].kind = BindingKind::Uniform;
        j.bindings.push(Binding {
            binding: 7,
            kind: BindingKind::StorageRead,
            size: 4,
            input: None,
        });
        let got = refused(j, 1 << 20);
        assert!(
            got.iter().any(|p| p.starts_with("bindings[0].kind:")),
            "{got:?}"
        );
        assert!(
            got.iter()
                .any(|p| p.starts_with("bindings[2]: @binding(7) is declared but")),
            "{got:?}"
        );
    }

    #[test]
    fn sizes_beyond_the_adapter_or_the_budget() {
        let mut j = job(DOUBLE);
        j.bindings[1].size = 256 << 20;
        let got = refused(j, u64::MAX);
        assert!(
            got.iter()
                .any(|p| p.starts_with("bindings[1].size:") && p.contains("adapter")),
            "{got:?}"
        );

        let got = refused(job(DOUBLE), 512);
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(
            got[0].contains("768 bytes") && got[0].contains("budget is 512"),
            "{got:?}"
        );

        let mut j = job(DOUBLE);
        j.bindings[0].size = 6;
        assert!(refused(j, 1 << 20)[0].contains("not a positive multiple of 4"));
    }

    #[test]
    fn workgroup_memory_beyond_the_adapter() {
        let big = DOUBLE
            .replace(
                "@compute",
                "var<workgroup> scratch: array<f32, 16384>;\n@compute",
            )
            .replace(
                "dst[id.x] = src[id.x] * 2.0;",
                "scratch[id.x] = src[id.x]; dst[id.x] = scratch[id.x];",
            );
        let got = refused(job(&big), 1 << 20);
        assert_eq!(
            got,
            ["kernel.wgsl: var<workgroup> uses 65536 bytes; the adapter allows 32768"]
        );
    }

    #[test]
    fn zero_and_oversized_dispatch() {
        let mut j = job(DOUBLE);
        j.dispatch = [0, 1, 70_000];
        let got = refused(j, 1 << 20);
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(got[0].contains("x is 0"), "{got:?}");
        assert!(got[1].contains("z is 70000"), "{got:?}");
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let mut j = job(DOUBLE);
        j.version = 2;
        j.id = String::new();
        j.kernel.entry_point = "go".into();
        j.limits.max_runtime_ms = 0;
        let got = refused(j, 1 << 20);
        let places: Vec<&str> = got
            .iter()
            .map(|p| p.split(':').next().unwrap_or(""))
            .collect();
        assert_eq!(
            places,
            [
                "version",
                "id",
                "limits.max_runtime_ms",
                "kernel.entry_point"
            ]
        );
    }

    #[test]
    fn an_input_larger_than_its_binding() {
        let mut j = job(DOUBLE);
        j.bindings[0].input = Some(Blob::inline(&[0; 300]));
        let got = refused(j, 1 << 20);
        assert!(
            got[0].starts_with("bindings[0].input: 300 bytes"),
            "{got:?}"
        );
    }
}
