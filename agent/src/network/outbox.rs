//! Store-and-forward: every report is signed and written to an on-disk queue before anyone
//! tries to send it, then delivered in sequence order and deleted only when the hub has it.
//!
//! The queue is SQLite (`state_dir/outbox.db`, WAL, `synchronous=FULL`): a push is one
//! transaction that takes the next sequence number, stores the signed envelope and bumps the
//! counter, so after a crash or power cut a report either exists whole with its number or not at
//! all. Bounds: at most `max_reports` waiting and none older than `max_age`; the oldest go first,
//! and each drop is itself queued as a `dropped` report so the network learns how many it lost.
//!
//! Nothing here can stop the agent:
//! - A queue file that is not a database, or fails SQLite's `quick_check`, is set aside
//!   (`outbox.db.corrupt`, replacing an earlier one) and a fresh queue starts, whose first report
//!   says the old numbers were `lost`. A queue that cannot be opened at all (a read-only or
//!   vanished state directory) is kept in memory until the next start, and `/status` says so.
//! - A push that cannot be stored (a full disk) is counted, not fatal; so is a heartbeat or
//!   capability report skipped while the state directory's filesystem has less than
//!   [`LOW_SPACE`] free (job results are still stored: they carry the owner's earnings). The
//!   next stored report is followed by a `dropped` note with their count.
//! - Sequence numbers never go back, even when the queue file is lost: `seq-floor` beside it
//!   holds a number above every one handed out, raised (durably) a [`FLOOR_STRIDE`] at a time,
//!   and a fresh queue starts there.
//! - Ages are kept on the boot's monotonic clock, not the wall clock, so a box that boots in
//!   1970 and is corrected by NTP keeps its queue. A report from an earlier boot is aged by the
//!   wall clock when both readings are trusted ([`Clock::wall_trusted`]), else from now.

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use edge_hal::Clock;
use edge_hal::storage::{LinuxStorage, Storage};
use edge_identity::Identity;
use edge_protocol::envelope::VERSION;
use edge_protocol::report::Dropped;
use edge_protocol::{Body, Envelope, Signed};
use rusqlite::{Connection, ErrorCode, OptionalExtension, params};
use tokio::sync::Notify;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY,
    created_at_ms INTEGER NOT NULL,
    kind TEXT NOT NULL,
    envelope TEXT NOT NULL,
    signature TEXT NOT NULL
);
";

/// Columns added after the first release: the boot a report was queued in, and the boot's
/// monotonic clock then (milliseconds). Rows of an older queue get `''` and 0, an earlier boot.
const COLUMNS_SINCE_1: [&str; 2] = [
    "ALTER TABLE outbox ADD COLUMN boot_id TEXT NOT NULL DEFAULT ''",
    "ALTER TABLE outbox ADD COLUMN boot_ms INTEGER NOT NULL DEFAULT 0",
];

/// Under this much free space in the state directory's filesystem, heartbeats and capability
/// reports are not stored.
pub(crate) const LOW_SPACE: u64 = 8 << 20;

/// How far `seq-floor` is raised at a time: one durable write per this many reports.
pub(crate) const FLOOR_STRIDE: u64 = 1000;

/// Errors of the queue.
#[derive(Debug, thiserror::Error)]
pub(crate) enum OutboxError {
    /// SQLite failed.
    #[error("report queue {path}: {source}")]
    Sqlite {
        /// The queue file.
        path: PathBuf,
        /// SQLite's error.
        source: rusqlite::Error,
    },
    /// The sequence floor could not be raised, so no new number can be handed out safely.
    #[error(transparent)]
    Floor(#[from] edge_identity::durable::FileError),
    /// A heartbeat or capability report was not stored: too little space.
    #[error("{available} bytes free in the state directory's filesystem, under {min} bytes")]
    LowSpace {
        /// Free bytes (`f_bavail`).
        available: u64,
        /// The bound ([`Bounds::min_free_bytes`]).
        min: u64,
    },
}

/// How much the queue may hold.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bounds {
    pub max_reports: u64,
    /// Age of the oldest report.
    pub max_age: Duration,
    /// Free space under which periodic reports are not stored ([`LOW_SPACE`] in the agent).
    pub min_free_bytes: u64,
}

/// A queued report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Queued {
    pub seq: u64,
    pub signed: Signed,
}

/// Counts of what the queue did since the agent started (for `/metrics` and `/status`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub(crate) struct OutboxCounts {
    pub queued: u64,
    pub pushed: u64,
    /// Reports the hub has (accepted or duplicate) and the queue forgot.
    pub delivered: u64,
    /// Reports the hub refused for good.
    pub rejected: u64,
    /// Reports dropped undelivered (queue full or too old).
    pub dropped: u64,
    /// Reports that could not be stored (a disk error, or low space for a periodic one).
    pub unwritten: u64,
    /// False when the queue file could not be opened and reports are held in memory.
    pub on_disk: bool,
    /// Whether the queue file was unreadable at start and was set aside for a fresh one.
    pub set_aside: bool,
}

