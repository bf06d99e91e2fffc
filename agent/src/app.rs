//! The daemon: start-up in order, every long-lived task wired here, then wait for a signal or a
//! failed task and drain within the grace period.

use std::fmt::Display;
use std::future::Future;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use edge_hal::{Button, Clock, GpuStatus, Hal, Wait};
use edge_identity::{Identity, KeyError};
use sd_notify::NotifyState;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use edge_jobs::job::BlobStore;

use crate::bridge::{BridgeError, BridgeFiles, BridgeStatus, BridgeTask};
use crate::capability::CapabilityTask;
use crate::config::{Config, GpuConfig, NetworkConfig};
use crate::delivery::{DeliveryTask, NetworkStatus, NetworkView};
use crate::exit::Exit;
use crate::gpu_worker::GpuWorker;
use crate::hub_client::{HubClient, HubError};
use crate::intake::IntakeTask;
use crate::lock::{LockError, StateLock};
use crate::monitor::Monitor;
use crate::outbox::{Bounds, Outbox, OutboxError};
use crate::progress::Progress;
use crate::scheduler::{GpuMetrics, Policy, Scheduler, SchedulerParts};
use crate::snapshot::HardwareSnapshot;
use crate::state::{AgentState, NetworkHandle};
use crate::status::{StatusError, StatusServer};
use crate::systemd::{self, Watchdog};
use crate::telemetry::{CapabilityReportTask, HeartbeatTask};

