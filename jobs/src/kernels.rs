//! Built-in jobs, each with a CPU reference. They go through the same validation and executor as
//! anyone's job; the capability benchmark and verification challenges are made of them.
//!
//! - [`fma_peak`]: FP32 peak, vkpeak-style: 16 independent vec4 FMA chains per invocation.
//! - [`sgemm`]: f32 C = A·B, register-blocked (up to 32x32 outputs per invocation), vec4 loads,
//!   k unrolled, no workgroup memory; a shared-memory tiled kernel is kept for comparison
//!   ([`SgemmKernel`]).
//! - [`copy`]: device memory bandwidth: vec4 copy of one buffer into another.
//! - [`hash_chain`]: a deterministic integer kernel (xorshift and multiply rounds) whose output
//!   every correct machine reproduces bit for bit.

use crate::job::{Binding, BindingKind, Blob, Job, JobLimits, Kernel};

fn job(
    id: String,
    wgsl: &str,
    bindings: Vec<Binding>,
    dispatch: [u32; 3],
    max_runtime_ms: u64,
) -> Job {
    Job {
        version: crate::job::JOB_VERSION,
        id,
        kernel: Kernel {
            wgsl: wgsl.to_owned(),
            entry_point: "main".to_owned(),
        },
        bindings,
        dispatch,
        priority: 0,
        deadline_unix_ms: None,
        limits: JobLimits {
            max_bytes: None,
            max_runtime_ms,
        },
    }
}

fn uniform(binding: u32, words: [u32; 4]) -> Binding {
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    Binding {
        binding,
        kind: BindingKind::Uniform,
        size: 16,
        input: Some(Blob::inline(&bytes)),
    }
}

fn storage(binding: u32, kind: BindingKind, size: u64, input: Option<&[u8]>) -> Binding {
    Binding {
        binding,
        kind,
        size,
        input: input.map(Blob::inline),
    }
}

/// Little-endian bytes of `values`.
pub fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// `f32`s from little-endian bytes.
pub fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// `u32`s from little-endian bytes.
pub fn u32s(bytes: &[u8]) -> Vec<u32> {
    bytes
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// Deterministic pseudo-random f32s in [-1, 1) (xorshift32), for test and benchmark matrices.
pub fn random_f32s(count: usize, seed: u32) -> Vec<f32> {
    let mut x = seed | 1;
    (0..count)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 8) as f32 / (1u32 << 23) as f32 - 1.0
        })
        .collect()
}

const FMA_PEAK: &str = r#"
struct Params { iters: u32, pad0: u32, pad1: u32, pad2: u32 }
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read_write> result: array<vec4<f32>>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let base = vec4<f32>(f32(gid.x & 7u)) * 0.001 + vec4<f32>(0.1, 0.2, 0.3, 0.4);
    var a = base; var b = base + 0.5; var c = base + 0.25; var d = base + 0.75;
    let m = vec4<f32>(0.999);
    let k = vec4<f32>(0.001);
    for (var r = 0u; r < params.iters; r++) {
        a = fma(a, m, k); b = fma(b, m, k); c = fma(c, m, k); d = fma(d, m, k);
        a = fma(a, m, k); b = fma(b, m, k); c = fma(c, m, k); d = fma(d, m, k);
        a = fma(a, m, k); b = fma(b, m, k); c = fma(c, m, k); d = fma(d, m, k);
        a = fma(a, m, k); b = fma(b, m, k); c = fma(c, m, k); d = fma(d, m, k);
    }
    result[gid.x] = a + b + c + d;
}
"#;

/// FP32 work of one [`fma_peak`] run: invocations x iterations x 16 vec4 FMAs x 4 lanes x 2 flops.
pub fn fma_peak_flops(workgroups: u32, iters: u32) -> f64 {
    f64::from(workgroups) * 256.0 * f64::from(iters) * 128.0
}

/// FP32 peak: `workgroups` x 256 invocations, each `iters` rounds of 16 independent vec4 FMAs.
pub fn fma_peak(workgroups: u32, iters: u32) -> Job {
    let invocations = u64::from(workgroups) * 256;
    job(
        format!("builtin.fma_peak.{workgroups}x{iters}"),
        FMA_PEAK,
        vec![
            uniform(0, [iters, 0, 0, 0]),
            storage(1, BindingKind::StorageReadWrite, invocations * 16, None),
        ],
        [workgroups, 1, 1],
        60_000,
    )
}

