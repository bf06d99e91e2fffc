//! `edge-hub`: parse the command line, run one command.

use edge_hal::{Clock, SystemClock};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use edge_hub::{Limits, ServeConfig, db_path, inspect, pki, store};
use edge_tasks::Tasks;
use ring::rand::{SecureRandom, SystemRandom};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// The reference network service for edge agents (development, tests, fleet simulation).
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// The hub's directory: certificates, keys and the database.
    #[arg(long, global = true, default_value = "edge-hub")]
    dir: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Make the development CA and server certificate (agents pin `ca.pem`).
    Init {
        /// DNS names and IP addresses the server answers to (repeat); default localhost,
        /// 127.0.0.1 and ::1.
        #[arg(long = "name")]
        names: Vec<String>,
    },
    /// Serve the API over HTTPS (TLS 1.3).
    Serve {
        /// Address of the main listener: the API, including the first IP echo.
        #[arg(long, default_value = "127.0.0.1:8443")]
        listen: SocketAddr,
        /// Second listener, so devices see their address from two endpoints.
        #[arg(long, default_value = "127.0.0.1:8444")]
        echo_listen: SocketAddr,
        /// Echo URLs told to devices (repeat); default: one per listener.
        #[arg(long = "echo-url")]
        echo_urls: Vec<String>,
        /// Largest request body (uploads excepted), bytes.
        #[arg(long, default_value_t = 1 << 20)]
        max_body_bytes: usize,
        /// Requests per second per device, sustained.
        #[arg(long, default_value_t = 5.0)]
        rate: f64,
        /// Requests per device at once.
        #[arg(long, default_value_t = 20)]
        burst: u32,
        /// Requests per second per client address (IPv6: per /64), sustained; checked before
        /// any body is read or signature checked.
        #[arg(long, default_value_t = 50.0)]
        rate_per_address: f64,
        /// Requests per address at once.
        #[arg(long, default_value_t = 200)]
        burst_per_address: u32,
        /// Connections open at once, per listener.
        #[arg(long, default_value_t = 1024)]
        max_connections: usize,
        /// Seconds to receive a whole request body (uploads excepted).
        #[arg(long, default_value_t = 30)]
        body_timeout_secs: u64,
        /// Seconds a device has to send a job's result before it is handed out again.
        #[arg(long, default_value_t = 600)]
        job_lease_secs: u64,
        /// Days reports are kept.
        #[arg(long, default_value_t = 90)]
        retention_days: u64,
        /// Reports kept per device (its newest sequence numbers).
        #[arg(long, default_value_t = 1_000_000)]
        max_reports_per_device: u64,
        /// Run the hub's clock this many seconds ahead of the system's (negative: behind), to
        /// test devices whose clock is off.
        #[arg(long, default_value_t = 0, allow_hyphen_values = true)]
        clock_offset_secs: i64,
    },
    /// Owners, who devices are bound to.
    Owner {
        #[command(subcommand)]
        command: OwnerCommand,
    },
    Devices,
    /// Show one device: record, report counts, latest heartbeat and capability, signatures.
    Device {
        id: String,
    },
    Job {
        #[command(subcommand)]
        command: JobCommand,
    },
    /// Jobs' input blobs, each served to the device running a job that names it.
    Blob {
        #[command(subcommand)]
        command: BlobCommand,
    },
    /// Print every job as JSON lines, newest first: state, and the receipt's verification.
    Jobs,
    /// Print every stored report of a device as JSON lines, in sequence order.
    Reports {
        id: String,
    },
}

#[derive(Subcommand)]
enum JobCommand {
    /// Queue a job (format v1, docs/jobs.md) for a device; it takes it at its next poll.
    Submit {
        /// The device's id, 32 hex digits as `edge-hub devices` lists it.
        #[arg(long)]
        device: String,
        file: PathBuf,
    },
}

#[derive(Subcommand)]
enum BlobCommand {
    /// Add a file as a job input blob and print its SHA-256, the name a job gives it
    /// (`"input": {"sha256": "..."}`); devices fetch it from the hub when a job needs it.
    Add { file: PathBuf },
}

