//! The hub's HTTP API shapes (requests and replies other than envelopes).

use serde::{Deserialize, Serialize};

use crate::Signed;

/// Path of registration: `POST` a [`Signed`] register envelope, get a [`Registered`].
pub const REGISTER: &str = "/v1/register";
/// Path of report intake: `POST` a [`Batch`], get a [`BatchReply`].
pub const REPORTS: &str = "/v1/reports";
/// Path of the hub's description: `GET`, get a [`HubInfo`].
pub const INFO: &str = "/v1/info";
/// Path of the IP echo: `GET`, get an [`IpEcho`].
pub const IP_ECHO: &str = "/v1/ip";
/// Path of the latency probe: `GET`, empty reply.
pub const PING: &str = "/v1/ping";
/// Path of the download test: `GET ?bytes=N`, N bytes back.
pub const DOWNLOAD: &str = "/v1/bandwidth/download";
/// Path of the upload test: `POST` any body, get an [`Uploaded`].
pub const UPLOAD: &str = "/v1/bandwidth/upload";

/// Path of job hand-out: `GET ?wait_secs=N` with [`poll`](crate::poll) headers; a [`JobOffer`]
/// (200) or nothing within the wait (204).
pub const JOBS_NEXT: &str = "/v1/jobs/next";
/// Path of a job's input blob: `GET /v1/blobs/<sha256>` (64 lowercase hex) with
/// [`poll`](crate::poll) headers signing that whole path; the blob's bytes, which the device
/// checks against the name before it uses them.
pub const BLOBS: &str = "/v1/blobs/";
/// Longest long-poll the hub holds.
pub const MAX_WAIT_SECS: u64 = 60;

/// Most reports in one batch.
pub const MAX_BATCH: usize = 256;

/// Reports delivered together, in sequence order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Batch {
    /// At most [`MAX_BATCH`] reports from one device; the hub rejects any report from another.
    pub reports: Vec<Signed>,
}

/// The hub's verdict on each report of a batch, in the same order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchReply {
    /// One per report of the batch, in its order; one that did not parse has a `null` `seq`.
    pub results: Vec<ReportResult>,
}

/// The verdict on one report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportResult {
    /// Its sequence number, where it could be read.
    pub seq: Option<u64>,
    /// What the hub did with it.
    pub status: Verdict,
    /// Why, for `duplicate` and `rejected`.
    pub error: Option<String>,
}

/// What the hub did with a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Stored (durably, before the reply was sent).
    Accepted,
    /// Already stored earlier: counted once; the device may forget it.
    Duplicate,
    /// Refused and never going to be accepted (bad signature, stale sequence number, ...).
    Rejected,
}

/// The reply to a registration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registered {
    /// The device id the hub registered.
    pub device_id: String,
    /// The owner the device is bound to.
    pub owner: String,
    /// Highest sequence number the hub has from this device (0 if none).
    pub last_seq: u64,
    /// The hub's clock, Unix milliseconds.
    pub server_time_ms: u64,
}

/// What the hub offers devices.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HubInfo {
    /// The hub's version.
    pub version: String,
    /// IP echo endpoints to ask (at least two where the hub has them).
    pub echo_urls: Vec<String>,
    /// The hub's clock, Unix milliseconds.
    pub server_time_ms: u64,
}

/// A job for the device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobOffer {
    /// The job (format v1, `docs/jobs.md`); its `id` names it in the result.
    pub job: edge_jobs::job::Job,
}

/// The reply of the IP echo.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IpEcho {
    /// The caller's address as this endpoint sees it.
    pub ip: String,
    /// The caller's port.
    pub port: u16,
}

/// The reply of the upload test.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Uploaded {
    /// Bytes received.
    pub bytes: u64,
    /// First to last byte, milliseconds.
    pub duration_ms: u64,
}

/// Every error reply of the hub.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiError {
    /// What was wrong, for a person.
    pub error: String,
}
