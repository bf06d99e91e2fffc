//! The hub's API on a real TLS listener on 127.0.0.1: registration, report intake and every way
//! a report is refused, with the hub still serving others afterwards.

#![allow(
    clippy::tests_outside_test_module,
    reason = "an integration test crate: its tests need no test module"
)]

use edge_hal::{Clock, SystemClock};

use edge_hub::{Limits, ServeConfig, db_path, inspect, pki, store};
use edge_identity::Identity;
use edge_protocol::api::{Batch, BatchReply, HubInfo, IpEcho, Registered, Verdict};
use edge_protocol::envelope::VERSION;
use edge_protocol::report::{Heartbeat, Register};
use edge_protocol::{Body, Envelope, Signed};
use reqwest::StatusCode;
use tokio_util::sync::CancellationToken;

struct Hub {
    /// Shared by a hub and the one restarted on its directory.
    tmp: std::sync::Arc<tempfile::TempDir>,
    dir: std::path::PathBuf,
    base: String,
    http: reqwest::Client,
    token: String,
    shutdown: CancellationToken,
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn hub(max_body_bytes: usize, burst: u32) -> Hub {
    hub_with(max_body_bytes, burst, Limits::default()).await
}

/// A hub with these limits, but `max_body_bytes` and a per-device `burst` at 1 request/s.
async fn hub_with(max_body_bytes: usize, burst: u32, limits: Limits) -> Hub {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_owned();
    pki::init(
        &pki::PkiFiles::in_dir(&path),
        &["127.0.0.1".to_owned(), "localhost".to_owned()],
    )
    .expect("pki");
    let token = "owner-test-token".to_owned();
    let sha = edge_identity::hex::encode(
        ring::digest::digest(&ring::digest::SHA256, token.as_bytes()).as_ref(),
    );
    store::add_owner(&store::open(&db_path(&path)).expect("db"), "alice", &sha, 1).expect("owner");
    serve(
        std::sync::Arc::new(dir),
        token,
        Limits {
            max_body_bytes,
            rate_per_device: 1.0,
            burst_per_device: burst,
            ..limits
        },
    )
    .await
}

/// A hub serving `dir` (made by [`hub_with`]) with these limits.
async fn serve(dir: std::sync::Arc<tempfile::TempDir>, token: String, limits: Limits) -> Hub {
    let path = dir.path().to_owned();
    let server = edge_hub::bind(ServeConfig {
        dir: path.clone(),
        listen: "127.0.0.1:0".parse().expect("addr"),
        echo_listen: Some("127.0.0.1:0".parse().expect("addr")),
        echo_urls: Vec::new(),
        limits,
        clock_offset_secs: 0,
    })
    .await
    .expect("bind");
    let base = format!("https://localhost:{}", server.main_addr.port());
    let (tasks, _failures) = edge_tasks::Tasks::new();
    server.spawn(&tasks);
    let shutdown = tasks.shutdown();
    let ca = std::fs::read(path.join("ca.pem")).expect("ca");
    let http = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).expect("pem"))
        .build()
        .expect("client");
    Hub {
        tmp: dir,
        dir: path,
        base,
        http,
        token,
        shutdown,
    }
}

fn envelope(identity: &Identity, seq: u64, body: Body) -> Envelope {
    Envelope {
        v: VERSION,
        device_id: identity.device_id().to_string(),
        seq,
        boot_id: "boot-1".into(),
        sent_at_ms: SystemClock.unix_ms(),
        body,
    }
}

fn heartbeat(identity: &Identity, seq: u64) -> Signed {
    Signed::seal(
        &envelope(identity, seq, Body::Heartbeat(Heartbeat::default())),
        identity,
    )
}

impl Hub {
    /// This hub stopped, and a new one started on its directory (default limits).
    async fn restarted(&self) -> Hub {
        self.shutdown.cancel();
        serve(self.tmp.clone(), self.token.clone(), Limits::default()).await
    }

