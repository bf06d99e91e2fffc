//! The hub's storage: SQLite in WAL mode, written by one thread that commits in groups.
//!
//! Every request that changes state sends its work to the writer thread and waits for the reply;
//! the writer takes whatever requests are waiting, runs them in one transaction and commits once
//! (`synchronous=FULL`: the commit is on disk before any of them is answered). So an `accepted`
//! verdict means the report is durable, and many devices share one fsync.
//!
//! Each report is stored once under `(device_id, seq)` with its envelope text and signature, so
//! anyone can verify it again later. A report whose `seq` is at or below the device's high-water
//! mark is a duplicate when it is already stored and rejected (stale) when it is not.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock, mpsc};

use edge_protocol::api::{ReportResult, Verdict};
use edge_protocol::report::{JobOutcome, JobReport};
use edge_protocol::{Body, Envelope, Signed};
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::oneshot;

/// Requests waiting for the writer beyond this many are committed in the next round.
const MAX_GROUP: usize = 256;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS owners (
    name TEXT PRIMARY KEY,
    token_sha256 TEXT NOT NULL UNIQUE,
    created_at_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS devices (
    device_id TEXT PRIMARY KEY,
    public_key TEXT NOT NULL,
    owner TEXT NOT NULL REFERENCES owners(name),
    agent_version TEXT NOT NULL,
    registered_at_ms INTEGER NOT NULL,
    register_seq INTEGER NOT NULL,
    last_seq INTEGER NOT NULL DEFAULT 0,
    last_seen_ms INTEGER,
    last_boot_id TEXT,
    skew_ms INTEGER,
    last_ip TEXT
);
CREATE TABLE IF NOT EXISTS reports (
    device_id TEXT NOT NULL REFERENCES devices(device_id),
    seq INTEGER NOT NULL,
    kind TEXT NOT NULL,
    boot_id TEXT NOT NULL,
    sent_at_ms INTEGER NOT NULL,
    received_at_ms INTEGER NOT NULL,
    envelope TEXT NOT NULL,
    signature TEXT NOT NULL,
    PRIMARY KEY (device_id, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS reports_by_kind ON reports (device_id, kind, seq);
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY,
    device_id TEXT NOT NULL REFERENCES devices(device_id),
    job TEXT NOT NULL,
    state TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL,
    assigned_at_ms INTEGER,
    finished_at_ms INTEGER,
    receipt TEXT,
    receipt_status TEXT,
    error TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    lease_until_ms INTEGER
);
CREATE INDEX IF NOT EXISTS jobs_queued ON jobs (device_id, state, created_at_ms);
";

/// Columns added since the first schema, added to databases made before them: (table, column,
/// declaration).
const ADDED_COLUMNS: [(&str, &str, &str); 3] = [
    ("jobs", "attempts", "INTEGER NOT NULL DEFAULT 0"),
    ("jobs", "lease_until_ms", "INTEGER"),
    // What a receipt must name as the job's inputs, worked out when it was queued (blobs
    // included); null where it cannot be (an input longer than its binding).
    ("jobs", "input_sha256", "TEXT"),
];

/// A job handed out this many times without a result is given up (`expired`).
pub const MAX_ATTEMPTS: u32 = 3;

/// How long the hub keeps reports.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// Reports received longer ago than this are deleted.
    pub max_age: std::time::Duration,
    /// Per device, only the newest this many sequence numbers are kept.
    pub max_reports_per_device: u64,
}

impl Retention {
    /// How often old reports are looked for: hourly, or more often for a short retention.
    fn sweep_every(&self) -> std::time::Duration {
        (self.max_age / 4).min(std::time::Duration::from_secs(3600))
    }
}

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite refused.
    #[error("database {path}: {source}")]
    Sqlite {
        /// The database file, `<dir>/hub.db` when the hub serves.
        path: PathBuf,
        /// SQLite's error (a constraint, a locked or corrupt file, I/O).
        source: rusqlite::Error,
    },
    /// The writer thread is gone (the hub is shutting down).
    #[error("the database writer has stopped")]
    Stopped,
    /// An owner token no owner holds.
    #[error("owner token is not known to this hub")]
    UnknownOwner,
    /// An owner name already taken.
    #[error("owner {0} already exists")]
    OwnerExists(String),
    /// A job id already used.
    #[error("job {0} already exists")]
    JobExists(String),
    /// A job's inputs cannot be read: a blob it names is missing or corrupt, or inline text is
    /// not base64.
    #[error("job {job}: {source}")]
    JobInputs {
        /// The job's id.
        job: String,
        /// What is wrong with its inputs.
        source: edge_jobs::job::JobError,
    },
    /// A registration older than one already stored.
    #[error("registration seq {seq} is not above the device's last registration ({last})")]
    StaleRegistration {
        /// The new registration envelope's seq.
        seq: u64,
        /// The seq of the registration already stored for the device.
        last: u64,
    },
}

