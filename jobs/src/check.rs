//! The checks of a job that need no shader compiler: its fields, its sizes against the adapter's
//! limits and the owner's memory budget, its inputs. Every problem is collected and reported at
//! once, each with where it is (the JSON path for job fields, `kernel.wgsl:LINE:COLUMN` for the
//! shader problems the GPU worker adds).

use std::collections::BTreeMap;
use std::fmt;

use crate::adapter::GpuLimits;
use crate::job::{BindingKind, BlobStore, JOB_VERSION, Job};

/// Most bindings a job may declare (more than any adapter binds in one group's buffers).
pub const MAX_BINDINGS: usize = 64;

/// Longest run time a job may ask for, in milliseconds.
pub const MAX_RUNTIME_MS: u64 = 600_000;

/// Longest WGSL source a job may carry, bytes. Compute kernels are a few KiB; the bound keeps a
/// hostile source from costing the shader compiler unbounded time and memory.
pub const MAX_WGSL_BYTES: usize = 256 * 1024;

/// One reason a job is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Where: a JSON path (`bindings[1].size`) or a shader position (`kernel.wgsl:3:14`).
    pub at: String,
    /// What is wrong, with the value found and the bound it broke where there is one, e.g.
    /// `0 is out of range 1 to 600000`.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.at, self.message)
    }
}

/// The job was refused; it displays as `job "<id>" refused:` and one problem per line.
#[derive(Debug, Clone, thiserror::Error)]
pub struct Refused {
    /// The job's id as sent.
    pub job_id: String,
    /// Every problem found, in the order checked; never empty.
    pub problems: Vec<Problem>,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "job {:?} refused:", self.job_id)?;
        self.problems.iter().try_for_each(|p| write!(f, "\n  {p}"))
    }
}

/// Problems collected while checking, all reported at once.
#[derive(Debug, Default)]
pub struct Problems(pub Vec<Problem>);

impl Problems {
    /// Adds the problem `message` at `at` (a JSON path or a shader position).
    pub fn fail(&mut self, at: &str, message: String) {
        self.0.push(Problem {
            at: at.to_owned(),
            message,
        });
    }
}

/// What a shader says about itself, as far as a job's check needs it. The GPU worker fills it by
/// parsing the WGSL (naga, in `edge-gpu`); the agent admits jobs with [`ShaderCheck::UNREAD`]
/// and leaves the shader to the worker, so untrusted WGSL is never parsed in the process that
/// holds the device's key.
#[derive(Debug, Clone, Default)]
pub struct ShaderCheck {
    /// Shader problems (syntax, validation, entry point, workgroup size, binding kinds).
    pub problems: Vec<Problem>,
    /// Bindings the entry point uses: kind, minimum size, variable name.
    pub used: BTreeMap<u32, (BindingKind, u64, String)>,
    /// The entry point was found, so the job's bindings can be checked against `used`.
    pub ok: bool,
}

impl ShaderCheck {
    /// Nothing known of the shader: only the job's own fields are checked.
    pub const UNREAD: Self = Self {
        problems: Vec::new(),
        used: BTreeMap::new(),
        ok: false,
    };
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

/// What [`check_job`] does with a job's inputs.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Inputs {
    /// Resolve, check and zero-pad every input (to run the job).
    Load,
    /// Resolve and check, keep nothing (to admit it to a queue).
    Check,
}

