//! Process exit codes: each says why the agent stopped (documented in docs/operations.md).

use std::process::ExitCode;

/// Why the process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Exit {
    /// Stopped on SIGTERM/SIGINT after every task finished, or a command succeeded.
    Ok = 0,
    /// A command ran and found a problem (e.g. `check` with a failing line).
    Failed = 1,
    /// Stopped on a signal, but some tasks were still running when the grace period ended.
    DrainTimeout = 3,
    /// The configuration is invalid (`EX_USAGE`).
    Config = 64,
    /// The identity key exists but was refused: readable by others, truncated or corrupt
    /// (`EX_DATAERR`). Restarting will not help; a person must look.
    KeyRefused = 65,
    /// A task failed while running (`EX_SOFTWARE`).
    TaskFailed = 70,
    /// The state directory, key or socket could not be created (`EX_CANTCREAT`).
    CannotCreate = 73,
    /// Another agent holds the state directory or answers on the status socket (`EX_TEMPFAIL`).
    InUse = 75,
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> Self {
        ExitCode::from(exit as u8)
    }
}