/// A registration, verified by the caller.
#[derive(Debug, Clone)]
pub struct Registration {
    /// The device id the envelope names (32 hex digits), checked against the public key.
    pub device_id: String,
    /// Its public key, hex.
    pub public_key: String,
    /// SHA-256 of the owner token, hex.
    pub owner_token_sha256: String,
    /// The agent's version.
    pub agent_version: String,
    /// The registration envelope's seq.
    pub seq: u64,
    /// The TCP peer's IP address as text; proxies' headers are not read.
    pub peer_ip: String,
    /// When it arrived, Unix ms.
    pub now_ms: u64,
}

/// What the store knows of a registered device after a registration.
#[derive(Debug, Clone)]
pub struct Registered {
    /// The owner's name.
    pub owner: String,
    /// The device's report high-water mark.
    pub last_seq: u64,
}

/// One report of a batch, as far as the caller got with it.
#[derive(Debug)]
pub enum Checked {
    /// Signature verified against the device's registered key: the report and its signed form.
    Verified(Box<(Envelope, Signed)>),
    /// Refused before the store (unparsable, unknown device, bad signature): the reason.
    Refused {
        /// Its seq, where readable.
        seq: Option<u64>,
        /// Why, in words for the device, e.g. `device ... is not registered`.
        error: String,
    },
}

enum Op {
    Register(
        Registration,
        oneshot::Sender<Result<Registered, StoreError>>,
    ),
    TakeJob {
        device_id: String,
        now_ms: u64,
        lease_ms: u64,
        reply: oneshot::Sender<Result<Option<String>, StoreError>>,
    },
    Ingest {
        reports: Vec<Checked>,
        peer_ip: String,
        now_ms: u64,
        reply: oneshot::Sender<Result<Vec<ReportResult>, StoreError>>,
    },
    BlobOut {
        device_id: String,
        sha256: String,
        reply: oneshot::Sender<Result<bool, StoreError>>,
    },
}

/// Public keys of registered devices, by device id (read by every request, written on
/// registration).
pub type Keys = Arc<RwLock<HashMap<String, [u8; 32]>>>;

/// The handle request handlers use; cheap to clone.
#[derive(Clone)]
pub struct Store {
    ops: mpsc::Sender<Op>,
    /// Registered devices' keys.
    pub keys: Keys,
}

/// Opens (creating) the database at `path` with the hub's schema.
pub fn open(path: &Path) -> Result<Connection, StoreError> {
    let err = |source| StoreError::Sqlite {
        path: path.to_owned(),
        source,
    };
    // Foreign keys are a setting of the connection, not of the file: on for this one.
    let conn = edge_identity::database::open(path, &format!("PRAGMA foreign_keys = ON;\n{SCHEMA}"))
        .map_err(err)?;
    add_missing_columns(&conn).map_err(err)?;
    Ok(conn)
}

