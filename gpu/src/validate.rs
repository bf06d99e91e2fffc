//! Checks a job against its own shader, the adapter's limits and the owner's memory budget before
//! anything is allocated on the GPU. Every problem is collected and reported at once, each with
//! where it is: `kernel.wgsl:LINE:COLUMN` for shader errors, the JSON path for job fields.

use std::collections::BTreeMap;
use std::fmt;

use edge_hal::gpu::GpuLimits;
use naga::valid::{Capabilities, ValidationFlags, Validator};
use naga::{AddressSpace, ShaderStage, StorageAccess};

use crate::digest::Sha256;
use crate::job::{BindingKind, BlobStore, JOB_VERSION, Job, Kernel};

/// Most bindings a job may declare (more than any adapter binds in one group's buffers).
pub const MAX_BINDINGS: usize = 64;

/// Longest run time a job may ask for, in milliseconds.
pub const MAX_RUNTIME_MS: u64 = 600_000;

/// One reason a job is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Where: a JSON path (`bindings[1].size`) or a shader position (`kernel.wgsl:3:14`).
    pub at: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.at, self.message)
    }
}

/// The job was refused.
#[derive(Debug, Clone, thiserror::Error)]
pub struct Refused {
    /// The job's id as sent.
    pub job_id: String,
    /// Every problem found.
    pub problems: Vec<Problem>,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "job {:?} refused:", self.job_id)?;
        self.problems.iter().try_for_each(|p| write!(f, "\n  {p}"))
    }
}

