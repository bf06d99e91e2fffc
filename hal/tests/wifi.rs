//! Wi-Fi provisioning against stand-ins for `nmcli` and `wpa_cli`: small shell scripts that print
//! the fixtures in `tests/data/` and log their argv, so the real process handling, file writing
//! and parsing run without a radio.

#![allow(
    clippy::tests_outside_test_module,
    reason = "an integration test crate: its tests need no test module"
)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use edge_hal::wifi::{MANAGED_PREFIX, WifiManager, percent_to_dbm};
use edge_hal::{
    LinuxWifi, NetworkManagerWifi, Passphrase, Security, Wifi, WifiError, WpaSupplicantWifi,
};
use tempfile::TempDir;

const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data");

/// A passphrase with every character that needs care in a config file.
const TRICKY: &str = r#" pa;ss=wo"rd #1\ "#;

/// One test at a time: a script written while another thread forks could fail to exec with
/// ETXTBSY (the child inherits the open write descriptor).
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

/// A stand-in tool in its own directory, logging each call's argv as `[a][b]...` lines.
struct Tool {
    dir: TempDir,
    bin: PathBuf,
    log: PathBuf,
}

impl Tool {
    fn new(name: &str, dispatch: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let bin = dir.path().join(name);
        let log = dir.path().join("argv.log");
        let script = format!(
            "#!/bin/sh\nfor a in \"$@\"; do printf '[%s]' \"$a\" >> '{log}'; done\n\
             echo >> '{log}'\n{dispatch}",
            log = log.display()
        );
        std::fs::write(&bin, script).expect("write script");
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        Self { dir, bin, log }
    }

    fn nmcli(up: &str) -> Self {
        Self::new(
            "nmcli",
            &format!(
                r#"case "$*" in
  *IN-USE,SSID,SIGNAL,SECURITY*) cat '{DATA}/nmcli-wifi-list.txt' ;;
  *DEVICE,TYPE,STATE,CONNECTION*) cat '{DATA}/nmcli-device.txt' ;;
  *ACTIVE,SSID*) cat '{DATA}/nmcli-wifi-active.txt' ;;
  "connection reload") ;;
  *"connection up"*) {up} ;;
  *) echo "unexpected: $*" >&2; exit 2 ;;
esac
"#
            ),
        )
    }

    fn wpa_cli(reconfigure: &str) -> Self {
        Self::new(
            "wpa_cli",
            &format!(
                r#"case "$3" in
  scan) echo OK ;;
  scan_results) cat '{DATA}/wpa-scan-results.txt' ;;
  status) cat '{DATA}/wpa-status.txt' ;;
  reconfigure) {reconfigure} ;;
  *) echo "unexpected: $*" >&2; exit 2 ;;
esac
"#
            ),
        )
    }

    fn calls(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// A new directory next to the tool, for config files.
    fn subdir(&self, name: &str) -> PathBuf {
        let dir = self.dir.path().join(name);
        std::fs::create_dir(&dir).expect("mkdir");
        dir
    }
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).expect("stat").permissions().mode() & 0o777
}

