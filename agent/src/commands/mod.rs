//! The one-shot commands (`check`, `info`, `id`, `run-job`, `status`, `measure`, `pairing-code`,
//! `factory-reset`): each prints its answer on stdout, its errors on stderr, and returns the exit
//! code.

use std::net::SocketAddr;
use std::path::Path;

use edge_hal::Hal;
use edge_identity::Identity;

use crate::config::Config;
use crate::exit::{AgentError, Exit};
use crate::gpu::run_job as jobs;
use crate::host::snapshot::HardwareSnapshot;
use crate::host::state_dir;
use crate::network::binding::Binding;
use crate::network::hub_client::HubClient;
use crate::network::measure::{self, MeasureError};
use crate::pairing::{self, BridgeFiles};
use crate::status::client::{self, Endpoint};

mod check;
use check as checks;

/// The identity key, made (with its state directory) on first use.
fn identity(config: &Config, hal: &Hal) -> Result<Identity, AgentError> {
    state_dir::create(&config.state_dir).map_err(AgentError::StateDir)?;
    Ok(hal.keys.open_or_create(&config.identity_key)?)
}

fn print_json(value: &impl serde::Serialize) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_default()
    );
}

/// `edge-agent check`.
pub fn check(config: &Config, hal: &Hal) -> Exit {
    let lines = checks::run(config, hal, Path::new("/etc/resolv.conf"));
    lines.iter().for_each(|l| println!("{l}"));
    if lines.iter().any(|l| l.level == checks::Level::Fail) {
        Exit::Failed
    } else {
        Exit::Ok
    }
}

/// `edge-agent info`.
pub fn info(config: &Config, hal: &Hal) -> Exit {
    let dir = config
        .state_dir
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or(&config.state_dir);
    print_json(&serde_json::json!({
        "hardware": HardwareSnapshot::collect(hal, dir),
        "gpu": hal.gpu.discover(),
    }));
    Exit::Ok
}

/// `edge-agent id`.
pub fn id(config: &Config, hal: &Hal) -> Exit {
    match identity(config, hal) {
        Ok(id) => {
            println!("{}", id.device_id());
            Exit::Ok
        }
        Err(e) => {
            eprintln!("edge-agent: {e}");
            e.exit()
        }
    }
}

/// The GPU worker as the daemon reaches it: through `gpu.worker_socket`, else beside this
/// program.
fn worker_launch(config: &Config) -> edge_hal::gpu::WorkerLaunch {
    crate::gpu::worker::launch(
        config.gpu.worker_socket.as_deref(),
        &edge_hal::gpu::worker_beside_this_program(),
        &crate::config::blobs_dir(&config.state_dir),
    )
}

/// `edge-agent sandbox`: the worker's account of its confinement, probed with the identity key
/// (the file it must never read).
pub async fn sandbox(config: &Config) -> Exit {
    let edge_identity::KeyUri::File(probe) = &config.identity_key;
    let mut worker = crate::gpu::worker::GpuWorker::new(worker_launch(config));
    let report = worker.sandbox_report(probe).await;
    worker.release().await;
    match report {
        Ok(report) => {
            print_json(&report);
            let refused = ["open_probe", "socket_inet", "ptrace_parent"]
                .iter()
                .all(|k| report[k].as_str().is_some_and(|v| v.starts_with("refused")));
            if refused { Exit::Ok } else { Exit::Failed }
        }
        Err(e) => {
            eprintln!("edge-agent: the GPU worker: {e}");
            Exit::Failed
        }
    }
}

/// `edge-agent run-job`: the job runs in the GPU worker, reached as the daemon reaches it.
pub async fn run_job(config: &Config, hal: &Hal, job: &str, output: Option<&Path>) -> Exit {
    let identity = match identity(config, hal) {
        Ok(identity) => identity,
        Err(e) => {
            eprintln!("edge-agent: {e}");
            return e.exit();
        }
    };
    let ran = match jobs::load(job) {
        Ok(job) => {
            let budget = config.gpu.memory_budget;
            jobs::run(job, &identity, budget, worker_launch(config), output).await
        }
        Err(e) => Err(e),
    };
    match ran {
        Ok(receipt) => {
            print_json(&receipt);
            Exit::Ok
        }
        Err(e) => {
            eprintln!("edge-agent: {e}");
            Exit::Failed
        }
    }
}

