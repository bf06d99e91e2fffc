//! What the hub reads before it trusts a device: a registration body (a signed envelope whose
//! `register` body names the key it is signed with) and the three headers of a signed request.
//! Parsing must be total; a registration that opens names the device its key hashes to, and a
//! signed request made up by the input never verifies.
#![no_main]

use std::sync::OnceLock;

use edge_identity::Identity;
use edge_protocol::report::Register;
use edge_protocol::{Body, Signed, poll};
use libfuzzer_sys::fuzz_target;

fn device() -> &'static Identity {
    static DEVICE: OnceLock<Identity> = OnceLock::new();
    DEVICE.get_or_init(|| Identity::generate_ephemeral().expect("key"))
}

fuzz_target!(|data: &[u8]| {
    if let Ok(signed) = serde_json::from_slice::<Signed>(data)
        && let Ok(envelope) = signed.peek()
        && let Body::Register(Register { public_key, .. }) = &envelope.body
        && let Some(key) = edge_identity::hex::decode_array::<32>(public_key)
        && let Ok(opened) = signed.open(&key)
    {
        // Anyone may sign their own registration; it then speaks for that key's device only.
        assert_eq!(opened, envelope);
        assert_eq!(
            opened.device_id,
            edge_identity::keys::DeviceId::from_public_key(&key).to_string()
        );
    }
    // Headers as the hub reads them: device, time, signature and the path, one per line.
    let text = String::from_utf8_lossy(data);
    let mut lines = text.lines();
    let (Some(device_id), Some(time), Some(signature), Some(path)) =
        (lines.next(), lines.next(), lines.next(), lines.next())
    else {
        return;
    };
    let Ok(time) = time.parse::<u64>() else {
        return;
    };
    let me = device();
    assert!(
        !poll::verify(me.public_key(), device_id, path, time, signature),
        "a made-up signature verified"
    );
    // The device's own signature verifies for exactly what it signed.
    let [(_, id), _, (_, real)] = poll::sign(me, path, time);
    assert!(poll::verify(me.public_key(), &id, path, time, &real));
    assert!(!poll::verify(me.public_key(), &id, path, time.wrapping_add(1), &real));
});
