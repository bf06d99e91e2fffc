//! The hub's HTTP API: registration, report intake, IP echo, latency and bandwidth tests,
//! metrics. Every error is a JSON [`ApiError`] with a status code that says whose fault it is.

use edge_hal::Clock;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use edge_protocol::api::{
    self, ApiError, Batch, BatchReply, HubInfo, IpEcho, Registered, Uploaded, Verdict,
};
use edge_protocol::exposition::Exposition;
use edge_protocol::report::Register;
use edge_protocol::{Body as ReportBody, Signed, poll};
use futures_util::StreamExt;
use http_body_util::BodyExt;
use ring::digest;
use serde::Deserialize;

use crate::limits::{self, RateLimiter, Replay, Replays};
use crate::store::{Checked, Registration, Store, StoreError};
use crate::tls::Peer;

/// Largest download a test may ask for.
pub const MAX_DOWNLOAD_BYTES: u64 = 1 << 30;
/// Largest upload a test may send.
pub const MAX_UPLOAD_BYTES: u64 = 1 << 30;

static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];

/// What the handlers share.
pub struct Hub {
    /// The database; writes go to its writer thread.
    pub store: Store,
    /// Per-device request limits.
    pub limiter: RateLimiter,
    /// Per-address request limits, checked before anything else.
    pub per_address: RateLimiter,
    /// Echo endpoints told to devices at registration.
    pub echo_urls: Vec<String>,
    /// Counters for `/metrics`.
    pub counters: Counters,
    /// Signed requests already taken (no replays).
    pub replays: Replays,
    /// How long a device has to send a job's result before it is handed out again.
    pub job_lease: std::time::Duration,
    /// Wall time, for receipt stamps, skew checks and job deadlines.
    pub clock: Arc<dyn Clock>,
    /// Jobs' input blobs, one file per blob named by its SHA-256 (`edge-hub blob add`).
    pub blobs: std::path::PathBuf,
}

/// Counters for `/metrics`.
#[derive(Default)]
pub struct Counters {
    registrations_ok: AtomicU64,
    registrations_refused: AtomicU64,
    accepted: AtomicU64,
    duplicate: AtomicU64,
    rejected: AtomicU64,
    rate_limited: AtomicU64,
    address_limited: AtomicU64,
    body_timeouts: AtomicU64,
    bad_requests: AtomicU64,
    echo: AtomicU64,
    jobs_handed_out: AtomicU64,
    download_bytes: AtomicU64,
    upload_bytes: AtomicU64,
}

/// The router. Every request is first counted against its address's limit; every body but an
/// upload's is read whole, within the body limits, before its handler runs.
pub fn router(hub: Arc<Hub>, limits: &crate::Limits) -> Router {
    let whole = BodyRules {
        max: limits.max_body_bytes,
        deadline: limits.body_timeout,
        hub: hub.clone(),
    };
    Router::new()
        .route(api::REGISTER, post(register))
        .route(api::REPORTS, post(reports))
        .route(api::INFO, get(info))
        .route(api::IP_ECHO, get(ip_echo))
        .route(api::PING, get(|| async { StatusCode::NO_CONTENT }))
        .route(api::DOWNLOAD, get(download))
        .route(api::JOBS_NEXT, get(next_job))
        .route(&format!("{}{{sha256}}", api::BLOBS), get(blob))
        .route("/metrics", get(metrics))
        .layer(DefaultBodyLimit::max(limits.max_body_bytes))
        .layer(middleware::from_fn_with_state(
            Arc::new(whole),
            read_whole_body,
        ))
        .route(
            api::UPLOAD,
            post(upload).layer(DefaultBodyLimit::max(MAX_UPLOAD_BYTES as usize)),
        )
        .layer(middleware::from_fn_with_state(hub.clone(), per_address))
        .with_state(hub)
}

/// Refuses a request from an address over its rate, before its body is read or any signature
/// checked: an address cannot make the hub spend CPU on it faster than its rate.
async fn per_address(
    State(hub): State<Arc<Hub>>,
    Extension(Peer(peer)): Extension<Peer>,
    request: Request,
    next: Next,
) -> Response {
    match hub
        .per_address
        .check(&limits::address_key(peer.ip()), Instant::now())
    {
        Ok(()) => next.run(request).await,
        Err(wait) => {
            hub.counters.address_limited.fetch_add(1, Ordering::Relaxed);
            too_many(format!("too many requests from {}", peer.ip()), wait)
        }
    }
}