/// CPU reference for one [`fma_peak`] invocation's result (four lanes).
pub fn fma_peak_reference(invocation: u32, iters: u32) -> [f32; 4] {
    let base: [f32; 4] =
        std::array::from_fn(|l| (invocation & 7) as f32 * 0.001 + [0.1, 0.2, 0.3, 0.4][l]);
    std::array::from_fn(|l| {
        let mut chains = [base[l], base[l] + 0.5, base[l] + 0.25, base[l] + 0.75];
        for _ in 0..iters * 4 {
            chains.iter_mut().for_each(|x| *x = x.mul_add(0.999, 0.001));
        }
        chains.iter().sum()
    })
}

const SGEMM: &str = r#"
struct Dims { m: u32, n: u32, k: u32, pad: u32 }
@group(0) @binding(0) var<uniform> dims: Dims;
@group(0) @binding(1) var<storage, read> a: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> b: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> c: array<vec4<f32>>;

// A 64x64 tile of C per workgroup of 16x16 invocations; each invocation owns 4 rows x 4 columns.
var<workgroup> tile_a: array<array<f32, 64>, 16>;       // [k][row], A's tile transposed
var<workgroup> tile_b: array<array<vec4<f32>, 16>, 16>; // [k][column / 4]

@compute @workgroup_size(16, 16)
fn main(@builtin(workgroup_id) wg: vec3<u32>,
        @builtin(local_invocation_id) lid: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
    let k4 = dims.k / 4u;
    let n4 = dims.n / 4u;
    let a_row = li / 4u;
    let a_col = li % 4u;
    let b_row = li / 16u;
    let b_col = li % 16u;
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    for (var t = 0u; t < dims.k; t += 16u) {
        let av = a[(wg.y * 64u + a_row) * k4 + t / 4u + a_col];
        tile_a[a_col * 4u][a_row] = av.x;
        tile_a[a_col * 4u + 1u][a_row] = av.y;
        tile_a[a_col * 4u + 2u][a_row] = av.z;
        tile_a[a_col * 4u + 3u][a_row] = av.w;
        tile_b[b_row][b_col] = b[(t + b_row) * n4 + wg.x * 16u + b_col];
        workgroupBarrier();
        for (var kk = 0u; kk < 16u; kk++) {
            let bv = tile_b[kk][lid.x];
            let r = lid.y * 4u;
            acc0 = fma(vec4<f32>(tile_a[kk][r]), bv, acc0);
            acc1 = fma(vec4<f32>(tile_a[kk][r + 1u]), bv, acc1);
            acc2 = fma(vec4<f32>(tile_a[kk][r + 2u]), bv, acc2);
            acc3 = fma(vec4<f32>(tile_a[kk][r + 3u]), bv, acc3);
        }
        workgroupBarrier();
    }
    let row = wg.y * 64u + lid.y * 4u;
    let col = wg.x * 16u + lid.x;
    c[row * n4 + col] = acc0;
    c[(row + 1u) * n4 + col] = acc1;
    c[(row + 2u) * n4 + col] = acc2;
    c[(row + 3u) * n4 + col] = acc3;
}
"#;

