//! The job model, version 1: what a consumer sends to run on the box's GPU.
//!
//! A job is JSON (see `docs/jobs.md`). Unknown fields are refused, so a typo is an error rather than
//! a silently ignored setting. Inputs are inline (base64) or named by SHA-256 and fetched from a
//! [`BlobStore`]; either way the bytes are checked before use.

use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::digest::Sha256;

/// The job format this build speaks.
pub const JOB_VERSION: u32 = 1;

/// A WGSL compute job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Job {
    /// Format version; must be [`JOB_VERSION`].
    pub version: u32,
    /// Caller's id for the job: 1 to 128 of `A-Z a-z 0-9 . _ -`.
    pub id: String,
    /// The shader: WGSL source and the `@compute` entry point to run.
    pub kernel: Kernel,
    /// Buffers bound at `@group(0)`, one per `@binding` the entry point uses.
    pub bindings: Vec<Binding>,
    /// Workgroups in x, y and z.
    pub dispatch: [u32; 3],
    /// Higher runs first; ties run in arrival order. Default 0.
    #[serde(default)]
    pub priority: i32,
    /// Unix time in milliseconds after which the job is worthless and is not started.
    #[serde(default)]
    pub deadline_unix_ms: Option<u64>,
    /// Resource limits the consumer sets for this job.
    #[serde(default)]
    pub limits: JobLimits,
}

/// WGSL source and the compute entry point to run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Kernel {
    /// WGSL source.
    pub wgsl: String,
    /// Name of the `@compute` function.
    pub entry_point: String,
}

/// How the shader sees a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BindingKind {
    /// `var<storage, read>`.
    StorageRead,
    /// `var<storage, read_write>`: its contents after the run are the job's output.
    StorageReadWrite,
    /// `var<uniform>`.
    Uniform,
}

/// One buffer bound at `@group(0)`: its binding number, kind, size and initial contents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Binding {
    /// The `@binding(n)` number.
    pub binding: u32,
    /// How the shader sees it.
    pub kind: BindingKind,
    /// Size in bytes: a positive multiple of 4.
    pub size: u64,
    /// Initial contents, zero-padded to `size`; all zeros when absent.
    #[serde(default)]
    pub input: Option<Blob>,
}

/// A binding's initial contents. In JSON, `{"base64": "..."}` inline or
/// `{"sha256": "<64 hex>"}` for a blob in the [`BlobStore`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Blob {
    /// Inline, standard base64 with padding.
    Base64(String),
    /// Content-addressed: fetched from the blob store by its SHA-256.
    Sha256(Sha256),
}

impl Blob {
    /// `bytes` inline, as standard base64 with padding.
    pub fn inline(bytes: &[u8]) -> Self {
        Self::Base64(base64::engine::general_purpose::STANDARD.encode(bytes))
    }
}

/// Per-job limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobLimits {
    /// Most GPU memory the job may use, bindings and read-back together. Default: no limit of its
    /// own (the owner's budget still applies).
    #[serde(default)]
    pub max_bytes: Option<u64>,
    /// Longest the kernel may run, in milliseconds (1 to 600000). Default 10000.
    #[serde(default = "default_runtime_ms")]
    pub max_runtime_ms: u64,
}

fn default_runtime_ms() -> u64 {
    10_000
}

impl Default for JobLimits {
    fn default() -> Self {
        Self {
            max_bytes: None,
            max_runtime_ms: default_runtime_ms(),
        }
    }
}

/// Errors reading a job or its inputs.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// The JSON does not describe a job.
    #[error("job is not valid: line {line}, column {column}: {message}")]
    Json {
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// serde_json's message, which ends with the position again (`... at line 3 column 1`).
        message: String,
    },
    /// A blob named by hash is not in the store.
    #[error("blob {sha256} is not in the blob store {dir}")]
    MissingBlob {
        /// The hash the job named, which is also the file name looked for in `dir`.
        sha256: Sha256,
        /// The store's directory, [`BlobStore::dir`].
        dir: PathBuf,
    },
    /// A stored blob's bytes do not hash to its name.
    #[error("blob {sha256} in {dir} is corrupt: its bytes hash to {actual}")]
    CorruptBlob {
        /// The hash the job named, which is also the file's name.
        sha256: Sha256,
        /// What the bytes hash to.
        actual: Sha256,
        /// The store's directory, [`BlobStore::dir`].
        dir: PathBuf,
    },
    /// A stored blob is longer than the binding it is the input of.
    #[error("blob {sha256} in {dir} is longer than its binding ({max} bytes)")]
    BlobTooLarge {
        /// The hash the job named.
        sha256: Sha256,
        /// The binding's size.
        max: u64,
        /// The store's directory, [`BlobStore::dir`].
        dir: PathBuf,
    },
    /// Inline data is not base64.
    #[error("inline input is not base64: {0}")]
    Base64(String),
    /// The blob store could not be read.
    #[error("cannot read blob {sha256} in {dir}: {source}")]
    Io {
        /// The hash the job named.
        sha256: Sha256,
        /// The store's directory, [`BlobStore::dir`].
        dir: PathBuf,
        /// The OS error (`ELOOP` for a symlink), or `not a regular file` for a FIFO, device or
        /// directory.
        source: std::io::Error,
    },
}