fn add_missing_columns(conn: &Connection) -> rusqlite::Result<()> {
    for (table, column, declaration) in ADDED_COLUMNS {
        let present: i64 = conn.query_row(
            "SELECT COUNT(*) FROM pragma_table_info(?1) WHERE name = ?2",
            [table, column],
            |r| r.get(0),
        )?;
        if present == 0 {
            conn.execute_batch(&format!(
                "ALTER TABLE {table} ADD COLUMN {column} {declaration}"
            ))?;
        }
    }
    Ok(())
}

impl Store {
    /// Opens the database and starts the writer thread (it ends when every handle is dropped),
    /// which keeps reports as long as `retention` says.
    pub fn start(path: &Path, retention: Retention) -> Result<Self, StoreError> {
        let conn = open(path)?;
        let keys = load_keys(&conn).map_err(|source| StoreError::Sqlite {
            path: path.to_owned(),
            source,
        })?;
        let (ops, inbox) = mpsc::channel();
        let writer = Writer {
            conn,
            path: path.to_owned(),
            retention,
            next_sweep: std::time::Instant::now(),
        };
        std::thread::Builder::new()
            .name("hub-db-writer".into())
            .spawn(move || writer.run(inbox))
            .map_err(|e| StoreError::Sqlite {
                path: path.to_owned(),
                source: rusqlite::Error::ToSqlConversionFailure(Box::new(e)),
            })?;
        Ok(Self {
            ops,
            keys: Arc::new(RwLock::new(keys)),
        })
    }

    /// Registers (or re-registers) a device; its key is then known to [`Store::keys`].
    pub async fn register(&self, registration: Registration) -> Result<Registered, StoreError> {
        let (device_id, key) = (
            registration.device_id.clone(),
            edge_identity::hex::decode_array::<32>(&registration.public_key),
        );
        let (reply, answer) = oneshot::channel();
        self.ops
            .send(Op::Register(registration, reply))
            .map_err(|_| StoreError::Stopped)?;
        let registered = answer.await.map_err(|_| StoreError::Stopped)??;
        if let (Some(key), Ok(mut keys)) = (key, self.keys.write()) {
            keys.insert(device_id, key);
        }
        Ok(registered)
    }

    /// The oldest queued job for `device_id`, now assigned to it for `lease` (its JSON text), if
    /// any. Jobs whose lease ran out without a result are queued again first, or given up after
    /// [`MAX_ATTEMPTS`] hand-outs.
    pub async fn take_job(
        &self,
        device_id: &str,
        now_ms: u64,
        lease: std::time::Duration,
    ) -> Result<Option<String>, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.ops
            .send(Op::TakeJob {
                device_id: device_id.to_owned(),
                now_ms,
                lease_ms: lease.as_millis() as u64,
                reply,
            })
            .map_err(|_| StoreError::Stopped)?;
        answer.await.map_err(|_| StoreError::Stopped)?
    }

    /// Whether a job out with `device_id` (assigned to it, unfinished) names the blob `sha256`
    /// as an input: only then may the device fetch it.
    pub async fn blob_out(&self, device_id: &str, sha256: &str) -> Result<bool, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.ops
            .send(Op::BlobOut {
                device_id: device_id.to_owned(),
                sha256: sha256.to_owned(),
                reply,
            })
            .map_err(|_| StoreError::Stopped)?;
        answer.await.map_err(|_| StoreError::Stopped)?
    }

    /// Stores a batch of checked reports; one verdict per report, in order.
    pub async fn ingest(
        &self,
        reports: Vec<Checked>,
        peer_ip: String,
        now_ms: u64,
    ) -> Result<Vec<ReportResult>, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.ops
            .send(Op::Ingest {
                reports,
                peer_ip,
                now_ms,
                reply,
            })
            .map_err(|_| StoreError::Stopped)?;
        answer.await.map_err(|_| StoreError::Stopped)?
    }
}

