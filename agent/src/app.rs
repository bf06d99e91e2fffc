//! The daemon's wiring. [`App::build`] does everything that can fail at start-up, in order, and
//! returns the parts unstarted (a test builds it against `hal::fake` and looks inside);
//! [`App::spawn`] starts every task on one tracked set ([`edge_tasks::Tasks`]);
//! [`Drain::until_stopped`] waits for a signal or a failed task, then drains within the grace
//! period. Nothing imports this module: it imports everything.

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::SystemTime;

use edge_hal::{Button, Hal, Wait};
use edge_identity::{DeviceId, Identity};
use edge_jobs::adapter::GpuStatus;
use edge_jobs::job::BlobStore;
use edge_mobile_bridge::setup_code::SetupCode;
use edge_protocol::report::Compute;
use edge_tasks::{Failures, Tasks};
use sd_notify::NotifyState;
use tokio::net::TcpListener;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, GpuConfig};
use crate::exit::{AgentError, Exit};
use crate::gpu::capability::CapabilityTask;
use crate::gpu::scheduler::{GpuMetrics, Policy, Scheduler, SchedulerParts};
use crate::gpu::worker::GpuWorker;
use crate::host::lock::StateLock;
use crate::host::monitor::Monitor;
use crate::host::progress::Progress;
use crate::host::snapshot::HardwareSnapshot;
use crate::host::systemd::{self, Watchdog};
use crate::host::{reserve, state_dir};
use crate::network::NetworkHandle;
use crate::network::binding::Binding;
use crate::network::delivery::NetworkStatus;
use crate::network::outbox::{Bounds, LOW_SPACE, Outbox};
use crate::network::supervisor::NetworkSupervisor;
use crate::network::telemetry::Sources;
use crate::pairing::{BridgeFiles, BridgeStatus, BridgeTask, ButtonEvent, Control};
use crate::status::report::AgentState;
use crate::status::server::StatusServer;

/// How the agent was started: what it needs besides the config.
#[derive(Debug, Clone)]
pub struct Invocation {
    /// The GPU worker binary (`edge-gpu-worker`, installed beside the agent), unless the config
    /// names a socket to reach it on (`gpu.worker_socket`).
    pub gpu_worker: PathBuf,
    /// `--config`, if given (the owner's config changes are validated against the same files).
    pub config_path: Option<PathBuf>,
    /// The working directory relative paths were resolved against.
    pub cwd: PathBuf,
}

/// The agent, built and not yet started: the state directory locked, the identity open, the GPU
/// discovered, the queue open, the listeners bound.
pub struct App {
    config: Config,
    hal: Hal,
    invocation: Invocation,
    lock: StateLock,
    identity: Arc<Identity>,
    state: Arc<AgentState>,
    scheduler: Scheduler,
    publish_snapshot: watch::Sender<Arc<HardwareSnapshot>>,
    publish_capability: watch::Sender<Option<Compute>>,
    status: StatusServer,
    network: Option<NetworkHandle>,
    binding: Binding,
    bridge: Option<BridgeParts>,
}

/// The owner's bridge, read and bound at start-up.
struct BridgeParts {
    files: BridgeFiles,
    code: SetupCode,
    listener: TcpListener,
    status: BridgeStatus,
}

/// The running agent: its tasks, and what ends them.
pub struct Drain {
    tasks: Tasks,
    failures: Failures,
    sigterm: Signal,
    sigint: Signal,
    grace: std::time::Duration,
    // Held until the drain ends, so a second agent cannot start on the same state meanwhile.
    _lock: StateLock,
}

/// Builds, starts and runs the agent until SIGTERM/SIGINT or a task fails.
pub async fn run(config: Config, hal: Hal, invocation: Invocation) -> Result<Exit, AgentError> {
    App::build(config, hal, invocation)
        .await?
        .spawn()?
        .until_stopped()
        .await
}