/// A 429 that says when to come back.
fn too_many(message: String, wait: std::time::Duration) -> Response {
    let mut response = Refusal(StatusCode::TOO_MANY_REQUESTS, message).into_response();
    if let Ok(value) = HeaderValue::from_str(&wait.as_secs().max(1).to_string()) {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    response
}

/// How a request body is read: whole, at most `max` bytes, within `deadline`.
struct BodyRules {
    max: usize,
    deadline: std::time::Duration,
    hub: Arc<Hub>,
}

/// Reads the body whole before the handler: a client that sends it slower than the deadline
/// allows is answered 408 and its connection's slot is freed (a header timeout alone would let
/// it hold the slot by trickling the body).
async fn read_whole_body(
    State(rules): State<Arc<BodyRules>>,
    request: Request,
    next: Next,
) -> Response {
    let (parts, body) = request.into_parts();
    let limited = http_body_util::Limited::new(body, rules.max);
    let bytes = match tokio::time::timeout(rules.deadline, limited.collect()).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            return Refusal::too_large().into_response();
        }
        Ok(Err(e)) => {
            return Refusal(StatusCode::BAD_REQUEST, format!("reading the body: {e}"))
                .into_response();
        }
        Err(_) => {
            rules
                .hub
                .counters
                .body_timeouts
                .fetch_add(1, Ordering::Relaxed);
            let message = format!(
                "the request body did not arrive within {} s",
                rules.deadline.as_secs_f64()
            );
            let mut response = Refusal(StatusCode::REQUEST_TIMEOUT, message).into_response();
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            return response;
        }
    };
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

/// An error reply: its status, and the message sent as `{"error": ...}`.
struct Refusal(StatusCode, String);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        (self.0, Json(ApiError { error: self.1 })).into_response()
    }
}

impl From<Refusal> for Response {
    fn from(r: Refusal) -> Self {
        r.into_response()
    }
}

impl Refusal {
    fn too_large() -> Self {
        Refusal(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request body is over the hub's size limit (edge-hub serve --max-body-bytes)".into(),
        )
    }
}

impl From<BytesRejection> for Refusal {
    fn from(r: BytesRejection) -> Self {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            return Refusal::too_large();
        }
        Refusal(r.status(), r.body_text())
    }
}

fn parse<T: for<'de> Deserialize<'de>>(body: &[u8], what: &str) -> Result<T, Refusal> {
    serde_json::from_slice(body)
        .map_err(|e| Refusal(StatusCode::BAD_REQUEST, format!("body is not {what}: {e}")))
}

