//! GPU figures on this machine's Vulkan driver, printed side by side (not a timed test):
//! FP32 peak (`fma_peak`), SGEMM at 512/1024/2048 for each kernel with its share of the peak
//! measured in the same run around that kernel, and copy bandwidth. Kernel times come from GPU
//! timestamps where the adapter has them. Every SGEMM result is checked with Freivalds before its
//! figure is printed.
//!
//!     cargo bench -p edge-gpu --bench gpu

use edge_gpu::executor::{Executor, JobOutput};
use edge_gpu::validate::validate;
use edge_jobs::freivalds;
use edge_jobs::job::{BlobStore, Job};
use edge_jobs::kernels::{self, Lanes, SgemmKernel, f32s};

fn seconds(out: &JobOutput) -> f64 {
    out.kernel_time.unwrap_or(out.duration).as_secs_f64()
}

/// Best of `runs` after one warm-up run (which compiles the pipeline).
fn best(ex: &Executor, job: Job, runs: usize) -> JobOutput {
    let store = BlobStore {
        dir: "/nonexistent".into(),
    };
    let valid = validate(job, &ex.adapter().limits, u64::MAX, &store).expect("valid job");
    ex.run(valid.clone()).expect("warm-up");
    (0..runs)
        .map(|_| ex.run(valid.clone()).expect("run"))
        .min_by(|a, b| seconds(a).total_cmp(&seconds(b)))
        .expect("at least one run")
}

fn main() {
    let ex = match Executor::start() {
        Ok(ex) => ex,
        Err(e) => {
            eprintln!("no GPU: {e}");
            std::process::exit(1);
        }
    };
    let adapter = ex.adapter();
    println!("adapter: {} ({})", adapter.name, adapter.driver);

    // The peak is measured again between SGEMM kernels (best of 2), and each kernel's share is of
    // the higher of the peaks just before and just after it: lavapipe's figures move with the
    // machine's load, so a share is only meaningful against a peak measured close to it in time,
    // and the higher of two keeps a dip in one peak measurement from inflating the share.
    let (groups, iters) = (256, 2048);
    let fma_peak = |runs| {
        let fma = best(&ex, kernels::fma_peak(groups, iters), runs);
        (
            kernels::fma_peak_flops(groups, iters) / seconds(&fma) / 1e9,
            fma,
        )
    };
    let (mut peak_before, fma) = fma_peak(3);
    println!(
        "fma_peak            {peak_before:8.1} GFLOPS   ({} us, timer: {})",
        (seconds(&fma) * 1e6) as u64,
        if fma.kernel_time.is_some() {
            "GPU timestamps"
        } else {
            "wall"
        }
    );

    println!(
        "{:<28}{:>6} {:>10} {:>9} {:>10}",
        "sgemm kernel", "n", "GFLOPS", "of peak", "fma_peak"
    );
    for n in [512u32, 1024, 2048] {
        let size = n as usize * n as usize;
        let a = kernels::random_f32s(size, 1);
        let b = kernels::random_f32s(size, 2);
        let shapes = [(4, 2), (8, 2), (8, 4), (16, 2), (16, 8), (32, 8)];
        let kernels = std::iter::once(SgemmKernel::Tiled).chain(
            [Lanes::Columns, Lanes::Rows].into_iter().flat_map(|lanes| {
                shapes.map(|(rows, cols4)| SgemmKernel::Registers { rows, cols4, lanes })
            }),
        );
        for kernel in kernels {
            let job = kernels::sgemm_with(kernel, n, n, n, &a, &b).expect("job");
            let name = match kernel {
                SgemmKernel::Tiled => "tiled 64x64, 4x4".to_owned(),
                SgemmKernel::Registers { rows, cols4, lanes } => {
                    format!("registers {rows}x{} {lanes:?}", 4 * cols4)
                }
            };
            let runs = if n >= 2048 { 2 } else { 3 };
            let out = best(&ex, job, runs);
            let c = f32s(&out.outputs[0].1);
            let nn = n as usize;
            let verdict = match freivalds::check((nn, nn, nn), &a, &b, &c, 2, 7) {
                Ok(()) => "",
                Err(_) => "  WRONG RESULT (Freivalds)",
            };
            let gflops = 2.0 * f64::from(n).powi(3) / seconds(&out) / 1e9;
            let (peak_after, _) = fma_peak(2);
            let peak = peak_before.max(peak_after);
            peak_before = peak_after;
            println!(
                "{:<28}{n:>6} {gflops:>10.2} {:>8.1}% {peak:>10.1}{verdict}",
                name,
                100.0 * gflops / peak
            );
        }
    }

    let bytes = 64u32 << 20;
    let input: Vec<u8> = (0..bytes).map(|i| i as u8).collect();
    let copy = best(&ex, kernels::copy(bytes, Some(&input)).expect("job"), 3);
    let gbps = 2.0 * f64::from(bytes) / seconds(&copy) / 1e9;
    println!("copy 64 MiB         {gbps:8.2} GB/s (read + write)");
}