impl App {
    /// Everything that can fail at start-up, in order, with nothing started yet.
    pub async fn build(
        config: Config,
        hal: Hal,
        invocation: Invocation,
    ) -> Result<Self, AgentError> {
        systemd::status("starting: preparing state directory");
        state_dir::create(&config.state_dir).map_err(AgentError::StateDir)?;
        let lock = StateLock::acquire(&config.state_dir)?;
        let dir = config.state_dir.clone();
        edge_tasks::blocking(move || reserve::ensure(&dir)).await;

        systemd::status("starting: opening identity key");
        let (keys, uri) = (hal.keys.clone(), config.identity_key.clone());
        let identity = Arc::new(edge_tasks::blocking(move || keys.open_or_create(&uri)).await?);
        let device_id = identity.device_id();
        tracing::info!(%device_id, key = %identity.uri(), "identity loaded");

        systemd::status("starting: probing GPU");
        let probe = hal.gpu.clone();
        let gpu = edge_tasks::blocking(move || probe.discover()).await;
        match &gpu {
            GpuStatus::Available(info) => {
                tracing::info!(adapter = %info.name, driver = %info.driver_info, "GPU found");
            }
            GpuStatus::Unavailable { reason } => tracing::warn!(%reason, "no GPU"),
        }

        let blobs = crate::config::blobs_dir(&config.state_dir);
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
            GpuWorker::new(crate::gpu::worker::launch(
                config.gpu.worker_socket.as_deref(),
                &invocation.gpu_worker,
                &blobs,
            )),
        );
        let (publish_capability, capability) = watch::channel(None);

        let (h, dir) = (hal.clone(), config.state_dir.clone());
        let first = edge_tasks::blocking(move || HardwareSnapshot::collect(&h, &dir)).await;
        let boot_id = first
            .system
            .as_ref()
            .map_or_else(|| "unknown".to_owned(), |s| s.boot_id.clone());
        let (publish_snapshot, snapshot) = watch::channel(Arc::new(first));

        let bridge = match config.pairing.listen {
            Some(addr) => {
                systemd::status("starting: reading the pairing state");
                let files = BridgeFiles::in_dir(&config.state_dir);
                let for_code = files.clone();
                let code = edge_tasks::blocking(move || for_code.setup_code()).await?;
                let listener = TcpListener::bind(addr)
                    .await
                    .map_err(|source| AgentError::Listen { addr, source })?;
                Some(BridgeParts {
                    files,
                    code,
                    listener,
                    status: Arc::default(),
                })
            }
            None => None,
        };

