//! `edge-agent`: parse the command line, load the config (exit 64 if invalid), set up logging,
//! then run the daemon or a one-shot command.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use edge_agent::client::{self, Endpoint};
use edge_agent::config::{self, LogFormat};
use edge_agent::exit::Exit;
use edge_agent::snapshot::HardwareSnapshot;
use edge_agent::{app, check, jobs, logging};
use edge_hal::{GpuProbe, Hal, IsolatedProbe};

#[derive(Parser)]
#[command(
    name = "edge-agent",
    version,
    about = "The edge box agent: GPU compute, bandwidth and IP for the network"
)]
struct Cli {
    /// Config file; its `config.d/*.toml` drop-ins are read too [default: /etc/edge-agent/config.toml,
    /// or embedded defaults when that does not exist].
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Log format, overriding the config: auto, text, json or journald.
    #[arg(long, global = true, value_name = "FORMAT", value_parser = clap::builder::ValueParser::new(str::parse::<LogFormat>))]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon (the default).
    Run,
    /// Diagnose config, key, state directory, clock, GPU, network and DNS; exit 1 on a failure.
    Check,
    /// Print the hardware snapshot and GPU as JSON.
    Info,
    /// Print the device id, making the identity key on first use.
    Id,
    /// Ask the running agent for its status (JSON) or metrics.
    /// Validate and run one GPU job, then print its signed receipt as JSON.
    RunJob {
        /// A job file (docs/jobs.md), or builtin:hash_chain[:COUNT], builtin:copy[:BYTES],
        /// builtin:fma_peak[:WORKGROUPS], builtin:sgemm[:N], builtin:runaway[:LIMIT_MS].
        job: String,
        /// Write the job's outputs (its read_write bindings, in order) to this file.
        #[arg(long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Serve GPU jobs on stdin/stdout (run by the agent itself; see edge_gpu::worker).
    #[command(hide = true)]
    GpuWorker {
        /// The content-addressed blob store.
        #[arg(long, value_name = "DIR")]
        blobs: PathBuf,
    },
    /// Discover the GPU in this process and print the result as JSON (run by the agent itself,
    /// so that the Vulkan driver is never loaded into the daemon).
    #[command(hide = true)]
    ProbeGpu,
    Status {
        /// Print /metrics instead of /status.
        #[arg(long)]
        metrics: bool,
        /// Ask over loopback TCP instead of the configured Unix socket.
        #[arg(long, value_name = "ADDR")]
        tcp: Option<SocketAddr>,
    },
}

/// This binary, for the child processes the agent runs (GPU probe, GPU worker).
fn self_exe() -> PathBuf {
    std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/proc/self/exe"))
}

/// The real device, with GPU discovery in a child process (`edge-agent probe-gpu`).
fn hal() -> Hal {
    let mut hal = Hal::linux();
    hal.gpu = Arc::new(IsolatedProbe {
        command: vec![self_exe().into(), "probe-gpu".into()],
        timeout: Duration::from_secs(30),
    });
    hal
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
    let config = match config::load(cli.config.as_deref(), &cwd) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("edge-agent: {e}");
            return Exit::Config.into();
        }
    };
    let command = cli.command.unwrap_or(Command::Run);
    let daemon = matches!(command, Command::Run);
    // One-shot commands print their answer on stdout; their logs stay quiet unless asked.
    let level = if daemon {
        config.log.level.as_str()
    } else {
        "warn"
    };
    logging::init(cli.log_format.unwrap_or(config.log.format), level);
    let hal = hal();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("edge-agent: cannot start the async runtime: {e}");
            return Exit::Failed.into();
        }
    };
    let exit = match command {
        Command::Run => runtime
            .block_on(app::run(config, hal, self_exe()))
            .unwrap_or_else(|e| {
                tracing::error!(error = %e, "edge-agent stopped");
                eprintln!("edge-agent: {e}");
                e.exit()
            }),
        Command::Check => {
            let lines = check::run(&config, &hal, std::path::Path::new("/etc/resolv.conf"));
            lines.iter().for_each(|l| println!("{l}"));
            let failed = lines.iter().any(|l| l.level == check::Level::Fail);
            if failed { Exit::Failed } else { Exit::Ok }
        }
        Command::Info => {
            let dir = config
                .state_dir
                .ancestors()
                .find(|p| p.exists())
                .unwrap_or(&config.state_dir);
            let info = serde_json::json!({
                "hardware": HardwareSnapshot::collect(&hal, dir),
                "gpu": hal.gpu.discover(),
            });
            println!(
                "{}",
                serde_json::to_string_pretty(&info).unwrap_or_default()
            );
            Exit::Ok
        }
        Command::Id => match app::create_state_dir(&config.state_dir).and_then(|()| {
            hal.keys
                .open_or_create(&config.identity_key)
                .map_err(Into::into)
        }) {
            Ok(id) => {
                println!("{}", id.device_id());
                Exit::Ok
            }
            Err(e) => {
                eprintln!("edge-agent: {e}");
                e.exit()
            }
        },
        Command::RunJob { job, output } => {
            let identity = app::create_state_dir(&config.state_dir).and_then(|()| {
                hal.keys
                    .open_or_create(&config.identity_key)
                    .map_err(Into::into)
            });
            let identity = match identity {
                Ok(identity) => identity,
                Err(e) => {
                    eprintln!("edge-agent: {e}");
                    return e.exit().into();
                }
            };
            let blobs = config.state_dir.join("blobs");
            let ran = jobs::load(&job).and_then(|job| {
                jobs::run(
                    job,
                    &identity,
                    config.gpu.memory_budget,
                    &blobs,
                    output.as_deref(),
                )
            });
            match ran {
                Ok(receipt) => {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&receipt).unwrap_or_default()
                    );
                    Exit::Ok
                }
                Err(e) => {
                    eprintln!("edge-agent: {e}");
                    // A runaway kernel may still occupy the driver: leave without teardown.
                    std::process::exit(Exit::Failed as i32);
                }
            }
        }
        Command::GpuWorker { blobs } => {
            let store = edge_gpu::job::BlobStore { dir: blobs };
            let served =
                edge_gpu::worker::serve(std::io::stdin().lock(), std::io::stdout().lock(), &store);
            if let Err(e) = served {
                eprintln!("edge-agent gpu-worker: {e}");
            }
            // A runaway dispatch may still hold the driver: leave without teardown.
            std::process::exit(0);
        }
        Command::ProbeGpu => {
            let status = edge_hal::WgpuProbe::default().discover();
            println!("{}", serde_json::to_string(&status).unwrap_or_default());
            Exit::Ok
        }
        Command::Status { metrics, tcp } => {
            let endpoint = match (tcp, &config.status.socket, config.status.tcp) {
                (Some(addr), _, _) => Endpoint::Tcp(addr),
                (None, Some(path), _) => Endpoint::Unix(path.clone()),
                (None, None, Some(addr)) => Endpoint::Tcp(addr),
                (None, None, None) => {
                    eprintln!("edge-agent: the status endpoint is disabled in the config");
                    return Exit::Failed.into();
                }
            };
            let path = if metrics { "/metrics" } else { "/status" };
            match runtime.block_on(client::get(&endpoint, path)) {
                Ok(body) => {
                    print!("{body}");
                    if !body.ends_with('\n') {
                        println!();
                    }
                    Exit::Ok
                }
                Err(e) => {
                    eprintln!("edge-agent: {e}");
                    Exit::Failed
                }
            }
        }
    };
    exit.into()
}
