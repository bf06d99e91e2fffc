//! A report batch as the hub receives it: JSON, then each envelope parsed (never verified here:
//! parsing must be total first).
#![no_main]

use edge_protocol::api::Batch;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(batch) = serde_json::from_slice::<Batch>(data) {
        for report in &batch.reports {
            if let Ok(envelope) = report.peek() {
                let _ = envelope.body.kind();
            }
        }
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let signed = edge_protocol::Signed {
            envelope: text.to_owned(),
            signature: String::new(),
        };
        let _ = signed.peek();
    }
});
