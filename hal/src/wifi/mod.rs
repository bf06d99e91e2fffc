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
//!
//! Layout: this module holds the trait, the types every implementation shares, validation and
//! the choice of manager; `network_manager` and `wpa_supplicant` hold one manager each, `os` the
//! process and file plumbing both use, and `signal` the dBm/percent scales.

mod network_manager;
mod os;
mod signal;
mod wpa_supplicant;

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;

use edge_identity::hex;
use serde::Serialize;
use zeroize::Zeroizing;

/// Entry points for the fuzz targets (`hal/fuzz`): what the Wi-Fi tools print about networks
/// in range (SSIDs come from the air) and the keyfile written for the owner's choice. Not an
/// API.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing {
    use super::{Passphrase, WifiNetwork};

    /// `nmcli -t -f IN-USE,SSID,SIGNAL,SECURITY device wifi list` output as networks.
    pub fn parse_nmcli_scan(out: &str) -> Vec<WifiNetwork> {
        super::network_manager::parse_nmcli_scan(out)
    }

    /// `wpa_cli scan_results` output as networks.
    pub fn parse_wpa_scan(out: &str) -> Vec<WifiNetwork> {
        super::wpa_supplicant::parse_wpa_scan(out)
    }

    /// The NetworkManager keyfile for a hidden WPA2 network.
    pub fn nm_keyfile(ssid: &str, passphrase: &Passphrase) -> String {
        super::network_manager::keyfile_for_fuzzing(ssid, passphrase).to_string()
    }
}

pub use network_manager::NetworkManagerWifi;
pub use signal::{dbm_to_percent, percent_to_dbm};
pub use wpa_supplicant::WpaSupplicantWifi;

/// Prefix of every name this agent gives a Wi-Fi profile: keyfile, connection id, `id_str`.
pub const MANAGED_PREFIX: &str = "edge-agent-";

/// Errors scanning, provisioning or forgetting Wi-Fi networks.
#[derive(Debug, thiserror::Error)]
pub enum WifiError {
    /// No Wi-Fi manager's client is installed.
    #[error("no Wi-Fi manager on this machine: found neither {tool} on PATH")]
    NotFound {
        /// Both clients, as one phrase for the message: `nmcli (NetworkManager) nor wpa_cli
        /// (wpa_supplicant)`.
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
        /// The client's path as found on the search path, e.g. `/usr/bin/nmcli`.
        program: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The tool ran and failed.
    #[error("`{} {command}` failed ({status}): {stderr}", program.display())]
    Command {
        /// The client's path as found on the search path, e.g. `/usr/bin/nmcli`.
        program: PathBuf,
        /// Its arguments, which never hold a secret.
        command: String,
        /// Its exit status: a non-zero code, or the signal that killed it.
        status: ExitStatus,
        /// What it printed on stderr, trimmed and capped at 2 KiB.
        stderr: String,
    },
    /// The tool exited cleanly but refused the request (`wpa_cli` answering `FAIL`).
    #[error("`{} {command}` answered {reply:?}", program.display())]
    Rejected {
        /// `wpa_cli`'s path as found on the search path.
        program: PathBuf,
        /// Its arguments, `-i <interface> <command>`; never a secret.
        command: String,
        /// Its reply, trimmed, e.g. `FAIL`.
        reply: String,
    },
    /// A file or directory could not be read or written.
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        /// The step: `create`, `list`, `remove`, `read`, `write`, `rename into place` or `sync`.
        op: &'static str,
        /// A credentials file, the temporary written beside it, or the directory (`create`, `list`,
        /// `sync`).
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// How a network authenticates its clients.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Security {
    /// No authentication: nmcli's SECURITY is empty or `--`, or wpa_supplicant's flags name no
    /// WPA, RSN, WEP, OWE or OSEN.
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
    /// The SSID, never empty (hidden networks are left out). From wpa_supplicant, bytes that are
    /// not UTF-8 become U+FFFD.
    pub ssid: String,
    /// Signal quality, 0 to 100 (see [`dbm_to_percent`] for wpa_supplicant's dBm, and
    /// [`percent_to_dbm`] for the way back).
    pub signal_percent: u8,
    /// How its strongest access point authenticates.
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

    /// The SSID the box is associated with and the Wi-Fi interface, as the manager reports them.
    fn status(&self) -> Result<WifiStatus, WifiError>;

    /// Erases every Wi-Fi credential this agent provisioned, and nothing else (factory reset).
    fn forget_all(&self) -> Result<(), WifiError>;
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
    fn profile_names_are_safe_and_distinct() {
        let a = profile_name("my net/../x");
        assert!(a.starts_with("edge-agent-my_net_.._x-"), "{a}");
        assert!(!a.contains('/'));
        assert_ne!(profile_name("my net"), profile_name("my_net"));
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