        let binding = Binding::open(&config.state_dir, config.network.hub.as_ref())?;
        // The queue is opened where the box reports or may be bound to a network by its owner.
        let network = if binding.current().is_some() || bridge.is_some() {
            systemd::status("starting: opening the report queue");
            let (path, id, clock) = (
                config.state_dir.join("outbox.db"),
                identity.clone(),
                hal.clock.clone(),
            );
            let bounds = Bounds {
                max_reports: config.network.queue_max_reports,
                max_age: config.network.queue_max_age,
                min_free_bytes: LOW_SPACE,
            };
            let outbox =
                edge_tasks::blocking(move || Outbox::open(&path, id, boot_id, bounds, clock)).await;
            let status: NetworkStatus = Arc::default();
            Some(NetworkHandle { outbox, status })
        } else {
            None
        };
        let state = Arc::new(AgentState {
            device_id,
            public_key: edge_identity::hex::encode(identity.public_key()),
            identity_key: identity.uri().to_string(),
            started: tokio::time::Instant::now(),
            started_wall: SystemTime::now(),
            // The first sample was taken above.
            samples: Arc::new(AtomicU64::new(1)),
            sources: Sources {
                snapshot,
                capability,
                gpu,
                gpu_metrics,
            },
            scheduler: scheduler_handle,
            network: network.clone(),
            pairing: bridge.as_ref().map(|b| b.status.clone()),
            owner_ignored: config
                .owner_ignored
                .iter()
                .map(ToString::to_string)
                .collect(),
        });
        let status = StatusServer::bind(&config.status, state.clone()).await?;
        Ok(Self {
            config,
            hal,
            invocation,
            lock,
            identity,
            state,
            scheduler,
            publish_snapshot,
            publish_capability,
            status,
            network,
            binding,
            bridge,
        })
    }

    /// The device id of the identity opened.
    pub fn device_id(&self) -> DeviceId {
        self.state.device_id
    }

    /// Where the status endpoint listens.
    pub fn status_endpoints(&self) -> Vec<String> {
        self.status.endpoints()
    }

    /// Starts every task; `READY=1` is sent once they are spawned.
    pub fn spawn(self) -> Result<Drain, AgentError> {
        let Self {
            config,
            hal,
            invocation,
            lock,
            identity,
            state,
            scheduler,
            publish_snapshot,
            publish_capability,
            status,
            network,
            binding,
            bridge,
        } = self;
        let signal_error = |e: std::io::Error| AgentError::Task {
            task: "signals",
            message: e.to_string(),
        };
        let sigterm = signal(SignalKind::terminate()).map_err(signal_error)?;
        let sigint = signal(SignalKind::interrupt()).map_err(signal_error)?;
        let endpoints = status.endpoints().join(", ");
        let (tasks, failures) = Tasks::new();
        let shutdown = tasks.shutdown();

        let progress = Progress::new();
        let monitor = Monitor {
            hal: hal.clone(),
            state_dir: config.state_dir.clone(),
            interval: config.sample_interval,
            publish: publish_snapshot,
            progress: progress.clone(),
            samples: state.samples.clone(),
        };
        tasks.spawn("monitor", monitor.run(shutdown.clone()));
        tasks.spawn("status", status.run(shutdown.clone()));
        tasks.spawn("scheduler", scheduler.run(shutdown.clone()));
        let capability = CapabilityTask {
            scheduler: state.scheduler.clone(),
            cache: config.state_dir.join("capability.json"),
            gpu: state.sources.gpu.clone(),
            publish: publish_capability,
            measure: config.gpu.measure_capability,
        };
        // A failed measurement is logged and shown as no capability; it does not stop the agent.
        tasks.spawn_logged("gpu-capability", capability.run(shutdown.clone()));
        if let Some(handle) = network {
            let supervisor = NetworkSupervisor {
                network: config.network.clone(),
                handle,
                sources: state.sources.clone(),
                scheduler: state.scheduler.clone(),
                identity: identity.clone(),
                clock: hal.clock.clone(),
                hub: binding.subscribe(),
                grace: config.shutdown_grace,
                blobs: crate::config::blobs_dir(&config.state_dir),
            };
            tasks.spawn("network", supervisor.run(tasks.clone()));
        }
        if let Some(parts) = bridge {
            let pressed = pairing_button(&tasks, &config, &hal)?;
            let task = BridgeTask {
                listener: parts.listener,
                identity: identity.clone(),
                files: parts.files,
                code: parts.code,
                control: Control {
                    hal: hal.clone(),
                    identity,
                    status: state.clone(),
                    scheduler: state.scheduler.clone(),
                    config_path: invocation.config_path,
                    cwd: invocation.cwd,
                    state_dir: config.state_dir.clone(),
                    binding,
                },
                tasks: tasks.clone(),
                mdns: config.pairing.mdns,
                ble: config.pairing.ble,
            };
            tasks.spawn("pairing", task.run(parts.status, pressed, shutdown.clone()));
        }
        if let Some(interval) = systemd::watchdog_interval() {
            // Alive means a sample within two intervals (plus slack for a slow one).
            let max_age = config.sample_interval * 2 + std::time::Duration::from_secs(5);
            let dog = Watchdog::systemd(interval, max_age, progress);
            tasks.spawn("watchdog", dog.run(shutdown));
        }

        let device_id = state.device_id;
        let running = format!("running: device {device_id}, status on {endpoints}");
        tracing::info!(%device_id, %endpoints, "ready");
        systemd::notify(&[NotifyState::Ready, NotifyState::Status(&running)]);
        Ok(Drain {
            tasks,
            failures,
            sigterm,
            sigint,
            grace: config.shutdown_grace,
            _lock: lock,
        })
    }
}

impl Drain {
    /// Waits for SIGTERM, SIGINT or the first failed task, then cancels every task and waits for
    /// them within the grace period.
    pub async fn until_stopped(mut self) -> Result<Exit, AgentError> {
        let result = tokio::select! {
            _ = self.sigterm.recv() => { tracing::info!("SIGTERM: stopping"); Ok(()) }
            _ = self.sigint.recv() => { tracing::info!("SIGINT: stopping"); Ok(()) }
            failed = self.failures.next() => Err(AgentError::Task { task: failed.task, message: failed.message }),
        };
        systemd::notify(&[
            NotifyState::Stopping,
            NotifyState::Status("stopping: draining tasks"),
        ]);
        let drained = self.tasks.drain(self.grace).await;
        result?;
        if let Err(still) = drained {
            tracing::error!(grace = ?self.grace, tasks = still.tasks, "tasks still running after the grace period");
            return Ok(Exit::DrainTimeout);
        }
        tracing::info!("stopped");
        Ok(Exit::Ok)
    }
}

