//! Files that must survive a crash or a power cut whole: written to a temporary file beside the
//! target, fsync'd, renamed over it, and the directory fsync'd, so a reader sees the old
//! contents or the new, never a mix, and the new ones are on disk when this returns.
//!
//! Every state file of the project goes through here: the agent's pairing, owner and capability
//! files, Wi-Fi profiles, `edgectl`'s device list, the hub's PKI. One error shape for file I/O,
//! [`FileError`]: what was being done, to which path, and why.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;
use serde::de::DeserializeOwned;

/// A file operation that failed: what, where, and the OS's reason.
#[derive(Debug, thiserror::Error)]
#[error("cannot {op} {}: {source}", path.display())]
pub struct FileError {
    /// What was being done (`create`, `write`, `rename into place`, `read`, `parse`, ...).
    pub op: &'static str,
    /// The target file, the temporary beside it (`.<name>.<pid>.<n>.tmp`), or for `sync` its
    /// directory.
    pub path: PathBuf,
    /// The OS's error; for `parse`, serde_json's wrapped as `InvalidData`, for `encode` as
    /// `Other`.
    #[source]
    pub source: std::io::Error,
}

impl FileError {
    /// A closure for `map_err` that names the operation and the path.
    pub fn at(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Self + use<> {
        let path = path.to_owned();
        move |source| Self { op, path, source }
    }

    /// Whether the file was not there (as opposed to unreadable).
    pub fn is_not_found(&self) -> bool {
        self.source.kind() == std::io::ErrorKind::NotFound
    }
}

/// Replaces `path` with `bytes`, created with `mode` (e.g. 0o600 for secrets).
pub fn write(path: &Path, bytes: &[u8], mode: u32) -> Result<(), FileError> {
    put(path, bytes, mode, |tmp, path| {
        std::fs::rename(tmp, path).map_err(FileError::at("rename into place", path))
    })
}

/// Creates `path` with `bytes` and `mode`, whole or not at all, and refuses to replace a file that
/// is there (a CA key, say, that must never be overwritten).
pub fn create(path: &Path, bytes: &[u8], mode: u32) -> Result<(), FileError> {
    put(path, bytes, mode, |tmp, path| {
        // link(2) fails with EEXIST where rename(2) would replace: the no-clobber rename.
        let linked = std::fs::hard_link(tmp, path).map_err(FileError::at("create", path));
        let _ = std::fs::remove_file(tmp);
        linked
    })
}

/// Writes `bytes` to a fresh temporary beside `path`, syncs it, lets `place` move it to `path`,
/// then syncs the directory so the new name survives a power cut.
fn put(
    path: &Path,
    bytes: &[u8],
    mode: u32,
    place: impl FnOnce(&Path, &Path) -> Result<(), FileError>,
) -> Result<(), FileError> {
    // Unique per process and per call, so two threads saving the same file at once never share a
    // temporary; `create_new` and `O_NOFOLLOW` refuse a name someone planted (a symlink to
    // another file would otherwise be written through).
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(
        ".{name}.{}.{}.tmp",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(&tmp)
        .map_err(FileError::at("create", &tmp))
        .and_then(|mut file| {
            file.write_all(bytes)
                .and_then(|()| file.sync_all())
                .map_err(FileError::at("write", &tmp))
        })
        .and_then(|()| place(&tmp, path));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(FileError::at("sync", dir))
}

/// Replaces `path` with `value` as pretty JSON and a final newline.
pub fn write_json(path: &Path, value: &impl Serialize, mode: u32) -> Result<(), FileError> {
    let mut bytes = serde_json::to_vec_pretty(value).map_err(|e| FileError {
        op: "encode",
        path: path.to_owned(),
        source: std::io::Error::other(e),
    })?;
    bytes.push(b'\n');
    write(path, &bytes, mode)
}

/// The JSON value in `path`; `Ok(None)` if there is no such file. A file that does not parse is
/// an error (`op` is `parse`), never taken for an absent one: a caller must not silently replace
/// state it could not read.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, FileError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(FileError::at("read", path)(e)),
    };
    serde_json::from_slice(&bytes).map(Some).map_err(|e| {
        FileError::at("parse", path)(std::io::Error::new(std::io::ErrorKind::InvalidData, e))
    })
}

