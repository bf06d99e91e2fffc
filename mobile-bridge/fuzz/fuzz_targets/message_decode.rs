//! Any bytes through the message decoder (pairing, session, record, request and response
//! families alike): an error, or a message that re-encodes to exactly the same bytes.
#![no_main]

use edge_mobile_bridge::message::Message;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(message) = Message::decode(data) {
        let again = message.encode().expect("a decoded message re-encodes");
        assert_eq!(again, data, "the encoding is canonical");
    }
});
