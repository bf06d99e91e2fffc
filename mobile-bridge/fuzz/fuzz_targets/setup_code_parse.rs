//! Typed codes and QR payloads: an error, or a code that renders and parses back the same.
#![no_main]

use edge_mobile_bridge::setup_code::{QrPayload, SetupCode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(code) = SetupCode::parse(text) {
        let again = SetupCode::parse(&code.grouped()).expect("a parsed code re-parses");
        assert_eq!(again.digits(), code.digits());
    }
    if let Ok(qr) = QrPayload::parse(text) {
        let again = QrPayload::parse(&qr.render()).expect("a rendered payload parses");
        assert_eq!(again.device, qr.device);
        assert_eq!(again.code.digits(), qr.code.digits());
    }
});