/// WGSL for an SGEMM without workgroup memory or barriers: each invocation of an 8x8 workgroup
/// owns `rows` rows x `cols4` vec4 columns of C in local variables and streams A (vec4 along k, its
/// four lanes unrolled) and B (vec4 along n) from memory. On lavapipe this beats shared-memory
/// tiling by 3-4x: workgroup barriers are coroutine switches there, and its CPU caches serve the
/// reuse.
///
/// What it costs on lavapipe, and so how it is shaped: every storage-buffer load, even one whose
/// address is the same in all lanes, is a loop over the 8 SIMD lanes with a bounds check per
/// component, far dearer than an FMA. Per step of four k an invocation makes `rows + 4 * cols4`
/// vec4 loads for `4 * rows * cols4` vec4 FMAs, so large blocks win (32x32: 16 FMAs per load) even
/// though their accumulators live on the stack. Within a step the loads of B come first, then for
/// each row its A load and that row's FMAs, each accumulator's four in a row: the order written
/// matters (measured; the loads are branches, which the compiler does not move), and this one
/// keeps the fewest values alive between loads.
fn sgemm_registers_wgsl(rows: u32, cols4: u32, lanes: Lanes) -> String {
    let mut w = String::from(
        "struct Dims { m: u32, n: u32, k: u32, pad: u32 }
@group(0) @binding(0) var<uniform> dims: Dims;
@group(0) @binding(1) var<storage, read> a: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> b: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> c: array<vec4<f32>>;

@compute @workgroup_size(8, 8)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let k4 = dims.k / 4u;
    let n4 = dims.n / 4u;
",
    );
    // lavapipe runs 8 neighbouring invocations in x as one SIMD instruction.
    let (row_id, col_id) = match lanes {
        Lanes::Columns => ("gid.y", "gid.x"),
        Lanes::Rows => ("gid.x", "gid.y"),
    };
    w += &format!("    let row = {row_id} * {rows}u;\n    let col = {col_id} * {cols4}u;\n");
    for r in 0..rows {
        for c in 0..cols4 {
            w += &format!("    var c{r}_{c} = vec4<f32>(0.0);\n");
        }
    }
    w += "    for (var l = 0u; l < k4; l++) {\n";
    for kk in 0..4 {
        for c in 0..cols4 {
            w += &format!("        let b{kk}_{c} = b[(l * 4u + {kk}u) * n4 + col + {c}u];\n");
        }
    }
    for r in 0..rows {
        w += &format!("        let a{r} = a[(row + {r}u) * k4 + l];\n");
        for c in 0..cols4 {
            // k unrolled by the four lanes of the A vec4: constant swizzles, no dynamic indexing.
            for (kk, lane) in ["x", "y", "z", "w"].iter().enumerate() {
                w += &format!(
                    "        c{r}_{c} = fma(vec4<f32>(a{r}.{lane}), b{kk}_{c}, c{r}_{c});\n"
                );
            }
        }
    }
    w += "    }\n";
    for r in 0..rows {
        for c in 0..cols4 {
            w += &format!("    c[(row + {r}u) * n4 + col + {c}u] = c{r}_{c};\n");
        }
    }
    w += "}\n";
    w
}

/// The SGEMM kernels this crate carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SgemmKernel {
    /// 64x64 tiles in workgroup memory, 4x4 outputs per invocation.
    Tiled,
    /// No workgroup memory: `rows` x `4 * cols4` outputs per invocation straight from memory.
    Registers {
        /// Rows of C per invocation.
        rows: u32,
        /// vec4 columns of C per invocation.
        cols4: u32,
        /// What neighbouring invocations (x) step along.
        lanes: Lanes,
    },
}

/// What neighbouring invocations of a [`SgemmKernel::Registers`] step along.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lanes {
    /// Columns of C: A loads are shared, B loads differ.
    Columns,
    /// Rows of C: B loads are shared, A loads differ.
    Rows,
}

/// The kernels [`sgemm`] picks from, fastest first as measured on lavapipe (docs/benchmarks.md):
/// the first whose tiling divides the matrix is used.
pub const SGEMM_PREFERENCE: [SgemmKernel; 4] = [
    SgemmKernel::Registers {
        rows: 32,
        cols4: 8,
        lanes: Lanes::Columns,
    },
    SgemmKernel::Registers {
        rows: 16,
        cols4: 8,
        lanes: Lanes::Rows,
    },
    SgemmKernel::Registers {
        rows: 8,
        cols4: 4,
        lanes: Lanes::Rows,
    },
    SgemmKernel::Registers {
        rows: 8,
        cols4: 2,
        lanes: Lanes::Rows,
    },
];

