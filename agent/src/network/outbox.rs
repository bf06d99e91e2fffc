//! Store-and-forward: every report is signed and written to an on-disk queue before anyone
//! tries to send it, then delivered in sequence order and deleted only when the hub has it.
//!
//! The queue is SQLite (`state_dir/outbox.db`, WAL, `synchronous=FULL`): a push is one
//! transaction that takes the next sequence number, stores the signed envelope and bumps the
//! counter, so after a crash or power cut a report either exists whole with its number or not at
//! all, and a number is never handed out twice. Bounds: at most `max_reports` waiting and none
//! older than `max_age`; the oldest go first, and each drop is itself queued as a `dropped`
//! report so the network learns how many it lost.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use edge_identity::Identity;
use edge_protocol::envelope::VERSION;
use edge_protocol::report::Dropped;
use edge_protocol::{Body, Envelope, Signed};
use rusqlite::{Connection, OptionalExtension, params};
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

/// Errors of the queue.
#[derive(Debug, thiserror::Error)]
#[error("report queue {path}: {source}")]
pub struct OutboxError {
    pub path: PathBuf,
    pub source: rusqlite::Error,
}

/// How much the queue may hold.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bounds {
    pub max_reports: u64,
    /// Age of the oldest report.
    pub max_age: Duration,
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
}

