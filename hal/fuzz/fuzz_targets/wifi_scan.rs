//! What the Wi-Fi tools print about the networks in range, as the HAL parses it: anyone nearby
//! chooses an SSID, so both parsers must be total, and every network they give back is one the
//! owner could pick. A pick that passes the checks must give a keyfile with no line of the
//! SSID's or passphrase's making.
#![no_main]

use edge_hal::wifi::fuzzing::{nm_keyfile, parse_nmcli_scan, parse_wpa_scan};
use edge_hal::wifi::{Passphrase, validate};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    for network in parse_nmcli_scan(&text)
        .into_iter()
        .chain(parse_wpa_scan(&text))
    {
        assert!(!network.ssid.is_empty());
        assert!(network.signal_percent <= 100);
    }
    // The owner's pick: an SSID and a passphrase split at the first tab.
    let (ssid, passphrase) = text.split_once('\t').unwrap_or((&text, "12345678"));
    let passphrase = Passphrase::new(passphrase);
    if validate(ssid, &passphrase).is_ok() {
        let reference = nm_keyfile("x", &Passphrase::new("12345678"));
        let keyfile = nm_keyfile(ssid, &passphrase);
        assert_eq!(
            keyfile.lines().count(),
            reference.lines().count(),
            "{keyfile}"
        );
        for line in keyfile.lines() {
            assert!(
                line.is_empty()
                    || line.starts_with('#')
                    || line.starts_with('[')
                    || line.split_once('=').is_some(),
                "{line:?}"
            );
        }
    }
});