    /// Queues `job` for the device of `identity`, at `now_ms` (`store::add_job`, with this hub's
    /// blobs).
    fn queue(
        &self,
        identity: &Identity,
        job: &edge_jobs::job::Job,
        now_ms: u64,
    ) -> Result<(), store::StoreError> {
        let db = store::open(&db_path(&self.dir)).expect("db");
        store::add_job(
            &db,
            &edge_hub::blobs_dir(&self.dir),
            &identity.device_id().to_string(),
            job,
            now_ms,
        )
    }

    /// A new device, registered to the owner.
    async fn registered(&self) -> Identity {
        let me = Identity::generate_ephemeral().expect("key");
        assert_eq!(
            self.register(&me, 1, &self.token).await.status(),
            StatusCode::OK
        );
        me
    }

    async fn register(&self, identity: &Identity, seq: u64, token: &str) -> reqwest::Response {
        let body = Body::Register(Register {
            public_key: edge_identity::hex::encode(identity.public_key()),
            owner_token: token.into(),
            agent_version: "test".into(),
        });
        let signed = Signed::seal(&envelope(identity, seq, body), identity);
        self.http
            .post(format!("{}/v1/register", self.base))
            .json(&signed)
            .send()
            .await
            .expect("request")
    }

    async fn send(&self, reports: Vec<Signed>) -> reqwest::Response {
        self.http
            .post(format!("{}/v1/reports", self.base))
            .json(&Batch { reports })
            .send()
            .await
            .expect("request")
    }

    async fn deliver(&self, reports: Vec<Signed>) -> BatchReply {
        let response = self.send(reports).await;
        assert_eq!(response.status(), StatusCode::OK);
        response.json().await.expect("reply")
    }

