//! The device's state machines across sequences of messages from anyone in range: pairing
//! (several links at once, drops, time passing), a session handshake, and the record layer of an
//! owner's channel. Each step is `[op][len][len bytes]`. Whatever the sequence, nothing panics,
//! no made-up sequence pairs (the setup code is never in it), no made-up `SessionFinish`
//! completes an owner's session, no made-up record opens, and garbage leaves the channel able
//! to open the owner's next real record.
#![no_main]

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use edge_identity::keys::Identity;
use edge_mobile_bridge::message::{Message, Request};
use edge_mobile_bridge::pairing::{ConnId, DevicePairing, DeviceStep, PairingWindow};
use edge_mobile_bridge::session::{ClientHandshake, DeviceHandshake};
use edge_mobile_bridge::setup_code::SetupCode;
use libfuzzer_sys::fuzz_target;

struct Fixed {
    device: Identity,
    owner: Identity,
    code: String,
}

fn fixed() -> &'static Fixed {
    static FIXED: OnceLock<Fixed> = OnceLock::new();
    FIXED.get_or_init(|| Fixed {
        device: Identity::generate_ephemeral().expect("key"),
        owner: Identity::generate_ephemeral().expect("key"),
        code: SetupCode::generate().expect("code").digits().to_owned(),
    })
}

fuzz_target!(|data: &[u8]| {
    let f = fixed();
    let start = Instant::now();
    let mut now = start;
    let window = PairingWindow::open(now, false, 0).expect("window");
    let code = SetupCode::parse(&f.code).expect("code");
    let mut pairing = DevicePairing::new(window, code, f.device.device_id());

    // An owner's channel, made by a real handshake, for the record layer.
    let (client, hello) = ClientHandshake::start(&f.owner, f.device.public_key()).expect("hello");
    let (device_hs, accept) =
        DeviceHandshake::accept(now, &hello, &f.device, Some(f.owner.public_key())).expect("accept");
    let (mut owner_side, finish) = client.finish(&accept, &f.owner).expect("finish");
    let mut device_side = device_hs.finish(now, &finish).expect("channel");

    let mut rest = data;
    while let [op, len, tail @ ..] = rest {
        let len = usize::from(*len).min(tail.len());
        let (message, tail) = tail.split_at(len);
        rest = tail;
        let conn = ConnId(u64::from(op & 3));
        match (op >> 2) & 7 {
            0 | 1 => {
                if let Ok(DeviceStep::Paired(_)) = pairing.handle(now, conn, message, &f.device) {
                    panic!("paired without the setup code");
                }
            }
            2 => pairing.disconnected(conn),
            3 => {
                now += Duration::from_secs(u64::from(op >> 5) * 4);
                pairing.tick(now);
            }
            4 => {
                // A stranger's session: whatever hello, a made-up finish never completes it.
                if let Ok((handshake, _)) =
                    DeviceHandshake::accept(now, message, &f.device, Some(f.owner.public_key()))
                {
                    let (finish, tail) = rest.split_at(rest.len().min(usize::from(*op)));
                    rest = tail;
                    assert!(
                        handshake.finish(now, finish).is_err(),
                        "a made-up SessionFinish opened an owner's session"
                    );
                }
            }
            _ => {
                assert!(
                    device_side.open(message).is_err(),
                    "a made-up record opened"
                );
                let real = owner_side
                    .seal(&Message::Request(Request::Status))
                    .expect("seal");
                assert_eq!(
                    device_side.open(&real).expect("the owner's next record"),
                    Message::Request(Request::Status)
                );
            }
        }
    }
});