fn load_keys(conn: &Connection) -> rusqlite::Result<HashMap<String, [u8; 32]>> {
    let mut stmt = conn.prepare("SELECT device_id, public_key FROM devices")?;
    let rows = stmt.query_map([], |row| {
        Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
    })?;
    let mut keys = HashMap::new();
    for row in rows {
        let (id, key) = row?;
        if let Some(key) = edge_identity::hex::decode_array(&key) {
            keys.insert(id, key);
        }
    }
    Ok(keys)
}

/// Adds an owner; returns nothing, the caller made the token.
pub fn add_owner(
    conn: &Connection,
    name: &str,
    token_sha256: &str,
    now_ms: u64,
) -> Result<(), StoreError> {
    match conn.execute(
        "INSERT INTO owners (name, token_sha256, created_at_ms) VALUES (?1, ?2, ?3)",
        params![name, token_sha256, now_ms as i64],
    ) {
        Ok(_) => Ok(()),
        Err(rusqlite::Error::SqliteFailure(e, _))
            if e.code == rusqlite::ErrorCode::ConstraintViolation =>
        {
            Err(StoreError::OwnerExists(name.to_owned()))
        }
        Err(source) => Err(StoreError::Sqlite {
            path: conn.path().map(PathBuf::from).unwrap_or_default(),
            source,
        }),
    }
}

struct Writer {
    conn: Connection,
    path: PathBuf,
    retention: Retention,
    /// When to look for reports past their age next.
    next_sweep: std::time::Instant,
}

/// What one op answers, held until its group is committed.
enum Pending {
    Register(
        oneshot::Sender<Result<Registered, StoreError>>,
        Result<Registered, StoreError>,
    ),
    TakeJob(
        oneshot::Sender<Result<Option<String>, StoreError>>,
        Option<String>,
    ),
    Ingest(
        oneshot::Sender<Result<Vec<ReportResult>, StoreError>>,
        Vec<ReportResult>,
    ),
}

impl Writer {
    fn run(mut self, inbox: mpsc::Receiver<Op>) {
        while let Ok(first) = inbox.recv() {
            let mut group = vec![first];
            while group.len() < MAX_GROUP {
                match inbox.try_recv() {
                    Ok(op) => group.push(op),
                    Err(_) => break,
                }
            }
            self.commit_group(group);
        }
    }

