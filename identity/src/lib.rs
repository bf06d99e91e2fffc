//! `edge-identity`: who the device is, and the files that must survive a power cut.
//!
//! - [`keys`]: the device's Ed25519 key, addressed by a URI (`file:///...`), the device id derived
//!   from it, signing and verifying.
//! - [`hex`]: the one spelling of keys, signatures and digests.
//! - [`durable`]: whole-or-nothing file replacement, and JSON state files on top of it.
//! - `database` (feature `sqlite`): SQLite opened with the same durability, for the agent's report
//!   queue and the hub's store.
//!
//! Pure in the dependency graph: no async runtime and no GPU stack, so the phone's side, the network
//! service and every fuzzer can use it.

#[cfg(feature = "sqlite")]
pub mod database;
pub mod durable;
pub mod hex;
pub mod keys;

pub use keys::{DeviceId, FileKeyStore, Identity, KeyError, KeyStore, KeyUri, verify};
