//! The owner's bridge on the device: pairing while the box has no owner, then the owner's
//! encrypted control channel, over the LAN (TCP). The protocol is `edge-mobile-bridge`'s; this
//! module stores what it asks to store and answers the owner's requests.
//!
//! State, in the state directory: `setup-code` (the per-device setup secret, 0600, made on first
//! start; the label's QR code and manual code come from it) and `pairing.json` (the owner's public
//! key and the persistent failure count, 0600, written durably before any reply that depends on
//! them). The pairing window opens at start while the box has no owner, and again on the pairing
//! button (`[pairing] button`, or SIGUSR1); it closes after 15 minutes, 20 failures, or a pairing. At 100 failures over the
//! box's life pairing is locked until a factory reset (`edge-agent factory-reset`, or the owner's
//! app).

pub(crate) mod advertise;
mod control;
mod files;
pub(crate) mod link_caps;
mod session;
mod task;

pub(crate) use control::Control;
pub(crate) use files::{BridgeError, BridgeFiles, factory_reset, qr_payload};
pub(crate) use task::{BridgeStatus, BridgeTask, BridgeView, OwnerStatus};
