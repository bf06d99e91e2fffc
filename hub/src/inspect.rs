//! What the network sees: devices, their last heartbeat and capability report, and whether the
//! stored signatures still verify. Reads the database directly (WAL: safe while the hub runs).

use std::path::Path;

use edge_protocol::Signed;
use rusqlite::{Connection, OptionalExtension, params};
use serde_json::{Value, json};

use crate::store::{self, StoreError};

/// A table, one line per device under a header: id, owner, last seq, stored reports, last seen
/// (seconds before `now_ms`), clock skew and last IP.
pub fn devices(db: &Path, now_ms: u64) -> Result<String, StoreError> {
    let conn = store::open(db)?;
    let sqlite = sqlite_err(db);
    let mut stmt = conn
        .prepare(
            "SELECT d.device_id, d.owner, d.last_seq, d.last_seen_ms, d.skew_ms, d.last_ip,
                    (SELECT COUNT(*) FROM reports r WHERE r.device_id = d.device_id)
             FROM devices d ORDER BY d.device_id",
        )
        .map_err(sqlite)?;
    let mut out = format!(
        "{:<32}  {:<12}  {:>8}  {:>8}  {:>10}  {:>9}  {}\n",
        "DEVICE", "OWNER", "LAST SEQ", "REPORTS", "LAST SEEN", "SKEW MS", "IP"
    );
    let rows = stmt
        .query_map([], |row| {
            Ok(format!(
                "{:<32}  {:<12}  {:>8}  {:>8}  {:>10}  {:>9}  {}\n",
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, i64>(2)?,
                row.get::<_, i64>(6)?,
                row.get::<_, Option<i64>>(3)?
                    .map_or("never".into(), |t| format!(
                        "{}s ago",
                        (now_ms as i64 - t) / 1000
                    )),
                row.get::<_, Option<i64>>(4)?
                    .map_or("-".into(), |s| s.to_string()),
                row.get::<_, Option<String>>(5)?.unwrap_or_default(),
            ))
        })
        .map_err(sqlite)?;
    for row in rows {
        out.push_str(&row.map_err(sqlite)?);
    }
    Ok(out)
}

/// One device in full, as JSON: the device record, report counts by kind, and the latest
/// heartbeat and capability report with their signature status.
pub fn device(db: &Path, device_id: &str) -> Result<Option<Value>, StoreError> {
    let conn = store::open(db)?;
    let sqlite = sqlite_err(db);
    let record = conn
        .query_row(
            "SELECT public_key, owner, agent_version, registered_at_ms, last_seq, last_seen_ms,
                    last_boot_id, skew_ms, last_ip FROM devices WHERE device_id = ?1",
            [device_id],
            |row| {
                Ok(json!({
                    "device_id": device_id,
                    "public_key": row.get::<_, String>(0)?,
                    "owner": row.get::<_, String>(1)?,
                    "agent_version": row.get::<_, String>(2)?,
                    "registered_at_ms": row.get::<_, i64>(3)?,
                    "last_seq": row.get::<_, i64>(4)?,
                    "last_seen_ms": row.get::<_, Option<i64>>(5)?,
                    "last_boot_id": row.get::<_, Option<String>>(6)?,
                    "skew_ms": row.get::<_, Option<i64>>(7)?,
                    "last_ip": row.get::<_, Option<String>>(8)?,
                }))
            },
        )
        .optional()
        .map_err(sqlite)?;
    let Some(mut record) = record else {
        return Ok(None);
    };
    let key = record["public_key"]
        .as_str()
        .and_then(edge_identity::hex::decode_array::<32>);
    let mut counts = serde_json::Map::new();
    let mut stmt = conn
        .prepare("SELECT kind, COUNT(*) FROM reports WHERE device_id = ?1 GROUP BY kind")
        .map_err(sqlite)?;
    let rows = stmt
        .query_map([device_id], |row| {
            Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?))
        })
        .map_err(sqlite)?;
    for row in rows {
        let (kind, n) = row.map_err(sqlite)?;
        counts.insert(kind, n.into());
    }
    record["reports"] = Value::Object(counts);
    for kind in ["heartbeat", "capability"] {
        record[format!("latest_{kind}")] = latest(&conn, device_id, kind, key.as_ref())
            .map_err(sqlite)?
            .unwrap_or(Value::Null);
    }
    Ok(Some(record))
}

