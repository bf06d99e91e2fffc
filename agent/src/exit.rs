//! Process exit codes: each says why the agent stopped (documented in docs/operations.md), and the
//! one place where an error is mapped to one.

use std::process::ExitCode;

use edge_identity::KeyError;
use edge_identity::durable::FileError;

use crate::host::lock::LockError;
use crate::network::hub_client::HubError;
use crate::pairing::BridgeError;
use crate::status::server::StatusError;

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

/// Why the agent could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The state directory cannot be created, or is not safe to use.
    #[error(transparent)]
    StateDir(FileError),
    /// Another agent holds the state directory.
    #[error(transparent)]
    Lock(#[from] LockError),
    /// The identity key was refused or could not be made.
    #[error(transparent)]
    Identity(#[from] KeyError),
    /// The status endpoint could not listen.
    #[error(transparent)]
    Status(#[from] StatusError),
    /// The hub client could not be set up (its CA file, usually).
    #[error(transparent)]
    Hub(#[from] HubError),
    /// The pairing state (setup code, owner record) could not be read or made.
    #[error(transparent)]
    Bridge(#[from] BridgeError),
    /// The pairing listener could not bind.
    #[error("cannot listen for the owner's app on {addr}: {source}")]
    Listen {
        /// `[pairing] listen` as configured.
        addr: std::net::SocketAddr,
        /// The bind error (in use, not an address of this box, no permission).
        source: std::io::Error,
    },
    /// A long-lived task failed.
    #[error("task {task} failed: {message}")]
    Task {
        /// The name it was spawned under (`heartbeat`, `pairing`, ...).
        task: &'static str,
        /// Its error or panic message, as `edge_tasks` reported it.
        message: String,
    },
}

impl AgentError {
    /// The exit code that tells an operator (and systemd's `RestartPreventExitStatus=`) why.
    pub fn exit(&self) -> Exit {
        match self {
            Self::StateDir(_) | Self::Lock(LockError::Io { .. }) => Exit::CannotCreate,
            Self::Lock(LockError::Held { .. }) | Self::Status(StatusError::InUse { .. }) => {
                Exit::InUse
            }
            Self::Identity(KeyError::Io { .. } | KeyError::Random { .. }) => Exit::CannotCreate,
            Self::Identity(KeyError::Uri { .. }) => Exit::Config,
            Self::Identity(_) => Exit::KeyRefused,
            Self::Status(_) | Self::Listen { .. } => Exit::CannotCreate,
            Self::Bridge(_) => Exit::CannotCreate,
            Self::Hub(_) => Exit::Config,
            Self::Task { .. } => Exit::TaskFailed,
        }
    }
}
