//! Built-in kernels on a real Vulkan driver (lavapipe here), each checked against its CPU
//! reference; receipts over real runs; a runaway kernel and a missing driver, each in a child
//! process (a runaway dispatch cannot be stopped, and the Vulkan loader reads its environment once
//! per process).

#![allow(
    clippy::tests_outside_test_module,
    reason = "an integration test crate: its tests need no test module"
)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use edge_gpu::executor::{Executor, Gpu, JobOutput};
use edge_gpu::validate::{ValidJob, validate};
use edge_identity::Identity;
use edge_jobs::job::{BlobStore, Job};
use edge_jobs::kernels::{self, f32s, u32s};
use edge_jobs::worker::{ExecError, MAX_BATCH};
use edge_jobs::{freivalds, receipt};

fn lavapipe_installed() -> bool {
    Path::new(&format!(
        "/usr/share/vulkan/icd.d/lvp_icd.{}.json",
        std::env::consts::ARCH
    ))
    .exists()
}

/// The executor, or `None` (said loudly) where this machine has no Vulkan driver at all.
fn executor() -> Option<Executor> {
    match Executor::start() {
        Ok(executor) => Some(executor),
        Err(e) if !lavapipe_installed() => {
            eprintln!(
                "SKIPPED: no Vulkan driver ({e}); install mesa-vulkan-drivers (cross/README.md)"
            );
            None
        }
        Err(e) => panic!("lavapipe is installed but the executor did not start: {e}"),
    }
}

fn prepare(executor: &Executor, job: Job) -> ValidJob {
    let store = BlobStore {
        dir: "/nonexistent".into(),
    };
    validate(job, &executor.adapter().limits, 1 << 30, &store).expect("built-in jobs are valid")
}

fn run(executor: &Executor, job: Job) -> (ValidJob, JobOutput) {
    let valid = prepare(executor, job);
    let output = executor.run(valid.clone()).expect("job runs");
    (valid, output)
}

#[test]
fn hash_chain_matches_the_cpu_bit_for_bit() {
    let Some(ex) = executor() else { return };
    let (seed, rounds, count) = (0xC0FF_EE00, 257, 1000);
    let (_, out) = run(&ex, kernels::hash_chain(seed, rounds, count).expect("job"));
    assert_eq!(
        u32s(&out.outputs[0].1),
        kernels::hash_chain_reference(seed, rounds, count)
    );
}

#[test]
fn copy_reproduces_its_input() {
    let Some(ex) = executor() else { return };
    let input: Vec<u8> = (0..1u32 << 20).map(|i| (i * 7 + 3) as u8).collect();
    let (_, out) = run(&ex, kernels::copy(1 << 20, Some(&input)).expect("job"));
    assert!(out.outputs[0].1 == input, "copy differs from its input");
}

#[test]
fn fma_peak_matches_the_cpu_reference() {
    let Some(ex) = executor() else { return };
    let (groups, iters) = (2, 50);
    let (_, out) = run(&ex, kernels::fma_peak(groups, iters));
    let got = f32s(&out.outputs[0].1);
    assert_eq!(got.len(), groups as usize * 256 * 4);
    for invocation in [0u32, 1, 7, 300, 511] {
        let want = kernels::fma_peak_reference(invocation, iters);
        for lane in 0..4 {
            let g = got[invocation as usize * 4 + lane];
            assert!(
                (g - want[lane]).abs() <= 1e-5 * want[lane].abs(),
                "invocation {invocation} lane {lane}: {g} vs {}",
                want[lane]
            );
        }
    }
}

/// Largest difference between `got` and the CPU reference for C = A·B.
fn worst_difference(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len());
    got.iter()
        .zip(want)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max)
}

#[test]
fn every_sgemm_kernel_matches_the_cpu_and_passes_freivalds() {
    let Some(ex) = executor() else { return };
    let (m, n, k) = (256, 256, 80);
    let a = kernels::random_f32s(m * k, 11);
    let b = kernels::random_f32s(k * n, 12);
    let want = kernels::sgemm_reference(m, n, k, &a, &b);
    let mut c = Vec::new();
    let registers = |rows, cols4, lanes| kernels::SgemmKernel::Registers { rows, cols4, lanes };
    for kernel in [
        kernels::SgemmKernel::Tiled,
        registers(4, 2, kernels::Lanes::Columns),
        registers(32, 8, kernels::Lanes::Rows),
    ]
    .into_iter()
    .chain(kernels::SGEMM_PREFERENCE)
    {
        let job = kernels::sgemm_with(kernel, m as u32, n as u32, k as u32, &a, &b).expect("job");
        let (_, out) = run(&ex, job);
        c = f32s(&out.outputs[0].1);
        let worst = worst_difference(&c, &want);
        assert!(
            worst < 1e-4,
            "{kernel:?}: largest difference from the CPU: {worst}"
        );
        freivalds::check((m, n, k), &a, &b, &c, 10, 99)
            .expect("Freivalds accepts a correct product");
    }
    let mut tampered = c.clone();
    tampered[5 * n + 9] += 1e-2;
    assert!(freivalds::check((m, n, k), &a, &b, &tampered, 10, 99).is_err());
}

