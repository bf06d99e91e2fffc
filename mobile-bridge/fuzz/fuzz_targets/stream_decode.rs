//! A TCP byte stream, fed in uneven chunks, through the length-prefix decoder.
#![no_main]

use edge_mobile_bridge::frame::{LAN_MAX_FRAME, StreamDecoder};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut decoder = StreamDecoder::default();
    for chunk in data.chunks(7) {
        decoder.extend(chunk);
        while let Ok(Some(frame)) = decoder.next_frame() {
            assert!(!frame.is_empty() && frame.len() <= LAN_MAX_FRAME);
        }
    }
});
