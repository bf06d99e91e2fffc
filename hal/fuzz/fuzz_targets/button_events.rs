//! The pairing button's input, as the HAL reads it from an evdev node: records of any content,
//! a trailing partial one included. Reading must be total, count at most one press per record,
//! and say a truncated record is one.
#![no_main]

use std::time::Duration;

use edge_hal::button::{Button, ButtonError, EVENT_SIZE, EvdevButton, KEY_CONNECT, Wait};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = std::env::temp_dir().join(format!("edge-button-fuzz-{}", std::process::id()));
    std::fs::write(&path, data).expect("write the events");
    let mut button = EvdevButton::open(&path, KEY_CONNECT)
        .expect("open")
        .with_hold(Duration::from_secs(3600));
    let mut presses = 0;
    loop {
        match button.wait(Duration::from_secs(5)) {
            Ok(Wait::Pressed) => presses += 1,
            Ok(Wait::Ended) => {
                assert_eq!(data.len() % EVENT_SIZE, 0, "a partial record went unsaid");
                break;
            }
            Ok(Wait::Held) => panic!("a hold of an hour, in a file read at once"),
            Ok(Wait::TimedOut) => panic!("a file's end was not seen"),
            Err(ButtonError::Truncated { bytes, .. }) => {
                assert_eq!(bytes, data.len() % EVENT_SIZE);
                break;
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert!(presses <= data.len() / EVENT_SIZE);
});
