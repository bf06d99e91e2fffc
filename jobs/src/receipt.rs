//! Receipts: the device's signed statement of what it ran, on what, and what came out.
//!
//! The signature is Ed25519 by the device identity key over `b"edge-receipt-v1\n"` followed by
//! the receipt body serialised as JSON with its fields in declaration order ([`ReceiptBody`]'s,
//! then [`Attested`]'s; no maps, no floats: the bytes are fixed by the values). Anyone holding a receipt
//! can check it with [`verify`]: the public key it carries must hash to its device id, and the
//! signature must hold.

use edge_identity::hex;
use edge_identity::keys::{self, DeviceId, Identity};
use serde::{Deserialize, Serialize};

use crate::digest::Sha256;

/// Domain separation: a receipt signature can never be taken for another message's.
const DOMAIN: &[u8] = b"edge-receipt-v1\n";

/// What was run, where, and with what result, as signed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiptBody {
    /// Receipt format, 1.
    pub version: u32,
    /// The device that ran it.
    pub device_id: String,
    /// The device's Ed25519 public key, hex.
    pub public_key: String,
    /// What is attested; its fields sit beside these in the JSON (flattened).
    #[serde(flatten)]
    pub what: Attested,
}

/// A signed receipt: the body's fields and `signature`, all in one flat JSON object. A field it
/// does not know is refused: the signature covers the known fields only, so anything else in
/// it would be unsigned text passed on as if the device had said it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "WireReceipt")]
pub struct Receipt {
    /// The signed part: format, device, key and what ran.
    #[serde(flatten)]
    pub body: ReceiptBody,
    /// Ed25519 signature over [`ReceiptBody::signed_bytes`], hex.
    pub signature: String,
}

/// Every field of a receipt's JSON: [`ReceiptBody`]'s, [`Attested`]'s and the signature.
const FIELDS: [&str; 14] = [
    "version",
    "device_id",
    "public_key",
    "job_id",
    "kernel_sha256",
    "input_sha256",
    "output_sha256",
    "adapter",
    "driver",
    "started_at_unix_ms",
    "duration_us",
    "kernel_us",
    "batch",
    "signature",
];

/// A receipt as read, and every field of it in `fields` (serde's `deny_unknown_fields` does not
/// work beside `flatten`, and a flattened struct inside another leaves its fields in the map).
#[derive(Deserialize)]
struct WireReceipt {
    #[serde(flatten)]
    body: ReceiptBody,
    signature: String,
    #[serde(flatten)]
    fields: std::collections::BTreeMap<String, serde::de::IgnoredAny>,
}

impl TryFrom<WireReceipt> for Receipt {
    type Error = String;

    fn try_from(wire: WireReceipt) -> Result<Self, String> {
        if let Some(field) = wire.fields.keys().find(|k| !FIELDS.contains(&k.as_str())) {
            return Err(format!(
                "unknown field `{field}` in a receipt (a receipt holds only what its signature covers)"
            ));
        }
        Ok(Self {
            body: wire.body,
            signature: wire.signature,
        })
    }
}

/// Why a receipt does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReceiptError {
    /// The public key is not 32 bytes of hex.
    #[error("receipt public key is not a 32-byte hex Ed25519 key")]
    PublicKey,
    /// The public key belongs to another device id.
    #[error("receipt public key belongs to device {actual}, not {claimed}")]
    DeviceId {
        /// The device id the receipt names.
        claimed: String,
        /// What the key hashes to.
        actual: String,
    },
    /// The signature does not hold.
    #[error("receipt signature does not verify for job {job_id}")]
    Signature {
        /// The job id the receipt names.
        job_id: String,
    },
    /// A receipt format other than 1; the `version` it has.
    #[error("receipt format {0} is not supported")]
    Version(u32),
}

impl ReceiptBody {
    /// The exact bytes the signature covers.
    pub fn signed_bytes(&self) -> Vec<u8> {
        let mut bytes = DOMAIN.to_vec();
        // Serialising plain strings and integers cannot fail.
        bytes.extend(serde_json::to_vec(self).unwrap_or_default());
        bytes
    }
}

/// What a receipt attests: the run, before the device's identity and signature are added.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attested {
    /// The job's id.
    pub job_id: String,
    /// SHA-256 of the WGSL source.
    pub kernel_sha256: Sha256,
    /// SHA-256 of every binding's initial contents, in binding order.
    pub input_sha256: Sha256,
    /// SHA-256 of every `storage_read_write` binding's final contents, in binding order.
    pub output_sha256: Sha256,
    /// The adapter it ran on, as wgpu names it, e.g. `Adreno (TM) 650`.
    pub adapter: String,
    /// The driver as `<driver> / <version>`, e.g. `llvmpipe / Mesa 22.3.6 (LLVM 15.0.6)`.
    pub driver: String,
    /// Submission time, Unix milliseconds.
    pub started_at_unix_ms: u64,
    /// Submission to read-back, microseconds.
    pub duration_us: u64,
    /// The compute pass alone (GPU timestamps), microseconds; `null` where the adapter has none.
    pub kernel_us: Option<u64>,
    /// How many jobs shared the submission, when more than one: small jobs run in batches, and
    /// `started_at_unix_ms` and `duration_us` are then the whole submission's. Absent: alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<u32>,
}