    fn commit_group(&mut self, group: Vec<Op>) {
        let path = self.path.clone();
        let sqlite = |source| StoreError::Sqlite {
            path: path.clone(),
            source,
        };
        let tx = match self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        {
            Ok(tx) => tx,
            Err(e) => return fail_all(group, || sqlite(clone_err(&e))),
        };
        let mut pending = Vec::with_capacity(group.len());
        let retention = self.retention;
        let mut newest_now = None;
        for op in group {
            match op {
                Op::Register(registration, reply) => {
                    let result = register(&tx, &registration).map_err(|e| match e {
                        RegisterError::Sqlite(e) => sqlite(e),
                        RegisterError::Store(e) => e,
                    });
                    pending.push(Pending::Register(reply, result));
                }
                Op::TakeJob {
                    device_id,
                    now_ms,
                    lease_ms,
                    reply,
                } => match take_job(&tx, &device_id, now_ms, lease_ms) {
                    Ok(job) => pending.push(Pending::TakeJob(reply, job)),
                    Err(e) => {
                        let _ = reply.send(Err(sqlite(e)));
                    }
                },
                Op::BlobOut {
                    device_id,
                    sha256,
                    reply,
                } => {
                    // A read: answered now, whatever becomes of the group's commit.
                    let _ = reply.send(blob_out(&tx, &device_id, &sha256).map_err(sqlite));
                }
                Op::Ingest {
                    reports,
                    peer_ip,
                    now_ms,
                    reply,
                } => match ingest(&tx, reports, &peer_ip, now_ms, &retention) {
                    Ok(results) => {
                        newest_now = newest_now.max(Some(now_ms));
                        pending.push(Pending::Ingest(reply, results));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(sqlite(e)));
                    }
                },
            }
        }
        if let Some(now_ms) = newest_now
            && std::time::Instant::now() >= self.next_sweep
        {
            self.next_sweep = std::time::Instant::now() + retention.sweep_every();
            let cutoff = now_ms.saturating_sub(retention.max_age.as_millis() as u64);
            match tx.execute(
                "DELETE FROM reports WHERE received_at_ms < ?1",
                [cutoff as i64],
            ) {
                Ok(0) => {}
                Ok(n) => {
                    tracing::info!(deleted = n, max_age = ?retention.max_age, "reports past the retention deleted")
                }
                Err(e) => tracing::error!(error = %e, "reports past the retention not deleted"),
            }
        }
        if let Err(e) = tx.commit() {
            tracing::error!(error = %e, "commit failed; the group's requests get an error");
            for p in pending {
                match p {
                    Pending::Register(reply, _) => {
                        let _ = reply.send(Err(sqlite(clone_err(&e))));
                    }
                    Pending::Ingest(reply, _) => {
                        let _ = reply.send(Err(sqlite(clone_err(&e))));
                    }
                    Pending::TakeJob(reply, _) => {
                        let _ = reply.send(Err(sqlite(clone_err(&e))));
                    }
                }
            }
            return;
        }
        for p in pending {
            match p {
                Pending::Register(reply, result) => {
                    let _ = reply.send(result);
                }
                Pending::Ingest(reply, results) => {
                    let _ = reply.send(Ok(results));
                }
                Pending::TakeJob(reply, job) => {
                    let _ = reply.send(Ok(job));
                }
            }
        }
    }
}

fn fail_all(group: Vec<Op>, err: impl Fn() -> StoreError) {
    for op in group {
        match op {
            Op::Register(_, reply) => {
                let _ = reply.send(Err(err()));
            }
            Op::Ingest { reply, .. } => {
                let _ = reply.send(Err(err()));
            }
            Op::TakeJob { reply, .. } => {
                let _ = reply.send(Err(err()));
            }
            Op::BlobOut { reply, .. } => {
                let _ = reply.send(Err(err()));
            }
        }
    }
}

/// rusqlite errors are not `Clone`; a failed commit must answer every request of its group.
fn clone_err(e: &rusqlite::Error) -> rusqlite::Error {
    rusqlite::Error::SqliteFailure(
        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_IOERR),
        Some(e.to_string()),
    )
}

enum RegisterError {
    Sqlite(rusqlite::Error),
    Store(StoreError),
}

impl From<rusqlite::Error> for RegisterError {
    fn from(e: rusqlite::Error) -> Self {
        Self::Sqlite(e)
    }
}

fn register(tx: &rusqlite::Transaction<'_>, r: &Registration) -> Result<Registered, RegisterError> {
    let owner: String = tx
        .query_row(
            "SELECT name FROM owners WHERE token_sha256 = ?1",
            [&r.owner_token_sha256],
            |row| row.get(0),
        )
        .optional()?
        .ok_or(RegisterError::Store(StoreError::UnknownOwner))?;
    let existing: Option<(u64, u64)> = tx
        .query_row(
            "SELECT register_seq, last_seq FROM devices WHERE device_id = ?1",
            [&r.device_id],
            |row| Ok((row.get::<_, i64>(0)? as u64, row.get::<_, i64>(1)? as u64)),
        )
        .optional()?;
    match existing {
        Some((last, _)) if r.seq <= last => {
            Err(RegisterError::Store(StoreError::StaleRegistration {
                seq: r.seq,
                last,
            }))
        }
        Some((_, last_seq)) => {
            tx.execute(
                "UPDATE devices SET owner = ?2, agent_version = ?3, register_seq = ?4,
                 last_seen_ms = ?5, last_ip = ?6 WHERE device_id = ?1",
                params![
                    r.device_id,
                    owner,
                    r.agent_version,
                    r.seq as i64,
                    r.now_ms as i64,
                    r.peer_ip
                ],
            )?;
            Ok(Registered { owner, last_seq })
        }
        None => {
            tx.execute(
                "INSERT INTO devices (device_id, public_key, owner, agent_version,
                 registered_at_ms, register_seq, last_seen_ms, last_ip)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?5, ?7)",
                params![
                    r.device_id,
                    r.public_key,
                    owner,
                    r.agent_version,
                    r.now_ms as i64,
                    r.seq as i64,
                    r.peer_ip
                ],
            )?;
            Ok(Registered { owner, last_seq: 0 })
        }
    }
}

