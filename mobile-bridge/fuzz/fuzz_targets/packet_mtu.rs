//! What `PacketLink` does with a message at a link's MTU: fragmented for an ATT MTU (or the
//! LAN's frame size) the input chooses, every frame fits the MTU, and the frames, reassembled
//! as the far end's link reads them, give the message back exactly. A packet truncated or cut
//! short by the link is refused, never taken for a message.
#![no_main]

use edge_mobile_bridge::frame::{
    Fragmenter, LAN_MAX_FRAME, MAX_MESSAGE, MIN_FRAME, Reassembler, ble_max_frame,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let [mtu_hi, mtu_lo, cut, message @ ..] = data else {
        return;
    };
    // ATT MTUs from the BLE minimum (23) up; the top bit picks the LAN's frame size instead.
    let mtu = u16::from_be_bytes([*mtu_hi & 0x7f, *mtu_lo]);
    let max_frame = if mtu_hi & 0x80 != 0 {
        LAN_MAX_FRAME
    } else {
        ble_max_frame(mtu.max(23))
    };
    let Ok(mut fragmenter) = Fragmenter::new(max_frame) else {
        assert!(max_frame < MIN_FRAME, "a frame of {max_frame} bytes was refused");
        return;
    };
    let message = &message[..message.len().min(MAX_MESSAGE)];
    let Ok(frames) = fragmenter.fragment(message) else {
        assert!(message.is_empty(), "a {}-byte message was refused", message.len());
        return;
    };
    let mut whole = Reassembler::new(MAX_MESSAGE);
    let mut out = None;
    for frame in &frames {
        assert!(frame.len() <= max_frame, "{} > {max_frame}", frame.len());
        assert!(out.is_none(), "a message came out before its last frame");
        out = whole.push(frame).expect("its own frames reassemble");
    }
    assert_eq!(out.as_deref(), Some(message));

    // The same frames with one cut short (a link that truncates): never the message.
    let which = usize::from(*cut) % frames.len();
    let mut cut_short = Reassembler::new(MAX_MESSAGE);
    for (i, frame) in frames.iter().enumerate() {
        let frame = if i == which { &frame[..frame.len() / 2] } else { &frame[..] };
        if let Ok(Some(got)) = cut_short.push(frame) {
            assert_ne!(got, message, "a message came out of a truncated frame");
        }
    }
});
