//! NetworkManager through `nmcli`: scans and status from its terse output, credentials in a
//! keyfile under `system-connections` that NetworkManager is told to reload.

use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;

use edge_identity::hex;
use zeroize::Zeroizing;

use super::os::{io, run, sync_dir, write_private};
use super::{
    KeyKind, MANAGED_PREFIX, Passphrase, Security, Wifi, WifiError, WifiNetwork, WifiStatus,
    profile_name, strongest_per_ssid, validate,
};

/// How long `nmcli connection up` may wait for the link, in seconds.
const NMCLI_WAIT_SECS: &str = "45";

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

/// The keyfile for a WPA2 network `ssid` with `passphrase`, not seen by a scan (fuzz targets).
#[cfg(feature = "fuzzing")]
pub(super) fn keyfile_for_fuzzing(ssid: &str, passphrase: &Passphrase) -> Zeroizing<String> {
    nm_keyfile(ssid, ssid, Auth::Psk, passphrase, true)
}

/// `hidden` marks a network the scan did not see, so that NetworkManager probes for it by name.
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
pub(super) fn parse_nmcli_scan(out: &str) -> Vec<WifiNetwork> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn security_from_nmcli() {
        assert_eq!(nm_security(""), Security::Open);
        assert_eq!(nm_security("WPA1 WPA2"), Security::Wpa2Psk);
        assert_eq!(nm_security("WPA2 WPA3"), Security::Wpa2Psk);
        assert_eq!(nm_security("WPA3"), Security::Wpa3Sae);
        assert_eq!(
            nm_security("WPA2 802.1X"),
            Security::Other("WPA2 802.1X".into())
        );
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
    fn profile_uuids_are_stable_version_8() {
        assert_eq!(profile_uuid("x"), profile_uuid("x"));
        assert_ne!(profile_uuid("x"), profile_uuid("y"));
        let u = profile_uuid("x");
        assert_eq!((u.len(), &u[14..15]), (36, "8"));
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
    fn scans_keep_the_strongest_of_each_ssid() {
        let out = "*:dup:40:WPA2\n:dup:70:WPA2\n::90:WPA2\n:solo:55:\nbroken line\n";
        let nets = parse_nmcli_scan(out);
        assert_eq!(nets.len(), 2);
        assert_eq!((nets[0].ssid.as_str(), nets[0].signal_percent), ("dup", 70));
        assert!(nets[0].in_use, "in use through its weaker access point");
        assert_eq!(nets[1].security, Security::Open);
    }
}
