//! Wi-Fi provisioning: scan for networks, hand the box an SSID and passphrase, report the link,
//! and forget what was provisioned (factory reset).
//!
//! Two real implementations drive the OS's own Wi-Fi manager through its command-line client:
//! [`NetworkManagerWifi`] (`nmcli`, credentials in a keyfile under `system-connections`) and
//! [`WpaSupplicantWifi`] (`wpa_cli`, credentials in a `network={}` block of its config file).
//! [`LinuxWifi`] picks NetworkManager when `nmcli` is on `PATH`, else wpa_supplicant when `wpa_cli`
//! is, else answers every call with [`WifiError::NotFound`].
//!
//! Security rule: a passphrase never appears in a process's argument list (any user can read
//! `/proc/*/cmdline`), in an error or in a log. It goes only into a 0600 file, written to a
//! temporary file in the same directory, synced, renamed into place and the directory synced; the
//! manager is then told to reload. [`Passphrase`] is zeroed on drop and prints as `<redacted>`.
//! Everything this agent writes is named `edge-agent-…`, and only that is ever removed.
//!
//! Every credential passes [`validate`] first: SSID 1 to 32 bytes without NUL; passphrase 8 to 63
//! printable ASCII characters, exactly 64 hex digits (a raw PSK), or empty for an open network.
//!
//! Limits: personal networks only (open, WPA/WPA2-PSK, WPA3-SAE); no enterprise/802.1X, WEP or
//! OWE. Scans do not list hidden networks, though one can be provisioned by name. SSIDs are UTF-8.
//! Calls block while the tool runs (`nmcli` waits up to 45 s to activate a connection), so async
//! callers use `spawn_blocking`. Files are written as the agent's user, which must be root for
//! NetworkManager to accept a keyfile.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::num::NonZeroU32;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;
use zeroize::Zeroizing;

use crate::hex;

/// Prefix of every name this agent gives a Wi-Fi profile: keyfile, connection id, `id_str`.
pub const MANAGED_PREFIX: &str = "edge-agent-";

/// How long `nmcli connection up` may wait for the link, in seconds.
const NMCLI_WAIT_SECS: &str = "45";

/// Most bytes of a tool's stderr kept in an error.
const STDERR_LIMIT: usize = 2048;

/// Errors scanning, provisioning or forgetting Wi-Fi networks.
#[derive(Debug, thiserror::Error)]
pub enum WifiError {
    /// No Wi-Fi manager's client is installed.
    #[error("no Wi-Fi manager on this machine: found neither {tool} on PATH")]
    NotFound {
        /// The tools looked for.
        tool: &'static str,
    },
    /// A credential was refused before anything was run or written.
    #[error("invalid {field}: {reason}")]
    Invalid {
        /// `ssid` or `passphrase`.
        field: &'static str,
        /// Why, never quoting a passphrase.
        reason: String,
    },
    /// The tool could not be started.
    #[error("cannot run {}: {source}", program.display())]
    Spawn {
        /// The tool.
        program: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The tool ran and failed.
    #[error("`{} {command}` failed ({status}): {stderr}", program.display())]
    Command {
        /// The tool.
        program: PathBuf,
        /// Its arguments, which never hold a secret.
        command: String,
        /// How it exited.
        status: ExitStatus,
        /// What it printed on stderr, trimmed and capped at 2 KiB.
        stderr: String,
    },
    /// The tool exited cleanly but refused the request (`wpa_cli` answering `FAIL`).
    #[error("`{} {command}` answered {reply:?}", program.display())]
    Rejected {
        /// The tool.
        program: PathBuf,
        /// Its arguments.
        command: String,
        /// Its answer.
        reply: String,
    },
    /// A file or directory could not be read or written.
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// How a network authenticates its clients.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Security {
    /// No authentication.
    Open,
    /// WPA or WPA2 personal (pre-shared key), including WPA2/WPA3 transition networks.
    Wpa2Psk,
    /// WPA3 personal only (SAE).
    Wpa3Sae,
    /// Anything this agent cannot provision (802.1X, WEP, OWE), as the tool named it.
    Other(String),
}

/// One network a scan saw: one entry per SSID, from its strongest access point.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WifiNetwork {
    /// Network name.
    pub ssid: String,
    /// Signal quality, 0 to 100 (see [`dbm_to_percent`] for wpa_supplicant's dBm).
    pub signal_percent: u8,
    /// How it authenticates.
    pub security: Security,
    /// Whether the box is connected to it now.
    pub in_use: bool,
}

/// The Wi-Fi link as it is now.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct WifiStatus {
    /// The network the box is associated with, if any.
    pub connected_ssid: Option<String>,
    /// The Wi-Fi interface, if one was found.
    pub interface: Option<String>,
}

/// A Wi-Fi passphrase or raw PSK: zeroed on drop, never printed.
#[derive(Clone, Default)]
pub struct Passphrase(Zeroizing<String>);

impl Passphrase {
    /// Wraps `text`; empty means an open network.
    pub fn new(text: impl Into<String>) -> Self {
        Self(Zeroizing::new(text.into()))
    }

    /// The secret itself, for writing into a credentials file.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// True for an open network.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Passphrase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Passphrase(<redacted>)")
    }
}

impl From<String> for Passphrase {
    fn from(text: String) -> Self {
        Self::new(text)
    }
}

impl From<&str> for Passphrase {
    fn from(text: &str) -> Self {
        Self::new(text)
    }
}

/// What a valid passphrase turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// Empty: an open network.
    Open,
    /// 8 to 63 printable ASCII characters.
    Passphrase,
    /// 64 hex digits: the 256-bit PSK itself.
    RawPsk,
}

/// Checks an SSID and passphrase the way every implementation does before touching anything.
pub fn validate(ssid: &str, passphrase: &Passphrase) -> Result<KeyKind, WifiError> {
    validate_ssid(ssid)?;
    validate_passphrase(passphrase)
}

