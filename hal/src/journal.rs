//! The system journal: erased at a factory reset, so that the next owner's box keeps nothing of
//! the last owner's (the networks it joined, the network it reported to, its public address).
//!
//! The agent runs unprivileged and cannot touch the journal itself. The box's image installs a
//! root one-shot unit ([`ERASE_UNIT`]: `journalctl --rotate`, then `--vacuum-size=1`) that
//! polkit lets the agent's user start and nothing else; the real implementation starts it
//! (`systemctl start`, which waits for it). Where the unit is not installed (a build tree, a
//! developer's machine) there is nothing of the box's to erase, and nothing is asked.

use std::path::PathBuf;

use crate::power::{PowerError, systemctl};

/// The unit that erases the journal, as the image installs it.
pub const ERASE_UNIT: &str = "edge-agent-erase-logs.service";

/// What an erase did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Erased {
    /// The journal was rotated and every archived file deleted.
    Journal,
    /// No erase unit is installed here: the journal is not the box's to erase.
    NoUnit,
}

/// Erases the system journal: [`SystemdJournal`], or a fake that counts requests.
pub trait SystemLog: Send + Sync {
    /// Erases what the journal holds; returns once it is done.
    fn erase(&self) -> Result<Erased, PowerError>;
}

/// The journal erased by starting [`ERASE_UNIT`], where it is installed.
#[derive(Debug, Clone)]
pub struct SystemdJournal {
    /// The `systemctl` program; the default, a bare name, is looked up on `PATH`.
    pub systemctl: PathBuf,
    /// Where the unit is looked for.
    pub unit_dirs: Vec<PathBuf>,
}

impl Default for SystemdJournal {
    fn default() -> Self {
        Self {
            systemctl: PathBuf::from("systemctl"),
            unit_dirs: [
                "/etc/systemd/system",
                "/usr/lib/systemd/system",
                "/lib/systemd/system",
            ]
            .map(PathBuf::from)
            .to_vec(),
        }
    }
}

impl SystemLog for SystemdJournal {
    fn erase(&self) -> Result<Erased, PowerError> {
        if !self.unit_dirs.iter().any(|d| d.join(ERASE_UNIT).is_file()) {
            return Ok(Erased::NoUnit);
        }
        systemctl(&self.systemctl, &["start", ERASE_UNIT])?;
        Ok(Erased::Journal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_unit_is_started_only_where_it_is_installed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let journal = SystemdJournal {
            systemctl: PathBuf::from("false"),
            unit_dirs: vec![dir.path().to_owned()],
        };
        assert_eq!(journal.erase().expect("nothing to do"), Erased::NoUnit);
        std::fs::write(dir.path().join(ERASE_UNIT), "[Service]\n").expect("unit");
        let err = journal.erase().expect_err("systemctl (false) fails");
        assert!(
            err.to_string().starts_with("false: exit status: 1"),
            "{err}"
        );
        let journal = SystemdJournal {
            systemctl: PathBuf::from("true"),
            ..journal
        };
        assert_eq!(journal.erase().expect("started"), Erased::Journal);
    }
}