/// [`sgemm`] with a chosen kernel; m must be a multiple of `8 * rows` and n of `32 * cols4` (and
/// both of 64).
pub fn sgemm_with(
    kernel: SgemmKernel,
    m: u32,
    n: u32,
    k: u32,
    a: &[f32],
    b: &[f32],
) -> Result<Job, BuiltinError> {
    multiple("m", m, 64)?;
    multiple("n", n, 64)?;
    multiple("k", k, 16)?;
    let (m64, n64, k64) = (u64::from(m), u64::from(n), u64::from(k));
    let (wgsl, dispatch, name) = match kernel {
        SgemmKernel::Tiled => (
            SGEMM.to_owned(),
            [n / 64, m / 64, 1],
            "sgemm_tiled".to_owned(),
        ),
        SgemmKernel::Registers { rows, cols4, lanes } => {
            multiple("m", m, 8 * rows)?;
            multiple("n", n, 32 * cols4)?;
            let dispatch = match lanes {
                Lanes::Columns => [n / (32 * cols4), m / (8 * rows), 1],
                Lanes::Rows => [m / (8 * rows), n / (32 * cols4), 1],
            };
            let by = if lanes == Lanes::Rows { "_by_row" } else { "" };
            (
                sgemm_registers_wgsl(rows, cols4, lanes),
                dispatch,
                format!("sgemm_{rows}x{}{by}", 4 * cols4),
            )
        }
    };
    Ok(job(
        format!("builtin.{name}.{m}x{n}x{k}"),
        &wgsl,
        vec![
            uniform(0, [m, n, k, 0]),
            storage(
                1,
                BindingKind::StorageRead,
                m64 * k64 * 4,
                Some(&f32_bytes(a)),
            ),
            storage(
                2,
                BindingKind::StorageRead,
                k64 * n64 * 4,
                Some(&f32_bytes(b)),
            ),
            storage(3, BindingKind::StorageReadWrite, m64 * n64 * 4, None),
        ],
        dispatch,
        120_000,
    ))
}

/// Errors building a built-in job.
#[derive(Debug, thiserror::Error)]
pub enum BuiltinError {
    /// Sizes the kernel does not tile.
    #[error("{what} must be a positive multiple of {multiple}, not {value}")]
    Size {
        /// The built-in's parameter, e.g. `m`, `n`, `k`, `bytes` or `count`.
        what: &'static str,
        /// The multiple it must be: the kernel's tile or vector size along it (1: only not 0).
        multiple: u32,
        /// The value given, which is 0 or not a multiple.
        value: u32,
    },
}

fn multiple(what: &'static str, value: u32, multiple: u32) -> Result<(), BuiltinError> {
    if value == 0 || !value.is_multiple_of(multiple) {
        return Err(BuiltinError::Size {
            what,
            multiple,
            value,
        });
    }
    Ok(())
}

/// C (m x n) = A (m x k) · B (k x n), row-major f32, with the fastest kernel of
/// [`SGEMM_PREFERENCE`] that tiles it; m, n multiples of 64, k of 16.
pub fn sgemm(m: u32, n: u32, k: u32, a: &[f32], b: &[f32]) -> Result<Job, BuiltinError> {
    let fits = |kernel: &SgemmKernel| match *kernel {
        SgemmKernel::Registers { rows, cols4, .. } => {
            m.is_multiple_of(8 * rows) && n.is_multiple_of(32 * cols4)
        }
        SgemmKernel::Tiled => true,
    };
    let kernel = SGEMM_PREFERENCE
        .iter()
        .copied()
        .find(fits)
        .unwrap_or(SgemmKernel::Tiled);
    sgemm_with(kernel, m, n, k, a, b)
}

/// CPU reference: C = A·B in f64, rounded to f32.
pub fn sgemm_reference(m: usize, n: usize, k: usize, a: &[f32], b: &[f32]) -> Vec<f32> {
    let mut c = vec![0.0f32; m * n];
    for i in 0..m {
        for j in 0..n {
            let sum: f64 = (0..k)
                .map(|l| f64::from(a[i * k + l]) * f64::from(b[l * n + j]))
                .sum();
            c[i * n + j] = sum as f32;
        }
    }
    c
}

const COPY: &str = r#"
@group(0) @binding(0) var<storage, read> src: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read_write> dst: array<vec4<f32>>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>,
        @builtin(num_workgroups) groups: vec3<u32>) {
    let stride = groups.x * 256u;
    for (var i = gid.x; i < arrayLength(&dst); i += stride) {
        dst[i] = src[i];
    }
}
"#;

