//! Room kept in the state directory for the writes that must not fail on a full disk: the
//! pairing record (an owner must be able to pair with, or take back, a box whose disk filled up)
//! and the owner's settings. `reserve` is [`RESERVE_BYTES`] of allocated space, made at start
//! when there is room for it and more, and given up the first time such a write finds the disk
//! full; the next start makes it again. Reports never use it: they degrade first (see
//! `network::outbox`).

use std::path::Path;

use edge_hal::storage::{LinuxStorage, Storage};
use edge_identity::durable::FileError;

/// The room kept.
pub(crate) const RESERVE_BYTES: u64 = 4 << 20;

const FILE: &str = "reserve";

/// Makes the reserve in `state_dir` if it is missing and the filesystem has room for it twice
/// over; best effort (a box that cannot is no worse off than without it).
pub(crate) fn ensure(state_dir: &Path) {
    let path = state_dir.join(FILE);
    if std::fs::metadata(&path).is_ok_and(|m| m.len() == RESERVE_BYTES) {
        return;
    }
    let room = LinuxStorage
        .usage(state_dir)
        .map_or(0, |usage| usage.available_bytes);
    if room < 2 * RESERVE_BYTES {
        tracing::warn!(room, "no room for the state directory's reserve");
        return;
    }
    let made = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .and_then(|file| {
            // Allocated, not sparse: a sparse file would keep no room at all.
            nix::fcntl::fallocate(
                &file,
                nix::fcntl::FallocateFlags::empty(),
                0,
                RESERVE_BYTES as i64,
            )
            .map_err(std::io::Error::from)
        });
    if let Err(e) = made {
        tracing::warn!(error = %e, "cannot make the state directory's reserve");
        let _ = std::fs::remove_file(&path);
    }
}

/// Runs `write`; when it finds the disk full, gives up the reserve in `state_dir` and runs it
/// once more.
pub(crate) fn write_critical(
    state_dir: &Path,
    write: impl Fn() -> Result<(), FileError>,
) -> Result<(), FileError> {
    match write() {
        Err(e) if e.source.raw_os_error() == Some(nix::libc::ENOSPC) => {
            match std::fs::remove_file(state_dir.join(FILE)) {
                Ok(()) => {
                    tracing::warn!(error = %e, "the disk is full: the state directory's reserve is given up for this write");
                    write()
                }
                Err(_) => Err(e),
            }
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reserve_is_allocated_and_given_up_for_a_write_that_finds_the_disk_full() {
        let dir = tempfile::tempdir().expect("tempdir");
        ensure(dir.path());
        let meta = std::fs::metadata(dir.path().join(FILE)).expect("made");
        assert_eq!(meta.len(), RESERVE_BYTES);
        use std::os::unix::fs::MetadataExt;
        assert!(
            meta.blocks() * 512 >= RESERVE_BYTES,
            "sparse: {} blocks",
            meta.blocks()
        );
        // The first try finds the disk full, the second (after the reserve went) succeeds.
        let tries = std::cell::Cell::new(0);
        let written = write_critical(dir.path(), || {
            tries.set(tries.get() + 1);
            if tries.get() == 1 {
                let full = std::io::Error::from_raw_os_error(nix::libc::ENOSPC);
                Err(FileError::at("write", dir.path())(full))
            } else {
                Ok(())
            }
        });
        assert!(written.is_ok());
        assert_eq!(tries.get(), 2);
        assert!(!dir.path().join(FILE).exists());
    }
}
