//! `edge-hub`: the reference network service that edge agents report to.
//!
//! It is the network's side of protocol v1 (`docs/protocol.md`), run for local development,
//! end-to-end tests and fleet simulation: device registration bound to an owner, signed report
//! intake (verified, replay-checked, stored once per `(device, seq)`), an IP echo on two
//! listeners, latency and bandwidth test endpoints, and `/metrics`. HTTPS only, TLS 1.3 only,
//! with a development CA made by `edge-hub init` that agents pin.
//!
//! Design: axum handlers over a hand-written rustls accept loop ([`tls`]); SQLite in WAL mode
//! written by one thread that commits waiting requests together ([`store`]); in-memory
//! per-device and per-address rate limits and the replay marks of signed requests
//! ([`limits`]).
//!
//! Limits today: one process, one database file; rate limits and the marks of signed requests
//! already seen are in memory (after a restart, requests signed before it are refused rather than
//! risk a replay); a long-poll looks for new jobs every 500 ms.

pub mod api;
pub mod blobs;
pub mod inspect;
pub mod limits;
pub mod pki;
pub mod store;
pub mod tls;

use edge_tasks::Tasks;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

/// How to run the hub.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Directory with `init`'s files and the database.
    pub dir: PathBuf,
    /// Address of the main listener: the API, including the first IP echo.
    pub listen: SocketAddr,
    /// Second listener (IP echo from a second address; serves the same API).
    pub echo_listen: Option<SocketAddr>,
    /// Echo URLs told to devices; default: `https://<listener>/v1/ip` for each listener.
    pub echo_urls: Vec<String>,
    /// What one device, one address and one connection may ask of the hub.
    pub limits: Limits,
    /// Seconds the hub's clock runs ahead of the system's (negative: behind). Zero but to test
    /// devices against a hub whose clock differs from theirs.
    pub clock_offset_secs: i64,
}

/// The hub's limits: what keeps one device, one address or one slow client from using it up,
/// and how long it keeps what devices send.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest request body but uploads, bytes.
    pub max_body_bytes: usize,
    /// Time to receive a whole request body but an upload's (slow senders are cut off).
    pub body_timeout: Duration,
    /// Requests per second per device, sustained.
    pub rate_per_device: f64,
    /// Requests per device at once.
    pub burst_per_device: u32,
    /// Requests per second per client address (IPv6: per /64), sustained; checked before any
    /// body is read or signature checked.
    pub rate_per_address: f64,
    /// Requests per address at once.
    pub burst_per_address: u32,
    /// Connections open at once, per listener; beyond it the hub stops accepting until one
    /// closes.
    pub max_connections: usize,
    /// How long a device has to send a job's result before the job is handed out again.
    pub job_lease: Duration,
    /// Reports older than this are deleted.
    pub retention: Duration,
    /// Reports kept per device: its newest this many sequence numbers.
    pub max_reports_per_device: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 1 << 20,
            body_timeout: Duration::from_secs(30),
            rate_per_device: 5.0,
            burst_per_device: 20,
            rate_per_address: 50.0,
            burst_per_address: 200,
            max_connections: 1024,
            job_lease: Duration::from_secs(600),
            retention: Duration::from_secs(90 * 24 * 3600),
            max_reports_per_device: 1_000_000,
        }
    }
}

/// The system's clock moved by a fixed offset (`serve --clock-offset-secs`).
#[derive(Debug, Clone, Copy)]
struct OffsetClock(std::time::Duration, bool);

impl edge_hal::Clock for OffsetClock {
    fn monotonic(&self) -> std::time::Duration {
        edge_hal::Clock::monotonic(&edge_hal::SystemClock)
    }

    fn wall(&self) -> std::time::SystemTime {
        let now = edge_hal::Clock::wall(&edge_hal::SystemClock);
        let (by, ahead) = (self.0, self.1);
        if ahead { now + by } else { now - by }
    }
}

/// Errors starting the hub.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// TLS material.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// The database could not be opened or its schema applied.
    #[error(transparent)]
    Store(#[from] store::StoreError),
    /// A listener could not bind.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for; when `local_addr` fails, the main listener's, whichever
        /// listener it was.
        addr: SocketAddr,
        /// The OS error, e.g. `EADDRINUSE`.
        source: std::io::Error,
    },
    /// The signal handlers could not be installed.
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    /// A listener task failed.
    #[error("task {task} failed: {message}")]
    Task {
        /// Its name as spawned: `main listener` or `echo listener`.
        task: &'static str,
        /// Its error's text, or `panicked: ...`.
        message: String,
    },
}

