//! `edge-agent`: parse the command line, load the config (exit 64 if invalid), set up logging,
//! then run the daemon or a one-shot command.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use edge_agent::config::{self, LogFormat};
use edge_agent::exit::Exit;
use edge_agent::{app, commands, logging};
use edge_hal::Hal;

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
    /// Validate and run one GPU job, then print its signed receipt as JSON.
    RunJob {
        /// A job file (docs/jobs.md), or builtin:hash_chain[:COUNT], builtin:copy[:BYTES],
        /// builtin:fma_peak[:WORKGROUPS], builtin:sgemm[:N], builtin:runaway[:LIMIT_MS].
        job: String,
        /// Write the job's outputs (its read_write bindings, in order) to this file.
        #[arg(long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Ask the running agent for its status (JSON) or metrics.
    Status {
        /// Print /metrics instead of /status.
        #[arg(long)]
        metrics: bool,
        /// Ask over loopback TCP instead of the configured Unix socket.
        #[arg(long, value_name = "ADDR")]
        tcp: Option<SocketAddr>,
    },
    /// Measure the public address and the bandwidth to the configured hub; print them as JSON.
    Measure {
        /// Only the address.
        #[arg(long)]
        no_bandwidth: bool,
    },
    /// Print the pairing code (manual code, QR payload, QR code), made on first use.
    PairingCode {
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
    /// Erase the owner, the owner's settings, Wi-Fi credentials and pairing state; keep the
    /// identity. The agent must be stopped.
    FactoryReset,
    /// Ask a GPU worker, started as the agent starts it, what it can and cannot do (its user,
    /// capabilities, system-call filter; opening the identity key, a socket, tracing the agent);
    /// print it as JSON, exit 1 when it could do any of the three.
    Sandbox,
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
    for problem in &config.owner_ignored {
        tracing::warn!(%problem, "an owner setting is left out");
    }
    let mut hal = Hal::linux();
    if let Some(socket) = &config.gpu.worker_socket {
        hal.gpu = std::sync::Arc::new(edge_hal::IsolatedProbe {
            launch: edge_hal::gpu::WorkerLaunch::Socket(socket.clone()),
            timeout: edge_hal::gpu::PROBE_TIMEOUT,
        });
    }
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
            .block_on(app::run(
                config,
                hal,
                app::Invocation {
                    gpu_worker: edge_hal::gpu::worker_beside_this_program(),
                    config_path: cli.config.clone(),
                    cwd: cwd.clone(),
                },
            ))
            .unwrap_or_else(|e| {
                tracing::error!(error = %e, "edge-agent stopped");
                eprintln!("edge-agent: {e}");
                e.exit()
            }),
        Command::Check => commands::check(&config, &hal),
        Command::Info => commands::info(&config, &hal),
        Command::Id => commands::id(&config, &hal),
        Command::RunJob { job, output } => {
            runtime.block_on(commands::run_job(&config, &hal, &job, output.as_deref()))
        }
        Command::Status { metrics, tcp } => {
            runtime.block_on(commands::status(&config, metrics, tcp))
        }
        Command::Measure { no_bandwidth } => {
            runtime.block_on(commands::measure(&config, &hal, no_bandwidth))
        }
        Command::PairingCode { json } => commands::pairing_code(&config, &hal, json),
        Command::FactoryReset => commands::factory_reset(&config, &hal),
        Command::Sandbox => runtime.block_on(commands::sandbox(&config)),
    };
    exit.into()
}