struct Inner {
    conn: Connection,
    meta: Meta,
    counts: Counts,
    /// Reports not stored since the last stored one, by reason (`unwritten`, `low_space`).
    unwritten: u64,
    low_space: u64,
}

/// The counts, behind their own lock: `/status` and `/metrics` read them while a push holds the
/// connection's lock across its `synchronous=FULL` commit (an fsync), and must not wait for it.
#[derive(Clone, Default)]
struct Counts(Arc<Mutex<OutboxCounts>>);

impl Counts {
    fn update(&self, f: impl FnOnce(&mut OutboxCounts)) {
        f(&mut self.0.lock().unwrap_or_else(|p| p.into_inner()));
    }

    fn get(&self) -> OutboxCounts {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// What signing, numbering and error messages need, apart from the connection (so both can be
/// borrowed).
struct Meta {
    path: PathBuf,
    identity: Arc<Identity>,
    boot_id: String,
    bounds: Bounds,
    clock: Arc<dyn Clock>,
    floor: Floor,
}

/// `seq-floor`: every sequence number handed out is below `value`.
struct Floor {
    path: PathBuf,
    value: Cell<u64>,
    /// A queue in memory still raises the floor where it can, but does not stop for it.
    required: bool,
}

/// The queue. Cheap to clone; every method blocks on disk I/O, so async code calls them
/// through `spawn_blocking` (see [`Outbox::push`]).
#[derive(Clone)]
pub(crate) struct Outbox {
    inner: Arc<Mutex<Inner>>,
    counts: Counts,
    identity: Arc<Identity>,
    /// Woken on every push.
    pub pushed: Arc<Notify>,
}

/// Why the queue file was not used.
enum Unusable {
    /// Not a database, or damaged: set it aside.
    Corrupt(String),
    /// Cannot be opened (permissions, a read-only or missing directory): leave it be.
    Other(rusqlite::Error),
}

impl Outbox {
    /// Opens (creating) the queue at `path`; reports are signed by `identity`. Never fails: see
    /// the module's docs for what happens to a queue that cannot be used.
    pub(crate) fn open(
        path: &Path,
        identity: Arc<Identity>,
        boot_id: String,
        bounds: Bounds,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let floor_path = path.with_file_name("seq-floor");
        let floor = match std::fs::read_to_string(&floor_path) {
            Ok(text) => text.trim().parse::<u64>().unwrap_or_else(|_| {
                tracing::warn!(path = %floor_path.display(), "unreadable sequence floor; the hub's count will raise it");
                1
            }),
            Err(_) => 1,
        };
        let (conn, set_aside, on_disk) = match open_file(path) {
            Ok(conn) => (conn, false, true),
            Err(Unusable::Corrupt(why)) => {
                tracing::error!(path = %path.display(), reason = %why, "the report queue is unreadable; it is set aside and a fresh one started");
                set_file_aside(path);
                match open_file(path) {
                    Ok(conn) => (conn, true, true),
                    Err(_) => (in_memory(path), true, false),
                }
            }
            Err(Unusable::Other(e)) => {
                tracing::error!(path = %path.display(), error = %e, "cannot open the report queue; reports are kept in memory until the next start");
                (in_memory(path), false, false)
            }
        };
        let counts = Counts::default();
        let mut inner = Inner {
            conn,
            meta: Meta {
                path: path.to_owned(),
                identity: identity.clone(),
                boot_id,
                bounds,
                clock,
                floor: Floor {
                    path: floor_path,
                    value: Cell::new(floor),
                    required: on_disk,
                },
            },
            counts: counts.clone(),
            unwritten: 0,
            low_space: 0,
        };
        if let Err(e) = inner.start(set_aside) {
            tracing::error!(error = %e, "cannot prepare the report queue");
        }
        let queued = inner
            .conn
            .query_row("SELECT COUNT(*) FROM outbox", [], |r| r.get::<_, i64>(0))
            .unwrap_or(0) as u64;
        counts.update(|c| {
            c.queued = queued;
            c.on_disk = on_disk;
            c.set_aside = set_aside;
        });
        Self {
            inner: Arc::new(Mutex::new(inner)),
            counts,
            identity,
            pushed: Arc::new(Notify::new()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves SQLite consistent (transactions roll back).
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Signs `body` with the next sequence number and stores it durably; returns the number. A
    /// report that could not be stored is counted, and reported in the next `dropped` note.
    pub(crate) fn push_blocking(&self, body: Body) -> Result<u64, OutboxError> {
        let seq = self.lock().push(body)?;
        self.pushed.notify_one();
        Ok(seq)
    }

    /// [`Outbox::push_blocking`] off the async runtime; a failure is logged (the first of a run
    /// at `warn`) and counted, never returned: the caller goes on.
    pub(crate) async fn push(&self, body: Body) -> Option<u64> {
        let this = self.clone();
        let kind = body.kind();
        match edge_tasks::blocking(move || this.push_blocking(body)).await {
            Ok(seq) => Some(seq),
            Err(e) => {
                tracing::warn!(kind, error = %e, "a report was not stored");
                None
            }
        }
    }

    /// Takes a sequence number without queueing anything (for registration, which is sent
    /// directly), and signs `body` with it.
    pub(crate) fn seal_unqueued(&self, body: Body) -> Result<Signed, OutboxError> {
        let mut inner = self.lock();
        let Inner { conn, meta, .. } = &mut *inner;
        let tx = meta.tx(conn)?;
        let seq = meta.next_seq(&tx)?;
        tx.commit().map_err(|e| meta.err(e))?;
        Ok(meta.seal(seq, body))
    }

    /// Makes the next number at least `next` (the hub's last seq plus one, from registration):
    /// a queue and floor both lost, or restored from an old backup, cannot reuse numbers the hub
    /// has seen.
    pub(crate) fn raise_next(&self, next: u64) -> Result<(), OutboxError> {
        let mut inner = self.lock();
        let Inner { conn, meta, .. } = &mut *inner;
        let tx = meta.tx(conn)?;
        let current = stored_next(&tx).map_err(|e| meta.err(e))?.unwrap_or(1);
        let current = current.max(meta.floor.value.get());
        if next > current {
            tracing::warn!(
                from = current,
                to = next,
                "the hub has seen higher sequence numbers than this queue; skipping ahead"
            );
            set_next(&tx, next).map_err(|e| meta.err(e))?;
        }
        tx.commit().map_err(|e| meta.err(e))
    }

    /// Up to `n` reports, oldest first, after dropping those past the age bound.
    pub(crate) fn peek(&self, n: usize) -> Result<Vec<Queued>, OutboxError> {
        let mut inner = self.lock();
        inner.enforce_bounds()?;
        let Inner { conn, meta, .. } = &mut *inner;
        let mut stmt = conn
            .prepare_cached("SELECT seq, envelope, signature FROM outbox ORDER BY seq LIMIT ?1")
            .map_err(|e| meta.err(e))?;
        let rows = stmt
            .query_map([n as i64], |row| {
                Ok(Queued {
                    seq: row.get::<_, i64>(0)? as u64,
                    signed: Signed {
                        envelope: row.get(1)?,
                        signature: row.get(2)?,
                    },
                })
            })
            .and_then(|rows| rows.collect::<Result<Vec<_>, _>>());
        rows.map_err(|e| meta.err(e))
    }

    /// Forgets reports the hub has (`delivered`) or refused for good (`rejected`).
    pub(crate) fn ack(&self, delivered: &[u64], rejected: &[u64]) -> Result<(), OutboxError> {
        let mut inner = self.lock();
        let Inner { conn, meta, .. } = &mut *inner;
        let tx = meta.tx(conn)?;
        let mut removed = 0;
        for seq in delivered.iter().chain(rejected) {
            removed += tx
                .execute("DELETE FROM outbox WHERE seq = ?1", [*seq as i64])
                .map_err(|e| meta.err(e))? as u64;
        }
        tx.commit().map_err(|e| meta.err(e))?;
        inner.counts.update(|c| {
            c.queued = c.queued.saturating_sub(removed);
            c.delivered += delivered.len() as u64;
            c.rejected += rejected.len() as u64;
        });
        Ok(())
    }

    /// Erases every queued report and the notes of unstored ones (a factory reset: they were
    /// the previous owner's). Sequence numbers go on from where they were; returns how many
    /// reports went.
    pub(crate) fn erase(&self) -> Result<u64, OutboxError> {
        let mut inner = self.lock();
        let Inner { conn, meta, .. } = &mut *inner;
        let tx = meta.tx(conn)?;
        let erased = tx
            .execute("DELETE FROM outbox", [])
            .map_err(|e| meta.err(e))? as u64;
        tx.commit().map_err(|e| meta.err(e))?;
        inner.unwritten = 0;
        inner.low_space = 0;
        inner.counts.update(|c| c.queued = 0);
        Ok(erased)
    }

    /// The signing key's public half, lowercase hex.
    pub(crate) fn public_key_hex(&self) -> String {
        edge_identity::hex::encode(self.identity.public_key())
    }

    /// What the queue did so far; never waits for a write in progress.
    pub(crate) fn counts(&self) -> OutboxCounts {
        self.counts.get()
    }
}

/// Opens the queue file and checks it; `Corrupt` when SQLite says it is not a database or is
/// damaged, or its tables are not the queue's.
fn open_file(path: &Path) -> Result<Connection, Unusable> {
    let classify = |e: rusqlite::Error| match e.sqlite_error_code() {
        Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt) => {
            Unusable::Corrupt(e.to_string())
        }
        _ => Unusable::Other(e),
    };
    let conn = edge_identity::database::open(path, SCHEMA).map_err(classify)?;
    let check: String = conn
        .query_row("PRAGMA quick_check", [], |r| r.get(0))
        .map_err(classify)?;
    if check != "ok" {
        return Err(Unusable::Corrupt(format!("quick_check: {check}")));
    }
    migrate(&conn).map_err(|e| Unusable::Corrupt(format!("not the queue's tables: {e}")))?;
    Ok(conn)
}

fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    let has_boot_ms: bool = conn.query_row(
        "SELECT COUNT(*) > 0 FROM pragma_table_info('outbox') WHERE name = 'boot_ms'",
        [],
        |r| r.get(0),
    )?;
    if !has_boot_ms {
        for statement in COLUMNS_SINCE_1 {
            conn.execute(statement, [])?;
        }
    }
    Ok(())
}

/// Sets the queue file aside, and its WAL and shared-memory files with it: a WAL must never meet
/// a fresh database of the same name.
fn set_file_aside(path: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let mut file = path.as_os_str().to_owned();
        file.push(suffix);
        if let Err(e) = edge_identity::durable::set_aside(Path::new(&file)) {
            tracing::warn!(error = %e, "cannot set the queue file aside");
        }
    }
}

fn in_memory(path: &Path) -> Connection {
    // An in-memory database can only fail to open when memory is exhausted; the process would not
    // get far either way.
    let conn = Connection::open_in_memory()
        .and_then(|conn| conn.execute_batch(SCHEMA).map(|()| conn))
        .unwrap_or_else(|e| panic!("in-memory queue for {}: {e}", path.display()));
    migrate(&conn).unwrap_or_else(|e| panic!("in-memory queue for {}: {e}", path.display()));
    conn
}

impl Meta {
    fn err(&self, source: rusqlite::Error) -> OutboxError {
        OutboxError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    fn tx<'c>(&self, conn: &'c mut Connection) -> Result<rusqlite::Transaction<'c>, OutboxError> {
        conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(|e| self.err(e))
    }

    fn seal(&self, seq: u64, body: Body) -> Signed {
        let envelope = Envelope {
            v: VERSION,
            device_id: self.identity.device_id().to_string(),
            seq,
            boot_id: self.boot_id.clone(),
            sent_at_ms: self.clock.unix_ms(),
            body,
        };
        Signed::seal(&envelope, &self.identity)
    }

    /// The boot's monotonic clock, milliseconds.
    fn boot_ms(&self) -> i64 {
        self.clock.monotonic().as_millis() as i64
    }

    /// Hands out the next sequence number within `tx`, first raising `seq-floor` when the number
    /// reaches it (before the commit: a number is never used unless the floor is above it).
    fn next_seq(&self, tx: &rusqlite::Transaction<'_>) -> Result<u64, OutboxError> {
        let next = stored_next(tx).map_err(|e| self.err(e))?.unwrap_or(1);
        if next >= self.floor.value.get() {
            let raised = next + FLOOR_STRIDE;
            let written = edge_identity::durable::write(
                &self.floor.path,
                format!("{raised}\n").as_bytes(),
                0o600,
            );
            match written {
                Ok(()) => self.floor.value.set(raised),
                Err(e) if self.floor.required => return Err(e.into()),
                Err(e) => tracing::warn!(error = %e, "cannot raise the sequence floor"),
            }
        }
        set_next(tx, next + 1).map_err(|e| self.err(e))?;
        Ok(next)
    }
}

impl Inner {
    /// After opening: a fresh queue starts at the floor (with a `lost` note when the old one was
    /// set aside), and reports of earlier boots are aged onto this boot's clock.
    fn start(&mut self, set_aside: bool) -> Result<(), OutboxError> {
        let Inner { conn, meta, .. } = self;
        let err = |e| meta.err(e);
        let tx = meta.tx(conn)?;
        let floor = meta.floor.value.get();
        if stored_next(&tx).map_err(err)?.is_none() {
            set_next(&tx, floor).map_err(err)?;
        }
        let (now_wall, now_boot) = (meta.clock.unix_ms() as i64, meta.boot_ms());
        let trusted_after = edge_hal::CLOCK_FLOOR_UNIX_S as i64 * 1000;
        let trusted = meta.clock.wall_trusted();
        tx.execute(
            "UPDATE outbox SET boot_id = ?1, boot_ms = CASE
                 WHEN ?2 AND created_at_ms >= ?3 THEN MIN(?5, ?5 - (?4 - created_at_ms))
                 ELSE ?5 END
             WHERE boot_id != ?1",
            params![meta.boot_id, trusted, trusted_after, now_wall, now_boot],
        )
        .map_err(err)?;
        if set_aside && floor > 1 {
            let lost = Dropped {
                count: 0,
                first_seq: 1,
                last_seq: floor - 1,
                reason: "lost".into(),
            };
            note_in(&tx, meta, vec![lost])?;
        }
        tx.commit().map_err(err)
    }

