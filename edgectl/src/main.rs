//! `edgectl`: plays the owner's phone app for developers, tests and power users. Pairs with a box
//! over the LAN from its QR payload or manual code, remembers it, and sends the owner's requests
//! over the encrypted, mutually authenticated control channel.
//!
//! The owner key is `owner.key` in the config directory (`--config-dir`, else `$EDGECTL_DIR`,
//! else `$XDG_CONFIG_HOME/edgectl`, else `~/.config/edgectl`), made 0600 on first use; paired
//! boxes are in `devices.json` beside it.

mod devices;
mod discover;

use crate::discover::discover;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use edge_identity::{FileKeyStore, KeyStore, KeyUri};
use edge_mobile_bridge::client::{Client, ClientError, Control, PairingProgress};
use edge_mobile_bridge::lan::LanLink;
use edge_mobile_bridge::message::{ErrorCode, Request, Response};
use edge_mobile_bridge::pairing::PairingError;
use edge_mobile_bridge::setup_code::DeviceFingerprint;
use tokio::net::TcpStream;
use zeroize::Zeroizing;

use crate::devices::{Devices, Known};

/// How long any one step may take.
const STEP: Duration = Duration::from_secs(30);

/// Pair with an edge box and control it, as its owner.
#[derive(Parser)]
#[command(name = "edgectl", version, about)]
struct Cli {
    /// Where the owner key and the paired boxes are kept.
    #[arg(long, global = true, value_name = "DIR")]
    config_dir: Option<PathBuf>,
    /// Which paired box (its device id); default: the only one.
    #[arg(long, global = true, value_name = "ID")]
    device: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Find boxes on the LAN (mDNS `_edge-agent._tcp`): id, address, whether they can be paired.
    Discover {
        /// How long to listen, seconds.
        #[arg(long, default_value_t = 3)]
        timeout: u64,
        /// One JSON object per box.
        #[arg(long)]
        json: bool,
    },
    /// Pair with a box whose pairing window is open. The label's secret is read from stdin
    /// (prompted for on a terminal), never taken on the command line where other users and the
    /// shell's history would see it: the QR payload (`EDGE:1:<device id>:<code>`), or with
    /// --device the manual code.
    Pair {
        /// Where it listens (`[pairing] listen`).
        #[arg(long)]
        addr: SocketAddr,
    },
    /// The box's status, as JSON.
    Status,
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    Wifi {
        #[command(subcommand)]
        command: WifiCommand,
    },
    /// The box's most recent log lines.
    Logs {
        /// How many lines, at most 256.
        #[arg(short = 'n', long, default_value_t = 50)]
        lines: u16,
    },
    Reboot,
    /// Give up ownership; the box can be paired again.
    Unpair,
    /// Erase the owner, the owner's settings, the network binding, Wi-Fi credentials and pairing
    /// state on the box.
    FactoryReset,
    /// Bind the box to your account on a network: it registers there and reports for you. The
    /// owner token (from the network's account page) is read from stdin, never from the command
    /// line. Refused where the box's config file names its network.
    Bind {
        /// The network's base URL, `https://host[:port]`.
        #[arg(long, value_name = "URL")]
        hub: String,
        /// The network's CA certificate (PEM), the only one the box will trust for it.
        #[arg(long, value_name = "FILE")]
        ca: PathBuf,
    },
    Devices,
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print the owner's settings (TOML).
    Get,
    /// Set one key, e.g. `gpu.max_duty_percent 50` or `gpu.allowed_hours_utc '"22-7"'`.
    Set {
        key: String,
        /// Value in TOML syntax.
        value: String,
    },
}

#[derive(Subcommand)]
enum WifiCommand {
    /// Networks the box sees, strongest first, one line per SSID.
    Scan,
    /// Join a network; the passphrase is read from stdin (never from the command line).
    Set {
        ssid: String,
        /// An open network: no passphrase.
        #[arg(long)]
        open: bool,
    },
}

/// Everything that can go wrong, said plainly.
#[derive(Debug, thiserror::Error)]
enum CtlError {
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Local(String),
    #[error("cannot reach {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("link: {0}")]
    Link(String),
    #[error("the box did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the box refused: {0}")]
    Refused(String),
}

