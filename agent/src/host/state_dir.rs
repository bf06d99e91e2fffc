//! The state directory: the key, the lock, the queue and the socket live there, so it is made
//! private and an existing one that someone else could write is refused.

use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::Path;

use edge_identity::durable::FileError;

/// Creates the state directory (mode 0700 for new directories) and refuses an existing one that
/// another user owns or that others may write.
pub(crate) fn create(path: &Path) -> Result<(), FileError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(FileError::at("create the state directory", path))?;
    let meta =
        std::fs::symlink_metadata(path).map_err(FileError::at("stat the state directory", path))?;
    let euid = nix::unistd::geteuid().as_raw();
    let unsafe_dir = if !meta.is_dir() {
        Some("it is not a directory (a symlink?)".to_owned())
    } else if meta.uid() != euid {
        Some(format!(
            "it is owned by uid {}, not by this process (uid {euid})",
            meta.uid()
        ))
    } else if meta.mode() & 0o022 != 0 {
        Some(format!(
            "its mode {:04o} lets others write to it",
            meta.mode() & 0o7777
        ))
    } else {
        None
    };
    match unsafe_dir {
        Some(why) => Err(FileError::at("use the state directory", path)(
            std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                format!("refusing it: {why}"),
            ),
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_state_dir_others_can_write_is_refused_naming_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = dir.path().join("state");
        create(&state).expect("fresh dir is made");
        let mode = std::fs::metadata(&state)
            .expect("stat")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o700);
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        let err = create(&state).expect_err("world-writable");
        let text = err.to_string();
        assert!(
            text.contains(&state.display().to_string()) && text.contains("0777"),
            "{text}"
        );
    }
}