async fn register(
    State(hub): State<Arc<Hub>>,
    Extension(Peer(peer)): Extension<Peer>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Registered>, Refusal> {
    let result = async {
        let signed: Signed = parse(&body?, "a signed envelope")?;
        let bad = |e: String| Refusal(StatusCode::BAD_REQUEST, e);
        let envelope = signed.peek().map_err(|e| bad(e.to_string()))?;
        let ReportBody::Register(Register {
            public_key,
            owner_token,
            agent_version,
        }) = &envelope.body
        else {
            return Err(bad(format!(
                "{} goes to {}, not {}",
                envelope.body.kind(),
                api::REPORTS,
                api::REGISTER
            )));
        };
        let key = edge_identity::hex::decode_array::<32>(public_key)
            .ok_or_else(|| bad("public_key is not 32 bytes of lowercase hex".into()))?;
        signed
            .open(&key)
            .map_err(|e| Refusal(StatusCode::UNAUTHORIZED, e.to_string()))?;
        hub.limiter
            .check(&envelope.device_id, Instant::now())
            .map_err(|_| Refusal(StatusCode::TOO_MANY_REQUESTS, "too many requests".into()))?;
        let token_sha256 =
            edge_identity::hex::encode(digest::digest(&digest::SHA256, owner_token.as_bytes()).as_ref());
        let registered = hub
            .store
            .register(Registration {
                device_id: envelope.device_id.clone(),
                public_key: public_key.clone(),
                owner_token_sha256: token_sha256,
                agent_version: agent_version.clone(),
                seq: envelope.seq,
                peer_ip: peer.ip().to_string(),
                now_ms: hub.clock.unix_ms(),
            })
            .await
            .map_err(|e| match e {
                StoreError::UnknownOwner => Refusal(StatusCode::FORBIDDEN, e.to_string()),
                StoreError::StaleRegistration { .. } => Refusal(StatusCode::CONFLICT, e.to_string()),
                e => internal(e),
            })?;
        tracing::info!(device = %envelope.device_id, owner = %registered.owner, %peer, "registered");
        Ok(Json(Registered {
            device_id: envelope.device_id,
            owner: registered.owner,
            last_seq: registered.last_seq,
            server_time_ms: hub.clock.unix_ms(),
        }))
    }
    .await;
    let counter = match &result {
        Ok(_) => &hub.counters.registrations_ok,
        Err(_) => &hub.counters.registrations_refused,
    };
    counter.fetch_add(1, Ordering::Relaxed);
    result
}

/// Internal errors are logged, not sent.
fn internal(e: StoreError) -> Refusal {
    tracing::error!(error = %e, "store error");
    Refusal(
        StatusCode::SERVICE_UNAVAILABLE,
        "the hub could not store this; try again".into(),
    )
}

async fn reports(
    State(hub): State<Arc<Hub>>,
    Extension(Peer(peer)): Extension<Peer>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<BatchReply>, Response> {
    let batch = body
        .map_err(Refusal::from)
        .and_then(|b| parse::<Batch>(&b, "a batch of signed reports"))
        .and_then(|batch| check_size(&batch).map(|()| batch))
        .inspect_err(|_| {
            hub.counters.bad_requests.fetch_add(1, Ordering::Relaxed);
        })?;
    // A device the hub does not know must register first: say so for the whole batch, so the
    // device re-registers instead of dropping its reports.
    if let Some(Ok(first)) = batch.reports.first().map(Signed::peek)
        && !hub
            .store
            .keys
            .read()
            .is_ok_and(|keys| keys.contains_key(&first.device_id))
    {
        hub.counters.bad_requests.fetch_add(1, Ordering::Relaxed);
        return Err(Refusal(
            StatusCode::UNAUTHORIZED,
            format!(
                "device {} is not registered; register at {}",
                first.device_id,
                api::REGISTER
            ),
        )
        .into());
    }
    // Signatures are checked off the runtime: a full batch is a few milliseconds of CPU.
    let keys = hub.store.keys.clone();
    let (checked, device) = tokio::task::spawn_blocking(move || verify(&keys, batch.reports))
        .await
        .map_err(|_| Refusal(StatusCode::INTERNAL_SERVER_ERROR, "verifier failed".into()))?;
    if let Some(device) = &device
        && let Err(wait) = hub.limiter.check(device, Instant::now())
    {
        hub.counters.rate_limited.fetch_add(1, Ordering::Relaxed);
        return Err(too_many(
            format!("too many requests from device {device}"),
            wait,
        ));
    }
    let results = hub
        .store
        .ingest(checked, peer.ip().to_string(), hub.clock.unix_ms())
        .await
        .map_err(internal)?;
    for r in &results {
        let counter = match r.status {
            Verdict::Accepted => &hub.counters.accepted,
            Verdict::Duplicate => &hub.counters.duplicate,
            Verdict::Rejected => &hub.counters.rejected,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        if r.status == Verdict::Rejected {
            tracing::info!(%peer, seq = ?r.seq, error = ?r.error, "report rejected");
        }
    }
    Ok(Json(BatchReply { results }))
}

fn check_size(batch: &Batch) -> Result<(), Refusal> {
    if batch.reports.len() > api::MAX_BATCH {
        return Err(Refusal(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "batch holds {} reports, over the limit of {}",
                batch.reports.len(),
                api::MAX_BATCH
            ),
        ));
    }
    Ok(())
}

/// Checks every report's signature against its registered key. A batch comes from one device:
/// reports claiming another device than the first are refused.
fn verify(keys: &crate::store::Keys, reports: Vec<Signed>) -> (Vec<Checked>, Option<String>) {
    let mut device: Option<String> = None;
    let key_of = |device: &str| keys.read().ok().and_then(|k| k.get(device).copied());
    let checked = reports
        .into_iter()
        .map(|signed| {
            let envelope = match signed.peek() {
                Ok(e) => e,
                Err(e) => return refused(None, e.to_string()),
            };
            let seq = Some(envelope.seq);
            match &device {
                Some(d) if *d != envelope.device_id => {
                    return refused(seq, format!("a batch comes from one device ({d})"));
                }
                _ => {}
            }
            let Some(key) = key_of(&envelope.device_id) else {
                return refused(
                    seq,
                    format!("device {} is not registered", envelope.device_id),
                );
            };
            if matches!(envelope.body, ReportBody::Register(_)) {
                return refused(seq, format!("register goes to {}", api::REGISTER));
            }
            match signed.open(&key) {
                Ok(envelope) => {
                    device.get_or_insert_with(|| envelope.device_id.clone());
                    Checked::Verified(Box::new((envelope, signed)))
                }
                Err(e) => refused(seq, e.to_string()),
            }
        })
        .collect();
    (checked, device)
}

fn refused(seq: Option<u64>, error: String) -> Checked {
    Checked::Refused { seq, error }
}

async fn info(State(hub): State<Arc<Hub>>) -> Json<HubInfo> {
    Json(HubInfo {
        version: env!("CARGO_PKG_VERSION").into(),
        echo_urls: hub.echo_urls.clone(),
        server_time_ms: hub.clock.unix_ms(),
    })
}

async fn ip_echo(
    State(hub): State<Arc<Hub>>,
    Extension(Peer(peer)): Extension<Peer>,
) -> Json<IpEcho> {
    hub.counters.echo.fetch_add(1, Ordering::Relaxed);
    Json(IpEcho {
        ip: peer.ip().to_canonical().to_string(),
        port: peer.port(),
    })
}

#[derive(Deserialize)]
struct NextQuery {
    wait_secs: Option<u64>,
}

/// How often a waiting long-poll looks for a new job.
const JOB_POLL: std::time::Duration = std::time::Duration::from_millis(500);

/// The device a request spending no sequence number (a poll, a bandwidth test) is signed by:
/// registered, its clock within the skew of the hub's, the signature over this path, this
/// `(device, path, time)` not taken before, and the device under its rate.
fn signed_device(
    hub: &Hub,
    headers: &axum::http::HeaderMap,
    path: &str,
) -> Result<String, Refusal> {
    let unauthorized = |m: String| Refusal(StatusCode::UNAUTHORIZED, m);
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let (Some(device), Some(time), Some(signature)) = (
        header(poll::DEVICE),
        header(poll::TIME).and_then(|t| t.parse::<u64>().ok()),
        header(poll::SIGNATURE),
    ) else {
        return Err(unauthorized(format!(
            "{path} needs the {}, {} and {} headers (signed as a registered device)",
            poll::DEVICE,
            poll::TIME,
            poll::SIGNATURE
        )));
    };
    let key = hub
        .store
        .keys
        .read()
        .ok()
        .and_then(|k| k.get(device).copied());
    let Some(key) = key else {
        return Err(unauthorized(format!("device {device} is not registered")));
    };
    let now = hub.clock.unix_ms();
    let skew = time.abs_diff(now);
    if skew > poll::MAX_SKEW_MS {
        return Err(unauthorized(format!(
            "request time is {skew} ms from the hub's clock (at most {} allowed); check the device clock",
            poll::MAX_SKEW_MS
        )));
    }
    if !poll::verify(&key, device, path, time, signature) {
        return Err(unauthorized(format!(
            "request signature does not verify for device {device} and {path}"
        )));
    }
    match hub.replays.take(device, path, time, now, poll::MAX_SKEW_MS) {
        Ok(()) => {}
        Err(Replay::Seen) => {
            return Err(unauthorized(format!(
                "{path} signed at {time} was already taken: replayed"
            )));
        }
        Err(Replay::BeforeStart { since_ms }) => {
            return Err(unauthorized(format!(
                "{path} signed at {time}, before the hub started at {since_ms}: sign it again"
            )));
        }
        Err(Replay::TooMany) => {
            return Err(Refusal(
                StatusCode::TOO_MANY_REQUESTS,
                format!("too many signed requests to {path} from device {device} at once"),
            ));
        }
    }
    hub.limiter.check(device, Instant::now()).map_err(|_| {
        Refusal(
            StatusCode::TOO_MANY_REQUESTS,
            format!("too many requests from device {device}"),
        )
    })?;
    Ok(device.to_owned())
}

/// Long-poll for the device's next job; 204 when none came within the wait.
async fn next_job(
    State(hub): State<Arc<Hub>>,
    headers: axum::http::HeaderMap,
    Query(NextQuery { wait_secs }): Query<NextQuery>,
) -> Result<Response, Refusal> {
    let device = signed_device(&hub, &headers, api::JOBS_NEXT)?;
    let device = device.as_str();
    let wait = std::time::Duration::from_secs(wait_secs.unwrap_or(25).min(api::MAX_WAIT_SECS));
    let deadline = Instant::now() + wait;
    loop {
        if let Some(job) = hub
            .store
            .take_job(device, hub.clock.unix_ms(), hub.job_lease)
            .await
            .map_err(internal)?
        {
            hub.counters.jobs_handed_out.fetch_add(1, Ordering::Relaxed);
            tracing::info!(%device, "job handed out");
            // The stored text is a serialised v1 job: splice it in rather than parse it again.
            let body = format!("{{\"job\":{job}}}");
            return Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response());
        }
        if Instant::now() + JOB_POLL > deadline {
            return Ok(StatusCode::NO_CONTENT.into_response());
        }
        tokio::time::sleep(JOB_POLL).await;
    }
}

/// A job's input blob, streamed from the blob directory to the device running a job that names
/// it.
async fn blob(
    State(hub): State<Arc<Hub>>,
    headers: axum::http::HeaderMap,
    axum::extract::Path(name): axum::extract::Path<String>,
) -> Result<Response, Refusal> {
    let device = signed_device(&hub, &headers, &format!("{}{name}", api::BLOBS))?;
    let Some(sha256) = edge_jobs::digest::Sha256::parse(&name).filter(|s| s.to_string() == name)
    else {
        return Err(Refusal(
            StatusCode::BAD_REQUEST,
            format!("{name:?} is not a blob's name (64 lowercase hex digits, its SHA-256)"),
        ));
    };
    // A consumer's inputs go only to the box running their job, not to any registered box
    // that learns or guesses a hash.
    if !hub.store.blob_out(&device, &name).await.map_err(internal)? {
        return Err(Refusal(
            StatusCode::NOT_FOUND,
            format!("no job out with device {device} names blob {sha256}"),
        ));
    }
    let path = hub.blobs.join(sha256.to_string());
    let file = match tokio::fs::File::open(&path).await {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Refusal(
                StatusCode::NOT_FOUND,
                format!("the hub has no blob {sha256}"),
            ));
        }
        Err(e) => return Err(unreadable(&path, &e)),
    };
    let len = file
        .metadata()
        .await
        .map_err(|e| unreadable(&path, &e))?
        .len();
    let stream = futures_util::stream::unfold(file, |mut file| async move {
        let mut chunk = vec![0; 64 * 1024];
        match tokio::io::AsyncReadExt::read(&mut file, &mut chunk).await {
            Ok(0) => None,
            Ok(n) => {
                chunk.truncate(n);
                Some((Ok::<_, std::io::Error>(Bytes::from(chunk)), file))
            }
            Err(e) => Some((Err(e), file)),
        }
    });
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
            (header::CONTENT_LENGTH, len.to_string()),
        ],
        Body::from_stream(stream),
    )
        .into_response())
}