/// What opens the pairing window: the button's input device, if configured, and SIGUSR1
/// (`systemctl kill -s USR1 edge-agent`) always; and what resets the box: the button held. Both
/// are tasks of the set.
fn pairing_button(
    tasks: &Tasks,
    config: &Config,
    hal: &Hal,
) -> Result<mpsc::Receiver<ButtonEvent>, AgentError> {
    let (button, pressed) = mpsc::channel(1);
    if let Some(wanted) = &config.pairing.button {
        // Opening an input device is a quick syscall; the wait for presses is what blocks.
        match hal.buttons.open(&wanted.device, wanted.key) {
            Ok(opened) => {
                tracing::info!(device = %wanted.device.display(), key = wanted.key, "pairing button ready");
                let (device, stop, button) =
                    (wanted.device.clone(), tasks.shutdown(), button.clone());
                tasks.spawn_blocking("pairing-button", move || {
                    forward_button(opened, &device, &button, &stop)
                });
            }
            Err(e) => tracing::warn!(
                error = %e,
                "pairing button unavailable; SIGUSR1 still opens the pairing window"
            ),
        }
    }
    let mut sigusr1 = signal(SignalKind::user_defined1()).map_err(|e| AgentError::Task {
        task: "signals",
        message: e.to_string(),
    })?;
    let stop = tasks.shutdown();
    tasks.spawn_logged("sigusr1", async move {
        loop {
            tokio::select! {
                () = stop.cancelled() => return Ok::<_, Infallible>(()),
                Some(()) = sigusr1.recv() => { let _ = button.try_send(ButtonEvent::Pressed); }
            }
        }
    });
    Ok(pressed)
}

/// Sends each press and hold of `button` to `pressed` until shutdown, the bridge is gone, or the
/// device ends. Runs on a blocking thread; the wait's timeout bounds how late it sees shutdown.
fn forward_button(
    mut button: Box<dyn Button>,
    device: &Path,
    pressed: &mpsc::Sender<ButtonEvent>,
    stop: &CancellationToken,
) {
    let device = device.display();
    while !stop.is_cancelled() && !pressed.is_closed() {
        match button.wait(std::time::Duration::from_millis(250)) {
            Ok(Wait::Pressed) => {
                tracing::info!(%device, "pairing button pressed");
                let _ = pressed.try_send(ButtonEvent::Pressed);
            }
            Ok(Wait::Held) => {
                tracing::warn!(%device, hold = ?edge_hal::button::RESET_HOLD, "pairing button held: factory reset");
                // Never dropped, unlike a press the bridge has not taken yet.
                let _ = pressed.blocking_send(ButtonEvent::Held);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedulers_default_policy_is_the_embedded_defaults() {
        let config = crate::config::from_str("", std::path::Path::new("/")).expect("defaults");
        assert_eq!(Policy::from(&config.gpu), Policy::default());
    }

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
        assert_eq!(rx.recv().await, Some(ButtonEvent::Pressed));
        assert_eq!(buttons.hold(), 1);
        assert_eq!(rx.recv().await, Some(ButtonEvent::Held));
        buttons.unplug();
        tokio::time::timeout(std::time::Duration::from_secs(5), thread)
            .await
            .expect("the thread ends with the device")
            .expect("no panic");
        assert_eq!(rx.recv().await, None, "and drops its sender");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_app_builds_on_fakes_answers_status_and_drains_on_sigterm() {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("status.sock");
        let text = format!(
            "[agent]\nstate_dir = {:?}\n[status]\nsocket = {:?}\n",
            dir.path().join("state").display().to_string(),
            socket.display().to_string()
        );
        let config = crate::config::from_str(&text, dir.path()).expect("config");
        let invocation = Invocation {
            gpu_worker: dir.path().join("no-worker"),
            config_path: None,
            cwd: dir.path().to_owned(),
        };
        let app = App::build(config, Hal::fake(), invocation)
            .await
            .expect("builds on fakes");
        // Built and not started: the state is locked, the socket bound, the GPU probed.
        assert_eq!(
            app.status_endpoints(),
            [format!("unix:{}", socket.display())]
        );
        assert!(matches!(
            app.state.sources.gpu,
            GpuStatus::Unavailable { .. }
        ));
        assert!(app.network.is_none() && app.bridge.is_none());
        let device = app.device_id();
        let drain = app.spawn().expect("spawns");
        let endpoint = crate::status::client::Endpoint::Unix(socket);
        let status = crate::status::client::get(&endpoint, "/status")
            .await
            .expect("/status answers");
        assert!(status.contains(&device.to_string()), "{status}");
        // tokio's handler holds SIGTERM now: raising it reaches the drain, not the default action.
        nix::sys::signal::raise(nix::sys::signal::Signal::SIGTERM).expect("raise");
        let exit = tokio::time::timeout(std::time::Duration::from_secs(30), drain.until_stopped())
            .await
            .expect("drained within the grace period")
            .expect("a clean stop");
        assert_eq!(exit, Exit::Ok);
    }
}