#[test]
fn sgemm_falls_back_to_a_smaller_block_where_the_largest_does_not_tile() {
    let Some(ex) = executor() else { return };
    // m = 192 tiles only the 8-row blocks, n = 320 only the 8-column ones (8x8 per invocation).
    let (m, n, k) = (192, 320, 48);
    let a = kernels::random_f32s(m * k, 21);
    let b = kernels::random_f32s(k * n, 22);
    let job = kernels::sgemm(m as u32, n as u32, k as u32, &a, &b).expect("job");
    assert!(
        job.id.starts_with("builtin.sgemm_8x8_by_row."),
        "{}",
        job.id
    );
    let (_, out) = run(&ex, job);
    let worst = worst_difference(
        &f32s(&out.outputs[0].1),
        &kernels::sgemm_reference(m, n, k, &a, &b),
    );
    assert!(worst < 1e-4, "largest difference from the CPU: {worst}");
}

#[test]
fn pipelines_are_cached_by_kernel_and_receipts_verify() {
    let Some(ex) = executor() else { return };
    let job = kernels::hash_chain(1, 10, 64).expect("job");
    let (_, first) = run(&ex, job.clone());
    let (valid, second) = run(&ex, job);
    assert!(!first.cached_pipeline && second.cached_pipeline);
    assert_eq!(
        first.output_sha256(),
        second.output_sha256(),
        "deterministic"
    );

    let identity = Identity::generate_ephemeral().expect("key");
    let r = receipt::sign(&identity, second.attested(ex.adapter(), &valid));
    receipt::verify(&r).expect("receipt verifies");
    assert_eq!(r.body.what.kernel_sha256, valid.kernel_sha256);
    assert_eq!(
        r.body.what.output_sha256,
        edge_jobs::digest::Sha256::of(&second.outputs[0].1)
    );
    assert_eq!(r.body.what.adapter, ex.adapter().name);
}

#[test]
fn a_batch_runs_in_one_submission_and_matches_jobs_run_alone() {
    if executor().is_none() {
        return;
    }
    let mut gpu = Gpu::open().expect("lavapipe opens");
    let store = BlobStore {
        dir: "/nonexistent".into(),
    };
    let limits = gpu.adapter().limits.clone();
    let jobs: Vec<ValidJob> = [
        kernels::hash_chain(1, 10, 64).expect("job"),
        kernels::copy(4096, Some(&[7u8; 4096])).expect("job"),
        kernels::hash_chain(2, 33, 1000).expect("job"),
    ]
    .into_iter()
    .map(|job| validate(job, &limits, 1 << 30, &store).expect("valid"))
    .collect();
    let batch: Vec<&ValidJob> = jobs.iter().collect();
    let together = gpu.run_batch(&batch);
    assert_eq!(together.len(), 3);
    for (valid, batched) in jobs.iter().zip(together) {
        let batched = batched.expect("runs in the batch");
        let alone = gpu.run(valid).expect("runs alone");
        assert_eq!(batched.outputs, alone.outputs, "{}", valid.job.id);
        if alone.kernel_time.is_some() {
            assert!(batched.kernel_time.is_some(), "each pass is timed");
        }
    }
    assert_eq!(
        u32s(&gpu.run_batch(&batch)[2].as_ref().expect("runs").outputs[0].1),
        kernels::hash_chain_reference(2, 33, 1000)
    );

    let too_many: Vec<&ValidJob> = std::iter::repeat_n(&jobs[0], MAX_BATCH + 1).collect();
    let refused = gpu.run_batch(&too_many);
    assert_eq!(refused.len(), MAX_BATCH + 1);
    assert!(
        refused
            .iter()
            .all(|r| matches!(r, Err(ExecError::Driver { .. })))
    );
}