/// Checks `job` against `limits`, the owner's GPU memory `budget` and what is known of its
/// `shader`; resolves its inputs from `blobs` (and, for [`Inputs::Load`], returns them padded to
/// their bindings' sizes). Every problem is collected.
pub fn check_job(
    job: &Job,
    limits: &GpuLimits,
    budget: u64,
    blobs: &BlobStore,
    shader: &ShaderCheck,
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
    if job.kernel.wgsl.len() > MAX_WGSL_BYTES {
        problems.fail(
            "kernel.wgsl",
            format!(
                "{} bytes; at most {MAX_WGSL_BYTES} are accepted",
                job.kernel.wgsl.len()
            ),
        );
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
    problems.0.extend(shader.problems.iter().cloned());
    let (used, shader_ok) = (&shader.used, shader.ok);

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
    for (binding, (_, _, name)) in used {
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
    use crate::job::{Binding, JobLimits, Kernel};

    fn limits() -> GpuLimits {
        GpuLimits {
            max_buffer_size: 1 << 28,
            max_storage_buffer_binding_size: 1 << 27,
            max_uniform_buffer_binding_size: 1 << 16,
            max_storage_buffers_per_shader_stage: 8,
            max_compute_workgroup_storage_size: 1 << 15,
            max_compute_invocations_per_workgroup: 256,
            max_compute_workgroup_size: [256, 256, 64],
            max_compute_workgroups_per_dimension: 65535,
        }
    }

    fn job(size: u64) -> Job {
        Job {
            version: JOB_VERSION,
            id: "j-1".into(),
            kernel: Kernel {
                wgsl: "not even parsed here".into(),
                entry_point: "main".into(),
            },
            bindings: vec![Binding {
                binding: 0,
                kind: BindingKind::StorageReadWrite,
                size,
                input: None,
            }],
            dispatch: [1, 1, 1],
            priority: 0,
            deadline_unix_ms: None,
            limits: JobLimits {
                max_runtime_ms: 1000,
                max_bytes: None,
            },
        }
    }

    fn problems(job: &Job, budget: u64) -> Vec<String> {
        let blobs = BlobStore {
            dir: std::env::temp_dir(),
        };
        match check_job(
            job,
            &limits(),
            budget,
            &blobs,
            &ShaderCheck::UNREAD,
            Inputs::Check,
        ) {
            Ok(_) => Vec::new(),
            Err(refused) => refused.problems.iter().map(|p| p.to_string()).collect(),
        }
    }

    #[test]
    fn sizes_and_the_budget_are_checked_without_reading_the_shader() {
        assert!(problems(&job(1024), 1 << 20).is_empty());
        // A read-write binding costs its buffer and its read-back copy.
        let over = problems(&job(1024), 2047);
        assert!(
            over.iter()
                .any(|p| p.contains("2048 bytes") && p.contains("budget")),
            "{over:?}"
        );
        let odd = problems(&job(6), 1 << 20);
        assert!(
            odd.iter().any(|p| p.starts_with("bindings[0].size")),
            "{odd:?}"
        );
        let huge = problems(&job(1 << 30), u64::MAX);
        assert!(
            huge.iter()
                .any(|p| p.contains("larger than the adapter allows")),
            "{huge:?}"
        );
    }

    #[test]
    fn a_shader_source_over_the_bound_is_refused_before_any_compiler_sees_it() {
        let mut long = job(16);
        long.kernel.wgsl = "/".repeat(MAX_WGSL_BYTES);
        assert!(problems(&long, 1 << 20).is_empty());
        long.kernel.wgsl.push('/');
        let refused = problems(&long, 1 << 20);
        assert_eq!(
            refused,
            [format!(
                "kernel.wgsl: {} bytes; at most {MAX_WGSL_BYTES} are accepted",
                MAX_WGSL_BYTES + 1
            )]
        );
    }

    #[test]
    fn an_unread_shader_does_not_fail_unused_bindings() {
        // Only the worker, which parses the shader, can say a binding is unused.
        let mut two = job(16);
        two.bindings.push(Binding {
            binding: 1,
            kind: BindingKind::StorageRead,
            size: 16,
            input: None,
        });
        assert!(problems(&two, 1 << 20).is_empty());
    }

    #[test]
    fn bytes_of_outputs_and_of_gpu_memory() {
        let j = job(64);
        assert_eq!(output_bytes(&j), 64);
        assert_eq!(gpu_bytes(&j), 128);
    }
}