impl Job {
    /// Parses a job from JSON; errors carry line and column.
    pub fn from_json(text: &str) -> Result<Self, JobError> {
        serde_json::from_str(text).map_err(|e| JobError::Json {
            line: e.line(),
            column: e.column(),
            message: e.to_string(),
        })
    }

    /// What a receipt for this job must say as its `input_sha256` (every binding's initial
    /// contents, zero-padded, in binding order), worked out from the job alone: `None` when an
    /// input is a blob (only its holder has the bytes), or is not valid base64 or is longer than
    /// its binding (a device refuses such a job).
    pub fn input_sha256(&self) -> Option<Sha256> {
        let inline = |binding: &Binding| match &binding.input {
            None => Ok(Some(Vec::new())),
            Some(Blob::Sha256(_)) => Ok(None),
            Some(Blob::Base64(text)) => {
                Ok(base64::engine::general_purpose::STANDARD.decode(text).ok())
            }
        };
        self.digest_inputs(inline).ok().flatten()
    }

    /// As [`Job::input_sha256`], with blob inputs read from `blobs` (each checked against its
    /// name, read no further than its binding's size): `Ok(None)` only when an input is longer
    /// than its binding; a blob missing or corrupt, or inline text that is not base64, is an
    /// error.
    pub fn input_sha256_from(&self, blobs: &BlobStore) -> Result<Option<Sha256>, JobError> {
        self.digest_inputs(|binding| match &binding.input {
            None => Ok(Some(Vec::new())),
            Some(blob) => blobs.resolve(blob, binding.size).map(Some),
        })
    }

    /// The inputs' digest with each binding's bytes from `bytes_of` (`None`: not known).
    fn digest_inputs(
        &self,
        mut bytes_of: impl FnMut(&Binding) -> Result<Option<Vec<u8>>, JobError>,
    ) -> Result<Option<Sha256>, JobError> {
        static ZEROS: [u8; 64 << 10] = [0; 64 << 10];
        let mut inputs = Vec::with_capacity(self.bindings.len());
        for binding in &self.bindings {
            let Some(bytes) = bytes_of(binding)? else {
                return Ok(None);
            };
            let Some(padding) = binding.size.checked_sub(bytes.len() as u64) else {
                return Ok(None);
            };
            inputs.push((bytes, padding));
        }
        let parts = inputs.iter().flat_map(|(bytes, padding)| {
            let chunk = ZEROS.len() as u64;
            let full = (padding / chunk) as usize;
            let rest = (padding % chunk) as usize;
            std::iter::once(bytes.as_slice())
                .chain(std::iter::repeat_n(ZEROS.as_slice(), full))
                .chain(std::iter::once(&ZEROS[..rest]))
        });
        Ok(Some(Sha256::of_parts(parts)))
    }
}

/// Content-addressed input blobs: a directory of files named by their SHA-256.
#[derive(Debug, Clone)]
pub struct BlobStore {
    /// One file per blob, named by its SHA-256 in lowercase hex; the agent uses
    /// `<state_dir>/blobs`.
    pub dir: PathBuf,
}