    /// A job poll (waiting at most a second) with these signed headers.
    fn poll(
        &self,
        headers: [(&'static str, String); 3],
    ) -> impl Future<Output = reqwest::Result<reqwest::Response>> + use<> {
        let mut request = self
            .http
            .get(format!("{}/v1/jobs/next?wait_secs=1", self.base));
        for (name, value) in headers {
            request = request.header(name, value);
        }
        request.send()
    }

    fn stored(&self, identity: &Identity) -> serde_json::Value {
        inspect::device(&db_path(&self.dir), &identity.device_id().to_string())
            .expect("inspect")
            .expect("device is known")
    }
}

async fn error_of(response: reqwest::Response) -> (StatusCode, String) {
    let status = response.status();
    let body: serde_json::Value = response.json().await.expect("JSON error body");
    (
        status,
        body["error"].as_str().unwrap_or_default().to_owned(),
    )
}

/// The headers of a job poll signed by `identity` at `time_ms`.
fn poll_sign(identity: &Identity, time_ms: u64) -> [(&'static str, String); 3] {
    edge_protocol::poll::sign(identity, edge_protocol::api::JOBS_NEXT, time_ms)
}

fn verdicts(reply: &BatchReply) -> Vec<Verdict> {
    reply.results.iter().map(|r| r.status).collect()
}

#[tokio::test]
async fn a_registered_device_reports_and_its_signatures_verify_later() {
    let hub = hub(1 << 20, 100).await;
    let me = Identity::generate_ephemeral().expect("key");
    let response = hub.register(&me, 1, &hub.token).await;
    assert_eq!(response.status(), StatusCode::OK);
    let registered: Registered = response.json().await.expect("json");
    assert_eq!(
        (registered.owner.as_str(), registered.last_seq),
        ("alice", 0)
    );

    let reply = hub
        .deliver(vec![heartbeat(&me, 2), heartbeat(&me, 3)])
        .await;
    assert_eq!(verdicts(&reply), [Verdict::Accepted, Verdict::Accepted]);
    let stored = hub.stored(&me);
    assert_eq!(stored["last_seq"], 3);
    assert_eq!(stored["reports"]["heartbeat"], 2);
    assert_eq!(stored["latest_heartbeat"]["seq"], 3);
    assert_eq!(stored["latest_heartbeat"]["signature"], "valid");

    // Re-registering (a restart) keeps the stream's high-water mark.
    let again: Registered = hub
        .register(&me, 4, &hub.token)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(again.last_seq, 3);
    // An old registration replayed is refused.
    let (status, error) = error_of(hub.register(&me, 1, &hub.token).await).await;
    assert_eq!(status, StatusCode::CONFLICT, "{error}");

    let info: HubInfo = hub
        .http
        .get(format!("{}/v1/info", hub.base))
        .send()
        .await
        .expect("info")
        .json()
        .await
        .expect("json");
    assert_eq!(info.echo_urls.len(), 2);
    for url in &info.echo_urls {
        let echo: IpEcho = hub
            .http
            .get(url)
            .send()
            .await
            .expect("echo")
            .json()
            .await
            .expect("json");
        assert_eq!(echo.ip, "127.0.0.1");
    }
}

#[tokio::test]
async fn tampered_forged_replayed_and_stale_reports_are_refused_and_others_still_served() {
    let hub = hub(1 << 20, 100).await;
    let me = Identity::generate_ephemeral().expect("key");
    let other = Identity::generate_ephemeral().expect("key");
    assert_eq!(
        hub.register(&me, 1, &hub.token).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        hub.register(&other, 1, &hub.token).await.status(),
        StatusCode::OK
    );

    let good = heartbeat(&me, 5);
    let tampered = Signed {
        envelope: heartbeat(&me, 6)
            .envelope
            .replace("\"load_1m\":0.0", "\"load_1m\":9.0"),
        ..heartbeat(&me, 6)
    };
    assert_ne!(tampered.envelope, heartbeat(&me, 6).envelope);
    // `other` signs a report that claims to be from `me`.
    let forged = Signed::seal(
        &envelope(&me, 7, Body::Heartbeat(Heartbeat::default())),
        &other,
    );
    let reply = hub.deliver(vec![good.clone(), tampered, forged]).await;
    assert_eq!(
        verdicts(&reply),
        [Verdict::Accepted, Verdict::Rejected, Verdict::Rejected]
    );
    for r in &reply.results[1..] {
        let error = r.error.as_deref().unwrap_or_default();
        assert!(error.contains("signature does not verify"), "{error}");
    }

    // The same envelope again: a duplicate, counted once.
    let reply = hub.deliver(vec![good]).await;
    assert_eq!(verdicts(&reply), [Verdict::Duplicate]);
    assert!(
        reply.results[0]
            .error
            .as_deref()
            .unwrap_or_default()
            .contains("already received")
    );
    // A lower seq never seen: stale.
    let reply = hub.deliver(vec![heartbeat(&me, 4)]).await;
    assert_eq!(verdicts(&reply), [Verdict::Rejected]);
    assert!(
        reply.results[0]
            .error
            .as_deref()
            .unwrap_or_default()
            .contains("below")
    );
    assert_eq!(hub.stored(&me)["reports"]["heartbeat"], 1);

    // Another device is still served.
    let reply = hub.deliver(vec![heartbeat(&other, 2)]).await;
    assert_eq!(verdicts(&reply), [Verdict::Accepted]);
}

#[tokio::test]
async fn bad_requests_get_a_clear_error_with_the_right_status() {
    let hub = hub(4096, 100).await;
    let me = Identity::generate_ephemeral().expect("key");
    let stranger = Identity::generate_ephemeral().expect("key");

    let (status, error) = error_of(hub.register(&me, 1, "not-a-token").await).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(error.contains("owner token"), "{error}");

    let (status, error) = error_of(hub.send(vec![heartbeat(&stranger, 1)]).await).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(error.contains("not registered"), "{error}");

    assert_eq!(
        hub.register(&me, 1, &hub.token).await.status(),
        StatusCode::OK
    );
    let many: Vec<Signed> = (2..40).map(|seq| heartbeat(&me, seq)).collect();
    let (status, error) = error_of(hub.send(many).await).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(error.contains("size limit"), "{error}");

    let response = hub
        .http
        .post(format!("{}/v1/reports", hub.base))
        .body("{\"reports\": [")
        .send()
        .await
        .expect("request");
    let (status, error) = error_of(response).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(error.contains("line 1 column"), "{error}");

    // After all that, the device's next report is accepted.
    let reply = hub.deliver(vec![heartbeat(&me, 2)]).await;
    assert_eq!(verdicts(&reply), [Verdict::Accepted]);
}

#[tokio::test]
async fn a_device_over_its_rate_is_told_when_to_come_back() {
    let hub = hub(1 << 20, 3).await;
    let me = hub.registered().await;
    let mut limited = None;
    for seq in 2..10 {
        let response = hub.send(vec![heartbeat(&me, seq)]).await;
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            limited = Some(response);
            break;
        }
    }
    let response = limited.expect("the burst of 3 runs out");
    assert!(response.headers().contains_key("retry-after"));
    let (_, error) = error_of(response).await;
    assert!(error.contains("too many requests"), "{error}");
}

#[test]
fn init_refuses_to_overwrite_and_keys_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let files = pki::PkiFiles::in_dir(dir.path());
    pki::init(&files, &["localhost".into()]).expect("first init");
    for key in [&files.ca_key, &files.server_key] {
        let mode = std::fs::metadata(key).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", key.display());
    }
    let before = std::fs::read(&files.ca_key).expect("read");
    let err = pki::init(&files, &["localhost".into()]).expect_err("second init");
    assert!(
        err.to_string()
            .contains(&files.ca_key.display().to_string()),
        "{err}"
    );
    assert_eq!(std::fs::read(&files.ca_key).expect("read"), before);
}

#[tokio::test]
async fn job_polls_are_signed_fresh_and_never_replayed() {
    let hub = hub(1 << 20, 100).await;
    let me = hub.registered().await;
    let job: edge_jobs::job::Job = serde_json::from_str(
        r#"{"version": 1, "id": "j1", "kernel": {"wgsl": "x", "entry_point": "main"},
            "bindings": [], "dispatch": [1, 1, 1]}"#,
    )
    .expect("job");
    hub.queue(&me, &job, 1).expect("queue");
    let err = hub.queue(&me, &job, 2).expect_err("same id");
    assert!(err.to_string().contains("j1 already exists"), "{err}");