/// A blob the hub holds but cannot read: the operator's to fix, logged with the reason.
fn unreadable(path: &std::path::Path, e: &std::io::Error) -> Refusal {
    tracing::error!(path = %path.display(), error = %e, "a blob cannot be read");
    Refusal(
        StatusCode::INTERNAL_SERVER_ERROR,
        "the hub cannot read this blob".into(),
    )
}

#[derive(Deserialize)]
struct DownloadQuery {
    bytes: u64,
}

async fn download(
    State(hub): State<Arc<Hub>>,
    headers: axum::http::HeaderMap,
    query: Result<Query<DownloadQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Refusal> {
    signed_device(&hub, &headers, api::DOWNLOAD)?;
    let Query(DownloadQuery { bytes }) = query.map_err(|e| {
        Refusal(
            StatusCode::BAD_REQUEST,
            format!("expected ?bytes=N: {}", e.body_text()),
        )
    })?;
    if bytes > MAX_DOWNLOAD_BYTES {
        return Err(Refusal(
            StatusCode::BAD_REQUEST,
            format!("bytes={bytes} is over the limit of {MAX_DOWNLOAD_BYTES}"),
        ));
    }
    let stream = futures_util::stream::unfold(bytes, move |left| {
        let hub = hub.clone();
        async move {
            if left == 0 {
                return None;
            }
            let n = left.min(ZEROS.len() as u64);
            hub.counters.download_bytes.fetch_add(n, Ordering::Relaxed);
            Some((
                Ok::<_, Infallible>(Bytes::from_static(&ZEROS[..n as usize])),
                left - n,
            ))
        }
    });
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
            (header::CONTENT_LENGTH, bytes.to_string()),
        ],
        Body::from_stream(stream),
    )
        .into_response())
}

