//! Power: rebooting the box (the owner's app can ask for it), and what the agent asks systemd
//! for in general (`systemctl`, through one helper).
//!
//! The real implementation asks systemd (`systemctl reboot`), so services stop in order and
//! filesystems are synced; the fake counts requests.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Errors asking for a reboot.
#[derive(Debug, thiserror::Error)]
pub enum PowerError {
    /// The command could not run or failed.
    #[error("{program}: {reason}")]
    Command {
        /// The `systemctl` path as configured ([`SystemdPower::systemctl`]).
        program: PathBuf,
        /// The OS error starting it, or its exit status and trimmed stderr.
        reason: String,
    },
}

/// Reboots the machine: [`SystemdPower`], or a fake that counts requests.
pub trait Power: Send + Sync {
    /// Asks for an orderly reboot; returns once it is requested.
    fn reboot(&self) -> Result<(), PowerError>;
}

/// Reboot through systemd (`systemctl reboot`), so services stop in order first.
#[derive(Debug, Clone)]
pub struct SystemdPower {
    /// The `systemctl` program; the default, a bare name, is looked up on `PATH`.
    pub systemctl: PathBuf,
}

impl Default for SystemdPower {
    fn default() -> Self {
        Self {
            systemctl: PathBuf::from("systemctl"),
        }
    }
}

impl Power for SystemdPower {
    fn reboot(&self) -> Result<(), PowerError> {
        systemctl(&self.systemctl, &["reboot"])
    }
}

/// Runs `program` (a `systemctl`) with `args`; an error names it, with the OS error or the exit
/// status and trimmed stderr.
pub(crate) fn systemctl(program: &Path, args: &[&str]) -> Result<(), PowerError> {
    let fail = |reason: String| PowerError::Command {
        program: program.to_owned(),
        reason,
    };
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| fail(e.to_string()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(fail(format!(
            "{}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_command_is_named_with_its_error() {
        let power = SystemdPower {
            systemctl: PathBuf::from("false"),
        };
        let err = power.reboot().expect_err("false fails");
        assert!(
            err.to_string().starts_with("false: exit status: 1"),
            "{err}"
        );
        let missing = SystemdPower {
            systemctl: PathBuf::from("/nonexistent/systemctl"),
        };
        assert!(
            missing
                .reboot()
                .expect_err("missing")
                .to_string()
                .contains("/nonexistent/systemctl")
        );
    }
}
