//! The hub's whole intake, request by request through its router (no TLS): bodies of any
//! content at registration and report intake, the signed envelopes of a registered device
//! stored in SQLite, and a job's result whose receipt is checked against the job as issued.
//!
//! The input's first byte says what the rest is:
//! - 0: a `POST /v1/reports` body, as anyone may send it;
//! - 1: a `POST /v1/register` body, as anyone may send it;
//! - 2: a report body (`Body` JSON) that the registered device signs and sends as its next report;
//! - 3: a receipt's `Attested` JSON that the device signs and sends as the result of a job it
//!   was just handed; the next byte's bits put the issued job's id, kernel and inputs in place
//!   of the fuzzer's.
//!
//! Whatever comes: no panic, no 500, every refusal is the hub's JSON error, and a receipt is
//! stored as `valid` exactly when it names the job, its kernel and its inputs as issued.
#![no_main]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::body::Body as HttpBody;
use axum::http::{Method, Request, StatusCode};
use edge_hal::Clock;
use edge_hub::tls::Peer;
use edge_hub::{Limits, blobs_dir, db_path, store};
use edge_identity::Identity;
use edge_jobs::digest::Sha256;
use edge_jobs::job::Job;
use edge_jobs::receipt::{self, Attested};
use edge_protocol::api::{self, ApiError, Batch};
use edge_protocol::envelope::VERSION;
use edge_protocol::report::{JobOutcome, JobReport, Register};
use edge_protocol::{Body, Envelope, Signed, poll};
use http_body_util::BodyExt;
use libfuzzer_sys::fuzz_target;
use tower::ServiceExt;

/// The hub's clock: moved on past the replay window before each signed poll, so that polls
/// never run out of fresh signed times however long the run.
struct FuzzClock(AtomicU64);

impl Clock for FuzzClock {
    fn monotonic(&self) -> Duration {
        Duration::from_millis(self.0.load(Ordering::Relaxed))
    }

    fn wall(&self) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_millis(self.0.load(Ordering::Relaxed))
    }
}

struct Hub {
    dir: tempfile::TempDir,
    db: PathBuf,
    runtime: tokio::runtime::Runtime,
    app: Router,
    clock: Arc<FuzzClock>,
    device: Identity,
    seq: AtomicU64,
    job: Job,
    jobs: Mutex<u64>,
}

const TOKEN: &str = "owner-fuzz-token";

fn hub() -> &'static Hub {
    static HUB: OnceLock<Hub> = OnceLock::new();
    HUB.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = db_path(dir.path());
        let sha = edge_identity::hex::encode(&Sha256::of(TOKEN.as_bytes()).0);
        store::add_owner(&store::open(&db).expect("db"), "alice", &sha, 1).expect("owner");
        let clock = Arc::new(FuzzClock(AtomicU64::new(1_800_000_000_000)));
        let limits = Limits {
            rate_per_device: 1e9,
            burst_per_device: u32::MAX,
            rate_per_address: 1e9,
            burst_per_address: u32::MAX,
            max_reports_per_device: 1000,
            ..Limits::default()
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let app = runtime
            .block_on(async { edge_hub::app(dir.path(), &limits, Vec::new(), clock.clone()) })
            .expect("the hub starts");
        let hub = Hub {
            dir: dir,
            db,
            runtime,
            app,
            clock,
            device: Identity::generate_ephemeral().expect("key"),
            seq: AtomicU64::new(1),
            job: edge_jobs::kernels::hash_chain(1, 2, 64).expect("job"),
            jobs: Mutex::new(0),
        };
        let register = Body::Register(Register {
            public_key: edge_identity::hex::encode(hub.device.public_key()),
            owner_token: TOKEN.into(),
            agent_version: "fuzz".into(),
        });
        let body = serde_json::to_vec(&hub.sealed(register)).expect("json");
        let (status, _) = hub.send(Method::POST, api::REGISTER, &[], body);
        assert_eq!(status, StatusCode::OK, "the device registers");
        hub
    })
}