/// An SSID is 1 to 32 bytes with no NUL.
pub fn validate_ssid(ssid: &str) -> Result<(), WifiError> {
    let invalid = |reason: String| WifiError::Invalid {
        field: "ssid",
        reason,
    };
    if ssid.is_empty() {
        return Err(invalid("is empty; an SSID is 1 to 32 bytes".into()));
    }
    if ssid.len() > 32 {
        return Err(invalid(format!(
            "is {} bytes long; an SSID is at most 32 bytes",
            ssid.len()
        )));
    }
    if ssid.contains('\0') {
        return Err(invalid("contains a NUL byte".into()));
    }
    Ok(())
}

/// A passphrase is empty (open network), 8 to 63 printable ASCII characters, or 64 hex digits.
pub fn validate_passphrase(passphrase: &Passphrase) -> Result<KeyKind, WifiError> {
    let invalid = |reason: String| WifiError::Invalid {
        field: "passphrase",
        reason,
    };
    let p = passphrase.expose();
    if p.is_empty() {
        return Ok(KeyKind::Open);
    }
    if p.len() == 64 {
        return if p.bytes().all(|b| b.is_ascii_hexdigit()) {
            Ok(KeyKind::RawPsk)
        } else {
            Err(invalid(
                "is 64 characters but not all hex digits: a raw PSK is exactly 64 hex digits, \
                 a passphrase 8 to 63 characters"
                    .into(),
            ))
        };
    }
    if let Some(i) = p.bytes().position(|b| !(0x20..=0x7e).contains(&b)) {
        return Err(invalid(format!(
            "byte {} is not printable ASCII; a WPA passphrase is printable ASCII only",
            i + 1
        )));
    }
    match p.len() {
        8..=63 => Ok(KeyKind::Passphrase),
        n => Err(invalid(format!(
            "is {n} characters; a WPA passphrase is 8 to 63 characters \
             (or exactly 64 hex digits for a raw PSK)"
        ))),
    }
}

/// The box's Wi-Fi, through whichever manager runs it.
pub trait Wifi: Send + Sync {
    /// Networks in range, one per SSID, strongest first; hidden networks are left out.
    fn scan(&self) -> Result<Vec<WifiNetwork>, WifiError>;

    /// Stores the credentials (replacing any this agent stored for the same SSID) and asks the
    /// manager to use them. An empty passphrase means an open network.
    fn connect(&self, ssid: &str, passphrase: &Passphrase) -> Result<(), WifiError>;

    /// The link now.
    fn status(&self) -> Result<WifiStatus, WifiError>;

    /// Erases every Wi-Fi credential this agent provisioned, and nothing else (factory reset).
    fn forget_all(&self) -> Result<(), WifiError>;
}

/// NetworkManager through `nmcli`, with credentials in a keyfile this agent writes.
#[derive(Debug, Clone)]
pub struct NetworkManagerWifi {
    /// The `nmcli` binary.
    pub nmcli: PathBuf,
    /// NetworkManager's keyfile directory, `/etc/NetworkManager/system-connections`.
    pub connections_dir: PathBuf,
}

impl NetworkManagerWifi {
    /// NetworkManager's system keyfile directory.
    pub const CONNECTIONS_DIR: &str = "/etc/NetworkManager/system-connections";

    /// `nmcli` at the given path with the system keyfile directory.
    pub fn new(nmcli: impl Into<PathBuf>) -> Self {
        Self {
            nmcli: nmcli.into(),
            connections_dir: Self::CONNECTIONS_DIR.into(),
        }
    }

    fn nmcli(&self, args: &[&str]) -> Result<String, WifiError> {
        run(&self.nmcli, args)
    }
}

impl Wifi for NetworkManagerWifi {
    fn scan(&self) -> Result<Vec<WifiNetwork>, WifiError> {
        let out = self.nmcli(&[
            "-t",
            "-f",
            "IN-USE,SSID,SIGNAL,SECURITY",
            "device",
            "wifi",
            "list",
            "--rescan",
            "auto",
        ])?;
        Ok(parse_nmcli_scan(&out))
    }

    fn connect(&self, ssid: &str, passphrase: &Passphrase) -> Result<(), WifiError> {
        let key = validate(ssid, passphrase)?;
        let seen = self.scan()?.into_iter().find(|n| n.ssid == ssid);
        let auth = plan(ssid, key, seen.as_ref().map(|n| &n.security))?;
        let name = profile_name(ssid);
        let keyfile = nm_keyfile(&name, ssid, auth, passphrase, seen.is_none());
        let dir = &self.connections_dir;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io("create", dir))?;
        write_private(
            &dir.join(format!("{name}.nmconnection")),
            keyfile.as_bytes(),
        )?;
        self.nmcli(&["connection", "reload"])?;
        self.nmcli(&["--wait", NMCLI_WAIT_SECS, "connection", "up", "id", &name])?;
        Ok(())
    }

    fn status(&self) -> Result<WifiStatus, WifiError> {
        let devices = self.nmcli(&["-t", "-f", "DEVICE,TYPE,STATE,CONNECTION", "device"])?;
        let wifi: Vec<(String, bool)> = devices
            .lines()
            .map(split_terse)
            .filter(|f| f.len() == 4 && f[1] == "wifi")
            .map(|f| (f[0].clone(), f[2].starts_with("connected")))
            .collect();
        let Some((interface, connected)) = wifi
            .iter()
            .find(|(_, connected)| *connected)
            .or(wifi.first())
            .cloned()
        else {
            return Ok(WifiStatus::default());
        };
        let connected_ssid = if connected {
            let aps = self.nmcli(&[
                "-t",
                "-f",
                "ACTIVE,SSID",
                "device",
                "wifi",
                "list",
                "ifname",
                &interface,
                "--rescan",
                "no",
            ])?;
            aps.lines()
                .map(split_terse)
                .find(|f| f.len() == 2 && f[0] == "yes")
                .map(|mut f| f.swap_remove(1))
        } else {
            None
        };
        Ok(WifiStatus {
            connected_ssid,
            interface: Some(interface),
        })
    }

    fn forget_all(&self) -> Result<(), WifiError> {
        let dir = &self.connections_dir;
        let entries = match fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io("list", dir)(e)),
        };
        let mut removed = 0;
        for entry in entries {
            let entry = entry.map_err(io("list", dir))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let ours = (name.starts_with(MANAGED_PREFIX) && name.ends_with(".nmconnection"))
                || (name.starts_with(&format!(".{MANAGED_PREFIX}")) && name.ends_with(".tmp"));
            if ours {
                let path = entry.path();
                fs::remove_file(&path).map_err(io("remove", &path))?;
                removed += 1;
            }
        }
        if removed > 0 {
            sync_dir(dir)?;
            self.nmcli(&["connection", "reload"])?;
        }
        Ok(())
    }
}

