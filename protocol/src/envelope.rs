//! Envelopes: the signed wrapper around every device report.

use edge_identity::hex;
use edge_identity::keys::{self, DeviceId, Identity};
use serde::{Deserialize, Serialize};

use crate::report::{Capability, Dropped, Heartbeat, JobReport, Register};

/// Protocol version carried in every envelope.
pub const VERSION: u32 = 1;

/// Domain separation: an envelope signature can never be taken for a receipt's or another
/// protocol's.
const DOMAIN: &[u8] = b"edge-envelope-v1\n";

/// Largest envelope text accepted, bytes. Reports are small; this bounds what a verifier parses.
pub const MAX_ENVELOPE_BYTES: usize = 64 * 1024;

/// One device message, as signed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    /// Protocol version, [`VERSION`].
    pub v: u32,
    /// The sender, derived from its public key.
    pub device_id: String,
    /// Per-device sequence number: strictly increasing, never reused (gaps allowed).
    pub seq: u64,
    /// The OS boot this message was made in (`/proc/sys/kernel/random/boot_id`).
    pub boot_id: String,
    /// When the device made the message, Unix milliseconds (device clock).
    pub sent_at_ms: u64,
    /// The report itself; its kind is the JSON's `type` field, beside the body's own fields.
    pub body: Body,
}

/// The message kinds of v1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Body {
    /// Binds a public key to a device id and an owner (sent to `/v1/register`, not queued).
    Register(Register),
    /// Small and frequent: the device is alive.
    Heartbeat(Heartbeat),
    /// What the device offers: compute, bandwidth, IP, host.
    Capability(Box<Capability>),
    /// The device's queue dropped reports (it was full or they were too old).
    Dropped(Dropped),
    /// A job handed out by the network ended.
    JobResult(Box<JobReport>),
}

impl Body {
    /// The kind, as spelled in `type`.
    pub fn kind(&self) -> &'static str {
        match self {
            Body::Register(_) => "register",
            Body::Heartbeat(_) => "heartbeat",
            Body::Capability(_) => "capability",
            Body::Dropped(_) => "dropped",
            Body::JobResult(_) => "job_result",
        }
    }
}

/// An envelope and its detached signature, as sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Signed {
    /// The envelope's JSON text, exactly as signed.
    pub envelope: String,
    /// Ed25519 signature over `edge-envelope-v1\n` + `envelope`, lowercase hex.
    pub signature: String,
}

/// Why an envelope is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    /// The envelope text is over [`MAX_ENVELOPE_BYTES`]; refused before it is parsed.
    #[error("envelope is {len} bytes, over the limit of {max}")]
    TooLarge {
        /// The envelope text's length in bytes.
        len: usize,
        /// Always [`MAX_ENVELOPE_BYTES`].
        max: usize,
    },
    /// The text is not JSON of an [`Envelope`] (an unknown field included); serde_json's message.
    #[error("envelope is not valid v1 JSON: {0}")]
    Malformed(String),
    /// An envelope whose `v` is not [`VERSION`]; the `v` it has.
    #[error("envelope version {0} is not supported (this side speaks {VERSION})")]
    Version(u32),
    /// The signature is not 64 bytes of hex, or does not hold for the key.
    #[error("signature does not verify for device {device_id}")]
    Signature {
        /// The device id the envelope claims (it matched the key; the signature did not).
        device_id: String,
    },
    /// The public key does not hash to the claimed device id.
    #[error("public key belongs to device {actual}, not {claimed}")]
    DeviceId {
        /// The device id the envelope claims.
        claimed: String,
        /// What the key hashes to.
        actual: String,
    },
}

impl Signed {
    /// Serialises and signs `envelope` with `identity`.
    pub fn seal(envelope: &Envelope, identity: &Identity) -> Self {
        // Plain structs of strings and numbers: serialising cannot fail.
        let text = serde_json::to_string(envelope).unwrap_or_default();
        let signature = hex::encode(&identity.sign(&signed_bytes(&text)));
        Self {
            envelope: text,
            signature,
        }
    }

    /// Parses the envelope without checking the signature: for routing only (which device, which
    /// key to check with). Never act on what this returns before [`Signed::open`].
    pub fn peek(&self) -> Result<Envelope, EnvelopeError> {
        if self.envelope.len() > MAX_ENVELOPE_BYTES {
            return Err(EnvelopeError::TooLarge {
                len: self.envelope.len(),
                max: MAX_ENVELOPE_BYTES,
            });
        }
        let envelope: Envelope = serde_json::from_str(&self.envelope)
            .map_err(|e| EnvelopeError::Malformed(e.to_string()))?;
        if envelope.v != VERSION {
            return Err(EnvelopeError::Version(envelope.v));
        }
        Ok(envelope)
    }

