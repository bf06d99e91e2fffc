//! One frame through the header decoder: an error or a consistent header, never a panic.
#![no_main]

use edge_mobile_bridge::frame::{FIRST_HEADER_LEN, HEADER_LEN, decode_frame};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((header, payload)) = decode_frame(data) {
        assert!(!payload.is_empty());
        assert_eq!(header.first, header.index == 0);
        assert_eq!(header.first, header.total.is_some());
        let head = if header.first {
            FIRST_HEADER_LEN
        } else {
            HEADER_LEN
        };
        assert_eq!(head + payload.len(), data.len());
    }
});