/// wpa_supplicant through `wpa_cli`, with credentials in a managed block of its config file.
///
/// The block is marked by `id_str="edge-agent-…"`, a field wpa_supplicant keeps when it rewrites
/// the file itself (`save_config`), unlike comments. It asks for `WPA-PSK SAE` with optional
/// management-frame protection, so one block serves WPA2, WPA3 and transition networks; the PSK
/// is stored derived (PBKDF2 as `wpa_passphrase` does) and the SAE password as hex, so no quoting
/// of the passphrase is ever needed.
#[derive(Debug, Clone)]
pub struct WpaSupplicantWifi {
    /// The `wpa_cli` binary.
    pub wpa_cli: PathBuf,
    /// The config file wpa_supplicant reads, e.g. `/etc/wpa_supplicant/wpa_supplicant-wlan0.conf`.
    pub conf: PathBuf,
    /// The Wi-Fi interface, e.g. `wlan0`.
    pub interface: String,
    /// How long a scan waits between asking for one and reading its results.
    pub scan_wait: Duration,
}

impl WpaSupplicantWifi {
    /// `wpa_cli` driving `interface`, whose supplicant reads `conf`; scans wait 4 s.
    pub fn new(
        wpa_cli: impl Into<PathBuf>,
        conf: impl Into<PathBuf>,
        interface: impl Into<String>,
    ) -> Self {
        Self {
            wpa_cli: wpa_cli.into(),
            conf: conf.into(),
            interface: interface.into(),
            scan_wait: Duration::from_secs(4),
        }
    }

    /// Runs `wpa_cli -i IF <command>` and checks that it answered one of `ok`.
    fn request(&self, command: &str, ok: &[&str]) -> Result<String, WifiError> {
        let reply = run(&self.wpa_cli, &["-i", &self.interface, command])?;
        if !ok.is_empty() && !ok.contains(&reply.trim()) {
            return Err(WifiError::Rejected {
                program: self.wpa_cli.clone(),
                command: format!("-i {} {command}", self.interface),
                reply: reply.trim().to_owned(),
            });
        }
        Ok(reply)
    }

    fn read_conf(&self) -> Result<Zeroizing<String>, WifiError> {
        fs::read_to_string(&self.conf)
            .map(Zeroizing::new)
            .map_err(io("read", &self.conf))
    }
}

impl Wifi for WpaSupplicantWifi {
    fn scan(&self) -> Result<Vec<WifiNetwork>, WifiError> {
        self.request("scan", &["OK", "FAIL-BUSY"])?;
        std::thread::sleep(self.scan_wait);
        let mut networks = parse_wpa_scan(&self.request("scan_results", &[])?);
        // Best effort: a scan is still worth having when the status cannot be read.
        if let Ok(WifiStatus {
            connected_ssid: Some(current),
            ..
        }) = self.status()
        {
            networks
                .iter_mut()
                .for_each(|n| n.in_use = n.ssid == current);
        }
        Ok(networks)
    }

    fn connect(&self, ssid: &str, passphrase: &Passphrase) -> Result<(), WifiError> {
        let key = validate(ssid, passphrase)?;
        let old = self.read_conf()?;
        let id = profile_name(ssid);
        let (mut new, _) = remove_networks(&old, |id_str| id_str == id);
        if !new.is_empty() && !new.ends_with('\n') {
            new.push('\n');
        }
        new.push_str(&wpa_block(&id, ssid, key, passphrase));
        write_private(&self.conf, new.as_bytes())?;
        match self.request("reconfigure", &["OK"]) {
            // The supplicant could not parse the new file: put the old one back so that the next
            // boot does not start without any network.
            Err(e @ WifiError::Rejected { .. }) => {
                write_private(&self.conf, old.as_bytes())?;
                Err(e)
            }
            other => other.map(drop),
        }
    }

    fn status(&self) -> Result<WifiStatus, WifiError> {
        let out = self.request("status", &[])?;
        let field = |key: &str| {
            out.lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        };
        let connected_ssid = match (field("wpa_state"), field("ssid")) {
            (Some("COMPLETED"), Some(ssid)) => {
                Some(String::from_utf8_lossy(&printf_decode(ssid)).into_owned())
            }
            _ => None,
        };
        Ok(WifiStatus {
            connected_ssid,
            interface: Some(self.interface.clone()),
        })
    }