/// A job that passed every check, with its inputs resolved and padded.
#[derive(Debug, Clone)]
pub struct ValidJob {
    /// The job as sent.
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

struct Problems(Vec<Problem>);

impl Problems {
    fn fail(&mut self, at: &str, message: String) {
        self.0.push(Problem {
            at: at.to_owned(),
            message,
        });
    }
}

/// Where a shader error is, as `kernel.wgsl:LINE:COLUMN` (or just `kernel.wgsl`).
fn shader_at(location: Option<naga::SourceLocation>) -> String {
    location.map_or_else(
        || "kernel.wgsl".to_owned(),
        |l| format!("kernel.wgsl:{}:{}", l.line_number, l.line_position),
    )
}

/// What the shader itself says: problems, and the bindings its entry point uses. Depends only on
/// the source, the entry point and the adapter, so it is cached by kernel hash.
#[derive(Debug, Clone)]
pub struct ShaderCheck {
    /// Shader problems (syntax, validation, entry point, workgroup size, binding kinds).
    problems: Vec<Problem>,
    /// Bindings the entry point uses: kind, minimum size, variable name.
    used: BTreeMap<u32, (BindingKind, u64, String)>,
    /// The entry point was found (binding checks are meaningful).
    ok: bool,
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
    let inputs = check_job(&job, limits, budget, blobs, cache, Inputs::Load)?;
    let kernel_sha256 = Sha256::of(job.kernel.wgsl.as_bytes());
    let gpu_bytes = gpu_bytes(&job);
    Ok(ValidJob {
        job,
        kernel_sha256,
        inputs,
        gpu_bytes,
    })
}

/// Every check of [`validate_cached`], without keeping the inputs: for admission, where a job is
/// only queued, so that its (zero-padded) buffers are not held in memory twice.
pub fn check_cached(
    job: &Job,
    limits: &GpuLimits,
    budget: u64,
    blobs: &BlobStore,
    cache: &mut ShaderCache,
) -> Result<(), Refused> {
    check_job(job, limits, budget, blobs, cache, Inputs::Check).map(drop)
}

/// The bytes a job's outputs come to: its `storage_read_write` bindings.
pub fn output_bytes(job: &Job) -> u64 {
    job.bindings
        .iter()
        .filter(|b| b.kind == BindingKind::StorageReadWrite)
        .map(|b| b.size)
        .fold(0, u64::saturating_add)
}

/// GPU memory a job needs: its buffers plus read-back copies of its outputs.
pub fn gpu_bytes(job: &Job) -> u64 {
    job.bindings
        .iter()
        .map(|b| match b.kind {
            BindingKind::StorageReadWrite => b.size.saturating_mul(2),
            _ => b.size,
        })
        .fold(0, u64::saturating_add)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Inputs {
    /// Resolve, check and zero-pad every input.
    Load,
    /// Resolve and check, keep nothing.
    Check,
}

fn check_job(
    job: &Job,
    limits: &GpuLimits,
    budget: u64,
    blobs: &BlobStore,
    cache: &mut ShaderCache,
    mode: Inputs,
) -> Result<Vec<Vec<u8>>, Refused> {
    let mut problems = Problems(Vec::new());

    if job.version != JOB_VERSION {
        problems.fail(
            "version",
            format!(
                "job format {} is not supported; this agent speaks {JOB_VERSION}",
                job.version
            ),
        );
    }
    let id_ok = !job.id.is_empty()
        && job.id.len() <= 128
        && job
            .id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if !id_ok {
        problems.fail("id", "must be 1 to 128 of A-Z a-z 0-9 . _ -".into());
    }
    if !(1..=MAX_RUNTIME_MS).contains(&job.limits.max_runtime_ms) {
        problems.fail(
            "limits.max_runtime_ms",
            format!(
                "{} is out of range 1 to {MAX_RUNTIME_MS}",
                job.limits.max_runtime_ms
            ),
        );
    }
    for (axis, &n) in ["x", "y", "z"].iter().zip(&job.dispatch) {
        if n == 0 {
            problems.fail(
                "dispatch",
                format!(
                    "{axis} is 0: a dispatch must have at least one workgroup in each dimension"
                ),
            );
        } else if n > limits.max_compute_workgroups_per_dimension {
            problems.fail(
                "dispatch",
                format!(
                    "{axis} is {n}; the adapter allows at most {} workgroups per dimension",
                    limits.max_compute_workgroups_per_dimension
                ),
            );
        }
    }

    if job.bindings.len() > MAX_BINDINGS {
        problems.fail(
            "bindings",
            format!(
                "{} bindings; at most {MAX_BINDINGS} are accepted",
                job.bindings.len()
            ),
        );
        return Err(Refused {
            job_id: job.id.clone(),
            problems: problems.0,
        });
    }
    let shader = cache.check(&job.kernel, limits).clone();
    problems.0.extend(shader.problems);
    let (used, shader_ok) = (shader.used, shader.ok);

    // The job's bindings against the shader's, the adapter and the budget.
    let needed = gpu_bytes(job);
    let mut storage_count = 0;
    let mut inputs = Vec::with_capacity(job.bindings.len());
    for (i, b) in job.bindings.iter().enumerate() {
        let at = format!("bindings[{i}]");
        if job
            .bindings
            .iter()
            .filter(|o| o.binding == b.binding)
            .count()
            > 1
        {
            problems.fail(
                &at,
                format!("@binding({}) is declared more than once", b.binding),
            );
        }
        if b.size == 0 || b.size % 4 != 0 {
            problems.fail(
                &format!("{at}.size"),
                format!("{} is not a positive multiple of 4", b.size),
            );
        }
        let max = match b.kind {
            BindingKind::Uniform => limits.max_uniform_buffer_binding_size,
            _ => {
                storage_count += 1;
                limits.max_storage_buffer_binding_size
            }
        }
        .min(limits.max_buffer_size);
        if b.size > max {
            problems.fail(
                &format!("{at}.size"),
                format!(
                    "{} bytes is larger than the adapter allows for this binding ({max})",
                    b.size
                ),
            );
        }
        match used.get(&b.binding) {
            None if shader_ok => {
                problems.fail(
                    &at,
                    format!(
                        "@binding({}) is declared but the entry point does not use it",
                        b.binding
                    ),
                );
            }
            None => {}
            Some((kind, min_size, name)) => {
                if *kind != b.kind {
                    problems.fail(&format!("{at}.kind"), format!("the shader declares {name} (@binding({})) as {kind:?}, the job as {:?}", b.binding, b.kind));
                }
                if b.size < *min_size {
                    problems.fail(
                        &format!("{at}.size"),
                        format!(
                            "{} bytes is smaller than {name}'s type ({min_size} bytes)",
                            b.size
                        ),
                    );
                }
            }
        }
    }
    for (binding, (_, _, name)) in &used {
        if !job.bindings.iter().any(|b| b.binding == *binding) {
            problems.fail(
                "bindings",
                format!(
                    "the shader uses {name} (@binding({binding})) but the job does not declare it"
                ),
            );
        }
    }
    if storage_count > limits.max_storage_buffers_per_shader_stage {
        problems.fail(
            "bindings",
            format!(
                "{storage_count} storage buffers; the adapter allows {}",
                limits.max_storage_buffers_per_shader_stage
            ),
        );
    }
    if needed > budget {
        problems.fail("bindings", format!("the job needs {needed} bytes of GPU memory (buffers and read-back); the owner's budget is {budget}"));
    }
    if let Some(max) = job.limits.max_bytes
        && needed > max
    {
        problems.fail(
            "limits.max_bytes",
            format!("the job needs {needed} bytes, more than its own limit of {max}"),
        );
    }

    // Inputs last: only for bindings whose size is sane, and never more than that size is read.
    if problems.0.is_empty() {
        for (i, b) in job.bindings.iter().enumerate() {
            let mut bytes = match &b.input {
                None => Vec::new(),
                Some(blob) => match blobs.resolve(blob, b.size) {
                    Ok(bytes) => bytes,
                    Err(e) => {
                        problems.fail(&format!("bindings[{i}].input"), e.to_string());
                        continue;
                    }
                },
            };
            if bytes.len() as u64 > b.size {
                problems.fail(
                    &format!("bindings[{i}].input"),
                    format!(
                        "{} bytes do not fit the binding's {} bytes",
                        bytes.len(),
                        b.size
                    ),
                );
                continue;
            }
            if mode == Inputs::Load {
                bytes.resize(b.size as usize, 0);
                inputs.push(bytes);
            }
        }
    }

    if !problems.0.is_empty() {
        return Err(Refused {
            job_id: job.id.clone(),
            problems: problems.0,
        });
    }
    Ok(inputs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::{Binding, Blob, JobLimits, Kernel};
    use edge_hal::fake::lavapipe_limits as limits;

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
