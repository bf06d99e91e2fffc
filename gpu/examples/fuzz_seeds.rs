//! Writes the built-in kernels' jobs (JSON) and their WGSL into a directory, as seeds for the
//! `job_validate` fuzz target (`bench/fuzz.sh` runs it): the fuzzer starts from real jobs and
//! shaders rather than from nothing, and the seeds follow the kernels as they change.
//!
//!     cargo run -p edge-gpu --example fuzz_seeds -- DIR

use edge_jobs::kernels;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::path::PathBuf::from(std::env::args().nth(1).ok_or("usage: fuzz_seeds DIR")?);
    std::fs::create_dir_all(&dir)?;
    let (a, b) = (
        kernels::random_f32s(64 * 16, 1),
        kernels::random_f32s(16 * 64, 2),
    );
    let mut jobs = [
        kernels::fma_peak(1, 8),
        kernels::sgemm(64, 64, 16, &a, &b)?,
        kernels::copy(256, Some(&[7; 256]))?,
        kernels::hash_chain(1, 10, 64)?,
        kernels::runaway(1000),
    ];
    jobs[2].priority = 2;
    jobs[2].deadline_unix_ms = Some(1_895_664_000_000);
    jobs[2].limits.max_bytes = Some(1 << 20);
    for (i, job) in jobs.iter().enumerate() {
        std::fs::write(
            dir.join(format!("job-{i}.json")),
            serde_json::to_vec_pretty(job)?,
        )?;
        std::fs::write(dir.join(format!("kernel-{i}.wgsl")), &job.kernel.wgsl)?;
    }
    println!("{} seeds in {}", 2 * jobs.len(), dir.display());
    Ok(())
}