    fn forget_all(&self) -> Result<(), WifiError> {
        let old = match self.read_conf() {
            Ok(old) => old,
            Err(WifiError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        let (new, removed) = remove_networks(&old, |id_str| id_str.starts_with(MANAGED_PREFIX));
        if removed == 0 {
            return Ok(());
        }
        write_private(&self.conf, new.as_bytes())?;
        self.request("reconfigure", &["OK"]).map(drop)
    }
}

/// The Wi-Fi manager found on this machine.
#[derive(Debug, Clone)]
pub enum WifiManager {
    /// `nmcli` is on `PATH`.
    NetworkManager(NetworkManagerWifi),
    /// `wpa_cli` is on `PATH` and `nmcli` is not.
    WpaSupplicant(WpaSupplicantWifi),
    /// Neither: every call answers [`WifiError::NotFound`].
    Missing,
}

impl WifiManager {
    fn get(&self) -> Result<&dyn Wifi, WifiError> {
        match self {
            Self::NetworkManager(nm) => Ok(nm),
            Self::WpaSupplicant(wpa) => Ok(wpa),
            Self::Missing => Err(WifiError::NotFound {
                tool: "nmcli (NetworkManager) nor wpa_cli (wpa_supplicant)",
            }),
        }
    }
}

impl Wifi for WifiManager {
    fn scan(&self) -> Result<Vec<WifiNetwork>, WifiError> {
        self.get()?.scan()
    }

    fn connect(&self, ssid: &str, passphrase: &Passphrase) -> Result<(), WifiError> {
        self.get()?.connect(ssid, passphrase)
    }

    fn status(&self) -> Result<WifiStatus, WifiError> {
        self.get()?.status()
    }

    fn forget_all(&self) -> Result<(), WifiError> {
        self.get()?.forget_all()
    }
}

/// The real device's Wi-Fi: looks for a manager at each call (a few `stat`s), so a manager
/// installed or removed while the agent runs is seen, and building it touches nothing.
#[derive(Debug, Clone)]
pub struct LinuxWifi {
    /// Where to look for `nmcli` and `wpa_cli`; `None` reads `$PATH` at each call.
    pub search_path: Option<OsString>,
    /// sysfs mount point, to find the wireless interface for wpa_supplicant.
    pub sysfs: PathBuf,
    /// NetworkManager's keyfile directory.
    pub nm_connections_dir: PathBuf,
    /// Where wpa_supplicant's config lives: `wpa_supplicant-<if>.conf` if there is one, else
    /// `wpa_supplicant.conf`.
    pub wpa_conf_dir: PathBuf,
}

impl Default for LinuxWifi {
    fn default() -> Self {
        Self {
            search_path: None,
            sysfs: "/sys".into(),
            nm_connections_dir: NetworkManagerWifi::CONNECTIONS_DIR.into(),
            wpa_conf_dir: "/etc/wpa_supplicant".into(),
        }
    }
}

impl LinuxWifi {
    /// The manager to use now.
    pub fn detect(&self) -> WifiManager {
        let path = self
            .search_path
            .clone()
            .or_else(|| std::env::var_os("PATH"))
            .unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
        if let Some(nmcli) = find_on_path(&path, "nmcli") {
            return WifiManager::NetworkManager(NetworkManagerWifi {
                nmcli,
                connections_dir: self.nm_connections_dir.clone(),
            });
        }
        if let Some(wpa_cli) = find_on_path(&path, "wpa_cli") {
            let interface = wireless_interface(&self.sysfs).unwrap_or_else(|| "wlan0".into());
            let own = self
                .wpa_conf_dir
                .join(format!("wpa_supplicant-{interface}.conf"));
            let conf = if own.exists() {
                own
            } else {
                self.wpa_conf_dir.join("wpa_supplicant.conf")
            };
            return WifiManager::WpaSupplicant(WpaSupplicantWifi::new(wpa_cli, conf, interface));
        }
        WifiManager::Missing
    }
}

impl Wifi for LinuxWifi {
    fn scan(&self) -> Result<Vec<WifiNetwork>, WifiError> {
        self.detect().scan()
    }

    fn connect(&self, ssid: &str, passphrase: &Passphrase) -> Result<(), WifiError> {
        self.detect().connect(ssid, passphrase)
    }

    fn status(&self) -> Result<WifiStatus, WifiError> {
        self.detect().status()
    }

    fn forget_all(&self) -> Result<(), WifiError> {
        self.detect().forget_all()
    }
}

/// wpa_supplicant's signal level in dBm as a 0–100 quality, NetworkManager's mapping so both
/// managers agree: -40 dBm or stronger is 100, -100 dBm or weaker is 0, linear between. A value
/// of 0 or more is a driver already reporting quality, clamped to 100.
pub fn dbm_to_percent(dbm: i32) -> u8 {
    if dbm >= 0 {
        return dbm.min(100) as u8;
    }
    let below_best = (dbm.clamp(-100, -40) + 40).unsigned_abs();
    (100 - below_best * 100 / 60) as u8
}

/// How the chosen network will authenticate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Auth {
    Open,
    Psk,
    Sae,
}

/// Matches the credential to what a scan saw of the network (`None`: not seen, maybe hidden).
fn plan(ssid: &str, key: KeyKind, seen: Option<&Security>) -> Result<Auth, WifiError> {
    let refuse = |field, reason: String| Err(WifiError::Invalid { field, reason });
    match (seen, key) {
        (None | Some(Security::Open), KeyKind::Open) => Ok(Auth::Open),
        (Some(Security::Open), _) => refuse(
            "passphrase",
            format!("{ssid:?} is an open network: leave the passphrase empty"),
        ),
        (Some(Security::Other(kind)), _) => refuse(
            "ssid",
            format!(
                "{ssid:?} uses {kind}, which cannot be provisioned here \
                 (only open, WPA/WPA2 and WPA3 personal)"
            ),
        ),
        (Some(_), KeyKind::Open) => refuse(
            "passphrase",
            format!("{ssid:?} is secured: a passphrase is required"),
        ),
        (Some(Security::Wpa3Sae), KeyKind::RawPsk) => refuse(
            "passphrase",
            format!("{ssid:?} is WPA3-only, which needs the passphrase rather than a raw PSK"),
        ),
        (Some(Security::Wpa3Sae), KeyKind::Passphrase) => Ok(Auth::Sae),
        (None | Some(Security::Wpa2Psk), _) => Ok(Auth::Psk),
    }
}

/// `edge-agent-<ssid with odd characters as _>-<8 hex digits of its SHA-256>`: a file name and
/// connection id that is safe, recognisable and distinct for distinct SSIDs.
fn profile_name(ssid: &str) -> String {
    let readable: String = ssid
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let digest = ring::digest::digest(&ring::digest::SHA256, ssid.as_bytes());
    format!(
        "{MANAGED_PREFIX}{readable}-{}",
        hex::encode(&digest.as_ref()[..4])
    )
}

/// A stable UUID for the profile (same SSID, same UUID), version 8 (custom) per RFC 9562.
fn profile_uuid(ssid: &str) -> String {
    let mut input = b"edge-agent wifi\0".to_vec();
    input.extend_from_slice(ssid.as_bytes());
    let digest = ring::digest::digest(&ring::digest::SHA256, &input);
    let mut b = [0u8; 16];
    b.copy_from_slice(&digest.as_ref()[..16]);
    b[6] = (b[6] & 0x0f) | 0x80;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(&b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// A string value as GLib's key-file writer escapes it: `\` doubled, control characters as
/// `\n`, `\t`, `\r`, and spaces at either end as `\s` (the reader strips them otherwise).
fn keyfile_escape(value: &str) -> String {
    let n = value.chars().count();
    let lead = value.chars().take_while(|&c| c == ' ').count();
    let trail = n - value.chars().rev().take_while(|&c| c == ' ').count();
    let mut out = String::with_capacity(value.len() + 8);
    for (i, c) in value.chars().enumerate() {
        match c {
            ' ' if i < lead || i >= trail => out.push_str("\\s"),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
    out
}

/// The SSID as NetworkManager's keyfile writer spells it: a plain string when every byte is
/// printable ASCII other than `;` and `\` and it has no space at either end, else a byte list
/// (`77;105;`), as NetworkManager itself writes non-ASCII SSIDs.
fn keyfile_ssid(ssid: &str) -> String {
    let plain = !ssid.starts_with(' ')
        && !ssid.ends_with(' ')
        && ssid
            .bytes()
            .all(|b| (0x20..=0x7e).contains(&b) && b != b';' && b != b'\\');
    if plain {
        ssid.to_owned()
    } else {
        ssid.bytes().map(|b| format!("{b};")).collect()
    }
}

/// A NetworkManager keyfile for a Wi-Fi profile.
fn nm_keyfile(
    name: &str,
    ssid: &str,
    auth: Auth,
    passphrase: &Passphrase,
    hidden: bool,
) -> Zeroizing<String> {
    let mut f = Zeroizing::new(String::with_capacity(512));
    f.push_str("# Written by edge-agent (Wi-Fi provisioning); removed by factory reset.\n");
    f.push_str("[connection]\n");
    f.push_str(&format!("id={}\n", keyfile_escape(name)));
    f.push_str(&format!("uuid={}\n", profile_uuid(ssid)));
    f.push_str("type=wifi\nautoconnect=true\n\n[wifi]\nmode=infrastructure\n");
    f.push_str(&format!("ssid={}\n", keyfile_ssid(ssid)));
    if hidden {
        f.push_str("hidden=true\n");
    }
    let key_mgmt = match auth {
        Auth::Open => None,
        Auth::Psk => Some("wpa-psk"),
        Auth::Sae => Some("sae"),
    };
    if let Some(key_mgmt) = key_mgmt {
        f.push_str(&format!("\n[wifi-security]\nkey-mgmt={key_mgmt}\npsk="));
        f.push_str(&keyfile_escape(passphrase.expose()));
        f.push('\n');
    }
    f.push_str("\n[ipv4]\nmethod=auto\n\n[ipv6]\nmethod=auto\n");
    f
}

/// A wpa_supplicant `network={}` block marked with `id_str="<id>"`.
fn wpa_block(id: &str, ssid: &str, key: KeyKind, passphrase: &Passphrase) -> Zeroizing<String> {
    // Quoted only when nothing in it could end the string or start a comment.
    let ssid_value = if ssid
        .bytes()
        .all(|b| (0x20..=0x7e).contains(&b) && b != b'"' && b != b'#')
    {
        format!("\"{ssid}\"")
    } else {
        hex::encode(ssid.as_bytes())
    };
    let mut b = Zeroizing::new(String::with_capacity(512));
    b.push_str(&format!(
        "network={{\n\tid_str=\"{id}\"\n\tssid={ssid_value}\n\tscan_ssid=1\n"
    ));
    match key {
        KeyKind::Open => b.push_str("\tkey_mgmt=NONE\n"),
        KeyKind::RawPsk => {
            b.push_str("\tkey_mgmt=WPA-PSK\n\tpsk=");
            b.push_str(&passphrase.expose().to_ascii_lowercase());
            b.push('\n');
        }
        KeyKind::Passphrase => {
            let psk = Zeroizing::new(wpa_psk(ssid, passphrase));
            b.push_str("\tkey_mgmt=WPA-PSK SAE\n\tieee80211w=1\n\tpsk=");
            b.push_str(&hex::encode(psk.as_ref()));
            b.push_str("\n\tsae_password=");
            b.push_str(&hex::encode(passphrase.expose().as_bytes()));
            b.push('\n');
        }
    }
    b.push_str("}\n");
    b
}

/// The WPA PSK of a passphrase: PBKDF2-HMAC-SHA1, the SSID as salt, 4096 rounds, 32 bytes.
fn wpa_psk(ssid: &str, passphrase: &Passphrase) -> [u8; 32] {
    const ROUNDS: NonZeroU32 = NonZeroU32::new(4096).expect("non-zero");
    let mut psk = [0u8; 32];
    ring::pbkdf2::derive(
        ring::pbkdf2::PBKDF2_HMAC_SHA1,
        ROUNDS,
        ssid.as_bytes(),
        passphrase.expose().as_bytes(),
        &mut psk,
    );
    psk
}

/// `conf` without the `network={}` blocks whose `id_str` satisfies `is_ours`, and how many went.
/// Everything else is kept byte for byte; an unterminated block is kept.
fn remove_networks(conf: &str, is_ours: impl Fn(&str) -> bool) -> (Zeroizing<String>, usize) {
    let mut out = Zeroizing::new(String::with_capacity(conf.len()));
    let mut block: Option<Vec<&str>> = None;
    let mut removed = 0;
    for line in conf.split_inclusive('\n') {
        match &mut block {
            None if line.trim() == "network={" => block = Some(vec![line]),
            None => out.push_str(line),
            Some(lines) => {
                lines.push(line);
                if line.trim() == "}" {
                    let ours = lines.iter().any(|l| {
                        l.trim()
                            .strip_prefix("id_str=\"")
                            .and_then(|v| v.strip_suffix('"'))
                            .is_some_and(&is_ours)
                    });
                    if ours {
                        removed += 1;
                    } else {
                        lines.iter().for_each(|l| out.push_str(l));
                    }
                    block = None;
                }
            }
        }
    }
    block.into_iter().flatten().for_each(|l| out.push_str(l));
    (out, removed)
}

/// Fields of one line of `nmcli -t` output, which escapes `:` as `\:` and `\` as `\\`.
fn split_terse(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        let field = fields.last_mut().expect("never empty");
        match c {
            '\\' => field.push(chars.next().unwrap_or('\\')),
            ':' => fields.push(String::new()),
            c => field.push(c),
        }
    }
    fields
}

/// `nmcli -t -f IN-USE,SSID,SIGNAL,SECURITY device wifi list` output as networks.
fn parse_nmcli_scan(out: &str) -> Vec<WifiNetwork> {
    strongest_per_ssid(out.lines().map(split_terse).filter_map(|f| {
        let [in_use, ssid, signal, security] = <[String; 4]>::try_from(f).ok()?;
        Some(WifiNetwork {
            ssid,
            signal_percent: signal.trim().parse::<u8>().unwrap_or(0).min(100),
            security: nm_security(&security),
            in_use: in_use.trim() == "*",
        })
    }))
}

/// nmcli's SECURITY column (`WPA2`, `WPA1 WPA2`, `WPA3`, `WPA2 802.1X`, `WEP`, empty for open).
fn nm_security(s: &str) -> Security {
    let s = s.trim();
    let has = |t| s.split_whitespace().any(|w| w == t);
    if s.is_empty() || s == "--" {
        Security::Open
    } else if has("802.1X") {
        Security::Other(s.to_owned())
    } else if has("WPA1") || has("WPA2") {
        Security::Wpa2Psk
    } else if has("WPA3") {
        Security::Wpa3Sae
    } else {
        Security::Other(s.to_owned())
    }
}

/// `wpa_cli scan_results` output (`bssid / frequency / signal level / flags / ssid`, tab
/// separated, SSID printf-escaped) as networks.
fn parse_wpa_scan(out: &str) -> Vec<WifiNetwork> {
    strongest_per_ssid(out.lines().filter_map(|line| {
        let mut f = line.splitn(5, '\t');
        let (_bssid, _freq, signal, flags, ssid) =
            (f.next()?, f.next()?, f.next()?, f.next()?, f.next()?);
        let ssid = printf_decode(ssid);
        if ssid.iter().all(|&b| b == 0) {
            return None; // hidden: empty or all NUL
        }
        Some(WifiNetwork {
            ssid: String::from_utf8_lossy(&ssid).into_owned(),
            signal_percent: dbm_to_percent(signal.trim().parse().ok()?),
            security: wpa_security(flags),
            in_use: false,
        })
    }))
}

/// wpa_supplicant's scan flags (`[WPA2-PSK-CCMP][ESS]`, `[RSN-SAE-CCMP]`, `[WEP]`, ...).
fn wpa_security(flags: &str) -> Security {
    let security: Vec<&str> = flags
        .split(['[', ']'])
        .filter(|f| {
            ["WPA", "RSN", "WEP", "OWE", "OSEN"]
                .iter()
                .any(|p| f.starts_with(p))
        })
        .collect();
    let any = |needle| security.iter().any(|f| f.contains(needle));
    if security.is_empty() {
        Security::Open
    } else if any("EAP") || any("WEP") || any("OWE") || any("OSEN") {
        Security::Other(security.join(" "))
    } else if any("PSK") {
        Security::Wpa2Psk
    } else if any("SAE") {
        Security::Wpa3Sae
    } else {
        Security::Other(security.join(" "))
    }
}

/// Undoes wpa_supplicant's `printf_encode`: `\\`, `\"`, `\n`, `\r`, `\t`, `\e`, `\xHH`, `\ooo`.
fn printf_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'\\' || i + 1 == b.len() {
            out.push(b[i]);
            i += 1;
            continue;
        }
        i += 1;
        let (byte, used) = match b[i] {
            b'n' => (b'\n', 1),
            b'r' => (b'\r', 1),
            b't' => (b'\t', 1),
            b'e' => (0x1b, 1),
            b'x' => {
                let digits = b[i + 1..]
                    .iter()
                    .take(2)
                    .take_while(|d| d.is_ascii_hexdigit())
                    .count();
                let text = std::str::from_utf8(&b[i + 1..i + 1 + digits]).unwrap_or("");
                match u8::from_str_radix(text, 16) {
                    Ok(v) => (v, 1 + digits),
                    Err(_) => (b'x', 1),
                }
            }
            b'0'..=b'7' => {
                let digits = b[i..]
                    .iter()
                    .take(3)
                    .take_while(|d| matches!(d, b'0'..=b'7'))
                    .count();
                let text = std::str::from_utf8(&b[i..i + digits]).unwrap_or("0");
                (u32::from_str_radix(text, 8).unwrap_or(0) as u8, digits)
            }
            other => (other, 1),
        };
        out.push(byte);
        i += used;
    }
    out
}

/// One entry per SSID, from the strongest access point (in use if any of them is), strongest
/// first; hidden networks (empty SSID) are dropped.
fn strongest_per_ssid(networks: impl Iterator<Item = WifiNetwork>) -> Vec<WifiNetwork> {
    let mut by_ssid: BTreeMap<String, WifiNetwork> = BTreeMap::new();
    for n in networks.filter(|n| !n.ssid.is_empty()) {
        match by_ssid.entry(n.ssid.clone()) {
            Entry::Vacant(e) => {
                e.insert(n);
            }
            Entry::Occupied(mut e) => {
                let in_use = e.get().in_use || n.in_use;
                if n.signal_percent > e.get().signal_percent {
                    e.insert(n);
                }
                e.get_mut().in_use = in_use;
            }
        }
    }
    let mut list: Vec<WifiNetwork> = by_ssid.into_values().collect();
    list.sort_by(|a, b| {
        b.signal_percent
            .cmp(&a.signal_percent)
            .then_with(|| a.ssid.cmp(&b.ssid))
    });
    list
}

/// Runs a tool with a fixed locale and no stdin; its stdout, or why it failed.
fn run(program: &Path, args: &[&str]) -> Result<String, WifiError> {
    let output = Command::new(program)
        .args(args)
        // Untranslated keywords (`yes`, `connected`) and UTF-8 SSIDs.
        .env("LC_ALL", "C.UTF-8")
        .env_remove("LANGUAGE")
        .stdin(Stdio::null())
        .output()
        .map_err(|source| WifiError::Spawn {
            program: program.to_owned(),
            source,
        })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let mut stderr = stderr.trim().to_owned();
        if stderr.len() > STDERR_LIMIT {
            let mut end = STDERR_LIMIT;
            while !stderr.is_char_boundary(end) {
                end -= 1;
            }
            stderr.truncate(end);
        }
        return Err(WifiError::Command {
            program: program.to_owned(),
            command: args.join(" "),
            status: output.status,
            stderr,
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The first executable `name` in a `PATH`-style list.
fn find_on_path(path: &OsStr, name: &str) -> Option<PathBuf> {
    std::env::split_paths(path)
        .map(|dir| dir.join(name))
        .find(|p| {
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// The first interface under `<sysfs>/class/net` that is wireless, by name.
fn wireless_interface(sysfs: &Path) -> Option<String> {
    let mut names: Vec<String> = fs::read_dir(sysfs.join("class/net"))
        .ok()?
        .filter_map(|e| e.ok())
        .filter(|e| {
            let p = e.path();
            p.join("wireless").exists() || p.join("phy80211").exists()
        })
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names.into_iter().next()
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> WifiError + use<> {
    let path = path.to_owned();
    move |source| WifiError::Io { op, path, source }
}

fn sync_dir(dir: &Path) -> Result<(), WifiError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("sync", dir))
}

/// Replaces `path` with `contents`, mode 0600, atomically and durably: a new temporary file in
/// the same directory, synced, renamed over `path`, then the directory synced.
fn write_private(path: &Path, contents: &[u8]) -> Result<(), WifiError> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let dir = path.parent().unwrap_or(Path::new("/"));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let tmp = dir.join(format!(
        ".{name}.{}.{}.tmp",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let written = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io("create", &tmp))
        .and_then(|mut file| {
            file.write_all(contents)
                .and_then(|()| file.sync_all())
                .map_err(io("write", &tmp))
        })
        .and_then(|()| fs::rename(&tmp, path).map_err(io("rename into place", path)));
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written?;
    sync_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invalid(r: Result<KeyKind, WifiError>) -> (&'static str, String) {
        match r {
            Err(WifiError::Invalid { field, reason }) => (field, reason),
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn validation_names_the_field_and_the_reason() {
        let ok = Passphrase::from("correct horse");
        assert_eq!(validate("home", &ok).expect("valid"), KeyKind::Passphrase);
        assert_eq!(
            validate("home", &Passphrase::default()).expect("open"),
            KeyKind::Open
        );
        assert_eq!(
            validate("home", &Passphrase::new("aB".repeat(32))).expect("raw"),
            KeyKind::RawPsk
        );
        assert_eq!(
            validate(&"é".repeat(16), &ok).expect("32 bytes"),
            KeyKind::Passphrase
        );

        let (field, reason) = invalid(validate(&"x".repeat(33), &ok));
        assert_eq!(field, "ssid");
        assert!(reason.contains("33 bytes"), "{reason}");
        assert_eq!(invalid(validate("", &ok)).0, "ssid");
        assert_eq!(invalid(validate("a\0b", &ok)).0, "ssid");

        let (field, reason) = invalid(validate("home", &Passphrase::from("1234567")));
        assert_eq!(field, "passphrase");
        assert!(
            reason.contains("is 7 characters") && reason.contains("8 to 63"),
            "{reason}"
        );
        let (field, reason) = invalid(validate("home", &Passphrase::new("g".repeat(64))));
        assert_eq!(field, "passphrase");
        assert!(reason.contains("hex"), "{reason}");
        assert_eq!(
            invalid(validate("home", &Passphrase::new("x".repeat(65)))).0,
            "passphrase"
        );
        let (_, reason) = invalid(validate("home", &Passphrase::from("pässwörd123")));
        assert!(reason.contains("printable ASCII"), "{reason}");
        assert!(!reason.contains("pässwörd"), "{reason}");
    }

    #[test]
    fn a_passphrase_never_prints() {
        let p = Passphrase::from("hunter2hunter2");
        assert_eq!(format!("{p:?}"), "Passphrase(<redacted>)");
        assert_eq!(format!("{:?}", Some(&p)), "Some(Passphrase(<redacted>))");
    }

    #[test]
    fn terse_fields_unescape_colons_and_backslashes() {
        assert_eq!(
            split_terse(r"*:my\:net:72:WPA2"),
            ["*", "my:net", "72", "WPA2"]
        );
        assert_eq!(
            split_terse(r" :back\\slash\\:5:"),
            [" ", r"back\slash\", "5", ""]
        );
        assert_eq!(split_terse(r"a\"), [r"a\"]);
    }

    #[test]
    fn security_from_both_tools() {
        assert_eq!(nm_security(""), Security::Open);
        assert_eq!(nm_security("WPA1 WPA2"), Security::Wpa2Psk);
        assert_eq!(nm_security("WPA2 WPA3"), Security::Wpa2Psk);
        assert_eq!(nm_security("WPA3"), Security::Wpa3Sae);
        assert_eq!(
            nm_security("WPA2 802.1X"),
            Security::Other("WPA2 802.1X".into())
        );
        assert_eq!(wpa_security("[ESS]"), Security::Open);
        assert_eq!(wpa_security("[WPA2-PSK-CCMP][WPS][ESS]"), Security::Wpa2Psk);
        assert_eq!(wpa_security("[WPA2-PSK+SAE-CCMP][ESS]"), Security::Wpa2Psk);
        assert_eq!(wpa_security("[RSN-SAE-CCMP][ESS]"), Security::Wpa3Sae);
        assert_eq!(
            wpa_security("[WPA2-EAP-CCMP][ESS]"),
            Security::Other("WPA2-EAP-CCMP".into())
        );
        assert_eq!(wpa_security("[WEP][ESS]"), Security::Other("WEP".into()));
    }

    #[test]
    fn dbm_maps_like_network_manager() {
        assert_eq!(dbm_to_percent(-30), 100);
        assert_eq!(dbm_to_percent(-40), 100);
        assert_eq!(dbm_to_percent(-70), 50);
        assert_eq!(dbm_to_percent(-85), 25);
        assert_eq!(dbm_to_percent(-100), 0);
        assert_eq!(dbm_to_percent(-120), 0);
        assert_eq!(dbm_to_percent(60), 60);
        assert_eq!(dbm_to_percent(180), 100);
    }

    #[test]
    fn printf_escapes_decode() {
        assert_eq!(printf_decode(r#"a\\b\"c"#), br#"a\b"c"#);
        assert_eq!(printf_decode(r"caf\xc3\xa9"), "café".as_bytes());
        assert_eq!(printf_decode(r"\x00\x00"), [0, 0]);
        assert_eq!(printf_decode(r"\101\tz\e"), b"A\tz\x1b");
        assert_eq!(printf_decode(r"end\"), br"end\");
    }

    #[test]
    fn keyfile_values_escape_like_glib() {
        assert_eq!(keyfile_escape(r"a;b=c#d e\f"), r"a;b=c#d e\\f");
        assert_eq!(keyfile_escape("  two  "), r"\s\stwo\s\s");
        assert_eq!(keyfile_escape("\t\n"), r"\t\n");
        assert_eq!(keyfile_ssid("my net=#\"x"), "my net=#\"x");
        assert_eq!(keyfile_ssid("a;b"), "97;59;98;");
        assert_eq!(keyfile_ssid("é"), "195;169;");
        assert_eq!(keyfile_ssid(" lead"), "32;108;101;97;100;");
    }

    #[test]
    fn profile_names_are_safe_and_distinct() {
        let a = profile_name("my net/../x");
        assert!(a.starts_with("edge-agent-my_net_.._x-"), "{a}");
        assert!(!a.contains('/'));
        assert_ne!(profile_name("my net"), profile_name("my_net"));
        assert_eq!(profile_uuid("x"), profile_uuid("x"));
        let u = profile_uuid("x");
        assert_eq!((u.len(), &u[14..15]), (36, "8"));
    }

    #[test]
    fn the_psk_matches_the_ieee_test_vector() {
        // IEEE 802.11i-2004 annex H.4.
        assert_eq!(
            hex::encode(&wpa_psk("IEEE", &Passphrase::from("password"))),
            "f42c6fc52df0ebef9ebb4b90b38a5f902e83fe1b135a70e23aed762e9710a12e"
        );
    }

    #[test]
    fn plan_refuses_mismatches() {
        use KeyKind as K;
        assert_eq!(plan("n", K::Passphrase, None).expect("hidden"), Auth::Psk);
        assert_eq!(plan("n", K::Open, None).expect("hidden open"), Auth::Open);
        let wpa3 = Security::Wpa3Sae;
        assert_eq!(
            plan("n", K::Passphrase, Some(&wpa3)).expect("sae"),
            Auth::Sae
        );
        assert!(plan("n", K::RawPsk, Some(&wpa3)).is_err());
        assert!(plan("n", K::Open, Some(&Security::Wpa2Psk)).is_err());
        assert!(plan("n", K::Passphrase, Some(&Security::Open)).is_err());
        let eap = Security::Other("WPA2 802.1X".into());
        assert!(matches!(
            plan("n", K::Passphrase, Some(&eap)),
            Err(WifiError::Invalid { field: "ssid", .. })
        ));
    }

    #[test]
    fn managed_blocks_come_out_and_the_rest_stays() {
        let conf = "ctrl_interface=/run/wpa_supplicant\n\nnetwork={\n\tssid=\"mine\"\n}\n\
                    network={\n\tid_str=\"edge-agent-a\"\n\tssid=\"a\"\n}\n# tail\n";
        let (out, n) = remove_networks(conf, |id| id.starts_with(MANAGED_PREFIX));
        assert_eq!(n, 1);
        assert_eq!(
            out.as_str(),
            "ctrl_interface=/run/wpa_supplicant\n\nnetwork={\n\tssid=\"mine\"\n}\n# tail\n"
        );
        let (out, n) = remove_networks("network={\n\tid_str=\"edge-agent-a\"\n", |_| true);
        assert_eq!(
            (out.as_str(), n),
            ("network={\n\tid_str=\"edge-agent-a\"\n", 0)
        );
    }

    #[test]
    fn scans_keep_the_strongest_of_each_ssid() {
        let out = "*:dup:40:WPA2\n:dup:70:WPA2\n::90:WPA2\n:solo:55:\nbroken line\n";
        let nets = parse_nmcli_scan(out);
        assert_eq!(nets.len(), 2);
        assert_eq!((nets[0].ssid.as_str(), nets[0].signal_percent), ("dup", 70));
        assert!(nets[0].in_use, "in use through its weaker access point");
        assert_eq!(nets[1].security, Security::Open);
    }

    #[test]
    fn missing_manager_is_an_error_not_a_panic() {
        let empty = tempfile::tempdir().expect("tempdir");
        let wifi = LinuxWifi {
            search_path: Some(empty.path().into()),
            sysfs: empty.path().into(),
            ..LinuxWifi::default()
        };
        assert!(matches!(wifi.detect(), WifiManager::Missing));
        let err = wifi.scan().expect_err("no manager");
        assert!(matches!(err, WifiError::NotFound { .. }));
        assert!(err.to_string().contains("nmcli"), "{err}");
        assert!(matches!(wifi.forget_all(), Err(WifiError::NotFound { .. })));
    }
}