/// The blob directory in a hub directory: jobs' inputs, one file per blob named by its SHA-256.
pub fn blobs_dir(dir: &std::path::Path) -> PathBuf {
    dir.join("blobs")
}

/// The database file in the hub's directory.
pub fn db_path(dir: &std::path::Path) -> PathBuf {
    dir.join("hub.db")
}

/// A hub bound to its listeners, ready to serve.
pub struct Server {
    /// The main listener's address.
    pub main_addr: SocketAddr,
    /// The echo listener's address.
    pub echo_addr: Option<SocketAddr>,
    main: TcpListener,
    echo: Option<TcpListener>,
    tls: Arc<rustls::ServerConfig>,
    app: axum::Router,
    max_connections: usize,
}

/// Loads the TLS material, opens the database and binds the listeners.
pub async fn bind(config: ServeConfig) -> Result<Server, HubError> {
    let files = pki::PkiFiles::in_dir(&config.dir);
    let tls = tls::server_config(&files.server_cert, &files.server_key)?;
    let limits = config.limits.clone();
    let bind = |addr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|source| HubError::Bind { addr, source })
    };
    let main = bind(config.listen).await?;
    let echo = match config.echo_listen {
        Some(addr) => Some(bind(addr).await?),
        None => None,
    };
    let local = |l: &TcpListener| {
        l.local_addr().map_err(|source| HubError::Bind {
            addr: config.listen,
            source,
        })
    };
    let main_addr = local(&main)?;
    let echo_addr = echo.as_ref().map(local).transpose()?;
    let echo_urls = if config.echo_urls.is_empty() {
        std::iter::once(main_addr)
            .chain(echo_addr)
            .map(|a| format!("https://{a}{}", edge_protocol::api::IP_ECHO))
            .collect()
    } else {
        config.echo_urls.clone()
    };
    let clock = Arc::new(OffsetClock(
        std::time::Duration::from_secs(config.clock_offset_secs.unsigned_abs()),
        config.clock_offset_secs >= 0,
    ));
    let app = app(&config.dir, &limits, echo_urls, clock)?;
    Ok(Server {
        main_addr,
        echo_addr,
        main,
        echo,
        tls,
        app,
        max_connections: limits.max_connections,
    })
}

/// The hub's API over the database and blobs in `dir`, without listeners: what [`bind`]
/// serves, and what a fuzz target drives one request at a time. Each request must carry its
/// peer's address as a [`tls::Peer`] extension.
pub fn app(
    dir: &std::path::Path,
    limits: &Limits,
    echo_urls: Vec<String>,
    clock: Arc<dyn edge_hal::Clock>,
) -> Result<axum::Router, HubError> {
    let store = store::Store::start(
        &db_path(dir),
        store::Retention {
            max_age: limits.retention,
            max_reports_per_device: limits.max_reports_per_device,
        },
    )?;
    let hub = Arc::new(api::Hub {
        store,
        limiter: limits::RateLimiter::new(limits.rate_per_device, limits.burst_per_device),
        per_address: limits::RateLimiter::new(limits.rate_per_address, limits.burst_per_address),
        echo_urls,
        counters: api::Counters::default(),
        replays: limits::Replays::since(edge_hal::Clock::unix_ms(clock.as_ref())),
        job_lease: limits.job_lease,
        clock,
        blobs: blobs_dir(dir),
    });
    Ok(api::router(hub, limits))
}

impl Server {
    /// Serves until the set's shutdown: each listener is an essential task of `tasks`, and each
    /// connection a task of it too, so the drain waits for the requests in flight.
    pub fn spawn(self, tasks: &Tasks) {
        tracing::info!(main = %self.main_addr, echo = ?self.echo_addr, "serving");
        if let Some(echo) = self.echo {
            let serve = tls::serve(
                echo,
                self.tls.clone(),
                self.app.clone(),
                self.max_connections,
                tasks.clone(),
            );
            tasks.spawn("echo listener", serve);
        }
        let serve = tls::serve(
            self.main,
            self.tls,
            self.app,
            self.max_connections,
            tasks.clone(),
        );
        tasks.spawn("main listener", serve);
    }
}