    fn push(&mut self, body: Body) -> Result<u64, OutboxError> {
        let stored = self.store(body);
        match &stored {
            Ok(seq) => {
                let (unwritten, low_space) = (self.unwritten, self.low_space);
                if unwritten + low_space > 0 {
                    let reasons = [("unwritten", unwritten), ("low_space", low_space)];
                    let notes = reasons
                        .into_iter()
                        .filter(|(_, count)| *count > 0)
                        .map(|(reason, count)| Dropped {
                            count,
                            first_seq: *seq,
                            last_seq: *seq,
                            reason: reason.into(),
                        })
                        .collect();
                    // The note waits for the next push if it cannot be stored either.
                    if self.note_now(notes).is_ok() {
                        self.unwritten = 0;
                        self.low_space = 0;
                    }
                }
                self.enforce_bounds()?;
            }
            Err(OutboxError::LowSpace { .. }) => {
                self.low_space += 1;
                self.counts.update(|c| c.unwritten += 1);
            }
            Err(_) => {
                self.unwritten += 1;
                self.counts.update(|c| c.unwritten += 1);
            }
        }
        stored
    }

    fn store(&mut self, body: Body) -> Result<u64, OutboxError> {
        let kind = body.kind();
        if matches!(body, Body::Heartbeat(_) | Body::Capability(_))
            && let Some(available) = self.available_bytes()
            && available < self.meta.bounds.min_free_bytes
        {
            return Err(OutboxError::LowSpace {
                available,
                min: self.meta.bounds.min_free_bytes,
            });
        }
        let Inner { conn, meta, .. } = self;
        let tx = meta.tx(conn)?;
        let seq = meta.next_seq(&tx)?;
        let signed = meta.seal(seq, body);
        insert(&tx, meta, seq, kind, &signed).map_err(|e| meta.err(e))?;
        tx.commit().map_err(|e| meta.err(e))?;
        self.counts.update(|c| {
            c.pushed += 1;
            c.queued += 1;
        });
        Ok(seq)
    }

