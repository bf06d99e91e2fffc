//! wpa_supplicant through `wpa_cli`: scans and status from its replies, credentials in a managed
//! `network={}` block of its config file, which it is told to re-read.

use std::fs;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Duration;

use edge_identity::hex;
use zeroize::Zeroizing;

use super::os::{io, run, write_private};
use super::{
    KeyKind, MANAGED_PREFIX, Passphrase, Security, Wifi, WifiError, WifiNetwork, WifiStatus,
    dbm_to_percent, profile_name, strongest_per_ssid, validate,
};

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

/// `wpa_cli scan_results` output (`bssid / frequency / signal level / flags / ssid`, tab
/// separated, SSID printf-escaped) as networks.
pub(super) fn parse_wpa_scan(out: &str) -> Vec<WifiNetwork> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn security_from_scan_flags() {
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
    fn printf_escapes_decode() {
        assert_eq!(printf_decode(r#"a\\b\"c"#), br#"a\b"c"#);
        assert_eq!(printf_decode(r"caf\xc3\xa9"), "café".as_bytes());
        assert_eq!(printf_decode(r"\x00\x00"), [0, 0]);
        assert_eq!(printf_decode(r"\101\tz\e"), b"A\tz\x1b");
        assert_eq!(printf_decode(r"end\"), br"end\");
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
}