/// Every stored report of a device, in sequence order: seq, kind, times and the signed text.
pub fn reports(db: &Path, device_id: &str) -> Result<Vec<Value>, StoreError> {
    let conn = store::open(db)?;
    let sqlite = sqlite_err(db);
    let mut stmt = conn
        .prepare(
            "SELECT seq, kind, sent_at_ms, received_at_ms, envelope, signature FROM reports
             WHERE device_id = ?1 ORDER BY seq",
        )
        .map_err(sqlite)?;
    let rows = stmt
        .query_map([device_id], |row| {
            Ok(json!({
                "seq": row.get::<_, i64>(0)?,
                "kind": row.get::<_, String>(1)?,
                "sent_at_ms": row.get::<_, i64>(2)?,
                "received_at_ms": row.get::<_, i64>(3)?,
                "envelope": row.get::<_, String>(4)?,
                "signature": row.get::<_, String>(5)?,
            }))
        })
        .map_err(sqlite)?;
    rows.collect::<Result<Vec<_>, _>>().map_err(sqlite)
}

/// Every job, newest first: id, device, state, receipt status or error.
pub fn jobs(db: &Path) -> Result<Vec<Value>, StoreError> {
    let conn = store::open(db)?;
    let sqlite = sqlite_err(db);
    let mut stmt = conn
        .prepare(
            "SELECT job_id, device_id, state, created_at_ms, assigned_at_ms, finished_at_ms,
                    receipt_status, error, receipt, attempts, lease_until_ms FROM jobs
             ORDER BY created_at_ms DESC, job_id",
        )
        .map_err(sqlite)?;
    let rows = stmt
        .query_map([], |row| {
            let receipt: Option<String> = row.get(8)?;
            Ok(json!({
                "job_id": row.get::<_, String>(0)?,
                "device_id": row.get::<_, String>(1)?,
                "state": row.get::<_, String>(2)?,
                "created_at_ms": row.get::<_, i64>(3)?,
                "assigned_at_ms": row.get::<_, Option<i64>>(4)?,
                "finished_at_ms": row.get::<_, Option<i64>>(5)?,
                "receipt_status": row.get::<_, Option<String>>(6)?,
                "error": row.get::<_, Option<String>>(7)?,
                "receipt": receipt.and_then(|r| serde_json::from_str::<Value>(&r).ok()),
                "attempts": row.get::<_, i64>(9)?,
                "lease_until_ms": row.get::<_, Option<i64>>(10)?,
            }))
        })
        .map_err(sqlite)?;
    rows.collect::<Result<Vec<_>, _>>().map_err(sqlite)
}

fn latest(
    conn: &Connection,
    device_id: &str,
    kind: &str,
    key: Option<&[u8; 32]>,
) -> rusqlite::Result<Option<Value>> {
    conn.query_row(
        "SELECT seq, received_at_ms, envelope, signature FROM reports
         WHERE device_id = ?1 AND kind = ?2 ORDER BY seq DESC LIMIT 1",
        params![device_id, kind],
        |row| {
            let signed = Signed {
                envelope: row.get(2)?,
                signature: row.get(3)?,
            };
            let (signature, body) = match key.map(|k| signed.open(k)) {
                Some(Ok(envelope)) => (
                    "valid".to_owned(),
                    serde_json::to_value(envelope.body).unwrap_or(Value::Null),
                ),
                Some(Err(e)) => (format!("INVALID: {e}"), Value::Null),
                None => (
                    "INVALID: stored public key is malformed".to_owned(),
                    Value::Null,
                ),
            };
            Ok(json!({
                "seq": row.get::<_, i64>(0)?,
                "received_at_ms": row.get::<_, i64>(1)?,
                "signature": signature,
                "body": body,
            }))
        },
    )
    .optional()
}

fn sqlite_err(db: &Path) -> impl Fn(rusqlite::Error) -> StoreError + Copy + '_ {
    move |source| StoreError::Sqlite {
        path: db.to_owned(),
        source,
    }
}