    /// Free space where the queue file lives; `None` for a queue in memory or when unknown.
    fn available_bytes(&self) -> Option<u64> {
        if !self.meta.floor.required {
            return None;
        }
        let dir = self.meta.path.parent()?;
        let usage = LinuxStorage.usage(dir).ok()?;
        Some(usage.available_bytes)
    }

    /// Drops what is past the bounds, oldest first: everything older than the age bound, and
    /// when the queue is full, the oldest down to nine tenths of the bound (so drops come in
    /// runs, not one per push).
    fn enforce_bounds(&mut self) -> Result<(), OutboxError> {
        let Inner {
            conn, meta, counts, ..
        } = self;
        let err = |e| meta.err(e);
        let cutoff = meta.boot_ms() - meta.bounds.max_age.as_millis() as i64;
        let tx = meta.tx(conn)?;
        let expired = drop_where(&tx, "boot_ms < ?1", cutoff, "expired").map_err(err)?;
        let queued: i64 = tx
            .query_row(
                "SELECT COUNT(*) FROM outbox WHERE kind != 'dropped'",
                [],
                |r| r.get(0),
            )
            .map_err(err)?;
        let max = meta.bounds.max_reports as i64;
        let full = if queued >= max {
            let over = queued - max * 9 / 10;
            let last: i64 = tx
                .query_row(
                    "SELECT seq FROM outbox WHERE kind != 'dropped' ORDER BY seq LIMIT 1 OFFSET ?1",
                    [over - 1],
                    |r| r.get(0),
                )
                .map_err(err)?;
            drop_where(&tx, "seq <= ?1", last, "full").map_err(err)?
        } else {
            None
        };
        let new: Vec<Dropped> = [expired, full].into_iter().flatten().collect();
        if new.is_empty() {
            return Ok(());
        }
        let fresh: u64 = new.iter().map(|d| d.count).sum();
        let queued = note_in(&tx, meta, new)?;
        tx.commit().map_err(err)?;
        counts.update(|c| {
            c.pushed += 1;
            c.dropped += fresh;
            c.queued = queued;
        });
        Ok(())
    }