#[derive(Subcommand)]
enum OwnerCommand {
    /// Add an owner and print its binding token (shown once; the hub keeps only its hash).
    Add { name: String },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // RUST_LOG as `info,edge_hub=debug` directives (the agent's `log.level` syntax).
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|directives| directives.parse::<Targets>().ok())
        .unwrap_or_else(|| Targets::new().with_default(tracing::Level::INFO));
    tracing_subscriber::registry()
        .with(filter)
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
        .init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("edge-hub: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<(), Box<dyn std::error::Error>> {
    let dir = cli.dir;
    match cli.command {
        Command::Init { names } => {
            std::fs::create_dir_all(&dir)?;
            let names = if names.is_empty() {
                pki::DEFAULT_NAMES.map(String::from).to_vec()
            } else {
                names
            };
            pki::init(&pki::PkiFiles::in_dir(&dir), &names)?;
            store::open(&db_path(&dir))?;
            println!(
                "made {} (pin it in agents) and a server certificate for {}",
                dir.join("ca.pem").display(),
                names.join(", ")
            );
            Ok(())
        }
        Command::Serve {
            listen,
            echo_listen,
            echo_urls,
            max_body_bytes,
            rate,
            burst,
            rate_per_address,
            burst_per_address,
            max_connections,
            body_timeout_secs,
            job_lease_secs,
            retention_days,
            max_reports_per_device,
            clock_offset_secs,
        } => serve(ServeConfig {
            dir,
            listen,
            echo_listen: Some(echo_listen),
            echo_urls,
            limits: Limits {
                max_body_bytes,
                body_timeout: Duration::from_secs(body_timeout_secs),
                rate_per_device: rate,
                burst_per_device: burst,
                rate_per_address,
                burst_per_address,
                max_connections,
                job_lease: Duration::from_secs(job_lease_secs),
                retention: Duration::from_secs(retention_days.saturating_mul(24 * 3600)),
                max_reports_per_device,
            },
            clock_offset_secs,
        }),
        Command::Owner {
            command: OwnerCommand::Add { name },
        } => {
            let token = new_token().map_err(|_| "the system random generator failed")?;
            let sha = edge_identity::hex::encode(
                ring::digest::digest(&ring::digest::SHA256, token.as_bytes()).as_ref(),
            );
            store::add_owner(
                &store::open(&db_path(&dir))?,
                &name,
                &sha,
                SystemClock.unix_ms(),
            )?;
            println!("{token}");
            Ok(())
        }
        Command::Devices => {
            print!(
                "{}",
                inspect::devices(&existing_db(&dir)?, SystemClock.unix_ms())?
            );
            Ok(())
        }
        Command::Device { id } => match inspect::device(&existing_db(&dir)?, &id)? {
            Some(device) => {
                println!("{}", serde_json::to_string_pretty(&device)?);
                Ok(())
            }
            None => Err(format!("no device {id} in {}", db_path(&dir).display()).into()),
        },
        Command::Job {
            command: JobCommand::Submit { device, file },
        } => {
            let text = std::fs::read_to_string(&file)
                .map_err(|e| format!("reading {}: {e}", file.display()))?;
            let job: edge_jobs::job::Job = serde_json::from_str(&text)
                .map_err(|e| format!("{}: not a v1 job: {e}", file.display()))?;
            let conn = store::open(&existing_db(&dir)?)?;
            if inspect::device(&db_path(&dir), &device)?.is_none() {
                return Err(format!("no device {device} is registered").into());
            }
            store::add_job(
                &conn,
                &edge_hub::blobs_dir(&dir),
                &device,
                &job,
                SystemClock.unix_ms(),
            )?;
            println!("{}", job.id);
            Ok(())
        }
        Command::Blob {
            command: BlobCommand::Add { file },
        } => {
            println!(
                "{}",
                edge_hub::blobs::add(&edge_hub::blobs_dir(&dir), &file)?
            );
            Ok(())
        }
        Command::Jobs => {
            for job in inspect::jobs(&existing_db(&dir)?)? {
                println!("{job}");
            }
            Ok(())
        }
        Command::Reports { id } => {
            for report in inspect::reports(&existing_db(&dir)?, &id)? {
                println!("{report}");
            }
            Ok(())
        }
    }
}

fn existing_db(dir: &Path) -> Result<PathBuf, String> {
    let db = db_path(dir);
    if db.exists() {
        Ok(db)
    } else {
        Err(format!(
            "{} does not exist (run `edge-hub init` first?)",
            db.display()
        ))
    }
}

fn new_token() -> Result<String, ring::error::Unspecified> {
    let mut bytes = [0u8; 24];
    SystemRandom::new().fill(&mut bytes)?;
    Ok(format!("owner-{}", edge_identity::hex::encode(&bytes)))
}

/// How long connections may take to finish once the hub is stopping.
const GRACE: std::time::Duration = std::time::Duration::from_secs(10);

fn serve(config: ServeConfig) -> Result<(), Box<dyn std::error::Error>> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let server = edge_hub::bind(config).await?;
        // One line on stdout with the bound addresses (tests and scripts read it).
        println!(
            "edge-hub listening main={} echo={}",
            server.main_addr,
            server.echo_addr.map_or("-".to_owned(), |a| a.to_string())
        );
        let (tasks, mut failures) = Tasks::new();
        server.spawn(&tasks);
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(edge_hub::HubError::Signals)?;
        let failed = tokio::select! {
            _ = tokio::signal::ctrl_c() => None,
            _ = term.recv() => None,
            failed = failures.next() => Some(failed),
        };
        if tasks.drain(GRACE).await.is_err() {
            tracing::warn!(grace = ?GRACE, "connections still open after the grace period");
        }
        match failed {
            Some(f) => Err(edge_hub::HubError::Task {
                task: f.task,
                message: f.message,
            }),
            None => Ok(()),
        }
    })?;

    Ok(())
}
