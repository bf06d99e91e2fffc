//! Reading the small text files of procfs and sysfs.

use std::io;
use std::path::Path;

/// The file's contents with surrounding whitespace removed.
pub(crate) fn read_trimmed(path: &Path) -> io::Result<String> {
    Ok(std::fs::read_to_string(path)?.trim().to_owned())
}

/// The file parsed as an unsigned integer; `None` when absent, unreadable or not a number
/// (sysfs answers `EINVAL` for, say, the speed of a link that is down).
pub(crate) fn read_u64(path: &Path) -> Option<u64> {
    read_trimmed(path).ok()?.parse().ok()
}

/// The file parsed as a signed integer; `None` as for [`read_u64`].
pub(crate) fn read_i64(path: &Path) -> Option<i64> {
    read_trimmed(path).ok()?.parse().ok()
}