    /// Checks the signature with `public_key`, that the key is the claimed device's, and parses.
    pub fn open(&self, public_key: &[u8; 32]) -> Result<Envelope, EnvelopeError> {
        let envelope = self.peek()?;
        let actual = DeviceId::from_public_key(public_key).to_string();
        if actual != envelope.device_id {
            return Err(EnvelopeError::DeviceId {
                claimed: envelope.device_id,
                actual,
            });
        }
        let signature = hex::decode(&self.signature).unwrap_or_default();
        if !keys::verify(public_key, &signed_bytes(&self.envelope), &signature) {
            return Err(EnvelopeError::Signature {
                device_id: envelope.device_id,
            });
        }
        Ok(envelope)
    }
}

fn signed_bytes(text: &str) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(DOMAIN.len() + text.len());
    bytes.extend_from_slice(DOMAIN);
    bytes.extend_from_slice(text.as_bytes());
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Heartbeat;

    fn heartbeat(identity: &Identity, seq: u64) -> Envelope {
        Envelope {
            v: VERSION,
            device_id: identity.device_id().to_string(),
            seq,
            boot_id: "b".into(),
            sent_at_ms: 1,
            body: Body::Heartbeat(Heartbeat::default()),
        }
    }

    #[test]
    fn sealed_envelopes_open_with_the_right_key_only() {
        let me = Identity::generate_ephemeral().expect("key");
        let other = Identity::generate_ephemeral().expect("key");
        let signed = Signed::seal(&heartbeat(&me, 7), &me);
        assert_eq!(signed.open(me.public_key()), Ok(heartbeat(&me, 7)));
        assert!(matches!(
            signed.open(other.public_key()),
            Err(EnvelopeError::DeviceId { .. })
        ));
        // The other key claiming to be me: right id, wrong signature.
        let forged = Signed {
            signature: Signed::seal(&heartbeat(&me, 7), &other).signature,
            ..signed.clone()
        };
        assert!(matches!(
            forged.open(me.public_key()),
            Err(EnvelopeError::Signature { .. })
        ));
    }

    #[test]
    fn any_change_to_the_signed_text_is_caught() {
        let me = Identity::generate_ephemeral().expect("key");
        let signed = Signed::seal(&heartbeat(&me, 7), &me);
        let tampered = Signed {
            envelope: signed.envelope.replace("\"seq\":7", "\"seq\":8"),
            ..signed.clone()
        };
        assert_ne!(tampered.envelope, signed.envelope);
        assert!(matches!(
            tampered.open(me.public_key()),
            Err(EnvelopeError::Signature { .. })
        ));
        // Same values, different spelling (whitespace): the bytes are what is signed.
        let respaced = Signed {
            envelope: signed.envelope.replace(",", ", "),
            ..signed
        };
        assert!(respaced.open(me.public_key()).is_err());
    }

    #[test]
    fn unknown_fields_versions_and_kinds_are_refused_with_the_reason() {
        let me = Identity::generate_ephemeral().expect("key");
        let text = serde_json::to_string(&heartbeat(&me, 1)).expect("json");
        for (bad, want) in [
            (text.replace("\"v\":1", "\"v\":2"), "version 2"),
            (
                text.replace("\"seq\"", "\"extra\":1,\"seq\""),
                "unknown field `extra`",
            ),
            (
                text.replace("heartbeat", "party"),
                "unknown variant `party`",
            ),
        ] {
            let err = Signed::seal_text(bad, &me).peek().expect_err("refused");
            assert!(err.to_string().contains(want), "{err} lacks {want}");
        }
        let huge = Signed {
            envelope: "x".repeat(MAX_ENVELOPE_BYTES + 1),
            signature: String::new(),
        };
        assert!(matches!(huge.peek(), Err(EnvelopeError::TooLarge { .. })));
    }

    impl Signed {
        fn seal_text(text: String, identity: &Identity) -> Self {
            let signature = hex::encode(&identity.sign(&signed_bytes(&text)));
            Self {
                envelope: text,
                signature,
            }
        }
    }
}