/// Copies `bytes` (a positive multiple of 16) from one buffer to another; the source holds `input`
/// (zeros when `None`).
pub fn copy(bytes: u32, input: Option<&[u8]>) -> Result<Job, BuiltinError> {
    multiple("bytes", bytes, 16)?;
    let groups = (bytes / 16).div_ceil(256).min(4096);
    Ok(job(
        format!("builtin.copy.{bytes}"),
        COPY,
        vec![
            storage(0, BindingKind::StorageRead, u64::from(bytes), input),
            storage(1, BindingKind::StorageReadWrite, u64::from(bytes), None),
        ],
        [groups, 1, 1],
        60_000,
    ))
}

const HASH_CHAIN: &str = r#"
struct Params { seed: u32, rounds: u32, count: u32, pad: u32 }
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read_write> out: array<u32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    if (i >= params.count) { return; }
    var x = params.seed ^ (i * 0x9E3779B9u);
    for (var r = 0u; r < params.rounds; r++) {
        x ^= x << 13u;
        x ^= x >> 17u;
        x ^= x << 5u;
        x = x * 0x2C1B3C6Du + 0x297A2D39u;
    }
    out[i] = x;
}
"#;

/// `count` independent chains of `rounds` integer rounds from `seed`.
pub fn hash_chain(seed: u32, rounds: u32, count: u32) -> Result<Job, BuiltinError> {
    multiple("count", count, 1)?;
    Ok(job(
        format!("builtin.hash_chain.{seed:08x}.{rounds}.{count}"),
        HASH_CHAIN,
        vec![
            uniform(0, [seed, rounds, count, 0]),
            storage(1, BindingKind::StorageReadWrite, u64::from(count) * 4, None),
        ],
        [count.div_ceil(64), 1, 1],
        60_000,
    ))
}

/// CPU reference for [`hash_chain`], bit for bit.
pub fn hash_chain_reference(seed: u32, rounds: u32, count: u32) -> Vec<u32> {
    (0..count)
        .map(|i| {
            let mut x = seed ^ i.wrapping_mul(0x9E37_79B9);
            for _ in 0..rounds {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x = x.wrapping_mul(0x2C1B_3C6D).wrapping_add(0x297A_2D39);
            }
            x
        })
        .collect()
}

const RUNAWAY: &str = r#"
@group(0) @binding(0) var<storage, read_write> data: array<u32>;

@compute @workgroup_size(64)
fn main() {
    for (var i = 0u; i < 0xFFFFFFFFu; i++) {
        if (data[0] == 12345u) { return; }
        data[1] = data[1] + 1u;
    }
}
"#;

/// A kernel that outlives any time limit, for testing the limit: 65535 x 65535 workgroups of 64
/// invocations, each looping up to 2^32 times (lavapipe caps a loop at 65535 iterations, so the
/// length comes from the dispatch). Valid by every check; it just never ends in practice.
pub fn runaway(max_runtime_ms: u64) -> Job {
    job(
        "builtin.runaway".to_owned(),
        RUNAWAY,
        vec![storage(0, BindingKind::StorageReadWrite, 8, None)],
        [65_535, 65_535, 1],
        max_runtime_ms,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sgemm_picks_the_largest_block_that_tiles_the_matrix() {
        let pick = |m: u32, n: u32| {
            let a = vec![0.0; (m * 16) as usize];
            let b = vec![0.0; (16 * n) as usize];
            sgemm(m, n, 16, &a, &b).expect("job").id
        };
        assert_eq!(pick(512, 512), "builtin.sgemm_32x32.512x512x16");
        assert_eq!(pick(128, 512), "builtin.sgemm_16x32_by_row.128x512x16");
        assert_eq!(pick(64, 128), "builtin.sgemm_8x16_by_row.64x128x16");
        assert_eq!(pick(192, 320), "builtin.sgemm_8x8_by_row.192x320x16");
    }

    #[test]
    fn register_kernels_refuse_sizes_they_do_not_tile() {
        let kernel = SGEMM_PREFERENCE[0];
        let a = vec![0.0; 128 * 16];
        let b = vec![0.0; 16 * 256];
        assert!(sgemm_with(kernel, 128, 256, 16, &a, &b).is_err());
        assert!(sgemm_with(kernel, 256, 256, 16, &vec![0.0; 256 * 16], &b).is_ok());
    }
}