#[test]
fn the_worker_answers_every_job_of_a_batch_in_order() {
    use edge_gpu::worker::serve;
    use edge_jobs::worker::{
        Answer, Hello, Response, Submitted, request_line, take_answer, take_line,
    };
    if executor().is_none() {
        return;
    }
    let encode = |job: Job| serde_json::to_vec(&Submitted { job, outputs: true }).expect("json");
    let mut bad = kernels::hash_chain(3, 10, 64).expect("job");
    bad.id = "bad".into();
    bad.dispatch = [0, 1, 1];
    let jobs = [
        encode(kernels::hash_chain(3, 10, 64).expect("job")),
        encode(bad),
        encode(kernels::copy(256, None).expect("job")),
    ];
    let mut input = request_line(1 << 30, jobs.iter().map(Vec::as_slice));
    // A job alone after the batch.
    input.extend(request_line(1 << 30, [jobs[0].as_slice()]));
    let mut output = Vec::new();
    let store = BlobStore {
        dir: "/nonexistent".into(),
    };
    let unconfined = edge_gpu::sandbox::Confined {
        landlock: edge_gpu::sandbox::Enforced::Not,
        seccomp: edge_gpu::sandbox::Enforced::Not,
    };
    serve(input.as_slice(), &mut output, &store, unconfined).expect("serves");
    let hello: Option<Hello> = take_line(&mut output).expect("hello");
    assert!(matches!(hello, Some(Hello::Ready { .. })), "{hello:?}");
    let answers: Vec<Answer> =
        std::iter::from_fn(|| take_answer(&mut output, 1 << 20).expect("answer")).collect();
    assert!(output.is_empty(), "nothing but four answers");
    assert_eq!(answers.len(), 4, "{answers:?}");
    let (answers, outputs): (Vec<Response>, Vec<Vec<Vec<u8>>>) =
        answers.into_iter().map(|a| (a.response, a.outputs)).unzip();
    assert_eq!(outputs[2], vec![vec![0; 256]], "the copy of nothing");
    let Response::Done(first) = &answers[0] else {
        panic!("{:?}", answers[0])
    };
    assert_eq!(first.job_id, "builtin.hash_chain.00000003.10.64");
    assert_eq!(first.batch, 2);
    assert_eq!(
        u32s(&outputs[0][0]),
        kernels::hash_chain_reference(3, 10, 64)
    );
    let Response::Refused { problems } = &answers[1] else {
        panic!("{:?}", answers[1])
    };
    assert!(
        problems.iter().any(|p| p.starts_with("dispatch")),
        "{problems:?}"
    );
    let Response::Done(copy) = &answers[2] else {
        panic!("{:?}", answers[2])
    };
    assert_eq!((copy.job_id.as_str(), copy.batch), ("builtin.copy.256", 2));
    let Response::Done(alone) = &answers[3] else {
        panic!("{:?}", answers[3])
    };
    assert_eq!(alone.batch, 1);
    assert_eq!(
        alone.attested("a", "d").batch,
        None,
        "alone: no batch in the receipt"
    );
    assert_eq!(first.attested("a", "d").batch, Some(2));
}

const MARK: &str = "CHILD-RESULT ";

/// Not a test: the body of the child processes below (run with `--ignored --exact`).
#[test]
#[ignore = "helper run in a child process by the tests below"]
fn child() {
    let say = |what: &str| println!("{MARK}{what}");
    let ex = match Executor::start() {
        Ok(ex) => ex,
        Err(e) => {
            say(&format!("start: {e}"));
            return;
        }
    };
    let runaway = kernels::runaway(300);
    let started = Instant::now();
    match ex.run(prepare(&ex, runaway)) {
        Err(ExecError::Timeout { .. }) => say(&format!("timeout after {:?}", started.elapsed())),
        other => say(&format!("unexpected: {other:?}")),
    }
    let (seed, rounds, count) = (5, 20, 128);
    let (_, out) = run(&ex, kernels::hash_chain(seed, rounds, count).expect("job"));
    let ok = u32s(&out.outputs[0].1) == kernels::hash_chain_reference(seed, rounds, count);
    say(&format!("after: {}", if ok { "correct" } else { "WRONG" }));
    // The runaway cannot be stopped; leave without running destructors that would wait for it.
    std::process::exit(0);
}

/// Runs [`child`] with extra environment until it has said `expected` results (or for at most
/// five minutes), then kills it: a child with a runaway kernel may never exit on its own.
fn run_child(env: &[(&str, &str)], expected: usize) -> Vec<String> {
    use std::io::BufRead;
    let mut cmd = Command::new(std::env::current_exe().expect("test binary"));
    cmd.args(["--ignored", "--exact", "child", "--nocapture"])
        .env("NODEVICE_SELECT", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn child");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if let Some((_, result)) = line.split_once(MARK) {
                let _ = tx.send(result.to_owned());
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut lines = Vec::new();
    while lines.len() < expected {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => lines.push(line),
            Err(_) => break,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    lines
}

#[test]
fn a_runaway_kernel_is_failed_at_its_limit_and_the_next_job_runs() {
    if !lavapipe_installed() {
        eprintln!("SKIPPED: lavapipe is not installed (mesa-vulkan-drivers)");
        return;
    }
    let lines = run_child(&[], 2);
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(lines[0].starts_with("timeout after"), "{lines:?}");
    assert_eq!(lines[1], "after: correct", "{lines:?}");
}

#[test]
fn no_driver_means_no_gpu_with_the_reason() {
    let lines = run_child(&[("VK_ICD_FILENAMES", "/nonexistent.json")], 1);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].starts_with("start: no GPU:"), "{lines:?}");
}