/// Removes `path`; one already gone is no error (a reset run twice, or after a crash).
pub fn remove(path: &Path) -> Result<(), FileError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(FileError::at("remove", path)(e)),
    }
}

/// Moves a file that could not be used to `<path>.corrupt`, for a person to look at, replacing
/// an earlier one so that repeated damage cannot fill the disk; where even the move fails, removes
/// it. The caller then starts afresh; the file is never read again.
pub fn set_aside(path: &Path) -> Result<PathBuf, FileError> {
    let mut aside = path.as_os_str().to_owned();
    aside.push(".corrupt");
    let aside = PathBuf::from(aside);
    match std::fs::rename(path, &aside) {
        Ok(()) => Ok(aside),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(aside),
        Err(_) => std::fs::remove_file(path)
            .map(|()| aside)
            .map_err(FileError::at("remove", path)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn replaces_whole_with_the_mode_asked_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.json");
        write(&path, b"one", 0o600).expect("write");
        write(&path, b"two", 0o600).expect("rewrite");
        assert_eq!(std::fs::read(&path).expect("read"), b"two");
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(std::fs::read_dir(dir.path()).expect("ls").count(), 1);
    }

    #[test]
    fn create_refuses_an_existing_file_and_leaves_it_as_it_was() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ca-key.pem");
        create(&path, b"first", 0o600).expect("create");
        let err = create(&path, b"second", 0o600).expect_err("exists");
        assert_eq!(
            err.source.kind(),
            std::io::ErrorKind::AlreadyExists,
            "{err}"
        );
        assert_eq!(std::fs::read(&path).expect("read"), b"first");
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(
            std::fs::read_dir(dir.path()).expect("ls").count(),
            1,
            "a temporary was left"
        );
    }

    #[test]
    fn concurrent_saves_of_one_file_each_land_whole() {
        // Before: the temporary was named by pid alone, so two threads wrote into one temporary
        // and one rename found it gone (or renamed a mix of both).
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state");
        let writers: Vec<_> = (0..8u8)
            .map(|i| {
                let path = path.clone();
                std::thread::spawn(move || {
                    for _ in 0..50 {
                        write(&path, &[i; 4096], 0o600).expect("every save succeeds");
                    }
                })
            })
            .collect();
        writers.into_iter().for_each(|w| w.join().expect("writer"));
        let bytes = std::fs::read(&path).expect("read");
        assert_eq!(bytes.len(), 4096);
        assert!(bytes.iter().all(|&b| b == bytes[0]), "a mix of two saves");
        assert_eq!(std::fs::read_dir(dir.path()).expect("ls").count(), 1);
    }

    #[test]
    fn a_planted_temporary_symlink_is_not_written_through() {
        let dir = tempfile::tempdir().expect("tempdir");
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"keep").expect("victim");
        // Plant links at every temporary name this test process can reach.
        for n in 0..2000 {
            let tmp = dir
                .path()
                .join(format!(".state.{}.{}.tmp", std::process::id(), n));
            let _ = std::os::unix::fs::symlink(&victim, tmp);
        }
        let path = dir.path().join("state");
        for _ in 0..4 {
            let _ = write(&path, b"new", 0o600);
        }
        assert_eq!(std::fs::read(&victim).expect("read"), b"keep");
    }

    #[test]
    fn json_round_trips_and_a_missing_file_is_none_but_a_bad_one_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s.json");
        assert!(read_json::<Vec<u32>>(&path).expect("missing").is_none());
        write_json(&path, &vec![1u32, 2], 0o600).expect("write");
        assert_eq!(
            read_json::<Vec<u32>>(&path).expect("read"),
            Some(vec![1, 2])
        );
        std::fs::write(&path, b"{nope").expect("corrupt");
        let e = read_json::<Vec<u32>>(&path).expect_err("corrupt");
        assert_eq!(e.op, "parse");
        assert!(e.to_string().contains("s.json"), "{e}");
    }
}
