//! The owner's bridge on the device: pairing while the box has no owner, then the owner's
//! encrypted control channel, over the LAN (TCP). The protocol is `edge-mobile-bridge`'s; this
//! module stores what it asks to store and answers the owner's requests.
//!
//! State, in the state directory: `setup-code` (the per-device setup secret, 0600, made on first
//! start; the label's QR code and manual code come from it) and `pairing.json` (the owner's public
//! key and the persistent failure count, 0600, written durably before any reply that depends on
//! them). The pairing window opens at start on a box never paired, and on the pairing button
//! (`[pairing] button`, or SIGUSR1); it closes after 15 minutes, 20 failures, or a pairing. From
//! 100 failures over the box's life, attempts are slowed (never locked out). The button held 10 s
//! is the factory reset, as `edge-agent factory-reset` and the owner's app's.

pub(crate) mod advertise;
mod control;
mod files;
pub(crate) mod link_caps;
mod session;
mod task;

pub(crate) use control::Control;
pub(crate) use files::{BridgeError, BridgeFiles, factory_reset, qr_payload};
pub(crate) use task::{BridgeStatus, BridgeTask, BridgeView, ButtonEvent, OwnerStatus};
