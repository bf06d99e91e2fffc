//! What both managers do to the machine: run their command-line client, and replace the file
//! holding credentials privately and durably.

use std::fs::File;
use std::path::Path;
use std::process::{Command, Stdio};

use super::WifiError;

/// Most bytes of a tool's stderr kept in an error.
const STDERR_LIMIT: usize = 2048;

/// Runs a tool with a fixed locale and no stdin; its stdout, or why it failed.
pub(super) fn run(program: &Path, args: &[&str]) -> Result<String, WifiError> {
    let output = Command::new(program)
        .args(args)
        // Untranslated keywords (`yes`, `connected`) and UTF-8 SSIDs.
        .env("LC_ALL", "C.UTF-8")
        .env_remove("LANGUAGE")
        .stdin(Stdio::null())
        .output()
        .map_err(|source| WifiError::Spawn {
            program: program.to_owned(),
            source,
        })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let mut stderr = stderr.trim().to_owned();
        if stderr.len() > STDERR_LIMIT {
            let mut end = STDERR_LIMIT;
            while !stderr.is_char_boundary(end) {
                end -= 1;
            }
            stderr.truncate(end);
        }
        return Err(WifiError::Command {
            program: program.to_owned(),
            command: args.join(" "),
            status: output.status,
            stderr,
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// For `map_err`: an OS error while doing `op` on `path`, as [`WifiError::Io`].
pub(super) fn io(
    op: &'static str,
    path: &Path,
) -> impl FnOnce(std::io::Error) -> WifiError + use<> {
    let path = path.to_owned();
    move |source| WifiError::Io { op, path, source }
}

pub(super) fn sync_dir(dir: &Path) -> Result<(), WifiError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("sync", dir))
}

/// Replaces `path` with `contents`, mode 0600, whole or not at all ([`edge_identity::durable`]).
pub(super) fn write_private(path: &Path, contents: &[u8]) -> Result<(), WifiError> {
    edge_identity::durable::write(path, contents, 0o600).map_err(|e| WifiError::Io {
        op: e.op,
        path: e.path,
        source: e.source,
    })
}