/// Signs a receipt with the device identity.
pub fn sign(identity: &Identity, what: Attested) -> Receipt {
    let body = ReceiptBody {
        version: 1,
        device_id: identity.device_id().to_string(),
        public_key: hex::encode(identity.public_key()),
        what,
    };
    let signature = hex::encode(&identity.sign(&body.signed_bytes()));
    Receipt { body, signature }
}

/// Checks a receipt's key, device id and signature.
pub fn verify(receipt: &Receipt) -> Result<(), ReceiptError> {
    let body = &receipt.body;
    if body.version != 1 {
        return Err(ReceiptError::Version(body.version));
    }
    let public_key: [u8; 32] = hex::decode(&body.public_key)
        .and_then(|k| k.try_into().ok())
        .ok_or(ReceiptError::PublicKey)?;
    let actual = DeviceId::from_public_key(&public_key).to_string();
    if actual != body.device_id {
        return Err(ReceiptError::DeviceId {
            claimed: body.device_id.clone(),
            actual,
        });
    }
    let signature = hex::decode(&receipt.signature).unwrap_or_default();
    if !keys::verify(&public_key, &body.signed_bytes(), &signature) {
        return Err(ReceiptError::Signature {
            job_id: body.what.job_id.clone(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn receipt(identity: &Identity) -> Receipt {
        sign(
            identity,
            Attested {
                job_id: "j1".into(),
                kernel_sha256: Sha256::of(b"kernel"),
                input_sha256: Sha256::of(b"in"),
                output_sha256: Sha256::of(b"out"),
                adapter: "llvmpipe".into(),
                driver: "Mesa".into(),
                started_at_unix_ms: 1_795_660_000_000,
                duration_us: 1234,
                kernel_us: Some(1000),
                batch: None,
            },
        )
    }

    #[test]
    fn a_signed_receipt_verifies_after_a_json_round_trip() {
        let id = Identity::generate_ephemeral().expect("key");
        let r = receipt(&id);
        let json = serde_json::to_string(&r).expect("json");
        let back: Receipt = serde_json::from_str(&json).expect("parse");
        verify(&back).expect("verifies");
    }

    #[test]
    fn any_change_breaks_it() {
        let id = Identity::generate_ephemeral().expect("key");
        let mut r = receipt(&id);
        r.body.what.output_sha256 = Sha256::of(b"other output");
        assert!(matches!(verify(&r), Err(ReceiptError::Signature { .. })));

        let other = Identity::generate_ephemeral().expect("key");
        let mut r = receipt(&id);
        r.body.public_key = hex::encode(other.public_key());
        assert!(matches!(verify(&r), Err(ReceiptError::DeviceId { .. })));

        let mut r = receipt(&id);
        r.body.what.duration_us += 1;
        assert!(verify(&r).is_err());

        // Whether the job shared its submission is signed too.
        let mut r = receipt(&id);
        r.body.what.batch = Some(8);
        assert!(verify(&r).is_err());
        let mut what = receipt(&id).body.what;
        what.batch = Some(8);
        let batched = sign(&id, what);
        let json = serde_json::to_string(&batched).expect("json");
        assert!(json.contains(r#""batch":8"#), "{json}");
        verify(&serde_json::from_str(&json).expect("parse")).expect("verifies");
    }

    #[test]
    fn a_receipt_with_a_field_its_signature_does_not_cover_is_refused() {
        let id = Identity::generate_ephemeral().expect("key");
        let json = serde_json::to_string(&receipt(&id)).expect("json");
        let padded = json.replacen('{', r#"{"paid_to":"mallory","#, 1);
        // Without the check, it parsed and verified: the extra field is not signed.
        let err = serde_json::from_str::<Receipt>(&padded).expect_err("refused");
        assert!(err.to_string().contains("unknown field `paid_to`"), "{err}");
        // The fields it knows, in any order, still parse.
        let value: serde_json::Value = serde_json::from_str(&json).expect("value");
        let reordered = serde_json::to_string(&value).expect("json");
        verify(&serde_json::from_str(&reordered).expect("parse")).expect("verifies");
    }

    #[test]
    fn the_list_of_known_fields_is_every_field_a_receipt_has() {
        let id = Identity::generate_ephemeral().expect("key");
        let mut what = receipt(&id).body.what;
        what.batch = Some(2);
        let value = serde_json::to_value(sign(&id, what)).expect("json");
        let mut keys: Vec<&str> = value
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        let mut known = FIELDS.to_vec();
        keys.sort_unstable();
        known.sort_unstable();
        assert_eq!(keys, known);
    }
}
