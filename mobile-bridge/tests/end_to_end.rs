//! The whole flow in memory, through the frames a BLE link with ATT MTU 23 would carry: pair from
//! the QR payload, use the control channel, open a later session, refuse a stranger.

#![allow(
    clippy::tests_outside_test_module,
    reason = "an integration test crate: its tests need no test module"
)]

use std::time::{Duration, Instant};

use edge_identity::keys::Identity;
use edge_mobile_bridge::client::{Client, PairedDevice, PairingProgress};
use edge_mobile_bridge::frame::{Fragmenter, Reassembler, ble_max_frame};
use edge_mobile_bridge::message::{ErrorCode, Message, Request, Response, StatusReport};
use edge_mobile_bridge::pairing::{ConnId, DevicePairing, DeviceStep, PairingWindow};
use edge_mobile_bridge::session::{DeviceHandshake, SecureChannel, SessionError};
use edge_mobile_bridge::setup_code::{DeviceFingerprint, QrPayload, SetupCode};

/// One direction of a link: fragment at the sender, reassemble at the receiver.
struct Pipe {
    tx: Fragmenter,
    rx: Reassembler,
    frames: usize,
}

impl Pipe {
    fn ble() -> Self {
        Self {
            tx: Fragmenter::new(ble_max_frame(23)).expect("new"),
            rx: Reassembler::default(),
            frames: 0,
        }
    }

    fn carry(&mut self, message: &[u8]) -> Vec<u8> {
        let mut out = None;
        for f in self.tx.fragment(message).expect("fragment") {
            assert!(f.len() <= 20);
            self.frames += 1;
            out = self.rx.push(&f).expect("push");
        }
        out.expect("out")
    }
}

/// The device's side of the control channel, as the agent would answer.
fn serve(device: &Identity, channel: &mut SecureChannel, wire: &[u8]) -> Vec<u8> {
    let response = match channel.open(wire).expect("open") {
        Message::Request(Request::Status) => Response::Status(StatusReport {
            device_id: device.device_id().to_string(),
            agent_version: "0.1.0".into(),
            uptime_s: 42,
            details_json: "{}".into(),
        }),
        Message::Request(Request::ConfigSet { key, .. }) if key.starts_with("limits.") => {
            Response::Ok
        }
        Message::Request(_) => Response::error(ErrorCode::InvalidConfig),
        other => panic!("unexpected {other:?}"),
    };
    channel.seal(&Message::Response(response)).expect("seal")
}

#[test]
fn pair_by_qr_then_control_then_a_later_session() {
    let device = Identity::generate_ephemeral().expect("generate_ephemeral");
    let now = Instant::now();
    let qr = QrPayload {
        device: DeviceFingerprint::of(device.device_id()),
        code: SetupCode::generate().expect("generate"),
    };
    let label = qr.render();
    let mut pairing = DevicePairing::new(
        PairingWindow::open(now, false, 0).expect("open"),
        qr.code,
        device.device_id(),
    );
    let mut up = Pipe::ble();
    let mut down = Pipe::ble();
    let conn = ConnId(1);

    // What the device persists, in the order it must.
    let mut stored_failures = Vec::new();
    let mut stored_owner = None;

    let app = Client::new(Identity::generate_ephemeral().expect("generate_ephemeral"));
    let mut progress = PairingProgress::Send(app.pair_with_qr(&label).expect("pair_with_qr"));
    let (paired, mut control, mut device_channel) = loop {
        let PairingProgress::Send(mut p) = progress else {
            unreachable!()
        };
        let mut reply = None;
        for msg in p.outgoing() {
            let at = now + Duration::from_secs(1);
            match pairing
                .handle(at, conn, &up.carry(&msg), &device)
                .expect("handle")
            {
                DeviceStep::PersistThenSend { failures, reply: r } => {
                    stored_failures.push(failures);
                    reply = Some((r, None));
                }
                DeviceStep::Wait => {}
                DeviceStep::Paired(done) => {
                    stored_owner = Some(done.owner_key);
                    stored_failures.push(done.failures);
                    reply = Some((done.reply, Some(done.channel)));
                }
            }
        }
        let (reply, channel) = reply.expect("reply");
        progress = p.receive(&down.carry(&reply)).expect("receive");
        if let PairingProgress::Done(paired, control) = progress {
            break (paired, control, channel.expect("channel"));
        }
    };
    assert_eq!(
        stored_failures,
        [1, 0],
        "charged before the reply, refunded on success"
    );
    assert_eq!(stored_owner.as_ref(), Some(app.identity().public_key()));
    assert_eq!(&paired.device_key, device.public_key());

    let req = control.request(Request::Status).expect("request");
    let resp = serve(&device, &mut device_channel, &up.carry(&req));
    match control.response(&down.carry(&resp)).expect("response") {
        Response::Status(s) => assert_eq!(s.device_id, device.device_id().to_string()),
        other => panic!("{other:?}"),
    }
    assert!(up.frames > 10, "small MTU: many frames ({})", up.frames);

    // A later session, mutually authenticated with the stored keys.
    let stored = PairedDevice {
        device_id: paired.device_id.clone(),
        device_key: paired.device_key,
    };
    let owner_key = stored_owner.expect("stored_owner");
    let connecting = app.connect(&stored).expect("connect");
    let (dhs, accept) = DeviceHandshake::accept(
        now,
        &up.carry(connecting.hello()),
        &device,
        Some(&owner_key),
    )
    .expect("accept");
    let (mut control, finish) = connecting.accept(&down.carry(&accept)).expect("accept");
    let mut device_channel = dhs.finish(now, &up.carry(&finish)).expect("finish");
    let req = control
        .request(Request::ConfigSet {
            key: "limits.gpu_duty_cycle".into(),
            value: "0.5".into(),
        })
        .expect("request");
    let resp = serve(&device, &mut device_channel, &up.carry(&req));
    assert_eq!(
        control.response(&down.carry(&resp)).expect("response"),
        Response::Ok
    );

    // A second client that is not the owner is refused with NotOwner.
    let stranger = Client::new(Identity::generate_ephemeral().expect("generate_ephemeral"));
    let connecting = stranger.connect(&stored).expect("connect");
    let err = DeviceHandshake::accept(now, connecting.hello(), &device, Some(&owner_key))
        .expect_err("accept should fail");
    assert!(matches!(err, SessionError::NotOwner));
    let refusal = Message::Response(Response::error(err.code()))
        .encode()
        .expect("encode");
    let client_err = connecting.accept(&refusal).expect_err("accept should fail");
    assert!(client_err.to_string().contains("NotOwner"), "{client_err}");
}