fn ingest(
    tx: &rusqlite::Transaction<'_>,
    reports: Vec<Checked>,
    peer_ip: &str,
    now_ms: u64,
    retention: &Retention,
) -> rusqlite::Result<Vec<ReportResult>> {
    let mut results = Vec::with_capacity(reports.len());
    let mut newest: HashMap<String, (u64, i64, String, u64)> = HashMap::new();
    for report in reports {
        let (envelope, signed) = match report {
            Checked::Verified(pair) => *pair,
            Checked::Refused { seq, error } => {
                results.push(rejected(seq, error));
                continue;
            }
        };
        let seq = envelope.seq;
        let last_seq: i64 = tx
            .prepare_cached("SELECT last_seq FROM devices WHERE device_id = ?1")?
            .query_row([&envelope.device_id], |row| row.get(0))?;
        if seq as i64 <= last_seq {
            let stored: Option<String> = tx
                .prepare_cached("SELECT signature FROM reports WHERE device_id = ?1 AND seq = ?2")?
                .query_row(params![envelope.device_id, seq as i64], |row| row.get(0))
                .optional()?;
            results.push(match stored {
                Some(_) => ReportResult {
                    seq: Some(seq),
                    status: Verdict::Duplicate,
                    error: Some(format!("seq {seq} was already received")),
                },
                None => rejected(
                    Some(seq),
                    format!("seq {seq} is below the device's last delivered seq {last_seq} (stale or replayed)"),
                ),
            });
            continue;
        }
        tx.prepare_cached(
            "INSERT INTO reports (device_id, seq, kind, boot_id, sent_at_ms, received_at_ms,
             envelope, signature) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )?
        .execute(params![
            envelope.device_id,
            seq as i64,
            envelope.body.kind(),
            envelope.boot_id,
            envelope.sent_at_ms as i64,
            now_ms as i64,
            signed.envelope,
            signed.signature
        ])?;
        tx.prepare_cached("UPDATE devices SET last_seq = ?2 WHERE device_id = ?1")?
            .execute(params![envelope.device_id, seq as i64])?;
        if let Body::JobResult(report) = &envelope.body {
            record_job_result(tx, &envelope.device_id, report, now_ms)?;
        }
        newest.insert(
            envelope.device_id,
            (
                now_ms,
                now_ms as i64 - envelope.sent_at_ms as i64,
                envelope.boot_id,
                seq,
            ),
        );
        results.push(ReportResult {
            seq: Some(seq),
            status: Verdict::Accepted,
            error: None,
        });
    }
    // The newest report of a batch is the freshest: its delay bounds the device's clock skew.
    for (device_id, (seen, skew, boot_id, seq)) in newest {
        tx.prepare_cached(
            "UPDATE devices SET last_seen_ms = ?2, skew_ms = ?3, last_boot_id = ?4, last_ip = ?5
             WHERE device_id = ?1",
        )?
        .execute(params![device_id, seen as i64, skew, boot_id, peer_ip])?;
        // The device's quota: its newest sequence numbers only (a range of the primary key).
        if let Some(below) = seq.checked_sub(retention.max_reports_per_device) {
            tx.prepare_cached("DELETE FROM reports WHERE device_id = ?1 AND seq <= ?2")?
                .execute(params![device_id, below as i64])?;
        }
    }
    Ok(results)
}

