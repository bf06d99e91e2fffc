//! SQLite databases that must survive a crash or a power cut: the agent's report queue and the
//! hub's store open theirs here, so both get the same durability settings.

use std::path::Path;
use std::time::Duration;

use rusqlite::Connection;

/// Opens (creating) the database at `path` and applies `schema` (idempotent SQL).
///
/// Write-ahead log with `synchronous = FULL`: a commit that returned is on disk, and a power cut
/// mid-write leaves the last commit, never a torn page. Another connection waits up to 5 s for a
/// lock instead of failing at once.
pub fn open(path: &Path, schema: &str) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.execute_batch(schema)?;
    Ok(conn)
}