    /// [`note_in`] in a transaction of its own.
    fn note_now(&mut self, new: Vec<Dropped>) -> Result<(), OutboxError> {
        let Inner {
            conn, meta, counts, ..
        } = self;
        let tx = meta.tx(conn)?;
        let queued = note_in(&tx, meta, new)?;
        tx.commit().map_err(|e| meta.err(e))?;
        counts.update(|c| {
            c.pushed += 1;
            c.queued = queued;
        });
        Ok(())
    }
}

/// Queues one `dropped` report for `new`, absorbing any earlier one still waiting, so the tally
/// is exact and never itself dropped; returns how many reports are queued after it.
fn note_in(
    tx: &rusqlite::Transaction<'_>,
    meta: &Meta,
    new: Vec<Dropped>,
) -> Result<u64, OutboxError> {
    let err = |e| meta.err(e);
    let earlier = take_notes(tx).map_err(err)?;
    let note = merge(earlier.iter().chain(&new));
    tracing::warn!(
        dropped = new.iter().map(|d| d.count).sum::<u64>(),
        total = note.count,
        reason = %note.reason,
        "the report queue lost or dropped undelivered reports"
    );
    let seq = meta.next_seq(tx)?;
    let signed = meta.seal(seq, Body::Dropped(note));
    insert(tx, meta, seq, "dropped", &signed).map_err(err)?;
    let queued = tx
        .query_row("SELECT COUNT(*) FROM outbox", [], |r| r.get::<_, i64>(0))
        .map_err(err)? as u64;
    Ok(queued)
}

/// Removes the `dropped` reports still queued and returns what they said.
fn take_notes(tx: &rusqlite::Transaction<'_>) -> rusqlite::Result<Vec<Dropped>> {
    let notes = tx
        .prepare("SELECT envelope FROM outbox WHERE kind = 'dropped'")?
        .query_map([], |r| r.get::<_, String>(0))?
        .collect::<Result<Vec<_>, _>>()?;
    tx.execute("DELETE FROM outbox WHERE kind = 'dropped'", [])?;
    Ok(notes
        .iter()
        .filter_map(
            |text| match serde_json::from_str::<Envelope>(text).map(|e| e.body) {
                Ok(Body::Dropped(d)) => Some(d),
                _ => None,
            },
        )
        .collect())
}

/// One tally from several: counts add up, the range covers them all, reasons are listed once.
fn merge<'a>(drops: impl Iterator<Item = &'a Dropped>) -> Dropped {
    let mut total = Dropped {
        count: 0,
        first_seq: u64::MAX,
        last_seq: 0,
        reason: String::new(),
    };
    for d in drops {
        total.count += d.count;
        total.first_seq = total.first_seq.min(d.first_seq);
        total.last_seq = total.last_seq.max(d.last_seq);
        for reason in d.reason.split(',').filter(|r| !r.is_empty()) {
            if !total.reason.split(',').any(|r| r == reason) {
                if !total.reason.is_empty() {
                    total.reason.push(',');
                }
                total.reason.push_str(reason);
            }
        }
    }
    total
}