impl CtlError {
    fn exit(&self) -> ExitCode {
        match self {
            Self::Usage(_) => ExitCode::from(64),
            _ => ExitCode::FAILURE,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("edgectl: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("edgectl: {e}");
            e.exit()
        }
    }
}

fn config_dir(flag: Option<PathBuf>) -> Result<PathBuf, CtlError> {
    if let Some(dir) = flag.or_else(|| std::env::var_os("EDGECTL_DIR").map(PathBuf::from)) {
        return Ok(dir);
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .ok_or_else(|| CtlError::Local("no HOME or XDG_CONFIG_HOME; pass --config-dir".into()))?;
    Ok(base.join("edgectl"))
}

async fn run(cli: Cli) -> Result<(), CtlError> {
    let dir = config_dir(cli.config_dir)?;
    std::fs::create_dir_all(&dir)
        .and_then(|()| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
        })
        .map_err(|e| CtlError::Local(format!("{}: {e}", dir.display())))?;
    let identity = FileKeyStore
        .open_or_create(&KeyUri::file(dir.join("owner.key")))
        .map_err(|e| CtlError::Local(e.to_string()))?;
    let client = Client::new(identity);
    let mut devices = Devices::load(&dir).map_err(CtlError::Local)?;
    let request = match cli.command {
        Command::Pair { addr } => {
            let what = if cli.device.is_some() {
                "the setup code"
            } else {
                "the QR payload"
            };
            let secret = read_stdin(what)?;
            let known = pair(&client, addr, &secret, cli.device).await?;
            println!("paired with {} at {addr}", known.device_id);
            devices.remember(known);
            return devices.save().map_err(CtlError::Local);
        }
        Command::Discover { timeout, json } => {
            return discover(Duration::from_secs(timeout), json).await;
        }
        Command::Devices => {
            for d in devices.all() {
                println!("{}  {}", d.device_id, d.addr);
            }
            return Ok(());
        }
        Command::Status => Request::Status,
        Command::Config {
            command: ConfigCommand::Get,
        } => Request::ConfigGet,
        Command::Config {
            command: ConfigCommand::Set { key, value },
        } => Request::ConfigSet { key, value },
        Command::Wifi {
            command: WifiCommand::Scan,
        } => Request::WifiScan,
        Command::Wifi {
            command: WifiCommand::Set { ssid, open },
        } => Request::WifiSet {
            ssid,
            passphrase: if open {
                Zeroizing::default()
            } else {
                read_stdin("the passphrase")?
            },
        },
        Command::Logs { lines } => Request::Logs { max_lines: lines },
        Command::Reboot => Request::Reboot,
        Command::Unpair => Request::Unpair,
        Command::FactoryReset => Request::FactoryReset,
        Command::Bind { hub, ca } => Request::Bind {
            ca_pem: std::fs::read_to_string(&ca)
                .map_err(|e| CtlError::Usage(format!("--ca {}: {e}", ca.display())))?,
            hub_url: hub,
            owner_token: read_stdin("the owner token")?,
        },
    };
    let forget = matches!(request, Request::Unpair | Request::FactoryReset);
    let device = devices
        .pick(cli.device.as_deref())
        .map_err(CtlError::Usage)?;
    let response = control(&client, &device, request).await?;
    print(response)?;
    if forget {
        devices.forget(&device.device_id);
        devices.save().map_err(CtlError::Local)?;
    }
    Ok(())
}

/// A secret (`what`: a passphrase, the setup code) from stdin, up to its first line end; on a
/// terminal, asked for first.
fn read_stdin(what: &str) -> Result<Zeroizing<String>, CtlError> {
    use std::io::{BufRead, IsTerminal};
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprint!("{what}: ");
    }
    let mut text = Zeroizing::new(String::new());
    stdin
        .lock()
        .read_line(&mut text)
        .map_err(|e| CtlError::Local(format!("reading {what} from stdin: {e}")))?;
    let trimmed = Zeroizing::new(text.trim_end_matches(['\r', '\n']).to_owned());
    Ok(trimmed)
}

fn print(response: Response) -> Result<(), CtlError> {
    match response {
        Response::Status(status) => {
            let details: serde_json::Value =
                serde_json::from_str(&status.details_json).unwrap_or(serde_json::Value::Null);
            let out = serde_json::json!({
                "device_id": status.device_id,
                "agent_version": status.agent_version,
                "uptime_s": status.uptime_s,
                "details": details,
            });
            println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
        }
        Response::Config { toml } => print!("{toml}"),
        Response::WifiNetworks(networks) => {
            for n in networks {
                let lock = if n.secured { "secured" } else { "open" };
                println!("{:>4} dBm  {lock:<7}  {}", n.signal_dbm, n.ssid);
            }
        }
        Response::Logs { lines } => lines.iter().for_each(|l| println!("{l}")),
        Response::Ok => println!("ok"),
        Response::Error { code, message } => {
            return Err(CtlError::Refused(format!("{code:?}: {message}")));
        }
    }
    Ok(())
}

async fn connect(addr: SocketAddr) -> Result<LanLink<TcpStream>, CtlError> {
    let stream = tokio::time::timeout(STEP, TcpStream::connect(addr))
        .await
        .map_err(|_| CtlError::Timeout(STEP))?
        .map_err(|source| CtlError::Connect { addr, source })?;
    LanLink::new(stream).map_err(|e| CtlError::Link(e.to_string()))
}