/// Whether a job assigned to `device_id` names the blob `sha256` (as the stored job's JSON
/// spells an input, `"sha256":"<hex>"`).
fn blob_out(
    tx: &rusqlite::Transaction<'_>,
    device_id: &str,
    sha256: &str,
) -> rusqlite::Result<bool> {
    tx.prepare_cached(
        "SELECT EXISTS(SELECT 1 FROM jobs WHERE device_id = ?1 AND state = 'assigned'
         AND instr(job, ?2) > 0)",
    )?
    .query_row(
        params![device_id, format!("\"sha256\":\"{sha256}\"")],
        |r| r.get(0),
    )
}

fn take_job(
    tx: &rusqlite::Transaction<'_>,
    device_id: &str,
    now_ms: u64,
    lease_ms: u64,
) -> rusqlite::Result<Option<String>> {
    // Leases that ran out: queued again (first in line, by age), or given up. A job assigned
    // before leases existed has none and is queued again at once.
    let requeued = tx
        .prepare_cached(
            "UPDATE jobs SET
                 state = CASE WHEN attempts >= ?3 THEN 'expired' ELSE 'queued' END,
                 error = CASE WHEN attempts >= ?3
                     THEN 'no result after ' || attempts || ' hand-outs' ELSE error END
             WHERE device_id = ?1 AND state = 'assigned' AND COALESCE(lease_until_ms, 0) < ?2",
        )?
        .execute(params![device_id, now_ms as i64, MAX_ATTEMPTS])?;
    if requeued > 0 {
        tracing::info!(device = %device_id, jobs = requeued, "job leases ran out without a result");
    }
    let job: Option<(String, String)> = tx
        .query_row(
            "SELECT job_id, job FROM jobs WHERE device_id = ?1 AND state = 'queued'
             ORDER BY created_at_ms, job_id LIMIT 1",
            [device_id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    if let Some((job_id, _)) = &job {
        tx.execute(
            "UPDATE jobs SET state = 'assigned', assigned_at_ms = ?2, attempts = attempts + 1,
             lease_until_ms = ?3 WHERE job_id = ?1",
            params![
                job_id,
                now_ms as i64,
                now_ms.saturating_add(lease_ms) as i64
            ],
        )?;
    }
    Ok(job.map(|(_, text)| text))
}

/// A job's end, from its device's signed report. Only for a job handed to that device and not yet
/// finished (a result that comes after the lease ran out still counts: reports are queued on
/// the box while it is offline); a receipt must verify, come from that device, and name the job,
/// its kernel and its inputs (blobs included) as issued.
fn record_job_result(
    tx: &rusqlite::Transaction<'_>,
    device_id: &str,
    report: &JobReport,
    now_ms: u64,
) -> rusqlite::Result<()> {
    let issued: Option<(String, String, i64, Option<String>)> = tx
        .query_row(
            "SELECT state, job, attempts, input_sha256 FROM jobs WHERE job_id = ?1 AND device_id = ?2",
            params![report.job_id, device_id],
            |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?)),
        )
        .optional()?;
    let Some((issued_state, issued_job, attempts, issued_inputs)) = issued else {
        tracing::warn!(job = %report.job_id, device = %device_id, "result for a job this device was not given");
        return Ok(());
    };
    let out = issued_state == "assigned"
        || (attempts > 0 && matches!(issued_state.as_str(), "queued" | "expired"));
    if !out {
        tracing::warn!(job = %report.job_id, device = %device_id, state = %issued_state,
            "result for a job that is not out with this device; ignored");
        return Ok(());
    }
    let issued_job = edge_jobs::job::Job::from_json(&issued_job).ok();
    let (state, receipt, status, error) = match &report.outcome {
        JobOutcome::Done { receipt } => {
            let what = &receipt.body.what;
            let kernel = issued_job
                .as_ref()
                .map(|job| edge_jobs::digest::Sha256::of(job.kernel.wgsl.as_bytes()));
            // Queued before the hub worked inputs out at submission: from the job alone.
            let inputs = issued_inputs
                .as_deref()
                .and_then(edge_jobs::digest::Sha256::parse)
                .or_else(|| {
                    issued_job
                        .as_ref()
                        .and_then(edge_jobs::job::Job::input_sha256)
                });
            let status = match edge_jobs::receipt::verify(receipt) {
                Err(e) => format!("INVALID: {e}"),
                Ok(()) if receipt.body.device_id != device_id => {
                    format!(
                        "INVALID: signed by {}, not {device_id}",
                        receipt.body.device_id
                    )
                }
                Ok(()) if what.job_id != report.job_id => {
                    format!("INVALID: receipt is for job {}", what.job_id)
                }
                Ok(()) if kernel.is_some_and(|k| k != what.kernel_sha256) => {
                    format!(
                        "INVALID: receipt is for kernel {}, not the job's",
                        what.kernel_sha256
                    )
                }
                Ok(()) if inputs.is_some_and(|i| i != what.input_sha256) => {
                    format!(
                        "INVALID: receipt is for inputs {}, not the job's",
                        what.input_sha256
                    )
                }
                Ok(()) => "valid".to_owned(),
            };
            (
                "done",
                serde_json::to_string(receipt).ok(),
                Some(status),
                None,
            )
        }
        JobOutcome::Refused { error } => ("refused", None, None, Some(error.clone())),
        JobOutcome::Failed { error } => ("failed", None, None, Some(error.clone())),
    };
    tx.execute(
        "UPDATE jobs SET state = ?3, finished_at_ms = ?4, receipt = ?5, receipt_status = ?6,
         error = ?7 WHERE job_id = ?1 AND device_id = ?2",
        params![
            report.job_id,
            device_id,
            state,
            now_ms as i64,
            receipt,
            status,
            error
        ],
    )?;
    Ok(())
}

