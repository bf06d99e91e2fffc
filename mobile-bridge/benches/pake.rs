//! CPU cost of one pairing (SPAKE2 both sides, key confirmation, the device's identity proof)
//! and of one later session handshake, in memory, next to one Ed25519 sign + verify in the same
//! run. Prints figures; asserts nothing about time. Run it for aarch64 too: the cargo runner is
//! qemu-user (`cargo bench -p edge-mobile-bridge --bench pake --target aarch64-unknown-linux-gnu`).

use std::time::{Duration, Instant};

use edge_identity::keys::{self, Identity};
use edge_mobile_bridge::client::{Client, PairingProgress};
use edge_mobile_bridge::pairing::{ConnId, DevicePairing, DeviceStep, PairingWindow};
use edge_mobile_bridge::session::DeviceHandshake;
use edge_mobile_bridge::setup_code::{DeviceFingerprint, QrPayload, SetupCode};

const ROUNDS: u32 = 30;

fn main() {
    let device = Identity::generate_ephemeral().expect("key");
    let app = Client::new(Identity::generate_ephemeral().expect("key"));

    let sign = time(ROUNDS * 10, || {
        let sig = device.sign(b"edge bench");
        assert!(keys::verify(device.public_key(), b"edge bench", &sig));
    });
    let mut owner_key = None;
    let pair = time(ROUNDS, || {
        let code = SetupCode::generate().expect("code");
        let qr = QrPayload {
            device: DeviceFingerprint::of(device.device_id()),
            code: code.clone(),
        };
        let now = Instant::now();
        let mut pairing = DevicePairing::new(
            PairingWindow::open(now, false, 0).expect("window"),
            code,
            device.device_id(),
        );
        let mut client = app.pair_with_qr(&qr.render()).expect("start");
        loop {
            let mut reply = None;
            for message in client.outgoing() {
                match pairing
                    .handle(now, ConnId(1), &message, &device)
                    .expect("device")
                {
                    DeviceStep::PersistThenSend { reply: r, .. } => reply = Some(r),
                    DeviceStep::Wait => {}
                    DeviceStep::Paired(p) => {
                        owner_key = Some(p.owner_key);
                        reply = Some(p.reply);
                    }
                }
            }
            match client.receive(&reply.expect("a reply")).expect("client") {
                PairingProgress::Send(next) => client = next,
                PairingProgress::Done(..) => break,
            }
        }
    });
    let owner = owner_key.expect("paired");
    let session = time(ROUNDS, || {
        let paired = edge_mobile_bridge::client::PairedDevice {
            device_id: DeviceFingerprint::of(device.device_id()),
            device_key: *device.public_key(),
        };
        let connecting = app.connect(&paired).expect("connect");
        let (handshake, accept) =
            DeviceHandshake::accept(Instant::now(), connecting.hello(), &device, Some(&owner))
                .expect("accept");
        let (_control, finish) = connecting.accept(&accept).expect("client finish");
        handshake
            .finish(Instant::now(), &finish)
            .expect("device finish");
    });
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!(
        "pairing CPU cost ({}, {ROUNDS} rounds each, both sides in one thread):",
        std::env::consts::ARCH
    );
    println!(
        "  Ed25519 sign + verify (baseline)       {:>9.0} us",
        us(sign)
    );
    println!(
        "  pairing: SPAKE2 + confirm + proof       {:>9.0} us  ({:.1}x baseline)",
        us(pair),
        us(pair) / us(sign)
    );
    println!(
        "  later session: X25519 + 2 signatures    {:>9.0} us  ({:.1}x baseline)",
        us(session),
        us(session) / us(sign)
    );
}

/// Mean time of `f` over `n` runs, after one warm-up run.
fn time(n: u32, mut f: impl FnMut()) -> Duration {
    f();
    let start = Instant::now();
    for _ in 0..n {
        f();
    }
    start.elapsed() / n
}