async fn send(link: &mut LanLink<TcpStream>, message: &[u8]) -> Result<(), CtlError> {
    link.send(message)
        .await
        .map_err(|e| CtlError::Link(e.to_string()))
}

async fn recv(link: &mut LanLink<TcpStream>) -> Result<Vec<u8>, CtlError> {
    tokio::time::timeout(STEP, link.recv())
        .await
        .map_err(|_| CtlError::Timeout(STEP))?
        .map_err(|e| CtlError::Link(e.to_string()))?
        .ok_or_else(|| CtlError::Link("the box closed the connection".into()))
}

/// Pairs with the box at `addr` using `secret`: its QR payload, or with `device` its manual code.
async fn pair(
    client: &Client,
    addr: SocketAddr,
    secret: &str,
    device: Option<String>,
) -> Result<Known, CtlError> {
    if secret.is_empty() {
        return Err(CtlError::Usage(
            "pair reads the label's QR payload (or, with --device, its manual code) from stdin"
                .into(),
        ));
    }
    let mut pairing = match device {
        None => client.pair_with_qr(secret),
        Some(device) => {
            let fingerprint = DeviceFingerprint::parse(&device)
                .map_err(|e| CtlError::Usage(format!("--device: {e}")))?;
            client.pair_with_code(secret, fingerprint)
        }
    }
    .map_err(|e| CtlError::Usage(e.to_string()))?;
    let device = pairing.device().clone();
    let mut link = connect(addr).await?;
    loop {
        let reply = async {
            for message in pairing.outgoing() {
                send(&mut link, &message).await?;
            }
            recv(&mut link).await
        };
        let reply = match reply.await {
            Ok(reply) => reply,
            // The box may have taken this owner before the link went: what was lost is its
            // proof, not the pairing.
            Err(lost) if pairing.hello_sent() => return resume(client, addr, device, lost).await,
            Err(e) => return Err(e),
        };
        match pairing.receive(&reply) {
            Ok(PairingProgress::Send(next)) => pairing = next,
            Ok(PairingProgress::Done(device, _control)) => {
                return Ok(Known {
                    device_id: device.device_id.as_str().to_owned(),
                    device_key: edge_identity::hex::encode(&device.device_key),
                    addr,
                });
            }
            // The box is paired already: with this owner, if an earlier `pair` lost its link
            // after the hello, or with someone else (who the session below does not fool).
            Err(
                e @ ClientError::Pairing(PairingError::Refused {
                    code: ErrorCode::WindowClosed,
                    ..
                }),
            ) => return resume(client, addr, device, CtlError::Refused(e.to_string())).await,
            Err(e) => return Err(CtlError::Refused(e.to_string())),
        }
    }
}

/// Ends a pairing whose last step was lost (`why`): a session as the box's owner, trusting on
/// first use the key that `device` (the QR code's id) names, which the box proves it holds.
async fn resume(
    client: &Client,
    addr: SocketAddr,
    device: DeviceFingerprint,
    why: CtlError,
) -> Result<Known, CtlError> {
    let session = async {
        let connecting = client
            .resume(device)
            .map_err(|e| CtlError::Local(e.to_string()))?;
        let mut link = connect(addr).await?;
        send(&mut link, connecting.hello()).await?;
        let accept = recv(&mut link).await?;
        let (paired, _control, finish) = connecting
            .accept_learning(&accept)
            .map_err(|e| CtlError::Refused(e.to_string()))?;
        send(&mut link, &finish).await?;
        Ok::<_, CtlError>(paired)
    };
    match session.await {
        Ok(paired) => {
            eprintln!(
                "edgectl: pairing did not finish ({why}), but the box had taken this owner: a session proved it is {}",
                paired.device_id.as_str()
            );
            Ok(Known {
                device_id: paired.device_id.as_str().to_owned(),
                device_key: edge_identity::hex::encode(&paired.device_key),
                addr,
            })
        }
        Err(e) => Err(CtlError::Refused(format!(
            "{why} (and the box does not take this client as its owner: {e})"
        ))),
    }
}

async fn control(client: &Client, device: &Known, request: Request) -> Result<Response, CtlError> {
    let paired = device.paired().map_err(CtlError::Local)?;
    let connecting = client
        .connect(&paired)
        .map_err(|e| CtlError::Local(e.to_string()))?;
    let mut link = connect(device.addr).await?;
    send(&mut link, connecting.hello()).await?;
    let accept = recv(&mut link).await?;
    let (mut control, finish): (Control, Vec<u8>) = connecting
        .accept(&accept)
        .map_err(|e| CtlError::Refused(e.to_string()))?;
    send(&mut link, &finish).await?;
    let sealed = control
        .request(request)
        .map_err(|e| CtlError::Local(e.to_string()))?;
    send(&mut link, &sealed).await?;
    let reply = recv(&mut link).await?;
    control
        .response(&reply)
        .map_err(|e| CtlError::Refused(e.to_string()))
}