impl Hub {
    /// One request through the router; a refusal must be the hub's own, in its JSON shape.
    fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&'static str, String)],
        body: Vec<u8>,
    ) -> (StatusCode, Vec<u8>) {
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header("content-type", "application/json");
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        let mut request = request.body(HttpBody::from(body)).expect("request");
        let peer: SocketAddr = "192.0.2.7:40000".parse().expect("addr");
        request.extensions_mut().insert(Peer(peer));
        let (status, body) = self.runtime.block_on(async {
            let response = self.app.clone().oneshot(request).await.expect("infallible");
            let status = response.status();
            let body = response.into_body().collect().await.expect("body").to_bytes();
            (status, body.to_vec())
        });
        assert_ne!(
            status,
            StatusCode::INTERNAL_SERVER_ERROR,
            "{path}: {}",
            String::from_utf8_lossy(&body)
        );
        if !status.is_success() {
            serde_json::from_slice::<ApiError>(&body).unwrap_or_else(|e| {
                panic!("{path}: a {status} that is not the hub's error ({e}): {body:?}")
            });
        }
        (status, body)
    }

    fn sealed(&self, body: Body) -> Signed {
        let envelope = Envelope {
            v: VERSION,
            device_id: self.device.device_id().to_string(),
            seq: self.seq.fetch_add(1, Ordering::Relaxed),
            boot_id: "fuzz".into(),
            sent_at_ms: self.clock.unix_ms(),
            body,
        };
        Signed::seal(&envelope, &self.device)
    }

    fn report(&self, body: Body) {
        let batch = Batch {
            reports: vec![self.sealed(body)],
        };
        let body = serde_json::to_vec(&batch).expect("json");
        let (status, reply) = self.send(Method::POST, api::REPORTS, &[], body);
        assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&reply));
    }

    /// A fresh job queued for the device and handed to it by a signed poll.
    fn job_out(&self) -> String {
        let id = {
            let mut n = self.jobs.lock().expect("lock");
            *n += 1;
            format!("job-{n}")
        };
        let job = Job {
            id: id.clone(),
            ..self.job.clone()
        };
        let device = self.device.device_id().to_string();
        let now = self.clock.0.fetch_add(10 * 60 * 1000, Ordering::Relaxed);
        let (db, blobs) = (store::open(&self.db).expect("db"), blobs_dir(self.dir.path()));
        store::add_job(&db, &blobs, &device, &job, now).expect("queue");
        let headers = poll::sign(&self.device, api::JOBS_NEXT, self.clock.unix_ms());
        let path = format!("{}?wait_secs=0", api::JOBS_NEXT);
        let (status, body) = self.send(Method::GET, &path, &headers, Vec::new());
        assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
        id
    }

    fn receipt_status(&self, id: &str) -> Option<String> {
        store::open(&self.db)
            .expect("db")
            .query_row(
                "SELECT receipt_status FROM jobs WHERE job_id = ?1",
                [id],
                |row| row.get(0),
            )
            .expect("the job is stored")
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let hub = hub();
    match mode {
        0 => {
            hub.send(Method::POST, api::REPORTS, &[], rest.to_vec());
        }
        1 => {
            hub.send(Method::POST, api::REGISTER, &[], rest.to_vec());
        }
        2 => {
            if let Ok(body) = serde_json::from_slice::<Body>(rest) {
                hub.report(body);
            }
        }
        _ => {
            let Some((&fill, rest)) = rest.split_first() else {
                return;
            };
            let Ok(mut what) = serde_json::from_slice::<Attested>(rest) else {
                return;
            };
            let id = hub.job_out();
            let kernel = Sha256::of(hub.job.kernel.wgsl.as_bytes());
            let inputs = hub.job.input_sha256().expect("inline inputs");
            if fill & 1 != 0 {
                what.job_id.clone_from(&id);
            }
            if fill & 2 != 0 {
                what.kernel_sha256 = kernel;
            }
            if fill & 4 != 0 {
                what.input_sha256 = inputs;
            }
            let matches =
                what.job_id == id && what.kernel_sha256 == kernel && what.input_sha256 == inputs;
            let receipt = Box::new(receipt::sign(&hub.device, what));
            hub.report(Body::JobResult(Box::new(JobReport {
                job_id: id.clone(),
                outcome: JobOutcome::Done { receipt },
            })));
            let status = hub.receipt_status(&id).expect("a receipt status");
            assert_eq!(
                status == "valid",
                matches,
                "{id}: stored as {status:?}"
            );
        }
    }
});