/// Why the agent could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The state directory cannot be created.
    #[error("cannot create state directory {path}: {source}")]
    StateDir {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Another agent holds the state directory.
    #[error(transparent)]
    Lock(#[from] LockError),
    /// The identity key was refused or could not be made.
    #[error(transparent)]
    Identity(#[from] KeyError),
    /// The status endpoint could not listen.
    #[error(transparent)]
    Status(#[from] StatusError),
    /// The hub client could not be set up (its CA file, usually).
    #[error(transparent)]
    Hub(#[from] HubError),
    /// The report queue could not be opened.
    #[error(transparent)]
    Outbox(#[from] OutboxError),
    /// The pairing state (setup code, owner record) could not be read or made.
    #[error(transparent)]
    Bridge(#[from] BridgeError),
    /// The pairing listener could not bind.
    #[error("cannot listen for the owner's app on {addr}: {source}")]
    Listen {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// A long-lived task failed.
    #[error("task {task} failed: {message}")]
    Task {
        /// Its name.
        task: &'static str,
        /// Its error.
        message: String,
    },
}

impl AgentError {
    /// The exit code that tells an operator (and systemd's `RestartPreventExitStatus=`) why.
    pub fn exit(&self) -> Exit {
        match self {
            Self::StateDir { .. } | Self::Lock(LockError::Io { .. }) => Exit::CannotCreate,
            Self::Lock(LockError::Held { .. }) | Self::Status(StatusError::InUse { .. }) => {
                Exit::InUse
            }
            Self::Identity(KeyError::Io { .. } | KeyError::Random { .. }) => Exit::CannotCreate,
            Self::Identity(KeyError::Uri { .. }) => Exit::Config,
            Self::Identity(_) => Exit::KeyRefused,
            Self::Status(_) | Self::Outbox(_) | Self::Listen { .. } => Exit::CannotCreate,
            Self::Bridge(BridgeError::File(_)) => Exit::CannotCreate,
            Self::Bridge(BridgeError::Corrupt { .. }) => Exit::KeyRefused,
            Self::Hub(_) => Exit::Config,
            Self::Task { .. } => Exit::TaskFailed,
        }
    }
}

/// Creates the state directory (mode 0700 for new directories) and refuses an existing one that
/// another user owns or that others may write: the key, the lock and the socket live there.
pub fn create_state_dir(path: &Path) -> Result<(), AgentError> {
    let err = |source| AgentError::StateDir {
        path: path.to_owned(),
        source,
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(err)?;
    let meta = std::fs::symlink_metadata(path).map_err(err)?;
    let euid = nix::unistd::geteuid().as_raw();
    let unsafe_dir = if !meta.is_dir() {
        Some("it is not a directory (a symlink?)".to_owned())
    } else if meta.uid() != euid {
        Some(format!(
            "it is owned by uid {}, not by this process (uid {euid})",
            meta.uid()
        ))
    } else if meta.mode() & 0o022 != 0 {
        Some(format!(
            "its mode {:04o} lets others write to it",
            meta.mode() & 0o7777
        ))
    } else {
        None
    };
    match unsafe_dir {
        Some(why) => Err(err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!("refusing to use it: {why}"),
        ))),
        None => Ok(()),
    }
}

/// Runs `future` on `tracker`, reporting its error (if any) on `failures`.
fn spawn_task<E: Display + Send + 'static>(
    tracker: &TaskTracker,
    failures: &mpsc::Sender<(&'static str, String)>,
    name: &'static str,
    future: impl Future<Output = Result<(), E>> + Send + 'static,
) {
    let failures = failures.clone();
    // The task runs on its own so that a panic in it is reported like an error, not lost.
    let task = tokio::spawn(future);
    tracker.spawn(async move {
        let message = match task.await {
            Ok(Ok(())) => return,
            Ok(Err(e)) => e.to_string(),
            Err(join) if join.is_panic() => format!("panicked: {join}"),
            Err(join) => join.to_string(),
        };
        tracing::error!(task = name, error = %message, "task failed");
        let _ = failures.send((name, message)).await;
    });
}

/// How the agent was started: what it needs besides the config.
#[derive(Debug, Clone)]
pub struct Invocation {
    /// The GPU worker binary (`edge-gpu-worker`, installed beside the agent).
    pub gpu_worker: PathBuf,
    /// `--config`, if given (the owner's config changes are validated against the same files).
    pub config_path: Option<PathBuf>,
    /// The working directory relative paths were resolved against.
    pub cwd: PathBuf,
}

/// Starts the agent and runs it until SIGTERM/SIGINT or a task fails.
pub async fn run(config: Config, hal: Hal, invocation: Invocation) -> Result<Exit, AgentError> {
    systemd::status("starting: preparing state directory");
    create_state_dir(&config.state_dir)?;
    let _lock = StateLock::acquire(&config.state_dir)?;

    systemd::status("starting: opening identity key");
    let (keys, uri) = (hal.keys.clone(), config.identity_key.clone());
    let identity = crate::runtime::blocking(move || keys.open_or_create(&uri)).await?;
    let device_id = identity.device_id();
    tracing::info!(%device_id, key = %identity.uri(), "identity loaded");

    systemd::status("starting: probing GPU");
    let probe = hal.gpu.clone();
    let gpu = crate::runtime::blocking(move || probe.discover()).await;
    match &gpu {
        GpuStatus::Available(info) => {
            tracing::info!(adapter = %info.name, driver = %info.driver_info, "GPU found");
        }
        GpuStatus::Unavailable { reason } => tracing::warn!(%reason, "no GPU"),
    }

    let identity = Arc::new(identity);
    let blobs = config.state_dir.join("blobs");
    let gpu_metrics = Arc::new(GpuMetrics::default());
    let (scheduler, scheduler_handle) = Scheduler::new(
        SchedulerParts {
            gpu: match &gpu {
                GpuStatus::Available(info) => Ok(info.limits.clone()),
                GpuStatus::Unavailable { reason } => Err(reason.clone()),
            },
            policy: Policy::from(&config.gpu),
            identity: identity.clone(),
            thermal: hal.thermal.clone(),
            clock: hal.clock.clone(),
            blobs: BlobStore { dir: blobs.clone() },
            metrics: gpu_metrics.clone(),
        },
        GpuWorker::serving(&invocation.gpu_worker, &blobs),
    );
    let (publish_capability, capability) = watch::channel(None);

    let (h, dir) = (hal.clone(), config.state_dir.clone());
    let first = crate::runtime::blocking(move || HardwareSnapshot::collect(&h, &dir)).await;
    let boot_id = first
        .system
        .as_ref()
        .map_or_else(|| "unknown".to_owned(), |s| s.boot_id.clone());
    let (publish, snapshot) = watch::channel(Arc::new(first));

    let bridge = match config.pairing.listen {
        Some(addr) => {
            systemd::status("starting: reading the pairing state");
            let files = BridgeFiles::in_dir(&config.state_dir);
            let for_code = files.clone();
            let code = crate::runtime::blocking(move || for_code.setup_code()).await?;
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| AgentError::Listen { addr, source })?;
            let status: BridgeStatus = Arc::default();
            Some((files, code, listener, status))
        }
        None => None,
    };

    let network = match &config.network.hub {
        Some(hub) => {
            systemd::status("starting: opening the report queue");
            let client = HubClient::new(&hub.url, &hub.ca_cert)?;
            let (path, id, bounds) = (
                config.state_dir.join("outbox.db"),
                identity.clone(),
                Bounds {
                    max_reports: config.network.queue_max_reports,
                    max_age: config.network.queue_max_age,
                },
            );
            let outbox =
                crate::runtime::blocking(move || Outbox::open(&path, id, boot_id, bounds)).await?;
            let status: NetworkStatus = Arc::new(std::sync::Mutex::new(NetworkView {
                hub: hub.url.clone(),
                ..NetworkView::default()
            }));
            Some((client, NetworkHandle { outbox, status }))
        }
        None => None,
    };
    let state = Arc::new(AgentState {
        device_id,
        public_key: identity
            .public_key()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
        identity_key: identity.uri().to_string(),
        started: tokio::time::Instant::now(),
        started_wall: SystemTime::now(),
        gpu,
        snapshot,
        samples: 1.into(),
        capability,
        gpu_metrics,
        scheduler: scheduler_handle.clone(),
        network: network.as_ref().map(|(_, handle)| handle.clone()),
        pairing: bridge.as_ref().map(|(.., status)| status.clone()),
    });

    let status = StatusServer::bind(&config.status, state.clone()).await?;
    let endpoints = status.endpoints().join(", ");
    let mut sigterm = signal(SignalKind::terminate()).map_err(|e| task_error("signals", e))?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(|e| task_error("signals", e))?;

    let shutdown = CancellationToken::new();
    let shutdown_for_capability = shutdown.clone();
    let tracker = TaskTracker::new();
    let (failures, mut failed) = mpsc::channel(8);
    let progress = Progress::new();
    let monitor = Monitor {
        hal: hal.clone(),
        state_dir: config.state_dir.clone(),
        interval: config.sample_interval,
        publish,
        progress: progress.clone(),
        state: state.clone(),
    };
    spawn_task(
        &tracker,
        &failures,
        "monitor",
        monitor.run(shutdown.clone()),
    );
    spawn_task(&tracker, &failures, "status", status.run(shutdown.clone()));
    spawn_task(
        &tracker,
        &failures,
        "scheduler",
        scheduler.run(shutdown.clone()),
    );
    let capability = CapabilityTask {
        scheduler: scheduler_handle,
        cache: config.state_dir.join("capability.json"),
        gpu: state.gpu.clone(),
        publish: publish_capability,
        measure: config.gpu.measure_capability,
    };
    // A failed measurement is logged and shown as no capability; it does not stop the agent.
    tracker.spawn(async move {
        if let Err(e) = capability.run(shutdown_for_capability).await {
            tracing::error!(error = %e, "GPU capability benchmark failed");
        }
    });
    if let (Some((client, handle)), Some(hub)) = (network, &config.network.hub) {
        spawn_network_tasks(
            &tracker,
            &failures,
            &shutdown,
            NetworkParts {
                client,
                identity: identity.clone(),
                handle,
                owner_token: hub.owner_token.clone(),
                state: state.clone(),
                clock: hal.clock.clone(),
            },
            &config.network,
        );
    }
    if let Some((files, code, listener, status)) = bridge {
        let (button, pressed) = mpsc::channel(1);
        // Two sources open the pairing window: the button's input device, if configured, and
        // SIGUSR1 (`systemctl kill -s USR1 edge-agent`) always.
        if let Some(wanted) = &config.pairing.button {
            let (buttons, device, key) = (hal.buttons.clone(), wanted.device.clone(), wanted.key);
            match crate::runtime::blocking(move || buttons.open(&device, key)).await {
                Ok(opened) => {
                    tracing::info!(device = %wanted.device.display(), key, "pairing button ready");
                    let (device, stop) = (wanted.device.clone(), shutdown.clone());
                    let button = button.clone();
                    tracker.spawn_blocking(move || forward_button(opened, &device, &button, &stop));
                }
                Err(e) => tracing::warn!(
                    error = %e,
                    "pairing button unavailable; SIGUSR1 still opens the pairing window"
                ),
            }
        }
        let mut sigusr1 =
            signal(SignalKind::user_defined1()).map_err(|e| task_error("signals", e))?;
        let stop = shutdown.clone();
        tracker.spawn(async move {
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    Some(()) = sigusr1.recv() => { let _ = button.try_send(()); }
                }
            }
        });
        let task = BridgeTask {
            listener,
            identity: identity.clone(),
            files,
            code,
            state: state.clone(),
            hal: hal.clone(),
            config_path: invocation.config_path.clone(),
            cwd: invocation.cwd.clone(),
            state_dir: config.state_dir.clone(),
            mdns: config.pairing.mdns,
            ble: config.pairing.ble,
        };
        spawn_task(
            &tracker,
            &failures,
            "pairing",
            task.run(status, pressed, shutdown.clone()),
        );
    }
    if let Some(interval) = systemd::watchdog_interval() {
        // Alive means a sample within two intervals (plus slack for a slow one).
        let max_age = config.sample_interval * 2 + std::time::Duration::from_secs(5);
        let dog = Watchdog::systemd(interval, max_age, progress);
        spawn_task(&tracker, &failures, "watchdog", dog.run(shutdown.clone()));
    }

    let running = format!("running: device {device_id}, status on {endpoints}");
    tracing::info!(%device_id, %endpoints, "ready");
    systemd::notify(&[NotifyState::Ready, NotifyState::Status(&running)]);

    let result = tokio::select! {
        _ = sigterm.recv() => { tracing::info!("SIGTERM: stopping"); Ok(()) }
        _ = sigint.recv() => { tracing::info!("SIGINT: stopping"); Ok(()) }
        Some((task, message)) = failed.recv() => Err(AgentError::Task { task, message }),
    };

    systemd::notify(&[
        NotifyState::Stopping,
        NotifyState::Status("stopping: draining tasks"),
    ]);
    shutdown.cancel();
    tracker.close();
    let drained = tokio::time::timeout(config.shutdown_grace, tracker.wait()).await;
    result?;
    if drained.is_err() {
        tracing::error!(grace = ?config.shutdown_grace, "tasks still running after the grace period");
        return Ok(Exit::DrainTimeout);
    }
    tracing::info!("stopped");
    Ok(Exit::Ok)
}

/// Sends each press of `button` to `pressed` until shutdown, the bridge is gone, or the device
/// ends. Runs on a blocking thread; the wait's timeout bounds how late it sees shutdown.
fn forward_button(
    mut button: Box<dyn Button>,
    device: &Path,
    pressed: &mpsc::Sender<()>,
    stop: &CancellationToken,
) {
    let device = device.display();
    while !stop.is_cancelled() && !pressed.is_closed() {
        match button.wait(std::time::Duration::from_millis(250)) {
            Ok(Wait::Pressed) => {
                tracing::info!(%device, "pairing button pressed");
                let _ = pressed.try_send(());
            }
            Ok(Wait::TimedOut) => {}
            Ok(Wait::Ended) => {
                tracing::warn!(%device, "pairing button input ended; SIGUSR1 still opens the pairing window");
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "pairing button failed; SIGUSR1 still opens the pairing window");
                return;
            }
        }
    }
}

/// What the network tasks share.
struct NetworkParts {
    client: HubClient,
    identity: Arc<Identity>,
    handle: NetworkHandle,
    owner_token: String,
    state: Arc<AgentState>,
    clock: Arc<dyn Clock>,
}

/// Delivery, heartbeats and capability reports.
fn spawn_network_tasks(
    tracker: &TaskTracker,
    failures: &mpsc::Sender<(&'static str, String)>,
    shutdown: &CancellationToken,
    parts: NetworkParts,
    config: &NetworkConfig,
) {
    let NetworkParts {
        client,
        identity,
        handle: NetworkHandle { outbox, status },
        owner_token,
        state,
        clock,
    } = parts;
    let (echo_urls, echo_urls_rx) = watch::channel(Vec::new());
    let (registered, registered_rx) = watch::channel(false);
    let delivery = DeliveryTask {
        outbox: outbox.clone(),
        client: client.clone(),
        owner_token,
        batch_size: config.batch_size,
        backoff_max: config.backoff_max,
        configured_echo_urls: config.echo_urls.clone(),
        echo_urls,
        registered,
        status: status.clone(),
        clock: clock.clone(),
    };
    spawn_task(
        tracker,
        failures,
        "delivery",
        delivery.run(shutdown.clone()),
    );
    let heartbeat = HeartbeatTask {
        outbox: outbox.clone(),
        state: state.clone(),
        interval: config.heartbeat_interval,
        clock: clock.clone(),
    };
    spawn_task(
        tracker,
        failures,
        "heartbeat",
        heartbeat.run(shutdown.clone()),
    );
    if config.accept_jobs {
        let intake = IntakeTask {
            client: client.clone(),
            identity,
            scheduler: state.scheduler.clone(),
            outbox: outbox.clone(),
            registered: registered_rx,
            clock: clock.clone(),
        };
        spawn_task(
            tracker,
            failures,
            "job-intake",
            intake.run(shutdown.clone()),
        );
    }
    let capability = CapabilityReportTask {
        outbox,
        client,
        state,
        echo_urls: echo_urls_rx,
        bandwidth: config.bandwidth.clone(),
        ip_check_interval: config.ip_check_interval,
        interval: config.capability_interval,
        status,
        clock,
    };
    spawn_task(
        tracker,
        failures,
        "capability-report",
        capability.run(shutdown.clone()),
    );
}

impl From<&GpuConfig> for Policy {
    fn from(gpu: &GpuConfig) -> Self {
        Self {
            queue_capacity: gpu.queue_capacity,
            memory_budget: gpu.memory_budget,
            max_duty: gpu.max_duty,
            allowed_hours_utc: gpu.allowed_hours_utc,
            pause_above_celsius: gpu.pause_above_celsius,
            resume_below_celsius: gpu.resume_below_celsius,
            idle_release: gpu.idle_release,
        }
    }
}

fn task_error(task: &'static str, e: impl Display) -> AgentError {
    AgentError::Task {
        task,
        message: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[tokio::test]
    async fn button_presses_reach_the_bridge_until_the_device_ends() {
        let buttons = edge_hal::fake::FakeButtons::default();
        let button =
            edge_hal::Buttons::open(&buttons, Path::new("/dev/input/event2"), 218).expect("open");
        let (tx, mut rx) = mpsc::channel(1);
        let stop = CancellationToken::new();
        let thread = tokio::task::spawn_blocking(move || {
            forward_button(button, Path::new("/dev/input/event2"), &tx, &stop);
        });
        assert_eq!(buttons.press(), 1);
        assert_eq!(rx.recv().await, Some(()));
        buttons.unplug();
        tokio::time::timeout(std::time::Duration::from_secs(5), thread)
            .await
            .expect("the thread ends with the device")
            .expect("no panic");
        assert_eq!(rx.recv().await, None, "and drops its sender");
    }

    #[test]
    fn a_state_dir_others_can_write_is_refused_naming_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = dir.path().join("state");
        create_state_dir(&state).expect("fresh dir is made");
        let mode = std::fs::metadata(&state)
            .expect("stat")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o700);
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        let err = create_state_dir(&state).expect_err("world-writable");
        let text = err.to_string();
        assert!(
            text.contains(&state.display().to_string()) && text.contains("0777"),
            "{text}"
        );
        assert_eq!(err.exit(), Exit::CannotCreate);
    }
}
