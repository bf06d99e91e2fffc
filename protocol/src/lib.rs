//! `edge-protocol`: what the device and the network say to each other, version 1.
//!
//! Every device message is an [`Envelope`] `{v, device_id, seq, boot_id, sent_at_ms, body}`
//! serialised to JSON once, signed with the device's Ed25519 identity key over
//! `b"edge-envelope-v1\n"` followed by those exact bytes, and sent as a [`Signed`] pair (the JSON
//! text and the hex signature). The verifier checks the signature over the bytes it received and
//! only then parses them, so no canonical re-encoding is ever needed. `docs/protocol.md` is the
//! written specification; this crate is its one implementation, shared by `edge-agent` and
//! `edge-hub`.
//!
//! Pure: no I/O, no clocks.

pub mod api;
pub mod envelope;
pub mod exposition;
pub mod poll;
pub mod report;

pub use envelope::{Body, Envelope, EnvelopeError, Signed};
