//! Jobs' input blobs on the hub: one file per blob in the blob directory, named by its SHA-256,
//! served to registered devices at `GET /v1/blobs/<sha256>` ([`crate::api`]). A job names a blob
//! by that hash (`{"sha256": ...}`); the device checks what it fetched against it.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use edge_jobs::digest::{Hasher, Sha256};

/// Errors adding a blob.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// The file to add could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file named.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The blob directory could not be written.
    #[error("writing into {dir}: {source}")]
    Write {
        /// The blob directory.
        dir: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Copies `file` into the blob directory `blobs` under its SHA-256, which it returns. The copy
/// is whole or absent (written aside, flushed, then renamed), and readable by all: blobs are
/// jobs' inputs, not secrets. Adding a blob twice is harmless.
pub fn add(blobs: &Path, file: &Path) -> Result<Sha256, BlobError> {
    let read = |source| BlobError::Read {
        path: file.to_owned(),
        source,
    };
    let write = |source| BlobError::Write {
        dir: blobs.to_owned(),
        source,
    };
    let mut from = std::fs::File::open(file).map_err(read)?;
    std::fs::create_dir_all(blobs).map_err(write)?;
    let mut aside = tempfile::NamedTempFile::new_in(blobs).map_err(write)?;
    let mut hasher = Hasher::new();
    let mut chunk = vec![0; 64 * 1024];
    loop {
        let n = from.read(&mut chunk).map_err(read)?;
        if n == 0 {
            break;
        }
        hasher.update(&chunk[..n]);
        aside.write_all(&chunk[..n]).map_err(write)?;
    }
    let sha256 = hasher.finish();
    aside.as_file().sync_all().map_err(write)?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(aside.path(), std::fs::Permissions::from_mode(0o644))
            .map_err(write)?;
    }
    aside
        .persist(blobs.join(sha256.to_string()))
        .map_err(|e| write(e.error))?;
    Ok(sha256)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_blob_is_named_by_its_hash_and_readable_by_all() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("input.bin");
        let bytes: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&file, &bytes).expect("write");
        let blobs = dir.path().join("blobs");
        let sha256 = add(&blobs, &file).expect("added");
        assert_eq!(sha256, Sha256::of(&bytes));
        let stored = blobs.join(sha256.to_string());
        assert_eq!(std::fs::read(&stored).expect("stored"), bytes);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&stored)
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o644);
        assert_eq!(add(&blobs, &file).expect("again"), sha256);
        assert_eq!(
            std::fs::read_dir(&blobs).expect("dir").count(),
            1,
            "nothing left aside"
        );

        let err = add(&blobs, &dir.path().join("missing")).expect_err("no such file");
        assert!(err.to_string().contains("missing"), "{err}");
    }
}