impl BlobStore {
    /// The bytes of `blob`, checked against its hash when it names one. Reads at most `max` bytes
    /// (larger inputs are refused by validation before they are read whole).
    pub fn resolve(&self, blob: &Blob, max: u64) -> Result<Vec<u8>, JobError> {
        match blob {
            Blob::Base64(text) => base64::engine::general_purpose::STANDARD
                .decode(text)
                .map_err(|e| JobError::Base64(e.to_string())),
            Blob::Sha256(sha256) => {
                let path = self.dir.join(sha256.to_string());
                let io = |source| JobError::Io {
                    sha256: *sha256,
                    dir: self.dir.clone(),
                    source,
                };
                // Non-blocking open: a FIFO planted in the store must not hang the reader.
                let file = match std::fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(nix::libc::O_NONBLOCK | nix::libc::O_NOFOLLOW)
                    .open(&path)
                {
                    Ok(f) => f,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        return Err(JobError::MissingBlob {
                            sha256: *sha256,
                            dir: self.dir.clone(),
                        });
                    }
                    Err(e) => return Err(io(e)),
                };
                if !file.metadata().map_err(io)?.is_file() {
                    return Err(io(std::io::Error::other("not a regular file")));
                }
                let mut bytes = Vec::new();
                std::io::Read::read_to_end(&mut std::io::Read::take(file, max + 1), &mut bytes)
                    .map_err(io)?;
                if bytes.len() as u64 > max {
                    return Err(JobError::BlobTooLarge {
                        sha256: *sha256,
                        max,
                        dir: self.dir.clone(),
                    });
                }
                let actual = Sha256::of(&bytes);
                if actual != *sha256 {
                    return Err(JobError::CorruptBlob {
                        sha256: *sha256,
                        actual,
                        dir: self.dir.clone(),
                    });
                }
                Ok(bytes)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"{
        "version": 1, "id": "j1",
        "kernel": {"wgsl": "@compute @workgroup_size(1) fn main() {}", "entry_point": "main"},
        "bindings": [{"binding": 0, "kind": "storage_read_write", "size": 16, "input": {"base64": "AAAA"}}],
        "dispatch": [1, 1, 1]
    }"#;

    #[test]
    fn a_minimal_job_parses_with_defaults() {
        let job = Job::from_json(MINIMAL).expect("valid");
        assert_eq!(job.priority, 0);
        assert_eq!(job.limits.max_runtime_ms, 10_000);
        assert_eq!(job.bindings[0].kind, BindingKind::StorageReadWrite);
        let back = Job::from_json(&serde_json::to_string(&job).expect("json")).expect("round trip");
        assert_eq!(back, job);
    }

    #[test]
    fn unknown_fields_and_bad_json_say_where() {
        let typo = MINIMAL.replace("\"dispatch\"", "\"dispatchh\"");
        let err = Job::from_json(&typo).expect_err("typo");
        assert!(
            err.to_string().contains("unknown field `dispatchh`"),
            "{err}"
        );
        let err = Job::from_json("{\n  \"version\": 1,\n  oops\n}").expect_err("syntax");
        assert!(matches!(err, JobError::Json { line: 3, .. }), "{err:?}");
    }

    #[test]
    fn the_input_digest_is_the_workers_padded_inputs_or_none_for_a_blob() {
        let mut job = crate::kernels::hash_chain(1, 2, 64).expect("job");
        job.bindings[0].input = Some(Blob::inline(&[1, 2, 3, 4]));
        let size = job.bindings[0].size as usize;
        let mut padded = vec![0u8; size];
        padded[..4].copy_from_slice(&[1, 2, 3, 4]);
        let rest: Vec<Vec<u8>> = job.bindings[1..]
            .iter()
            .map(|b| vec![0u8; b.size as usize])
            .collect();
        let expected = Sha256::of_parts(
            std::iter::once(padded.as_slice()).chain(rest.iter().map(Vec::as_slice)),
        );
        assert_eq!(job.input_sha256(), Some(expected));
        // Zeros past the 64 KiB chunk come out the same as one long run.
        let mut big = job.clone();
        big.bindings.truncate(1);
        big.bindings[0].input = None;
        big.bindings[0].size = (64 << 10) * 3 + 12;
        assert_eq!(
            big.input_sha256(),
            Some(Sha256::of(&vec![0u8; (64 << 10) * 3 + 12]))
        );
        job.bindings[0].input = Some(Blob::Sha256(Sha256::of(b"x")));
        assert_eq!(job.input_sha256(), None, "a blob's bytes are the device's");
        job.bindings[0].input = Some(Blob::inline(&vec![7; size + 4]));
        assert_eq!(job.input_sha256(), None, "longer than its binding");
    }

    #[test]
    fn whoever_holds_the_blobs_works_out_the_same_input_digest_as_for_inline_inputs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = BlobStore {
            dir: dir.path().to_owned(),
        };
        let mut inline = crate::kernels::hash_chain(1, 2, 64).expect("job");
        inline.bindings[0].input = Some(Blob::inline(&[1, 2, 3, 4]));
        let sha256 = Sha256::of(&[1, 2, 3, 4]);
        std::fs::write(dir.path().join(sha256.to_string()), [1, 2, 3, 4]).expect("blob");
        let mut blob = inline.clone();
        blob.bindings[0].input = Some(Blob::Sha256(sha256));
        let expected = inline.input_sha256().expect("inline");
        assert_eq!(
            blob.input_sha256_from(&store).expect("read"),
            Some(expected)
        );
        assert_eq!(
            inline.input_sha256_from(&store).expect("read"),
            Some(expected)
        );

        blob.bindings[0].input = Some(Blob::Sha256(Sha256::of(b"absent")));
        assert!(matches!(
            blob.input_sha256_from(&store),
            Err(JobError::MissingBlob { .. })
        ));
    }

    #[test]
    fn blobs_are_checked_against_their_hash() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = BlobStore {
            dir: dir.path().to_owned(),
        };
        let data = b"matrix bytes".to_vec();
        let name = Sha256::of(&data);
        let err = store
            .resolve(&Blob::Sha256(name), 1024)
            .expect_err("missing");
        assert!(matches!(err, JobError::MissingBlob { .. }), "{err}");
        std::fs::write(dir.path().join(name.to_string()), &data).expect("write");
        assert_eq!(store.resolve(&Blob::Sha256(name), 1024).expect("ok"), data);
        std::fs::write(dir.path().join(name.to_string()), b"tampered").expect("write");
        let err = store
            .resolve(&Blob::Sha256(name), 1024)
            .expect_err("corrupt");
        assert!(matches!(err, JobError::CorruptBlob { .. }), "{err}");
        assert_eq!(
            store.resolve(&Blob::inline(&data), 1024).expect("inline"),
            data
        );
        assert!(store.resolve(&Blob::Base64("!!".into()), 10).is_err());
    }
}
