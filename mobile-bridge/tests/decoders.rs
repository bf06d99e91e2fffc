//! Every decoder and every state machine fed random or mutated bytes returns, never panics.

#![allow(
    clippy::tests_outside_test_module,
    reason = "an integration test crate: its tests need no test module"
)]

mod common;

use std::time::{Duration, Instant};

use common::Rng;
use edge_identity::keys::Identity;
use edge_mobile_bridge::client::Client;
use edge_mobile_bridge::frame::{Reassembler, StreamDecoder, decode_frame, fragment};
use edge_mobile_bridge::message::{
    ErrorCode, Message, OwnerHello, PakeStart, Record, Request, Response, SessionFinish,
    StatusReport, WifiNetwork,
};
use edge_mobile_bridge::pairing::{ConnId, DevicePairing, PairingWindow};
use edge_mobile_bridge::session::{ClientHandshake, DeviceHandshake};
use edge_mobile_bridge::setup_code::{DeviceFingerprint, QrPayload, SetupCode};

fn samples() -> Vec<Vec<u8>> {
    let msgs = vec![
        Message::PakeStart(PakeStart {
            pake: vec![0x41; 33],
        }),
        Message::OwnerHello(OwnerHello {
            owner_key: [1; 32],
            challenge: [2; 32],
            signature: [4; 64],
        }),
        Message::SessionFinish(SessionFinish { signature: [3; 64] }),
        Message::Record(Record {
            counter: 5,
            sealed: vec![9; 40],
        }),
        Message::Request(Request::ConfigSet {
            key: "limits.hours".into(),
            value: "\"08:00-20:00\"".into(),
        }),
        Message::Request(Request::Logs { max_lines: 50 }),
        Message::Response(Response::Status(StatusReport {
            device_id: "00".repeat(16),
            agent_version: "0.1.0".into(),
            uptime_s: 99,
            details_json: "{}".into(),
        })),
        Message::Response(Response::WifiNetworks(vec![
            WifiNetwork {
                ssid: "a".into(),
                signal_dbm: -40,
                secured: false,
            };
            3
        ])),
        Message::Response(Response::Logs {
            lines: vec!["x".into(); 4],
        }),
        Message::Response(Response::error(ErrorCode::Busy)),
    ];
    msgs.iter().map(|m| m.encode().expect("encode")).collect()
}

/// Random bytes, or a valid encoding with a few bytes flipped, cut or added.
fn input(rng: &mut Rng, samples: &[Vec<u8>]) -> Vec<u8> {
    if rng.chance(50) {
        let max = if rng.chance(90) { 80 } else { 2000 };
        let len = rng.below(max);
        let mut b = rng.bytes(len);
        if rng.chance(50) && b.len() >= 2 {
            b[0] = 1;
        }
        return b;
    }
    let mut b = samples[rng.below(samples.len())].clone();
    for _ in 0..1 + rng.below(3) {
        match rng.below(3) {
            0 if !b.is_empty() => {
                let i = rng.below(b.len());
                b[i] ^= 1 << rng.below(8);
            }
            1 if !b.is_empty() => b.truncate(rng.below(b.len())),
            _ => b.push(rng.next_u64() as u8),
        }
    }
    b
}

#[test]
fn message_and_frame_decoders_never_panic() {
    let samples = samples();
    let mut rng = Rng::new(0x5eed);
    let mut reassembler = Reassembler::default();
    let mut stream = StreamDecoder::default();
    for _ in 0..100_000 {
        let b = input(&mut rng, &samples);
        if let Ok(m) = Message::decode(&b) {
            // Whatever decodes re-encodes to the same bytes (the encoding is canonical).
            assert_eq!(m.encode().expect("encode"), b, "{m:?}");
        }
        let _ = decode_frame(&b);
        let _ = reassembler.push(&b);
        stream.extend(&b);
        while let Ok(Some(_)) = stream.next_frame() {}
        let text = String::from_utf8_lossy(&b);
        let _ = SetupCode::parse(&text);
        let _ = QrPayload::parse(&text);
        let _ = DeviceFingerprint::parse(&text);
    }
}

#[test]
fn pairing_and_session_state_machines_never_panic() {
    let samples = samples();
    let mut rng = Rng::new(42);
    let device = Identity::generate_ephemeral().expect("generate_ephemeral");
    let owner = Identity::generate_ephemeral().expect("generate_ephemeral");
    let now = Instant::now();
    let code = SetupCode::generate().expect("generate");
    let digits = code.digits().to_owned();
    let mut pairing = DevicePairing::new(
        PairingWindow::open(now, false, 0).expect("open"),
        code,
        device.device_id(),
    );
    let client = Client::new(Identity::generate_ephemeral().expect("generate_ephemeral"));
    // SPAKE2 in a debug build costs milliseconds per message, so this loop is kept short; the
    // fuzz targets go further.
    for i in 0..600u64 {
        let b = input(&mut rng, &samples);
        let t = now + Duration::from_millis(i * 10);
        let _ = pairing.handle(t, ConnId(i % 3), &b, &device);
        if rng.chance(5) {
            pairing.disconnected(ConnId(i % 3));
        }
        let _ = DeviceHandshake::accept(t, &b, &device, Some(owner.public_key()));
        let (hs, _) = ClientHandshake::start(&owner, device.public_key()).expect("start");
        let _ = hs.finish(&b, &owner);
        if i % 4 == 0 {
            let p = client
                .pair_with_code(&digits, DeviceFingerprint::of(device.device_id()))
                .expect("pair_with_code");
            let _ = p.receive(&b);
        }
    }
    // Fragments of random messages through the reassembler into the pairing machine.
    let mut reassembler = Reassembler::default();
    for i in 0..2000u64 {
        let b = input(&mut rng, &samples);
        if b.is_empty() {
            continue;
        }
        for f in fragment(&b, i as u8, 20).expect("fragment") {
            if let Ok(Some(m)) = reassembler.push(&f) {
                assert_eq!(m, b);
                let _ = pairing.handle(now, ConnId(9), &m, &device);
            }
        }
    }
}