    let poll = |headers| hub.poll(headers);
    let t = SystemClock.unix_ms();
    let signed = poll_sign(&me, t);
    let response = poll(signed.clone()).await.expect("poll");
    assert_eq!(response.status(), StatusCode::OK);
    let offer: edge_protocol::api::JobOffer = response.json().await.expect("offer");
    assert_eq!(offer.job, job);

    // The same headers again: a replay.
    let (status, error) = error_of(poll(signed).await.expect("poll")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(error.contains("replayed"), "{error}");
    // Signed by someone else.
    let other = Identity::generate_ephemeral().expect("key");
    let mut forged = poll_sign(&other, t + 1);
    forged[0].1 = me.device_id().to_string();
    let (status, error) = error_of(poll(forged).await.expect("poll")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(error.contains("does not verify"), "{error}");
    // A clock far off.
    let (status, error) = error_of(poll(poll_sign(&me, t - 3_600_000)).await.expect("poll")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(error.contains("clock"), "{error}");
    // Nothing more queued: an empty answer after the wait.
    let response = poll(poll_sign(&me, t + 2)).await.expect("poll");
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn a_signed_request_taken_before_a_restart_is_not_taken_again_after_it() {
    let hub = hub(1 << 20, 100).await;
    let me = hub.registered().await;
    let signed = poll_sign(&me, SystemClock.unix_ms());
    let response = hub.poll(signed.clone()).await.expect("poll");
    assert_eq!(response.status(), StatusCode::NO_CONTENT);

    // The restarted hub has no marks of what the first one took: the capture is refused, a
    // request signed anew is taken.
    let hub = hub.restarted().await;
    let (status, error) = error_of(hub.poll(signed).await.expect("poll")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{error}");
    assert!(error.contains("before the hub started"), "{error}");
    let response = hub
        .poll(poll_sign(&me, SystemClock.unix_ms()))
        .await
        .expect("poll");
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn a_blob_goes_only_to_the_device_running_a_job_that_names_it() {
    use edge_jobs::job::Blob;
    use edge_protocol::api::BLOBS;

    let hub = hub(1 << 20, 100).await;
    let (me, other) = (hub.registered().await, hub.registered().await);
    let file = hub.dir.join("input.bin");
    std::fs::write(&file, [7u8; 16]).expect("write");
    let sha256 = edge_hub::blobs::add(&edge_hub::blobs_dir(&hub.dir), &file).expect("blob");
    let path = format!("{BLOBS}{sha256}");
    let fetch = |who: &Identity, time_ms: u64| {
        signed(
            hub.http.get(format!("{}{path}", hub.base)),
            who,
            &path,
            time_ms,
        )
        .send()
    };
    let t = SystemClock.unix_ms();
    let (status, error) = error_of(fetch(&me, t).await.expect("fetch")).await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "before any job names it: {error}"
    );
    assert!(error.contains("no job out"), "{error}");

    let mut job = edge_jobs::kernels::hash_chain(1, 2, 64).expect("job");
    job.id = "with-blob".into();
    job.bindings[0].input = Some(Blob::Sha256(sha256));
    hub.queue(&me, &job, 1).expect("queue");
    let response = hub.poll(poll_sign(&me, t + 1)).await.expect("poll");
    assert_eq!(response.status(), StatusCode::OK);
    let response = fetch(&me, t + 2).await.expect("fetch");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.bytes().await.expect("bytes").as_ref(), [7u8; 16]);

    // Another registered device that knows the hash: refused, as if there were none.
    let (status, error) = error_of(fetch(&other, t + 3).await.expect("fetch")).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{error}");
}

#[tokio::test]
async fn a_job_result_counts_only_for_a_job_handed_out_and_only_as_it_was_issued() {
    use edge_jobs::digest::Sha256;
    use edge_jobs::job::{Blob, Job};
    use edge_jobs::receipt::{self, Attested};
    use edge_protocol::report::{JobOutcome, JobReport};

    let hub = hub(1 << 20, 100).await;
    let me = hub.registered().await;
    let mut job = edge_jobs::kernels::hash_chain(1, 2, 64).expect("job");
    job.bindings[0].input = Some(Blob::inline(&[9, 9, 9, 9]));
    // The same input as a blob the hub holds: the same digest, which the hub works out at
    // submission from the blob's bytes.
    let blobs = edge_hub::blobs_dir(&hub.dir);
    let file = hub.dir.join("input.bin");
    std::fs::write(&file, [9, 9, 9, 9]).expect("write");
    let sha256 = edge_hub::blobs::add(&blobs, &file).expect("blob");
    let issue = |id: &str| {
        let mut issued = Job {
            id: id.into(),
            ..job.clone()
        };
        if id.starts_with("blob-") {
            issued.bindings[0].input = Some(Blob::Sha256(sha256));
        }
        issued
    };
    for (t, id) in [
        (1, "wrong-kernel"),
        (2, "wrong-inputs"),
        (3, "good"),
        (4, "blob-wrong-inputs"),
        (5, "blob-good"),
        (6, "kept"),
    ] {
        hub.queue(&me, &issue(id), t).expect("queue");
    }
    // Five are handed out; "kept" stays queued.
    for t in 0..5 {
        let signed = poll_sign(&me, SystemClock.unix_ms() + t);
        assert_eq!(
            hub.poll(signed).await.expect("poll").status(),
            StatusCode::OK
        );
    }

    // What the worker hashes: each binding's contents, zero-padded, in order.
    let inputs: Vec<Vec<u8>> = job
        .bindings
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let mut bytes = vec![0u8; b.size as usize];
            if i == 0 {
                bytes[..4].copy_from_slice(&[9, 9, 9, 9]);
            }
            bytes
        })
        .collect();
    let right_inputs = Sha256::of_parts(inputs.iter().map(Vec::as_slice));
    let right_kernel = Sha256::of(job.kernel.wgsl.as_bytes());
    let result = |seq, id: &str, kernel, inputs| {
        let receipt = receipt::sign(
            &me,
            Attested {
                job_id: id.into(),
                kernel_sha256: kernel,
                input_sha256: inputs,
                output_sha256: Sha256::of(b"out"),
                adapter: "test".into(),
                driver: "test".into(),
                started_at_unix_ms: 1,
                duration_us: 1,
                kernel_us: None,
                batch: None,
            },
        );
        let body = Body::JobResult(Box::new(JobReport {
            job_id: id.into(),
            outcome: JobOutcome::Done {
                receipt: Box::new(receipt),
            },
        }));
        Signed::seal(&envelope(&me, seq, body), &me)
    };
    let reply = hub
        .deliver(vec![
            result(
                2,
                "wrong-kernel",
                Sha256::of(b"another shader"),
                right_inputs,
            ),
            result(3, "wrong-inputs", right_kernel, Sha256::of(b"other inputs")),
            result(4, "good", right_kernel, right_inputs),
            result(
                5,
                "blob-wrong-inputs",
                right_kernel,
                Sha256::of(b"other inputs"),
            ),
            result(6, "blob-good", right_kernel, right_inputs),
            result(7, "kept", right_kernel, right_inputs),
        ])
        .await;
    assert!(
        verdicts(&reply).iter().all(|v| *v == Verdict::Accepted),
        "{reply:?}"
    );
    let jobs = inspect::jobs(&db_path(&hub.dir)).expect("jobs");
    let job = |id: &str| {
        jobs.iter()
            .find(|j| j["job_id"] == id)
            .expect("listed")
            .clone()
    };
    let status = |id: &str| {
        job(id)["receipt_status"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    assert!(
        status("wrong-kernel").starts_with("INVALID: receipt is for kernel"),
        "{}",
        job("wrong-kernel")
    );
    assert!(
        status("wrong-inputs").starts_with("INVALID: receipt is for inputs"),
        "{}",
        job("wrong-inputs")
    );
    assert!(
        status("blob-wrong-inputs").starts_with("INVALID: receipt is for inputs"),
        "{}",
        job("blob-wrong-inputs")
    );
    assert_eq!(status("good"), "valid", "{}", job("good"));
    assert_eq!(status("blob-good"), "valid", "{}", job("blob-good"));
    // A result for a job never handed out changes nothing.
    assert_eq!(job("kept")["state"], "queued", "{}", job("kept"));
    assert!(job("kept")["receipt"].is_null(), "{}", job("kept"));
}

/// `request` with the headers of a request to `path` signed by `identity` at `time_ms`.
fn signed(
    mut request: reqwest::RequestBuilder,
    identity: &Identity,
    path: &str,
    time_ms: u64,
) -> reqwest::RequestBuilder {
    for (name, value) in edge_protocol::poll::sign(identity, path, time_ms) {
        request = request.header(name, value);
    }
    request
}

#[tokio::test]
async fn bandwidth_tests_are_for_registered_devices_signed_for_that_test() {
    use edge_protocol::api::{DOWNLOAD, JOBS_NEXT, UPLOAD};
    let hub = hub(1 << 20, 100).await;
    let me = Identity::generate_ephemeral().expect("key");
    let stranger = Identity::generate_ephemeral().expect("key");
    assert_eq!(
        hub.register(&me, 1, &hub.token).await.status(),
        StatusCode::OK
    );
    let download = || hub.http.get(format!("{}{DOWNLOAD}?bytes=100000", hub.base));
    let t = SystemClock.unix_ms();

    // No signature, a stranger's, or one made for the job poll: refused before a byte is sent.
    let (status, error) = error_of(download().send().await.expect("download")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{error}");
    assert!(error.contains("signed as a registered device"), "{error}");
    let response = signed(download(), &stranger, DOWNLOAD, t).send().await;
    let (status, error) = error_of(response.expect("download")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{error}");
    assert!(error.contains("not registered"), "{error}");
    let response = signed(download(), &me, JOBS_NEXT, t).send().await;
    let (status, error) = error_of(response.expect("download")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{error}");
    assert!(error.contains("does not verify"), "{error}");

    // Signed for the download: served; two streams sign two times and both are served.
    for time in [t, t + 1] {
        let response = signed(download(), &me, DOWNLOAD, time)
            .send()
            .await
            .expect("download");
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.bytes().await.expect("body").len(), 100_000);
    }
    // The same request again: a replay.
    let response = signed(download(), &me, DOWNLOAD, t).send().await;
    let (status, error) = error_of(response.expect("download")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{error}");
    assert!(error.contains("replayed"), "{error}");

    let upload = || {
        hub.http
            .post(format!("{}{UPLOAD}", hub.base))
            .body(vec![0u8; 50_000])
    };
    let (status, _) = error_of(upload().send().await.expect("upload")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // The download's signature does not open the upload.
    let response = signed(upload(), &me, DOWNLOAD, t + 2).send().await;
    let (status, _) = error_of(response.expect("upload")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let uploaded: edge_protocol::api::Uploaded = signed(upload(), &me, UPLOAD, t)
        .send()
        .await
        .expect("upload")
        .json()
        .await
        .expect("json");
    assert_eq!(uploaded.bytes, 50_000);
}

#[tokio::test]
async fn an_address_over_its_rate_is_refused_before_any_signature_is_checked() {
    let limits = Limits {
        rate_per_address: 0.5,
        burst_per_address: 3,
        ..Limits::default()
    };
    let hub = hub_with(1 << 20, 100, limits).await;
    let me = Identity::generate_ephemeral().expect("key");
    // Registrations with a wrong owner token cost a signature check each; after the burst the
    // address is refused first, with 429 and when to come back, not 403.
    let mut statuses = Vec::new();
    let mut limited = None;
    for _ in 0..5 {
        let response = hub.register(&me, 1, "not-a-token").await;
        statuses.push(response.status());
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            limited = Some(response);
            break;
        }
    }
    assert_eq!(statuses[..3], [StatusCode::FORBIDDEN; 3], "{statuses:?}");
    let response = limited.expect("the address's burst of 3 runs out");
    assert!(response.headers().contains_key("retry-after"));
    let (_, error) = error_of(response).await;
    assert!(
        error.contains("too many requests from 127.0.0.1"),
        "{error}"
    );
}

/// A TLS connection to the hub's main listener, trusting its CA, for requests written by hand.
async fn tls_stream(hub: &Hub) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in
        rustls::pki_types::CertificateDer::pem_file_iter(hub.dir.join("ca.pem")).expect("ca")
    {
        roots.add(cert.expect("cert")).expect("root");
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let port = hub.base.rsplit(':').next().expect("port");
    let tcp = tokio::net::TcpStream::connect(format!("127.0.0.1:{port}"))
        .await
        .expect("connect");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(name, tcp)
        .await
        .expect("handshake")
}

#[tokio::test]
async fn a_body_sent_too_slowly_is_cut_off_and_others_are_still_served() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let limits = Limits {
        body_timeout: std::time::Duration::from_secs(1),
        ..Limits::default()
    };
    let hub = hub_with(1 << 20, 100, limits).await;
    let mut slow = tls_stream(&hub).await;
    slow.write_all(
        b"POST /v1/reports HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\n\
          content-length: 1000\r\n\r\n{\"reports\": [",
    )
    .await
    .expect("write");
    slow.flush().await.expect("flush");
    let mut answer = Vec::new();
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(15),
        slow.read_to_end(&mut answer),
    )
    .await;
    assert!(read.is_ok(), "the hub kept waiting for the body");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("did not arrive within 1 s"), "{answer}");
    // The hub goes on serving (registering asserts it).
    hub.registered().await;
}

#[tokio::test]
async fn connections_beyond_the_cap_wait_until_one_closes() {
    let limits = Limits {
        max_connections: 2,
        ..Limits::default()
    };
    let hub = hub_with(1 << 20, 100, limits).await;
    let port = hub.base.rsplit(':').next().expect("port").to_owned();
    let connect = || tokio::net::TcpStream::connect(format!("127.0.0.1:{port}"));
    // Two clients that connect and say nothing hold both places.
    let silent = (
        connect().await.expect("connect"),
        connect().await.expect("connect"),
    );
    let ping = || {
        hub.http
            .get(format!("{}/v1/ping", hub.base))
            .timeout(std::time::Duration::from_secs(2))
            .send()
    };
    let refused = ping().await;
    assert!(
        refused.is_err(),
        "a third connection was served: {refused:?}"
    );
    // One of them leaves: the waiting client is served.
    drop(silent.0);
    let response = ping().await.expect("served once a place is free");
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    drop(silent.1);
}

#[tokio::test]
async fn a_job_whose_result_never_comes_is_handed_out_again_then_given_up() {
    let limits = Limits {
        job_lease: std::time::Duration::from_secs(1),
        ..Limits::default()
    };
    let hub = hub_with(1 << 20, 100, limits).await;
    let me = hub.registered().await;
    let job = edge_jobs::kernels::hash_chain(1, 2, 64).expect("job");
    hub.queue(&me, &job, 1).expect("queue");
    let state = || {
        let jobs = inspect::jobs(&db_path(&hub.dir)).expect("jobs");
        (jobs[0]["state"].clone(), jobs[0]["attempts"].clone())
    };
    let mut t = SystemClock.unix_ms();
    let mut poll = || {
        t += 1;
        hub.poll(poll_sign(&me, t))
    };
    for attempt in 1..=store::MAX_ATTEMPTS {
        let response = poll().await.expect("poll");
        assert_eq!(response.status(), StatusCode::OK, "hand-out {attempt}");
        let offer: edge_protocol::api::JobOffer = response.json().await.expect("offer");
        assert_eq!(offer.job.id, job.id);
        assert_eq!(state(), ("assigned".into(), attempt.into()));
        // No result comes; the lease runs out.
        tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    }
    // The last lease ran out: given up, and said so.
    let response = poll().await.expect("poll");
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let jobs = inspect::jobs(&db_path(&hub.dir)).expect("jobs");
    assert_eq!(jobs[0]["state"], "expired", "{}", jobs[0]);
    assert_eq!(
        jobs[0]["error"], "no result after 3 hand-outs",
        "{}",
        jobs[0]
    );
}

#[tokio::test]
async fn reports_past_the_device_quota_or_the_retention_are_deleted() {
    let limits = Limits {
        max_reports_per_device: 3,
        retention: std::time::Duration::from_secs(2),
        ..Limits::default()
    };
    let hub = hub_with(1 << 20, 100, limits).await;
    let me = hub.registered().await;
    let reply = hub
        .deliver((2..=7).map(|seq| heartbeat(&me, seq)).collect())
        .await;
    assert!(verdicts(&reply).iter().all(|v| *v == Verdict::Accepted));
    // Only the newest three sequence numbers are kept; an older one sent again is stale.
    assert_eq!(hub.stored(&me)["reports"]["heartbeat"], 3);
    let reply = hub.deliver(vec![heartbeat(&me, 3)]).await;
    assert_eq!(verdicts(&reply), [Verdict::Rejected]);
    // Past the retention, the old ones go at the next sweep; the new one stays.
    tokio::time::sleep(std::time::Duration::from_millis(2200)).await;
    let reply = hub.deliver(vec![heartbeat(&me, 8)]).await;
    assert_eq!(verdicts(&reply), [Verdict::Accepted]);
    let stored = hub.stored(&me);
    assert_eq!(stored["reports"]["heartbeat"], 1, "{stored}");
    assert_eq!(stored["latest_heartbeat"]["seq"], 8, "{stored}");
}
