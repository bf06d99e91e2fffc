//! The bridge between a device and its owner's phone app (or `edgectl`): pairing, framing and
//! the encrypted control channel, as a pure protocol core.
//!
//! **What is here.** [`setup_code`]: the per-device setup secret, its 11-digit manual form and
//! QR payload. [`frame`]: fragmentation and reassembly for BLE MTUs (and a length prefix for
//! TCP). [`message`]: every message and its versioned wire encoding. [`pairing`]: SPAKE2 with key
//! confirmation, the device's identity proof, and the pairing window's limits (15 min, one
//! session, 10 s per handshake, 20 failures, a persistent counter that paces attempts from 100).
//! [`session`]: the ChaCha20-Poly1305 record layer and the mutually authenticated handshake for
//! later sessions. [`client`]: the client side as an app embeds it. Transports (thin tokio
//! adapters over the frames): `link` and `packet` (feature `transport`): the `Link` trait and
//! messages over packet sockets; `lan` (feature `lan`): TCP; `ble` (feature `ble`): the GATT
//! service through BlueZ.
//!
//! **Design.** No I/O, no threads, no clocks: callers pass whole messages in and get messages and
//! effects out, and pass the time as an [`std::time::Instant`]. Effects that must happen before
//! a reply (storing the failure count, the owner key) are returned as steps that carry the reply,
//! so the order is visible at the call site. Everything can be fuzzed (`fuzz/`) and tested in
//! memory. The wire format and flows are written up in `docs/pairing.md`.
//!
//! **Limits.** The BLE GATT service is tested only up to BlueZ (no Bluetooth on the build machine);
//! the agent side (with its mDNS announcement) lives in `edge-agent` (`bridge`, `advertise`), the
//! CLI in `edgectl`. `spake2` 0.4
//! and `ring` do not wipe their internal copies of the password, scalars and derived keys; this
//! crate wipes its own. An `Error` sent in the clear during a handshake is unauthenticated (it can
//! only make a client give up, which cutting the link does too).

#[cfg(feature = "ble")]
pub mod ble;
pub mod client;
pub mod frame;
#[cfg(feature = "lan")]
pub mod lan;
#[cfg(feature = "transport")]
pub mod link;
pub mod message;
#[cfg(feature = "transport")]
pub mod packet;
pub mod pairing;
pub mod session;
pub mod setup_code;
