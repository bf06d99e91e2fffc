//! Hub ingest: signed heartbeats per second from many simulated devices, with the hub pinned to
//! one core and this load generator on the other; next to a bare HTTPS round trip (`/v1/ping`)
//! over the same connections in the same run. Prints figures; asserts nothing about time.
//!
//!     cargo bench -p edge-hub --bench ingest

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use edge_hub::{db_path, pki, store};
use edge_identity::Identity;
use edge_protocol::api::{Batch, BatchReply, Verdict};
use edge_protocol::envelope::VERSION;
use edge_protocol::report::{Heartbeat, Register};
use edge_protocol::{Body, Envelope, Signed};
use edge_tests::cpu_secs;

const DEVICES: usize = 2000;
const ROUNDS: u64 = 15;
const WORKERS: usize = 32;
const PHASE: Duration = Duration::from_secs(8);

fn seal(identity: &Identity, seq: u64, body: Body) -> Signed {
    let envelope = Envelope {
        v: VERSION,
        device_id: identity.device_id().to_string(),
        seq,
        boot_id: "bench".into(),
        sent_at_ms: 0,
        body,
    };
    Signed::seal(&envelope, identity)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

struct Phase {
    requests: u64,
    wall: Duration,
    latencies: Vec<Duration>,
    hub_cpu: f64,
}

impl Phase {
    fn print(&self, name: &str) {
        let rate = self.requests as f64 / self.wall.as_secs_f64();
        println!(
            "{name:<28} {rate:>9.0}/s  p50 {:>6.2} ms  p99 {:>6.2} ms  hub CPU {:>4.0}% of a core",
            percentile(&self.latencies, 0.50).as_secs_f64() * 1e3,
            percentile(&self.latencies, 0.99).as_secs_f64() * 1e3,
            self.hub_cpu / self.wall.as_secs_f64() * 100.0,
        );
    }
}

fn main() {
    let pinned = Command::new("taskset")
        .args(["-p", "-c", "1", &std::process::id().to_string()])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let dir = tempfile::tempdir().expect("tempdir");
    pki::init(&pki::PkiFiles::in_dir(dir.path()), &["127.0.0.1".into()]).expect("pki");
    let token = "bench-owner";
    let sha = edge_identity::hex::encode(
        ring::digest::digest(&ring::digest::SHA256, token.as_bytes()).as_ref(),
    );
    store::add_owner(
        &store::open(&db_path(dir.path())).expect("db"),
        "bench",
        &sha,
        0,
    )
    .expect("owner");

    let hub_bin = env!("CARGO_BIN_EXE_edge-hub");
    let mut cmd = if pinned {
        let mut c = Command::new("taskset");
        c.args(["-c", "0", hub_bin]);
        c
    } else {
        Command::new(hub_bin)
    };
    let mut hub = cmd
        .arg("--dir")
        .arg(dir.path())
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--echo-listen",
            "127.0.0.1:0",
        ])
        .args(["--rate", "10000", "--burst", "10000"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .expect("start edge-hub");
    let mut line = String::new();
    BufReader::new(hub.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("hub line");
    let main_addr = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("main="))
        .expect("main=")
        .to_owned();
    let base = format!("https://{main_addr}");
    println!(
        "hub ingest: {DEVICES} devices, {WORKERS} concurrent connections, one heartbeat per request; \
         hub {} core 0, load generator on core 1",
        if pinned {
            "pinned to"
        } else {
            "NOT pinned (no taskset) near"
        }
    );

    let ca = std::fs::read(dir.path().join("ca.pem")).expect("ca");
    let http = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).expect("pem"))
        .pool_max_idle_per_host(WORKERS)
        .build()
        .expect("client");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");

    let identities: Vec<Identity> = (0..DEVICES)
        .map(|_| Identity::generate_ephemeral().expect("key"))
        .collect();
    // Signed before timing: the generator's own signing is not the hub's cost.
    let registrations: Vec<Signed> = identities
        .iter()
        .map(|id| {
            seal(
                id,
                1,
                Body::Register(Register {
                    public_key: edge_identity::hex::encode(id.public_key()),
                    owner_token: token.into(),
                    agent_version: "bench".into(),
                }),
            )
        })
        .collect();
    let heartbeats: Vec<Vec<String>> = identities
        .iter()
        .map(|id| {
            (2..2 + ROUNDS)
                .map(|seq| {
                    serde_json::to_string(&Batch {
                        reports: vec![seal(id, seq, Body::Heartbeat(Heartbeat::default()))],
                    })
                    .expect("json")
                })
                .collect()
        })
        .collect();

    runtime.block_on(async {
        let started = Instant::now();
        let next = Arc::new(AtomicU64::new(0));
        let registrations = Arc::new(registrations);
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..WORKERS {
            let (http, base, next, regs) = (http.clone(), base.clone(), next.clone(), registrations.clone());
            tasks.spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                    let Some(signed) = regs.get(i) else { return };
                    let r = http.post(format!("{base}/v1/register")).json(signed).send().await.expect("register");
                    assert!(r.status().is_success(), "{}", r.status());
                }
            });
        }
        while tasks.join_next().await.is_some() {}
        println!("registered {DEVICES} devices in {:.1} s", started.elapsed().as_secs_f64());

        let (h, b) = (http.clone(), base.clone());
        let ping = run_phase(hub.id(), WORKERS, move |worker, round| {
            let (http, url) = (h.clone(), format!("{b}/v1/ping"));
            async move {
                let _ = (worker, round);
                http.get(url).send().await.map(|r| r.status().is_success()).unwrap_or(false)
            }
        })
        .await;
        let heartbeats = Arc::new(heartbeats);
        let (h, b) = (http.clone(), base.clone());
        let ingest = run_phase(hub.id(), WORKERS, move |worker, round| {
            let (http, url, heartbeats) = (h.clone(), format!("{b}/v1/reports"), heartbeats.clone());
            async move {
                // Worker w owns devices w, w + WORKERS, ...; each round sends the next seq of
                // one of them, so every device's reports arrive in order.
                let owned = (DEVICES - worker).div_ceil(WORKERS);
                let device = worker + (round as usize % owned) * WORKERS;
                let Some(body) = heartbeats[device].get(round as usize / owned) else {
                    return false;
                };
                let Ok(response) = http
                    .post(url)
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send()
                    .await
                else {
                    return false;
                };
                response
                    .json::<BatchReply>()
                    .await
                    .is_ok_and(|r| r.results.iter().all(|v| v.status == Verdict::Accepted))
            }
        })
        .await;
        ping.print("HTTPS round trip (/v1/ping)");
        ingest.print("signed heartbeat ingest");
        let rate = ingest.requests as f64 / ingest.wall.as_secs_f64();
        println!(
            "ingest costs {:.1}x a bare round trip; at one heartbeat per 30 s one hub core serves about {:.0} devices",
            (ping.requests as f64 / ping.wall.as_secs_f64()) / rate,
            rate * 30.0
        );
    });
    let _ = hub.kill();
    let _ = hub.wait();
}

/// Runs `WORKERS` loops of `request(worker, round)` for [`PHASE`] (or until every worker runs
/// out); counts successes, records each request's latency and the hub's CPU time.
async fn run_phase<F, Fut>(hub_pid: u32, workers: usize, request: F) -> Phase
where
    F: Fn(usize, u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = bool> + Send + 'static,
{
    let cpu0 = cpu_secs(hub_pid);
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..workers {
        let request = request.clone();
        tasks.spawn(async move {
            let (mut ok, mut latencies) = (0u64, Vec::new());
            for round in 0.. {
                if start.elapsed() > PHASE {
                    break;
                }
                let t = Instant::now();
                if !request(worker, round).await {
                    break;
                }
                latencies.push(t.elapsed());
                ok += 1;
            }
            (ok, latencies)
        });
    }
    let (mut requests, mut latencies) = (0, Vec::new());
    while let Some(Ok((ok, l))) = tasks.join_next().await {
        requests += ok;
        latencies.extend(l);
    }
    let wall = start.elapsed();
    latencies.sort();
    Phase {
        requests,
        wall,
        latencies,
        hub_cpu: cpu_secs(hub_pid) - cpu0,
    }
}