/// Queues `job` (a v1 job's JSON) for `device_id`, with the digest a receipt must name as its
/// inputs, worked out now: the blobs it names must be in `blobs` already.
pub fn add_job(
    conn: &Connection,
    blobs: &Path,
    device_id: &str,
    job: &edge_jobs::job::Job,
    now_ms: u64,
) -> Result<(), StoreError> {
    let store = edge_jobs::job::BlobStore {
        dir: blobs.to_owned(),
    };
    let inputs = job
        .input_sha256_from(&store)
        .map_err(|source| StoreError::JobInputs {
            job: job.id.clone(),
            source,
        })?;
    let text = serde_json::to_string(job).unwrap_or_default();
    conn.execute(
        "INSERT INTO jobs (job_id, device_id, job, state, created_at_ms, input_sha256)
         VALUES (?1, ?2, ?3, 'queued', ?4, ?5)",
        params![
            job.id,
            device_id,
            text,
            now_ms as i64,
            inputs.map(|i| i.to_string())
        ],
    )
    .map(|_| ())
    .map_err(|source| match source {
        rusqlite::Error::SqliteFailure(e, _)
            if e.code == rusqlite::ErrorCode::ConstraintViolation =>
        {
            StoreError::JobExists(job.id.clone())
        }
        source => StoreError::Sqlite {
            path: conn.path().map(PathBuf::from).unwrap_or_default(),
            source,
        },
    })
}

fn rejected(seq: Option<u64>, error: String) -> ReportResult {
    ReportResult {
        seq,
        status: Verdict::Rejected,
        error: Some(error),
    }
}
