//! Authenticating a request without spending a sequence number (the job long-poll and the
//! bandwidth tests): the device signs `edge-request-v1\n<device_id>\n<time_ms>\n<path>` and sends
//! it in three headers. The hub accepts a time within [`MAX_SKEW_MS`] of its own clock and above
//! the device's previous request to that path, so a captured request can be neither replayed nor
//! used on another path (a poll to take the device's jobs, a download to spend the hub's
//! bandwidth in its name).

use edge_identity::hex;
use edge_identity::keys::{self, Identity};

/// Header carrying the device id.
pub const DEVICE: &str = "x-edge-device";
/// Header carrying the signing time, Unix ms.
pub const TIME: &str = "x-edge-time";
/// Header carrying the hex signature.
pub const SIGNATURE: &str = "x-edge-signature";
/// How far the device's clock may be from the hub's.
pub const MAX_SKEW_MS: u64 = 5 * 60 * 1000;

fn signed_bytes(device_id: &str, time_ms: u64, path: &str) -> Vec<u8> {
    format!("edge-request-v1\n{device_id}\n{time_ms}\n{path}").into_bytes()
}

/// The three header values for a request to `path` (no query) at `time_ms`.
pub fn sign(identity: &Identity, path: &str, time_ms: u64) -> [(&'static str, String); 3] {
    let device = identity.device_id().to_string();
    let signature = hex::encode(&identity.sign(&signed_bytes(&device, time_ms, path)));
    [
        (DEVICE, device),
        (TIME, time_ms.to_string()),
        (SIGNATURE, signature),
    ]
}

/// Whether the signature over `(device_id, time_ms, path)` holds for `public_key`.
pub fn verify(
    public_key: &[u8; 32],
    device_id: &str,
    path: &str,
    time_ms: u64,
    signature: &str,
) -> bool {
    let signature = hex::decode(signature).unwrap_or_default();
    keys::verify(
        public_key,
        &signed_bytes(device_id, time_ms, path),
        &signature,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_verifies_for_its_own_device_time_and_path_only() {
        let me = Identity::generate_ephemeral().expect("key");
        let [(_, device), (_, time), (_, sig)] = sign(&me, "/v1/jobs/next", 1_000);
        assert_eq!(time, "1000");
        assert!(verify(
            me.public_key(),
            &device,
            "/v1/jobs/next",
            1_000,
            &sig
        ));
        assert!(!verify(
            me.public_key(),
            &device,
            "/v1/jobs/next",
            1_001,
            &sig
        ));
        assert!(!verify(
            me.public_key(),
            &device,
            "/v1/bandwidth/download",
            1_000,
            &sig
        ));
        let other = Identity::generate_ephemeral().expect("key");
        assert!(!verify(
            other.public_key(),
            &device,
            "/v1/jobs/next",
            1_000,
            &sig
        ));
    }
}
