//! One agent per state directory: an exclusive `flock(2)` on `<state_dir>/agent.lock`, held for
//! the life of the process and released by the kernel even on `kill -9`.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

/// Errors taking the lock.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process holds it.
    #[error("state directory {dir} is in use by another edge-agent (pid {holder})")]
    Held {
        dir: PathBuf,
        /// The pid written in the lock file, or `unknown`.
        holder: String,
    },
    /// The lock file cannot be opened or written.
    #[error("cannot lock {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The held lock; dropping it unlocks.
#[derive(Debug)]
pub(crate) struct StateLock(#[allow(dead_code)] Flock<File>);

impl StateLock {
    /// Takes the lock without waiting and writes our pid into it.
    pub(crate) fn acquire(dir: &Path) -> Result<Self, LockError> {
        let path = dir.join("agent.lock");
        let io = |source| LockError::Io {
            path: path.clone(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&path)
            .map_err(io)?;
        let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => lock,
            Err((mut file, nix::errno::Errno::EWOULDBLOCK)) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                return Err(LockError::Held {
                    dir: dir.to_owned(),
                    holder: if holder.is_empty() {
                        "unknown".into()
                    } else {
                        holder.into()
                    },
                });
            }
            Err((_, errno)) => return Err(io(errno.into())),
        };
        lock.set_len(0).map_err(io)?;
        lock.rewind().map_err(io)?;
        writeln!(lock, "{}", std::process::id()).map_err(io)?;
        Ok(Self(lock))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_with_the_first_pid_until_release() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = StateLock::acquire(dir.path()).expect("first");
        let err = StateLock::acquire(dir.path()).expect_err("second");
        let pid = std::process::id().to_string();
        assert!(
            matches!(&err, LockError::Held { holder, .. } if *holder == pid),
            "{err}"
        );
        drop(first);
        StateLock::acquire(dir.path()).expect("free again");
    }
}