fn stored_next(tx: &rusqlite::Transaction<'_>) -> rusqlite::Result<Option<u64>> {
    tx.query_row("SELECT value FROM meta WHERE key = 'next_seq'", [], |r| {
        r.get::<_, i64>(0)
    })
    .optional()
    .map(|next| next.map(|n| n as u64))
}

fn set_next(tx: &rusqlite::Transaction<'_>, next: u64) -> rusqlite::Result<()> {
    tx.execute(
        "INSERT INTO meta (key, value) VALUES ('next_seq', ?1)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        [next as i64],
    )?;
    Ok(())
}

fn insert(
    tx: &rusqlite::Transaction<'_>,
    meta: &Meta,
    seq: u64,
    kind: &str,
    signed: &Signed,
) -> rusqlite::Result<()> {
    tx.execute(
        "INSERT INTO outbox (seq, created_at_ms, kind, envelope, signature, boot_id, boot_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            seq as i64,
            meta.clock.unix_ms() as i64,
            kind,
            signed.envelope,
            signed.signature,
            meta.boot_id,
            meta.boot_ms(),
        ],
    )?;
    Ok(())
}

/// Deletes the reports (not `dropped` notes) matching `filter` (one `?1` parameter); what went,
/// if anything.
fn drop_where(
    tx: &rusqlite::Transaction<'_>,
    filter: &str,
    arg: i64,
    reason: &str,
) -> rusqlite::Result<Option<Dropped>> {
    let filter = format!("kind != 'dropped' AND {filter}");
    let (count, first, last): (i64, Option<i64>, Option<i64>) = tx.query_row(
        &format!("SELECT COUNT(*), MIN(seq), MAX(seq) FROM outbox WHERE {filter}"),
        [arg],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )?;
    let (Some(first), Some(last)) = (first, last) else {
        return Ok(None);
    };
    tx.execute(&format!("DELETE FROM outbox WHERE {filter}"), [arg])?;
    Ok(Some(Dropped {
        count: count as u64,
        first_seq: first as u64,
        last_seq: last as u64,
        reason: reason.into(),
    }))
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use edge_hal::fake::FakeClock;
    use edge_protocol::report::{Heartbeat, JobOutcome, JobReport};

    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    struct Rig {
        dir: tempfile::TempDir,
        identity: Arc<Identity>,
        clock: Arc<FakeClock>,
    }

    impl Rig {
        fn new() -> Self {
            Self {
                dir: tempfile::tempdir().expect("tempdir"),
                identity: Arc::new(Identity::generate_ephemeral().expect("key")),
                clock: Arc::new(FakeClock::default()),
            }
        }

        fn path(&self) -> PathBuf {
            self.dir.path().join("outbox.db")
        }

        fn open(&self, max_reports: u64) -> Outbox {
            self.open_in("boot", max_reports, 0)
        }

        fn open_in(&self, boot: &str, max_reports: u64, min_free_bytes: u64) -> Outbox {
            Outbox::open(
                &self.path(),
                self.identity.clone(),
                boot.into(),
                Bounds {
                    max_reports,
                    max_age: HOUR,
                    min_free_bytes,
                },
                self.clock.clone(),
            )
        }
    }

    fn heartbeat() -> Body {
        Body::Heartbeat(Heartbeat::default())
    }

    fn bodies(q: &Outbox) -> Vec<(u64, Body)> {
        q.peek(10_000)
            .expect("peek")
            .into_iter()
            .map(|r| (r.seq, r.signed.peek().expect("parse").body))
            .collect()
    }

    fn notes(q: &Outbox) -> Vec<Dropped> {
        bodies(q)
            .into_iter()
            .filter_map(|(_, body)| match body {
                Body::Dropped(d) => Some(d),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn an_erased_queue_is_empty_and_numbers_go_on() {
        let rig = Rig::new();
        let q = rig.open(100);
        for _ in 0..3 {
            q.push_blocking(heartbeat()).expect("push");
        }
        assert_eq!(q.erase().expect("erase"), 3);
        assert!(bodies(&q).is_empty());
        assert_eq!(q.counts().queued, 0);
        assert_eq!(
            q.push_blocking(heartbeat()).expect("push"),
            4,
            "never reused"
        );
        drop(q);
        let again = rig.open(100);
        assert_eq!(
            bodies(&again).len(),
            1,
            "erased on disk, not only in memory"
        );
    }

    #[test]
    fn reports_come_out_signed_in_order_and_go_when_acked() {
        let rig = Rig::new();
        let q = rig.open(100);
        for _ in 0..5 {
            q.push_blocking(heartbeat()).expect("push");
        }
        let batch = q.peek(3).expect("peek");
        assert_eq!(batch.iter().map(|r| r.seq).collect::<Vec<_>>(), [1, 2, 3]);
        let opened = batch[1]
            .signed
            .open(rig.identity.public_key())
            .expect("verifies");
        assert_eq!((opened.seq, opened.boot_id.as_str()), (2, "boot"));
        q.ack(&[1, 2], &[3]).expect("ack");
        let rest = q.peek(10).expect("peek");
        assert_eq!(rest.iter().map(|r| r.seq).collect::<Vec<_>>(), [4, 5]);
        let counts = q.counts();
        assert_eq!(
            (counts.queued, counts.delivered, counts.rejected),
            (2, 2, 1)
        );
        assert!(counts.on_disk && !counts.set_aside);
    }

    #[test]
    fn sequence_numbers_survive_a_reopen_and_are_never_reused() {
        let rig = Rig::new();
        let q = rig.open(100);
        q.push_blocking(heartbeat()).expect("push");
        let reg = q.seal_unqueued(heartbeat()).expect("seal");
        assert_eq!(reg.peek().expect("parse").seq, 2);
        q.ack(&[1], &[]).expect("ack");
        drop(q);
        let q = rig.open(100);
        assert_eq!(q.push_blocking(heartbeat()).expect("push"), 3);
    }

    #[test]
    fn a_deleted_queue_starts_above_every_number_handed_out() {
        let rig = Rig::new();
        let q = rig.open(100);
        for _ in 0..3 {
            q.push_blocking(heartbeat()).expect("push");
        }
        drop(q);
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", rig.path().display()));
        }
        let q = rig.open(100);
        let seq = q.push_blocking(heartbeat()).expect("push");
        // Before the floor, a lost queue started again at 1, and the hub refused every report
        // as stale until the numbers passed the old ones.
        assert!(seq > 3, "a fresh queue reused seq {seq}");
    }

    #[test]
    fn a_garbage_queue_is_set_aside_and_a_fresh_one_says_what_was_lost() {
        let rig = Rig::new();
        let q = rig.open(100);
        for _ in 0..3 {
            q.push_blocking(heartbeat()).expect("push");
        }
        drop(q);
        std::fs::write(
            rig.path(),
            b"this is not a database, it is a power cut's leftovers",
        )
        .expect("garbage");
        let q = rig.open(100);
        let counts = q.counts();
        assert!(counts.set_aside && counts.on_disk, "{counts:?}");
        assert!(rig.dir.path().join("outbox.db.corrupt").exists());
        assert!(!rig.path().exists() || q.counts().on_disk);
        let notes = notes(&q);
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert_eq!((notes[0].reason.as_str(), notes[0].first_seq), ("lost", 1));
        assert!(notes[0].last_seq >= 3, "{notes:?}");
        let seq = q.push_blocking(heartbeat()).expect("push");
        assert!(seq > notes[0].last_seq, "seq {seq} within the lost range");
    }

    #[test]
    fn a_queue_that_cannot_be_opened_is_kept_in_memory() {
        let rig = Rig::new();
        let q = Outbox::open(
            &rig.dir.path().join("gone").join("outbox.db"),
            rig.identity.clone(),
            "boot".into(),
            Bounds {
                max_reports: 10,
                max_age: HOUR,
                min_free_bytes: 0,
            },
            rig.clock.clone(),
        );
        assert!(!q.counts().on_disk);
        assert_eq!(q.push_blocking(heartbeat()).expect("push"), 1);
        assert_eq!(q.peek(10).expect("peek").len(), 1);
    }

    #[test]
    fn a_report_that_cannot_be_stored_is_counted_and_reported_later() {
        let rig = Rig::new();
        let q = rig.open(100);
        // The floor must be raised before the first number; make that write fail (a directory
        // where the file goes), as a full or failing disk would.
        let floor = rig.dir.path().join("seq-floor");
        std::fs::create_dir(&floor).expect("dir");
        assert!(q.push_blocking(heartbeat()).is_err());
        assert!(q.push_blocking(heartbeat()).is_err());
        assert_eq!((q.counts().unwritten, q.counts().queued), (2, 0));
        std::fs::remove_dir(&floor).expect("rmdir");
        let seq = q.push_blocking(heartbeat()).expect("push");
        let notes = notes(&q);
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert_eq!(
            (notes[0].count, notes[0].reason.as_str(), notes[0].first_seq),
            (2, "unwritten", seq)
        );
    }

    #[test]
    fn low_space_skips_periodic_reports_but_keeps_job_results() {
        let rig = Rig::new();
        let q = rig.open_in("boot", 100, u64::MAX);
        assert!(matches!(
            q.push_blocking(heartbeat()),
            Err(OutboxError::LowSpace { .. })
        ));
        let result = Body::JobResult(Box::new(JobReport {
            job_id: "j".into(),
            outcome: JobOutcome::Failed { error: "x".into() },
        }));
        q.push_blocking(result).expect("job results are stored");
        let kinds: Vec<&str> = bodies(&q).iter().map(|(_, b)| b.kind()).collect();
        assert_eq!(kinds, ["job_result", "dropped"]);
        assert_eq!(notes(&q)[0].reason, "low_space");
    }

    #[test]
    fn a_full_queue_drops_the_oldest_and_says_how_many() {
        let rig = Rig::new();
        let q = rig.open(100);
        for _ in 0..150 {
            q.push_blocking(heartbeat()).expect("push");
        }
        let all = q.peek(1000).expect("peek");
        assert!(all.len() <= 101, "{} queued", all.len());
        let dropped = notes(&q);
        assert_eq!(
            dropped.len(),
            1,
            "one tally, however many drops: {dropped:?}"
        );
        let total = dropped[0].count;
        // Every seq handed out is either still queued or counted in a `dropped` report.
        let heartbeats = all.len() as u64 - dropped.len() as u64;
        assert_eq!(heartbeats + total, 150, "{dropped:?}");
        assert!(dropped.iter().all(|d| d.reason == "full"));
        assert_eq!(q.counts().dropped, total);
        // The oldest went: what is left is the newest run of heartbeats.
        let first_left = all.iter().map(|r| r.seq).min().expect("some");
        assert!(first_left > 1);
    }

    #[test]
    fn reports_past_the_age_bound_are_dropped_and_reported() {
        let rig = Rig::new();
        let q = rig.open(100);
        q.push_blocking(heartbeat()).expect("push");
        q.push_blocking(heartbeat()).expect("push");
        rig.clock.advance(HOUR + Duration::from_millis(1));
        let left = q.peek(10).expect("peek");
        assert_eq!(left.len(), 1);
        match left[0].signed.peek().expect("parse").body {
            Body::Dropped(d) => assert_eq!(
                (d.count, d.first_seq, d.last_seq, d.reason.as_str()),
                (2, 1, 2, "expired")
            ),
            other => panic!("expected a dropped report, got {other:?}"),
        }
    }

    #[test]
    fn a_clock_that_boots_in_1970_and_jumps_forward_expires_nothing() {
        let rig = Rig::new();
        rig.clock
            .set_wall(SystemTime::UNIX_EPOCH + Duration::from_secs(60));
        let q = rig.open(100);
        q.push_blocking(heartbeat()).expect("push");
        rig.clock.advance(Duration::from_secs(60));
        // NTP corrects the clock by 56 years; before, every report was "older" than the bound.
        rig.clock
            .set_wall(SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_000_000));
        q.push_blocking(heartbeat()).expect("push");
        assert_eq!(bodies(&q).len(), 2, "{:?}", notes(&q));
        // The next boot, still in 1970: the old reports start their age afresh.
        drop(q);
        rig.clock
            .set_wall(SystemTime::UNIX_EPOCH + Duration::from_secs(5));
        let q = rig.open_in("boot-2", 100, 0);
        assert_eq!(bodies(&q).len(), 2, "{:?}", notes(&q));
    }

    #[test]
    fn a_report_of_an_earlier_boot_is_aged_by_a_trusted_wall_clock() {
        let rig = Rig::new();
        let q = rig.open(100);
        q.push_blocking(heartbeat()).expect("push");
        drop(q);
        // Rebooted (the monotonic clock starts again) two hours later by a trusted wall clock.
        rig.clock.advance(2 * HOUR);
        let q = rig.open_in("boot-2", 100, 0);
        let notes = notes(&q);
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert_eq!(notes[0].reason, "expired");
    }

    #[test]
    fn counts_are_read_while_a_write_holds_the_queue() {
        let rig = Rig::new();
        let q = rig.open(100);
        q.push_blocking(heartbeat()).expect("push");
        // A push in the middle of its commit holds the connection's lock; `/status` must not wait.
        let writing = q.lock();
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = q.clone();
        std::thread::spawn(move || {
            let _ = tx.send(reader.counts());
        });
        let counts = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("counts() waited for the connection's lock");
        assert_eq!((counts.queued, counts.pushed), (1, 1));
        drop(writing);
    }
}