struct Inner {
    conn: Connection,
    meta: Meta,
    counts: Counts,
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

/// What signing and error messages need, apart from the connection (so both can be borrowed).
struct Meta {
    path: PathBuf,
    identity: Arc<Identity>,
    boot_id: String,
    bounds: Bounds,
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

impl Outbox {
    /// Opens (creating) the queue at `path`; reports are signed by `identity`.
    pub(crate) fn open(
        path: &Path,
        identity: Arc<Identity>,
        boot_id: String,
        bounds: Bounds,
    ) -> Result<Self, OutboxError> {
        let err = |source| OutboxError {
            path: path.to_owned(),
            source,
        };
        let conn = edge_identity::database::open(path, SCHEMA).map_err(err)?;
        let queued = conn
            .query_row("SELECT COUNT(*) FROM outbox", [], |r| r.get::<_, i64>(0))
            .map_err(err)? as u64;
        let counts = Counts::default();
        counts.update(|c| c.queued = queued);
        Ok(Self {
            inner: Arc::new(Mutex::new(Inner {
                conn,
                meta: Meta {
                    path: path.to_owned(),
                    identity: identity.clone(),
                    boot_id,
                    bounds,
                },
                counts: counts.clone(),
            })),
            counts,
            identity,
            pushed: Arc::new(Notify::new()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves SQLite consistent (transactions roll back).
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Signs `body` with the next sequence number and stores it durably; returns the number.
    pub(crate) fn push_blocking(&self, body: Body, now_ms: u64) -> Result<u64, OutboxError> {
        let seq = self.lock().push(body, now_ms)?;
        self.pushed.notify_one();
        Ok(seq)
    }

    /// [`Outbox::push_blocking`] off the async runtime.
    pub(crate) async fn push(&self, body: Body, now_ms: u64) -> Result<u64, OutboxError> {
        let this = self.clone();
        edge_tasks::blocking(move || this.push_blocking(body, now_ms)).await
    }

    /// Takes a sequence number without queueing anything (for registration, which is sent
    /// directly), and signs `body` with it.
    pub(crate) fn seal_unqueued(&self, body: Body, now_ms: u64) -> Result<Signed, OutboxError> {
        let mut inner = self.lock();
        let Inner { conn, meta, .. } = &mut *inner;
        let tx = meta.tx(conn)?;
        let seq = next_seq(&tx).map_err(|e| meta.err(e))?;
        tx.commit().map_err(|e| meta.err(e))?;
        Ok(meta.seal(seq, body, now_ms))
    }

    /// Up to `n` reports, oldest first, after dropping those past the age bound.
    pub(crate) fn peek(&self, n: usize, now_ms: u64) -> Result<Vec<Queued>, OutboxError> {
        let mut inner = self.lock();
        inner.enforce_bounds(now_ms)?;
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

    /// The signing key's public half, lowercase hex.
    pub(crate) fn public_key_hex(&self) -> String {
        edge_identity::hex::encode(self.identity.public_key())
    }

    /// What the queue did so far; never waits for a write in progress.
    pub(crate) fn counts(&self) -> OutboxCounts {
        self.counts.get()
    }
}

impl Meta {
    fn err(&self, source: rusqlite::Error) -> OutboxError {
        OutboxError {
            path: self.path.clone(),
            source,
        }
    }

    fn tx<'c>(&self, conn: &'c mut Connection) -> Result<rusqlite::Transaction<'c>, OutboxError> {
        conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(|e| self.err(e))
    }

    fn seal(&self, seq: u64, body: Body, now_ms: u64) -> Signed {
        let envelope = Envelope {
            v: VERSION,
            device_id: self.identity.device_id().to_string(),
            seq,
            boot_id: self.boot_id.clone(),
            sent_at_ms: now_ms,
            body,
        };
        Signed::seal(&envelope, &self.identity)
    }
}

impl Inner {
    fn push(&mut self, body: Body, now_ms: u64) -> Result<u64, OutboxError> {
        let kind = body.kind();
        let Inner { conn, meta, .. } = self;
        let tx = meta.tx(conn)?;
        let seq = next_seq(&tx).map_err(|e| meta.err(e))?;
        let signed = meta.seal(seq, body, now_ms);
        insert(&tx, seq, now_ms, kind, &signed).map_err(|e| meta.err(e))?;
        tx.commit().map_err(|e| meta.err(e))?;
        self.counts.update(|c| {
            c.pushed += 1;
            c.queued += 1;
        });
        self.enforce_bounds(now_ms)?;
        Ok(seq)
    }

    /// Drops what is past the bounds, oldest first: everything older than the age bound, and
    /// when the queue is full, the oldest down to nine tenths of the bound (so drops come in
    /// runs, not one per push). The counts go into one `dropped` report, which absorbs any
    /// earlier one still waiting, so the tally is exact and never itself dropped.
    fn enforce_bounds(&mut self, now_ms: u64) -> Result<(), OutboxError> {
        let Inner { conn, meta, counts } = self;
        let err = |e| meta.err(e);
        let cutoff = now_ms as i64 - meta.bounds.max_age.as_millis() as i64;
        let tx = meta.tx(conn)?;
        let expired = drop_where(&tx, "created_at_ms < ?1", cutoff, "expired").map_err(err)?;
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
        let earlier = take_notes(&tx).map_err(err)?;
        let note = merge(earlier.iter().chain(&new));
        tracing::warn!(
            dropped = fresh,
            total = note.count,
            reason = %note.reason,
            "report queue dropped undelivered reports"
        );
        let seq = next_seq(&tx).map_err(err)?;
        let signed = meta.seal(seq, Body::Dropped(note), now_ms);
        insert(&tx, seq, now_ms, "dropped", &signed).map_err(err)?;
        let queued = tx
            .query_row("SELECT COUNT(*) FROM outbox", [], |r| r.get::<_, i64>(0))
            .map_err(err)? as u64;
        tx.commit().map_err(err)?;
        counts.update(|c| {
            c.pushed += 1;
            c.dropped += fresh;
            c.queued = queued;
        });
        Ok(())
    }
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

fn next_seq(tx: &rusqlite::Transaction<'_>) -> rusqlite::Result<u64> {
    let next = tx
        .query_row("SELECT value FROM meta WHERE key = 'next_seq'", [], |r| {
            r.get::<_, i64>(0)
        })
        .optional()?
        .unwrap_or(1);
    tx.execute(
        "INSERT INTO meta (key, value) VALUES ('next_seq', ?1)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        [next + 1],
    )?;
    Ok(next as u64)
}

fn insert(
    tx: &rusqlite::Transaction<'_>,
    seq: u64,
    now_ms: u64,
    kind: &str,
    signed: &Signed,
) -> rusqlite::Result<()> {
    tx.execute(
        "INSERT INTO outbox (seq, created_at_ms, kind, envelope, signature)
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![
            seq as i64,
            now_ms as i64,
            kind,
            signed.envelope,
            signed.signature
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
    use super::*;
    use edge_protocol::report::Heartbeat;

    fn outbox(dir: &Path, max_reports: u64) -> Outbox {
        let identity = Arc::new(Identity::generate_ephemeral().expect("key"));
        open_with(dir, identity, max_reports)
    }

    fn open_with(dir: &Path, identity: Arc<Identity>, max_reports: u64) -> Outbox {
        Outbox::open(
            &dir.join("outbox.db"),
            identity,
            "boot".into(),
            Bounds {
                max_reports,
                max_age: Duration::from_secs(3600),
            },
        )
        .expect("open")
    }

    fn heartbeat() -> Body {
        Body::Heartbeat(Heartbeat::default())
    }

    #[test]
    fn reports_come_out_signed_in_order_and_go_when_acked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let identity = Arc::new(Identity::generate_ephemeral().expect("key"));
        let q = open_with(dir.path(), identity.clone(), 100);
        for _ in 0..5 {
            q.push_blocking(heartbeat(), 1_000).expect("push");
        }
        let batch = q.peek(3, 1_000).expect("peek");
        assert_eq!(batch.iter().map(|r| r.seq).collect::<Vec<_>>(), [1, 2, 3]);
        let opened = batch[1]
            .signed
            .open(identity.public_key())
            .expect("verifies");
        assert_eq!((opened.seq, opened.boot_id.as_str()), (2, "boot"));
        q.ack(&[1, 2], &[3]).expect("ack");
        let rest = q.peek(10, 1_000).expect("peek");
        assert_eq!(rest.iter().map(|r| r.seq).collect::<Vec<_>>(), [4, 5]);
        let counts = q.counts();
        assert_eq!(
            (counts.queued, counts.delivered, counts.rejected),
            (2, 2, 1)
        );
    }

    #[test]
    fn sequence_numbers_survive_a_reopen_and_are_never_reused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let identity = Arc::new(Identity::generate_ephemeral().expect("key"));
        let q = open_with(dir.path(), identity.clone(), 100);
        q.push_blocking(heartbeat(), 1).expect("push");
        let reg = q.seal_unqueued(heartbeat(), 1).expect("seal");
        assert_eq!(reg.peek().expect("parse").seq, 2);
        q.ack(&[1], &[]).expect("ack");
        drop(q);
        let q = open_with(dir.path(), identity, 100);
        assert_eq!(q.push_blocking(heartbeat(), 2).expect("push"), 3);
    }

    #[test]
    fn a_full_queue_drops_the_oldest_and_says_how_many() {
        let dir = tempfile::tempdir().expect("tempdir");
        let q = outbox(dir.path(), 100);
        for _ in 0..150 {
            q.push_blocking(heartbeat(), 5).expect("push");
        }
        let all = q.peek(1000, 5).expect("peek");
        assert!(all.len() <= 101, "{} queued", all.len());
        let dropped: Vec<Dropped> = all
            .iter()
            .filter_map(|r| match r.signed.peek().expect("parse").body {
                Body::Dropped(d) => Some(d),
                _ => None,
            })
            .collect();
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
        let dir = tempfile::tempdir().expect("tempdir");
        let q = outbox(dir.path(), 100);
        q.push_blocking(heartbeat(), 1_000).expect("push");
        q.push_blocking(heartbeat(), 1_000).expect("push");
        let later = 1_000 + 3_600_000 + 1;
        let left = q.peek(10, later).expect("peek");
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
    fn counts_are_read_while_a_write_holds_the_queue() {
        let dir = tempfile::tempdir().expect("tempdir");
        let q = outbox(dir.path(), 100);
        q.push_blocking(heartbeat(), 1).expect("push");
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
