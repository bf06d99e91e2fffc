//! A job as a consumer sends it: the JSON parsed, then validated (naga's WGSL front end and
//! validator, and the agent's own checks of bindings, sizes and inputs) against lavapipe's
//! limits. The bytes are tried twice: as a whole job, and as the WGSL of an otherwise good job,
//! which reaches the shader checks far more often than random JSON does. Nothing may panic; every
//! refusal must say where.
#![no_main]

use edge_jobs::job::{Binding, BindingKind, Blob, BlobStore, Job, JobLimits, Kernel};
use edge_gpu::validate::validate;
use edge_jobs::adapter::lavapipe_limits;
use libfuzzer_sys::fuzz_target;

fn check(job: Job) {
    let store = BlobStore {
        dir: "/nonexistent".into(),
    };
    if let Err(refused) = validate(job, &lavapipe_limits(), 256 << 20, &store) {
        assert!(!refused.problems.is_empty(), "a refusal without a reason");
        assert!(
            refused.problems.iter().all(|p| !p.at.is_empty()),
            "a problem without a place: {refused}"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(job) = Job::from_json(text) {
        check(job);
    }
    check(Job {
        version: 1,
        id: "fuzz".into(),
        kernel: Kernel {
            wgsl: text.to_owned(),
            entry_point: "main".into(),
        },
        bindings: vec![
            Binding {
                binding: 0,
                kind: BindingKind::StorageRead,
                size: 256,
                input: Some(Blob::inline(&[1; 64])),
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
    });
});