/// `edge-agent status [--metrics] [--tcp ADDR]`.
pub async fn status(config: &Config, metrics: bool, tcp: Option<SocketAddr>) -> Exit {
    let endpoint = match (tcp, &config.status.socket, config.status.tcp) {
        (Some(addr), _, _) => Endpoint::Tcp(addr),
        (None, Some(path), _) => Endpoint::Unix(path.clone()),
        (None, None, Some(addr)) => Endpoint::Tcp(addr),
        (None, None, None) => {
            eprintln!("edge-agent: the status endpoint is disabled in the config");
            return Exit::Failed;
        }
    };
    let path = if metrics { "/metrics" } else { "/status" };
    match client::get(&endpoint, path).await {
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

/// `edge-agent measure`: the public address and (unless `no_bandwidth`) the bandwidth to the
/// network the box reports to (the config's hub, or the owner's binding), as JSON; exit 1 if the
/// bandwidth could not be measured.
pub async fn measure(config: &Config, hal: &Hal, no_bandwidth: bool) -> Exit {
    let hub = match Binding::open(&config.state_dir, config.network.hub.as_ref()) {
        Ok(binding) => binding.current(),
        Err(e) => {
            eprintln!("edge-agent: {e}");
            return Exit::Config;
        }
    };
    let Some(hub) = hub else {
        eprintln!(
            "edge-agent: not bound to a network (no [network] hub_url, and the owner has not bound the box); nothing to measure against"
        );
        return Exit::Config;
    };
    let client = match HubClient::new(&hub.url, &hub.ca_pem, &hub.ca_origin) {
        Ok(client) => client,
        Err(e) => {
            eprintln!("edge-agent: {e}");
            return Exit::Config;
        }
    };
    let echo_urls = if config.network.echo_urls.is_empty() {
        match client.info().await {
            Ok(info) => info.echo_urls,
            Err(e) => {
                eprintln!("edge-agent: asking the hub for its echo endpoints: {e}");
                vec![client.url(edge_protocol::api::IP_ECHO)]
            }
        }
    } else {
        config.network.echo_urls.clone()
    };
    let own: Vec<_> = hal
        .interfaces
        .list()
        .unwrap_or_default()
        .into_iter()
        .flat_map(|i| i.addresses.into_iter().map(|a| a.ip))
        .collect();
    let ip = measure::public_ip(&client, &echo_urls, &own, hal.clock.as_ref()).await;
    let (bandwidth, exit) = if no_bandwidth {
        (None, Exit::Ok)
    } else {
        let measured = match identity(config, hal) {
            Ok(identity) => {
                let identity = std::sync::Arc::new(identity);
                let bandwidth = &config.network.bandwidth;
                measure::bandwidth(&client, &identity, bandwidth, hal.clock.as_ref()).await
            }
            Err(e) => {
                eprintln!("edge-agent: the bandwidth tests are signed as the device: {e}");
                return Exit::Config;
            }
        };
        match measured {
            Ok(b) => (Some(b), Exit::Ok),
            Err(MeasureError::Hub(e)) if e.is_unregistered() => {
                eprintln!(
                    "edge-agent: bandwidth: {e}\n(the network serves its bandwidth tests to registered boxes only; the agent registers when it starts)"
                );
                (None, Exit::Failed)
            }
            Err(e) => {
                eprintln!("edge-agent: bandwidth: {e}");
                (None, Exit::Failed)
            }
        }
    };
    print_json(&serde_json::json!({ "ip": ip, "bandwidth": bandwidth }));
    exit
}

/// `edge-agent pairing-code`: the setup code as the label shows it (manual code, QR payload,
/// and the QR code drawn in the terminal), made on first use.
pub fn pairing_code(config: &Config, hal: &Hal, json: bool) -> Exit {
    let identity = match identity(config, hal) {
        Ok(identity) => identity,
        Err(e) => {
            eprintln!("edge-agent: {e}");
            return e.exit();
        }
    };
    let code = match BridgeFiles::in_dir(&config.state_dir).setup_code() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("edge-agent: {e}");
            return AgentError::Bridge(e).exit();
        }
    };
    let payload = pairing::qr_payload(&identity, &code);
    if json {
        print_json(&serde_json::json!({
            "device_id": identity.device_id().to_string(),
            "manual_code": code.grouped().as_str(),
            "qr_payload": payload,
        }));
        return Exit::Ok;
    }
    println!("device {}", identity.device_id());
    println!("manual code  {}", code.grouped().as_str());
    println!("QR payload   {payload}");
    match qrcode::QrCode::new(payload.as_bytes()) {
        Ok(qr) => println!(
            "\n{}",
            qr.render::<qrcode::render::unicode::Dense1x2>()
                .quiet_zone(true)
                .build()
        ),
        Err(e) => eprintln!("edge-agent: cannot draw the QR code: {e}"),
    }
    Exit::Ok
}

/// `edge-agent factory-reset`: erases the owner, the owner's settings, the owner's network
/// binding, the report queue, Wi-Fi credentials and the pairing failure count, keeping the
/// identity. The agent must be stopped (its lock is taken).
pub fn factory_reset(config: &Config, hal: &Hal) -> Exit {
    let _lock = match crate::host::lock::StateLock::acquire(&config.state_dir) {
        Ok(lock) => lock,
        Err(e) => {
            eprintln!("edge-agent: {e}; stop the agent first (systemctl stop edge-agent)");
            return AgentError::Lock(e).exit();
        }
    };
    match pairing::factory_reset(&config.state_dir, hal) {
        Ok(()) => {
            println!(
                "factory reset: owner, owner settings, network binding, report queue, Wi-Fi credentials and pairing state erased; identity kept"
            );
            Exit::Ok
        }
        Err(e) => {
            eprintln!("edge-agent: {e}");
            AgentError::Bridge(e).exit()
        }
    }
}