fn ls(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn nm(tool: &Tool) -> NetworkManagerWifi {
    NetworkManagerWifi {
        nmcli: tool.bin.clone(),
        connections_dir: tool.dir.path().join("system-connections"),
    }
}

fn wpa(tool: &Tool) -> WpaSupplicantWifi {
    let conf = tool.subdir("etc").join("wpa_supplicant-wlan0.conf");
    std::fs::copy(format!("{DATA}/wpa_supplicant-wlan0.conf"), &conf).expect("copy conf");
    std::fs::set_permissions(&conf, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    WpaSupplicantWifi {
        scan_wait: std::time::Duration::ZERO,
        ..WpaSupplicantWifi::new(tool.bin.clone(), conf, "wlan0")
    }
}

fn assert_no_secret(tool: &Tool) {
    let log = std::fs::read_to_string(&tool.log).unwrap_or_default();
    for secret in [TRICKY, TRICKY.trim(), "wo\"rd", "correct horse battery"] {
        assert!(!log.contains(secret), "passphrase in argv log:\n{log}");
    }
}

#[test]
fn nm_scan_parses_escaped_ssids_signal_and_security() {
    let _serial = serial();
    let tool = Tool::nmcli("true");
    let nets = nm(&tool).scan().expect("scan");
    let seen: Vec<(&str, u8, &Security, bool)> = nets
        .iter()
        .map(|n| (n.ssid.as_str(), n.signal_percent, &n.security, n.in_use))
        .collect();
    let corp = Security::Other("WPA2 802.1X".into());
    assert_eq!(
        seen,
        [
            ("corp", 90, &corp, false),
            ("my:net", 72, &Security::Wpa2Psk, true),
            ("Café Ünïcødé ☕", 64, &Security::Wpa2Psk, false),
            ("Guest", 45, &Security::Open, false),
            (r"back\slash\", 38, &Security::Wpa3Sae, false),
        ]
    );
    assert_eq!(
        tool.calls(),
        ["[-t][-f][IN-USE,SSID,SIGNAL,SECURITY][device][wifi][list][--rescan][auto]"]
    );
}

#[test]
fn nm_connect_writes_a_private_keyfile_and_never_passes_the_passphrase() {
    let _serial = serial();
    let tool = Tool::nmcli("echo activated");
    let wifi = nm(&tool);

    // Not in the scan: written as hidden, WPA-PSK; odd characters make the SSID a byte list.
    let ssid = "Café ;=\"#x";
    wifi.connect(ssid, &Passphrase::from(TRICKY))
        .expect("connect");
    let files = ls(&wifi.connections_dir);
    assert_eq!(files.len(), 1, "{files:?}");
    let name = files[0].strip_suffix(".nmconnection").expect("suffix");
    assert!(name.starts_with("edge-agent-Caf___"), "{name}");
    let path = wifi.connections_dir.join(&files[0]);
    assert_eq!(mode(&path), 0o600);
    let keyfile = std::fs::read_to_string(&path).expect("read");
    let ssid_bytes: String = ssid.bytes().map(|b| format!("{b};")).collect();
    for line in [
        format!("id={name}"),
        "type=wifi".into(),
        format!("ssid={ssid_bytes}"),
        "hidden=true".into(),
        "key-mgmt=wpa-psk".into(),
        r#"psk=\spa;ss=wo"rd #1\\\s"#.into(),
    ] {
        assert!(
            keyfile.lines().any(|l| l == line),
            "no {line:?} in\n{keyfile}"
        );
    }
    assert_eq!(
        tool.calls()[1..],
        [
            "[connection][reload]".to_owned(),
            format!("[--wait][45][connection][up][id][{name}]")
        ]
    );

    // Seen in the scan as WPA2: plain SSID, not hidden. As WPA3-only: SAE.
    wifi.connect("my:net", &Passphrase::from("correct horse battery"))
        .expect("connect");
    wifi.connect(r"back\slash\", &Passphrase::from("correct horse battery"))
        .expect("connect");
    let files = ls(&wifi.connections_dir);
    assert_eq!(files.len(), 3, "{files:?}");
    let my_net = files
        .iter()
        .find(|f| f.starts_with("edge-agent-my_net-"))
        .expect("my:net keyfile");
    let keyfile = std::fs::read_to_string(wifi.connections_dir.join(my_net)).expect("read");
    assert!(keyfile.contains("\nssid=my:net\n"), "{keyfile}");
    assert!(!keyfile.contains("hidden"), "{keyfile}");
    let slash = files
        .iter()
        .find(|f| f.starts_with("edge-agent-back_slash_-"))
        .expect("back\\slash\\ keyfile");
    let keyfile = std::fs::read_to_string(wifi.connections_dir.join(slash)).expect("read");
    assert!(keyfile.contains("\nkey-mgmt=sae\n"), "{keyfile}");
    assert!(keyfile.contains("\nssid=98;97;99;107;92;"), "{keyfile}");

    // Connecting again to the same network replaces its file.
    wifi.connect("my:net", &Passphrase::from("another passphrase"))
        .expect("connect");
    assert_eq!(ls(&wifi.connections_dir).len(), 3);
    assert_no_secret(&tool);
}

#[test]
fn nm_refuses_a_mismatch_with_the_scan() {
    let _serial = serial();
    let tool = Tool::nmcli("true");
    let wifi = nm(&tool);
    let err = wifi
        .connect("my:net", &Passphrase::default())
        .expect_err("secured network, no passphrase");
    assert!(
        matches!(
            err,
            WifiError::Invalid {
                field: "passphrase",
                ..
            }
        ),
        "{err}"
    );
    let err = wifi
        .connect("corp", &Passphrase::from("correct horse battery"))
        .expect_err("802.1X");
    assert!(err.to_string().contains("802.1X"), "{err}");
    assert!(!wifi.connections_dir.exists());
}

#[test]
fn nm_forget_all_removes_only_its_own_files() {
    let _serial = serial();
    let tool = Tool::nmcli("true");
    let wifi = nm(&tool);
    std::fs::create_dir(&wifi.connections_dir).expect("mkdir");
    for f in [
        "edge-agent-old-01234567.nmconnection",
        ".edge-agent-old-01234567.nmconnection.99.0.tmp",
        "home.nmconnection",
        "Wired connection 1.nmconnection",
        "edge-agent-notes.txt",
    ] {
        std::fs::write(wifi.connections_dir.join(f), "x").expect("write");
    }
    wifi.forget_all().expect("forget");
    assert_eq!(
        ls(&wifi.connections_dir),
        [
            "Wired connection 1.nmconnection",
            "edge-agent-notes.txt",
            "home.nmconnection"
        ]
    );
    assert_eq!(tool.calls(), ["[connection][reload]"]);
    wifi.forget_all().expect("forget again");
    assert_eq!(tool.calls().len(), 1, "nothing removed, nothing reloaded");
}

#[test]
fn nm_status_reports_the_wifi_device_and_its_network() {
    let _serial = serial();
    let tool = Tool::nmcli("true");
    let status = nm(&tool).status().expect("status");
    assert_eq!(status.interface.as_deref(), Some("wlan0"));
    assert_eq!(status.connected_ssid.as_deref(), Some("my:net"));
    assert_eq!(
        tool.calls()[1],
        "[-t][-f][ACTIVE,SSID][device][wifi][list][ifname][wlan0][--rescan][no]"
    );
}

#[test]
fn a_failing_tool_is_a_command_error_naming_it_with_its_stderr() {
    let _serial = serial();
    let tool = Tool::nmcli(
        "echo 'Error: Connection activation failed: Secrets were required' >&2; exit 4",
    );
    let err = nm(&tool)
        .connect("my:net", &Passphrase::from("correct horse battery"))
        .expect_err("up fails");
    let WifiError::Command {
        program,
        command,
        status,
        stderr,
    } = &err
    else {
        panic!("expected Command, got {err:?}");
    };
    assert_eq!(program, &tool.bin);
    assert!(command.starts_with("--wait 45 connection up id edge-agent-my_net-"));
    assert_eq!(status.code(), Some(4));
    assert_eq!(
        stderr,
        "Error: Connection activation failed: Secrets were required"
    );
    let text = err.to_string();
    assert!(text.contains(&tool.bin.display().to_string()), "{text}");
    assert!(!text.contains("correct horse"), "{text}");

    let tool = Tool::wpa_cli("echo 'Failed to connect to wpa_supplicant' >&2; exit 4");
    let err = wpa(&tool)
        .connect("home", &Passphrase::from("correct horse battery"))
        .expect_err("reconfigure fails");
    assert!(
        matches!(&err, WifiError::Command { status, stderr, .. }
            if status.code() == Some(4) && stderr.contains("Failed to connect")),
        "{err:?}"
    );
}

#[test]
fn invalid_credentials_are_refused_before_anything_runs() {
    let _serial = serial();
    let tool = Tool::nmcli("true");
    let wpa_tool = Tool::wpa_cli("echo OK");
    let good = Passphrase::from("correct horse battery");
    let cases = [
        ("x".repeat(33), good.clone(), "ssid", "33 bytes"),
        (
            "home".into(),
            Passphrase::from("1234567"),
            "passphrase",
            "7",
        ),
        (
            "home".into(),
            Passphrase::new("z".repeat(64)),
            "passphrase",
            "hex",
        ),
    ];
    let wifis: [&dyn Wifi; 2] = [&nm(&tool), &wpa(&wpa_tool)];
    for wifi in wifis {
        for (ssid, pass, want_field, want_reason) in &cases {
            match wifi.connect(ssid, pass) {
                Err(WifiError::Invalid { field, reason }) => {
                    assert_eq!(field, *want_field);
                    assert!(reason.contains(want_reason), "{reason}");
                }
                other => panic!("expected Invalid, got {other:?}"),
            }
        }
    }
    assert!(tool.calls().is_empty() && wpa_tool.calls().is_empty());
}

#[test]
fn wpa_scan_parses_flags_dbm_and_escaped_ssids() {
    let _serial = serial();
    let tool = Tool::wpa_cli("echo OK");
    let nets = wpa(&tool).scan().expect("scan");
    let seen: Vec<(&str, u8, &Security, bool)> = nets
        .iter()
        .map(|n| (n.ssid.as_str(), n.signal_percent, &n.security, n.in_use))
        .collect();
    let eap = Security::Other("WPA2-EAP-CCMP".into());
    assert_eq!(
        seen,
        [
            ("corp", 92, &eap, false),
            ("home\"net", 80, &Security::Wpa2Psk, true),
            (r"café \ wpa3", 65, &Security::Wpa3Sae, false),
            ("Guest", 25, &Security::Open, false),
        ]
    );
    assert_eq!(
        tool.calls(),
        [
            "[-i][wlan0][scan]",
            "[-i][wlan0][scan_results]",
            "[-i][wlan0][status]"
        ]
    );
}

/// What the agent reports to the phone is `percent_to_dbm` of the scan's quality: it must land
/// within 1 dB of what the driver said for the strongest access point.
#[test]
fn wpa_scan_quality_converts_back_to_the_drivers_dbm() {
    let _serial = serial();
    let tool = Tool::wpa_cli("echo OK");
    let nets = wpa(&tool).scan().expect("scan");
    let dbm: Vec<(&str, i16)> = nets
        .iter()
        .map(|n| (n.ssid.as_str(), percent_to_dbm(n.signal_percent)))
        .collect();
    let reported = [
        ("corp", -45),
        ("home\"net", -52),
        (r"café \ wpa3", -61),
        ("Guest", -85),
    ];
    assert_eq!(dbm.len(), reported.len(), "{dbm:?}");
    for ((ssid, got), (want_ssid, want)) in dbm.iter().zip(reported) {
        assert_eq!(*ssid, want_ssid);
        assert!(
            got.abs_diff(want) <= 1,
            "{ssid}: {got} dBm, driver said {want}"
        );
    }
}

#[test]
fn wpa_connect_and_forget_all_rewrite_only_the_managed_blocks() {
    let _serial = serial();
    let tool = Tool::wpa_cli("echo OK");
    let wifi = wpa(&tool);
    let original = std::fs::read_to_string(&wifi.conf).expect("read");

    let ssid = "home\"net #1 ☕";
    wifi.connect(ssid, &Passphrase::from(TRICKY))
        .expect("connect");
    assert_eq!(mode(&wifi.conf), 0o600);
    let conf = std::fs::read_to_string(&wifi.conf).expect("read");
    assert!(conf.starts_with(&original), "user's part kept:\n{conf}");
    let block = &conf[original.len()..];
    let lines: Vec<&str> = block.lines().map(str::trim).collect();
    assert_eq!(lines[0], "network={");
    assert!(lines[1].starts_with(&format!("id_str=\"{MANAGED_PREFIX}")));
    assert_eq!(
        lines[2],
        format!("ssid={}", edge_identity::hex::encode(ssid.as_bytes()))
    );
    assert!(lines.contains(&"key_mgmt=WPA-PSK SAE"), "{block}");
    let psk = lines
        .iter()
        .find_map(|l| l.strip_prefix("psk="))
        .expect("psk");
    assert!(psk.len() == 64 && psk.bytes().all(|b| b.is_ascii_hexdigit()));
    let sae = format!(
        "sae_password={}",
        edge_identity::hex::encode(TRICKY.as_bytes())
    );
    assert!(lines.contains(&sae.as_str()), "{block}");
    assert!(
        !conf.contains(TRICKY.trim()),
        "plaintext passphrase in\n{conf}"
    );
    assert_eq!(tool.calls(), ["[-i][wlan0][reconfigure]"]);

    // The same network again replaces its block; a second network adds one; a plain SSID is
    // quoted; a raw PSK is written as given.
    wifi.connect(ssid, &Passphrase::from("correct horse battery"))
        .expect("again");
    let raw = "0123456789ABCDEF".repeat(4);
    wifi.connect("cafe", &Passphrase::new(raw.clone()))
        .expect("second");
    let conf = std::fs::read_to_string(&wifi.conf).expect("read");
    assert_eq!(conf.matches("network={").count(), 3, "{conf}");
    assert!(conf.contains("\tssid=\"cafe\"\n\tscan_ssid=1\n\tkey_mgmt=WPA-PSK\n\tpsk="));
    assert!(
        conf.contains(&format!("psk={}\n", raw.to_lowercase())),
        "{conf}"
    );
    assert!(!conf.contains(TRICKY.trim()));

    wifi.forget_all().expect("forget");
    assert_eq!(std::fs::read_to_string(&wifi.conf).expect("read"), original);
    assert_eq!(tool.calls().len(), 4);
    wifi.forget_all().expect("forget again");
    assert_eq!(tool.calls().len(), 4, "nothing removed, no reconfigure");
    assert_no_secret(&tool);
    let dir = wifi.conf.parent().expect("dir");
    assert_eq!(
        ls(dir),
        ["wpa_supplicant-wlan0.conf"],
        "no temporary files left"
    );
}

#[test]
fn wpa_puts_the_old_config_back_when_the_supplicant_refuses_it() {
    let _serial = serial();
    let tool = Tool::wpa_cli("echo FAIL");
    let wifi = wpa(&tool);
    let original = std::fs::read_to_string(&wifi.conf).expect("read");
    let err = wifi
        .connect("home", &Passphrase::from("correct horse battery"))
        .expect_err("refused");
    assert!(
        matches!(&err, WifiError::Rejected { reply, .. } if reply == "FAIL"),
        "{err:?}"
    );
    assert_eq!(std::fs::read_to_string(&wifi.conf).expect("read"), original);
}

#[test]
fn wpa_status_decodes_the_ssid() {
    let _serial = serial();
    let tool = Tool::wpa_cli("echo OK");
    let status = wpa(&tool).status().expect("status");
    assert_eq!(status.connected_ssid.as_deref(), Some("home\"net"));
    assert_eq!(status.interface.as_deref(), Some("wlan0"));
}

#[test]
fn linux_wifi_prefers_network_manager_then_wpa_supplicant() {
    let _serial = serial();
    let wpa_tool = Tool::wpa_cli("echo OK");
    let root = wpa_tool.subdir("root");
    std::fs::create_dir_all(root.join("class/net/wlp1s0/wireless")).expect("mkdir");
    std::fs::create_dir_all(root.join("class/net/eth0")).expect("mkdir");
    std::fs::write(root.join("wpa_supplicant-wlp1s0.conf"), "").expect("write");
    // A non-executable nmcli does not count.
    std::fs::write(root.join("nmcli"), "").expect("write");
    let bins = std::env::join_paths([root.clone(), wpa_tool.dir.path().into()]).expect("path");
    let mut linux = LinuxWifi {
        search_path: Some(bins),
        sysfs: root.clone(),
        nm_connections_dir: root.join("nm"),
        wpa_conf_dir: root.clone(),
    };
    match linux.detect() {
        WifiManager::WpaSupplicant(w) => {
            assert_eq!(w.wpa_cli, wpa_tool.bin);
            assert_eq!(w.interface, "wlp1s0");
            assert_eq!(w.conf, root.join("wpa_supplicant-wlp1s0.conf"));
        }
        other => panic!("expected wpa_supplicant, got {other:?}"),
    }

    let nm_tool = Tool::nmcli("true");
    linux.search_path =
        Some(std::env::join_paths([wpa_tool.dir.path(), nm_tool.dir.path()]).expect("path"));
    match linux.detect() {
        WifiManager::NetworkManager(n) => {
            assert_eq!(n.nmcli, nm_tool.bin);
            assert_eq!(n.connections_dir, root.join("nm"));
        }
        other => panic!("expected NetworkManager, got {other:?}"),
    }
    assert_eq!(linux.scan().expect("scan through nmcli").len(), 5);
}

#[cfg(feature = "fake")]
#[test]
fn the_fake_validates_records_and_forgets() {
    use edge_hal::WifiNetwork;
    use edge_hal::fake::{FakeConnect, FakeWifi};

    let wifi = FakeWifi::default();
    wifi.set_networks(vec![WifiNetwork {
        ssid: "home".into(),
        signal_percent: 70,
        security: Security::Wpa2Psk,
        in_use: false,
    }]);
    assert!(matches!(
        wifi.connect("home", &Passphrase::from("short")),
        Err(WifiError::Invalid {
            field: "passphrase",
            ..
        })
    ));
    wifi.connect("home", &Passphrase::from("correct horse battery"))
        .expect("connect");
    assert_eq!(
        wifi.connects(),
        [FakeConnect {
            ssid: "home".into(),
            with_passphrase: true
        }]
    );
    assert!(!format!("{wifi:?}").contains("correct horse"));
    assert!(wifi.scan().expect("scan")[0].in_use);
    assert_eq!(
        wifi.status().expect("status").connected_ssid.as_deref(),
        Some("home")
    );
    wifi.forget_all().expect("forget");
    assert!(wifi.connects().is_empty());
    assert_eq!(wifi.status().expect("status").connected_ssid, None);
    wifi.set_failure(Some("radio off"));
    assert!(matches!(wifi.scan(), Err(WifiError::Rejected { .. })));
    let hal = edge_hal::Hal::fake();
    assert!(hal.wifi.status().is_ok());
}
