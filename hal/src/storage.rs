//! Capacity of the filesystem that holds the agent's state directory.

use std::path::{Path, PathBuf};

use serde::Serialize;

/// Errors reading filesystem capacity.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// `statvfs` failed for the path.
    #[error("cannot stat the filesystem of {path}: {source}")]
    Statvfs {
        /// The path asked about, as given (the agent asks about its state directory).
        path: PathBuf,
        /// The OS error.
        source: nix::Error,
    },
}

/// Size and free space of one filesystem, in bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StorageUsage {
    /// The path asked about, as given.
    pub path: PathBuf,
    /// Total size: `f_blocks` times the fragment size.
    pub total_bytes: u64,
    /// Free space an unprivileged process may use (`f_bavail`; root's reserve left out).
    pub available_bytes: u64,
}

/// Filesystem capacity: [`LinuxStorage`], or the fakes' for tests.
pub trait Storage: Send + Sync {
    /// Capacity of the filesystem holding `path`.
    fn usage(&self, path: &Path) -> Result<StorageUsage, StorageError>;
}

/// `statvfs(2)`.
#[derive(Debug, Default, Clone, Copy)]
pub struct LinuxStorage;

impl Storage for LinuxStorage {
    fn usage(&self, path: &Path) -> Result<StorageUsage, StorageError> {
        let st = nix::sys::statvfs::statvfs(path).map_err(|source| StorageError::Statvfs {
            path: path.to_owned(),
            source,
        })?;
        let frag = st.fragment_size() as u64;
        Ok(StorageUsage {
            path: path.to_owned(),
            total_bytes: st.blocks() as u64 * frag,
            available_bytes: st.blocks_available() as u64 * frag,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_dir_has_plausible_capacity() {
        let dir = tempfile::tempdir().expect("tempdir");
        let usage = LinuxStorage.usage(dir.path()).expect("statvfs");
        assert!(usage.total_bytes > 1 << 20, "{usage:?}");
        assert!(usage.available_bytes <= usage.total_bytes, "{usage:?}");
    }

    #[test]
    fn missing_path_names_the_path() {
        let err = LinuxStorage
            .usage(Path::new("/nonexistent/state"))
            .expect_err("no such path");
        assert!(err.to_string().contains("/nonexistent/state"), "{err}");
    }
}