async fn upload(
    State(hub): State<Arc<Hub>>,
    headers: axum::http::HeaderMap,
    body: Body,
) -> Result<Json<Uploaded>, Refusal> {
    signed_device(&hub, &headers, api::UPLOAD)?;
    let mut stream = body.into_data_stream();
    let (mut bytes, mut first) = (0u64, None);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| Refusal(StatusCode::BAD_REQUEST, e.to_string()))?;
        first.get_or_insert_with(Instant::now);
        bytes += chunk.len() as u64;
        hub.counters
            .upload_bytes
            .fetch_add(chunk.len() as u64, Ordering::Relaxed);
    }
    Ok(Json(Uploaded {
        bytes,
        duration_ms: first.map_or(0, |t| t.elapsed().as_millis() as u64),
    }))
}

async fn metrics(State(hub): State<Arc<Hub>>) -> impl IntoResponse {
    let c = &hub.counters;
    let get = |a: &AtomicU64| a.load(Ordering::Relaxed) as f64;
    let mut e = Exposition::with_capacity(2048);
    e.family("edge_hub_devices", "gauge", "Registered devices.")
        .sample(
            "edge_hub_devices",
            &[],
            hub.store.keys.read().map_or(0, |k| k.len()) as f64,
        );
    e.family(
        "edge_hub_registrations_total",
        "counter",
        "Registration requests by result.",
    )
    .sample(
        "edge_hub_registrations_total",
        &[("result", "ok")],
        get(&c.registrations_ok),
    )
    .sample(
        "edge_hub_registrations_total",
        &[("result", "refused")],
        get(&c.registrations_refused),
    );
    e.family("edge_hub_reports_total", "counter", "Reports by verdict.")
        .sample(
            "edge_hub_reports_total",
            &[("verdict", "accepted")],
            get(&c.accepted),
        )
        .sample(
            "edge_hub_reports_total",
            &[("verdict", "duplicate")],
            get(&c.duplicate),
        )
        .sample(
            "edge_hub_reports_total",
            &[("verdict", "rejected")],
            get(&c.rejected),
        );
    e.family(
        "edge_hub_requests_refused_total",
        "counter",
        "Requests refused whole, by reason.",
    )
    .sample(
        "edge_hub_requests_refused_total",
        &[("reason", "rate_limit")],
        get(&c.rate_limited),
    )
    .sample(
        "edge_hub_requests_refused_total",
        &[("reason", "bad_request")],
        get(&c.bad_requests),
    )
    .sample(
        "edge_hub_requests_refused_total",
        &[("reason", "address_rate_limit")],
        get(&c.address_limited),
    )
    .sample(
        "edge_hub_requests_refused_total",
        &[("reason", "body_timeout")],
        get(&c.body_timeouts),
    );
    e.family(
        "edge_hub_jobs_handed_out_total",
        "counter",
        "Jobs given to devices.",
    )
    .sample(
        "edge_hub_jobs_handed_out_total",
        &[],
        get(&c.jobs_handed_out),
    );
    e.family("edge_hub_ip_echo_total", "counter", "IP echo requests.")
        .sample("edge_hub_ip_echo_total", &[], get(&c.echo));
    e.family(
        "edge_hub_bandwidth_test_bytes_total",
        "counter",
        "Bytes moved by bandwidth tests.",
    )
    .sample(
        "edge_hub_bandwidth_test_bytes_total",
        &[("direction", "down")],
        get(&c.download_bytes),
    )
    .sample(
        "edge_hub_bandwidth_test_bytes_total",
        &[("direction", "up")],
        get(&c.upload_bytes),
    );
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        e.finish(),
    )
}
