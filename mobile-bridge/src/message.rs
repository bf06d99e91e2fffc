//! The messages between the owner's app and the device, and their versioned wire encoding.
//!
//! Every encoded message is `[VERSION][type][body]`: the protocol version (1), a type byte from
//! the table below, and the body in [postcard](https://docs.rs/postcard) (varint integers,
//! varint-length-prefixed strings and byte strings, fixed arrays as raw bytes). Decoding checks
//! the version, the type, every field's length against its limit, and that no bytes trail.
//!
//! | type | message          | sent          | body                                    |
//! |------|------------------|---------------|-----------------------------------------|
//! | 0x01 | `PakeStart`      | plain         | SPAKE2 message (33 bytes)               |
//! | 0x02 | `PakeReply`      | plain         | SPAKE2 message, device MAC \[32\]         |
//! | 0x03 | `PakeConfirm`    | plain         | client MAC \[32\]                         |
//! | 0x04 | `OwnerHello`     | in a record   | owner key \[32\], challenge \[32\], sig \[64\] |
//! | 0x05 | `DeviceProof`    | in a record   | device key \[32\], signature (64 bytes)   |
//! | 0x10 | `SessionHello`   | plain         | client key \[32\], X25519 key \[32\]        |
//! | 0x11 | `SessionAccept`  | plain         | device key \[32\], X25519 key \[32\], sig   |
//! | 0x12 | `SessionFinish`  | plain         | signature (64 bytes)                    |
//! | 0x20 | `Record`         | plain         | counter (u64), sealed bytes             |
//! | 0x30-0x39 | requests    | in a record   | see [`Request`]                         |
//! | 0x40-0x45 | responses   | in a record¹  | see [`Response`]                        |
//!
//! ¹ An `Error` response is also sent in the clear when a handshake is refused.

use std::fmt;

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::frame::MAX_MESSAGE;

/// The protocol version this build speaks.
pub const VERSION: u8 = 1;
/// Length of a SPAKE2 message (a side byte and an Ed25519 point).
pub const PAKE_MESSAGE_LEN: usize = 33;
/// Largest config key in bytes (a dotted path such as `limits.gpu_duty_cycle`).
pub const MAX_CONFIG_KEY: usize = 128;
/// Largest config value, config document or status details.
pub const MAX_TEXT: usize = 12 * 1024;
/// Largest SSID (IEEE 802.11).
pub const MAX_SSID: usize = 32;
/// Largest Wi-Fi passphrase (64 hex digits of a raw PSK).
pub const MAX_PASSPHRASE: usize = 64;
/// Most log lines asked for or returned.
pub const MAX_LOG_LINES: u16 = 256;
/// Largest log line in bytes; the agent cuts longer lines to this before it answers.
pub const MAX_LOG_LINE: usize = 1024;
/// Most Wi-Fi networks in a scan result.
pub const MAX_NETWORKS: usize = 64;
/// Largest short text field (error messages, versions, ids, a network's URL and owner token).
pub const MAX_SHORT: usize = 256;
/// Largest CA certificate bundle (PEM) in a [`Request::Bind`]: room for a root and an intermediate.
pub const MAX_CA_PEM: usize = 8 * 1024;
/// Record overhead: type, version, counter, length prefix, AEAD tag (rounded up).
pub const RECORD_OVERHEAD: usize = 32;
/// Largest message that fits in a record.
pub const MAX_INNER: usize = MAX_MESSAGE - RECORD_OVERHEAD;

/// Errors encoding or decoding a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    /// Fewer than the two header bytes.
    #[error("message of {len} bytes is shorter than its 2-byte header")]
    Truncated {
        /// The whole message's length: 0 or 1.
        len: usize,
    },
    /// A protocol version this build does not speak.
    #[error("protocol version {version} is not supported (this build speaks {VERSION})")]
    Version {
        /// The first byte as received; only [`VERSION`] is accepted.
        version: u8,
    },
    /// A type byte that is not in the module's table.
    #[error("unknown message type 0x{tag:02x}")]
    UnknownType {
        /// The second byte as received.
        tag: u8,
    },
    /// The body does not parse.
    #[error("malformed {kind} body: {source}")]
    Malformed {
        /// The type name as [`Message::kind`] spells it, e.g. `"Request::Logs"`.
        kind: &'static str,
        /// postcard's error: input ending inside a field, a bad varint, invalid UTF-8, and so on.
        source: postcard::Error,
    },
    /// Bytes follow the body, or follow the header of a message that has no body.
    #[error("{extra} bytes trail the {kind} body")]
    Trailing {
        /// The type name as [`Message::kind`] spells it.
        kind: &'static str,
        /// How many bytes were left over.
        extra: usize,
    },
    /// A fixed-size field has the wrong length.
    #[error("field {field} is {len} bytes, expected {expected}")]
    FieldLength {
        /// The struct field's name: `pake` or `signature`.
        field: &'static str,
        /// Its length in bytes, as given or received.
        len: usize,
        /// The length it must have.
        expected: usize,
    },
    /// A field is over its limit.
    #[error("field {field} is {len} long, over the limit of {max}")]
    FieldTooLong {
        /// The field's name (`ssid`, `line`), or `networks`/`lines` when a list has too many items.
        field: &'static str,
        /// Its length (bytes, or items for a list).
        len: usize,
        /// The field's limit: one of this module's `MAX_*` constants.
        max: usize,
    },
    /// An error code this build does not know.
    #[error("unknown error code {code}")]
    UnknownErrorCode {
        /// The byte as received; 1 to 10 are known.
        code: u8,
    },
    /// The bytes decode, but are not the message's one encoding (an overlong varint, say).
    #[error("{kind} is not canonically encoded")]
    NonCanonical {
        /// The type name as [`Message::kind`] spells it.
        kind: &'static str,
    },
    /// The encoded message is over the size limit.
    #[error("encoded message is {len} bytes, over the limit of {max}")]
    TooLarge {
        /// The encoded size in bytes, header included.
        len: usize,
        /// Always [`MAX_MESSAGE`], the largest message the framing carries.
        max: usize,
    },
}

/// Why a request failed, as the client sees it. Internal details stay in the device's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ErrorCode {
    /// The request is malformed or not valid now.
    BadRequest = 1,
    /// Authentication failed (wrong code, bad signature, bad MAC).
    Unauthorized = 2,
    /// The client's key is not the device's owner.
    NotOwner = 3,
    /// The config change was refused by validation.
    InvalidConfig = 4,
    /// Another session is in progress.
    Busy = 5,
    /// Too many failures over the device's life: attempts are paced; try again later.
    Slowed = 6,
    /// No pairing window is open (the device is owned, or the window expired or closed).
    WindowClosed = 7,
    /// The handshake took too long.
    Timeout = 8,
    /// The device does not support this request.
    Unsupported = 9,
    /// Something failed inside the device.
    Internal = 10,
}

impl ErrorCode {
    /// The code for a wire byte.
    pub fn from_u8(code: u8) -> Result<Self, MessageError> {
        use ErrorCode::*;
        Ok(match code {
            1 => BadRequest,
            2 => Unauthorized,
            3 => NotOwner,
            4 => InvalidConfig,
            5 => Busy,
            6 => Slowed,
            7 => WindowClosed,
            8 => Timeout,
            9 => Unsupported,
            10 => Internal,
            _ => return Err(MessageError::UnknownErrorCode { code }),
        })
    }

    /// A short, client-safe description.
    pub fn describe(self) -> &'static str {
        match self {
            Self::BadRequest => "bad request",
            Self::Unauthorized => "authentication failed",
            Self::NotOwner => "this key is not the device's owner",
            Self::InvalidConfig => "invalid configuration",
            Self::Busy => "another session is in progress",
            Self::Slowed => "too many failed attempts: try again in a minute",
            Self::WindowClosed => "the pairing window is closed",
            Self::Timeout => "the handshake timed out",
            Self::Unsupported => "not supported",
            Self::Internal => "internal error",
        }
    }
}

/// Client → device, pairing step 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PakeStart {
    /// The client's SPAKE2 message.
    pub pake: Vec<u8>,
}

/// Device → client, pairing step 2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PakeReply {
    /// The device's SPAKE2 message.
    pub pake: Vec<u8>,
    /// The device's key-confirmation MAC.
    pub confirm: [u8; 32],
}

/// Client → device, pairing step 3.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PakeConfirm {
    /// The client's key-confirmation MAC.
    pub confirm: [u8; 32],
}

/// Client → device in the new channel: the would-be owner's key and a challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnerHello {
    /// The app's long-term Ed25519 public key.
    pub owner_key: [u8; 32],
    /// Random bytes the device signs.
    pub challenge: [u8; 32],
    /// The owner key's signature over the pairing transcript and the challenge: proof that the
    /// app holds the key it asks the device to take as its owner.
    pub signature: [u8; 64],
}

/// Device → client in the new channel: the device's identity proof.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceProof {
    /// The device's Ed25519 identity key.
    pub device_key: [u8; 32],
    /// Its signature over the pairing transcript, the challenge and the owner key.
    pub signature: [u8; 64],
}

/// Client → device: opens an authenticated session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionHello {
    /// The client's long-term Ed25519 key (the owner key).
    pub client_key: [u8; 32],
    /// The client's ephemeral X25519 key.
    pub ephemeral: [u8; 32],
}

/// Device → client: the device's half of the session handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionAccept {
    /// The device's Ed25519 identity key.
    pub device_key: [u8; 32],
    /// The device's ephemeral X25519 key.
    pub ephemeral: [u8; 32],
    /// The device's signature over the transcript.
    pub signature: [u8; 64],
}

/// Client → device: the client's signature, completing the session handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionFinish {
    /// The client's signature over the transcript.
    pub signature: [u8; 64],
}

/// An encrypted message (see [`crate::session::SecureChannel`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The sender's record counter; part of the nonce.
    pub counter: u64,
    /// The ciphertext and its 16-byte tag.
    pub sealed: Vec<u8>,
}

/// A control request from the owner.
#[derive(Clone, PartialEq, Eq)]
pub enum Request {
    /// The device's status.
    Status,
    /// Asks for the owner's settings file; answered with [`Response::Config`].
    ConfigGet,
    /// Set one config key; the agent validates it like the config file.
    ConfigSet {
        /// Dotted key, e.g. `limits.gpu_duty_cycle`.
        key: String,
        /// The value, in TOML syntax.
        value: String,
    },
    /// Scan for Wi-Fi networks.
    WifiScan,
    /// Join a Wi-Fi network.
    WifiSet {
        /// The SSID, at most [`MAX_SSID`] bytes of UTF-8.
        ssid: String,
        /// The passphrase (empty for an open network); a secret.
        passphrase: Zeroizing<String>,
    },
    /// The most recent log lines.
    Logs {
        /// How many lines, at most [`MAX_LOG_LINES`].
        max_lines: u16,
    },
    /// Reboot the device. The agent answers `Ok` once the reboot is queued, before it goes down.
    Reboot,
    /// Forget the owner; the device can be paired again.
    Unpair,
    /// Erase owner, Wi-Fi credentials and pairing state; keep the identity.
    FactoryReset,
    /// Bind the box to the owner's account on a network: the device registers with `hub_url`,
    /// trusting only `ca_pem`, and reports under `owner_token`. Replaces an earlier binding the
    /// owner made; refused where the device's config file names the network.
    Bind {
        /// The network's `https://` base URL, at most [`MAX_SHORT`] bytes.
        hub_url: String,
        /// The network's CA certificate(s), PEM, at most [`MAX_CA_PEM`] bytes.
        ca_pem: String,
        /// The owner's token from the network's account, at most [`MAX_SHORT`] bytes; a secret.
        owner_token: Zeroizing<String>,
    },
}

impl fmt::Debug for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Status => f.write_str("Status"),
            Self::ConfigGet => f.write_str("ConfigGet"),
            Self::ConfigSet { key, value } => f
                .debug_struct("ConfigSet")
                .field("key", key)
                .field("value", value)
                .finish(),
            Self::WifiScan => f.write_str("WifiScan"),
            Self::WifiSet { ssid, .. } => f
                .debug_struct("WifiSet")
                .field("ssid", ssid)
                .field("passphrase", &"<redacted>")
                .finish(),
            Self::Logs { max_lines } => f
                .debug_struct("Logs")
                .field("max_lines", max_lines)
                .finish(),
            Self::Reboot => f.write_str("Reboot"),
            Self::Unpair => f.write_str("Unpair"),
            Self::FactoryReset => f.write_str("FactoryReset"),
            Self::Bind { hub_url, .. } => f
                .debug_struct("Bind")
                .field("hub_url", hub_url)
                .field("owner_token", &"<redacted>")
                .finish_non_exhaustive(),
        }
    }
}

/// The device's status, as sent to the owner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReport {
    /// The device id (hex).
    pub device_id: String,
    /// The agent's version.
    pub agent_version: String,
    /// Seconds since the agent started (not since the OS booted).
    pub uptime_s: u64,
    /// Health, GPU and network figures as a JSON object; its shape belongs to the agent.
    pub details_json: String,
}

/// A Wi-Fi network seen in a scan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WifiNetwork {
    /// The SSID as the scan reported it, at most [`MAX_SSID`] bytes.
    pub ssid: String,
    /// Signal strength in dBm.
    pub signal_dbm: i16,
    /// Whether it needs a passphrase.
    pub secured: bool,
}

/// A reply to a [`Request`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// The device's status.
    Status(StatusReport),
    /// The configuration, as TOML.
    Config {
        /// The owner's settings file as saved on the device (only the keys the owner set);
        /// empty if the owner has set none. At most [`MAX_TEXT`] bytes.
        toml: String,
    },
    /// Networks found by a scan.
    WifiNetworks(Vec<WifiNetwork>),
    /// Recent log lines, oldest first.
    Logs {
        /// At most [`MAX_LOG_LINES`] formatted lines of at most [`MAX_LOG_LINE`] bytes each.
        lines: Vec<String>,
    },
    /// The request succeeded and has nothing to return (a setting saved, Wi-Fi credentials
    /// handed to the manager, a reboot queued).
    Ok,
    /// The request failed, or, sent in the clear, a handshake was refused.
    Error {
        /// Why, as a code.
        code: ErrorCode,
        /// A client-safe description.
        message: String,
    },
}

impl Response {
    /// An error response with the code's standard description.
    pub fn error(code: ErrorCode) -> Self {
        Self::Error {
            code,
            message: code.describe().to_owned(),
        }
    }
}

/// Every message of the protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Pairing step 1.
    PakeStart(PakeStart),
    /// Pairing step 2.
    PakeReply(PakeReply),
    /// Pairing step 3.
    PakeConfirm(PakeConfirm),
    /// The would-be owner's key and challenge.
    OwnerHello(OwnerHello),
    /// The device's identity proof.
    DeviceProof(DeviceProof),
    /// Session handshake step 1.
    SessionHello(SessionHello),
    /// Session handshake step 2.
    SessionAccept(SessionAccept),
    /// Session handshake step 3.
    SessionFinish(SessionFinish),
    /// An encrypted message; a request or response travels inside one.
    Record(Record),
    /// A control request; valid only inside a [`Record`].
    Request(Request),
    /// A control response; valid only inside a [`Record`], except an `Error` refusing a handshake.
    Response(Response),
}

/// The second byte of every message, as in the module's table.
mod tag {
    pub(super) const PAKE_START: u8 = 0x01;
    pub(super) const PAKE_REPLY: u8 = 0x02;
    pub(super) const PAKE_CONFIRM: u8 = 0x03;
    pub(super) const OWNER_HELLO: u8 = 0x04;
    pub(super) const DEVICE_PROOF: u8 = 0x05;
    pub(super) const SESSION_HELLO: u8 = 0x10;
    pub(super) const SESSION_ACCEPT: u8 = 0x11;
    pub(super) const SESSION_FINISH: u8 = 0x12;
    pub(super) const RECORD: u8 = 0x20;
    pub(super) const REQ_STATUS: u8 = 0x30;
    pub(super) const REQ_CONFIG_GET: u8 = 0x31;
    pub(super) const REQ_CONFIG_SET: u8 = 0x32;
    pub(super) const REQ_WIFI_SCAN: u8 = 0x33;
    pub(super) const REQ_WIFI_SET: u8 = 0x34;
    pub(super) const REQ_LOGS: u8 = 0x35;
    pub(super) const REQ_REBOOT: u8 = 0x36;
    pub(super) const REQ_UNPAIR: u8 = 0x37;
    pub(super) const REQ_FACTORY_RESET: u8 = 0x38;
    pub(super) const REQ_BIND: u8 = 0x39;
    pub(super) const RESP_STATUS: u8 = 0x40;
    pub(super) const RESP_CONFIG: u8 = 0x41;
    pub(super) const RESP_WIFI_NETWORKS: u8 = 0x42;
    pub(super) const RESP_LOGS: u8 = 0x43;
    pub(super) const RESP_OK: u8 = 0x44;
    pub(super) const RESP_ERROR: u8 = 0x45;
}

/// The record header's first two bytes, which the AEAD authenticates.
pub(crate) const RECORD_PREFIX: [u8; 2] = [VERSION, tag::RECORD];

fn limit(field: &'static str, len: usize, max: usize) -> Result<(), MessageError> {
    if len > max {
        return Err(MessageError::FieldTooLong { field, len, max });
    }
    Ok(())
}

fn exact(field: &'static str, len: usize, expected: usize) -> Result<(), MessageError> {
    if len != expected {
        return Err(MessageError::FieldLength {
            field,
            len,
            expected,
        });
    }
    Ok(())
}

fn sig(field: &'static str, bytes: &[u8]) -> Result<[u8; 64], MessageError> {
    bytes.try_into().map_err(|_| MessageError::FieldLength {
        field,
        len: bytes.len(),
        expected: 64,
    })
}

impl Message {
    /// The message's type name, for errors and logs.
    pub fn kind(&self) -> &'static str {
        kind_of(self.tag())
    }

    fn tag(&self) -> u8 {
        match self {
            Self::PakeStart(_) => tag::PAKE_START,
            Self::PakeReply(_) => tag::PAKE_REPLY,
            Self::PakeConfirm(_) => tag::PAKE_CONFIRM,
            Self::OwnerHello(_) => tag::OWNER_HELLO,
            Self::DeviceProof(_) => tag::DEVICE_PROOF,
            Self::SessionHello(_) => tag::SESSION_HELLO,
            Self::SessionAccept(_) => tag::SESSION_ACCEPT,
            Self::SessionFinish(_) => tag::SESSION_FINISH,
            Self::Record(_) => tag::RECORD,
            Self::Request(r) => match r {
                Request::Status => tag::REQ_STATUS,
                Request::ConfigGet => tag::REQ_CONFIG_GET,
                Request::ConfigSet { .. } => tag::REQ_CONFIG_SET,
                Request::WifiScan => tag::REQ_WIFI_SCAN,
                Request::WifiSet { .. } => tag::REQ_WIFI_SET,
                Request::Logs { .. } => tag::REQ_LOGS,
                Request::Reboot => tag::REQ_REBOOT,
                Request::Unpair => tag::REQ_UNPAIR,
                Request::FactoryReset => tag::REQ_FACTORY_RESET,
                Request::Bind { .. } => tag::REQ_BIND,
            },
            Self::Response(r) => match r {
                Response::Status(_) => tag::RESP_STATUS,
                Response::Config { .. } => tag::RESP_CONFIG,
                Response::WifiNetworks(_) => tag::RESP_WIFI_NETWORKS,
                Response::Logs { .. } => tag::RESP_LOGS,
                Response::Ok => tag::RESP_OK,
                Response::Error { .. } => tag::RESP_ERROR,
            },
        }
    }

    /// Checks every field against its limit.
    pub fn validate(&self) -> Result<(), MessageError> {
        match self {
            Self::PakeStart(m) => exact("pake", m.pake.len(), PAKE_MESSAGE_LEN),
            Self::PakeReply(m) => exact("pake", m.pake.len(), PAKE_MESSAGE_LEN),
            Self::Record(r) => limit("sealed", r.sealed.len(), MAX_MESSAGE),
            Self::Request(Request::ConfigSet { key, value }) => {
                limit("key", key.len(), MAX_CONFIG_KEY)?;
                limit("value", value.len(), MAX_TEXT)
            }
            Self::Request(Request::WifiSet { ssid, passphrase }) => {
                limit("ssid", ssid.len(), MAX_SSID)?;
                limit("passphrase", passphrase.len(), MAX_PASSPHRASE)
            }
            Self::Request(Request::Bind {
                hub_url,
                ca_pem,
                owner_token,
            }) => {
                limit("hub_url", hub_url.len(), MAX_SHORT)?;
                limit("ca_pem", ca_pem.len(), MAX_CA_PEM)?;
                limit("owner_token", owner_token.len(), MAX_SHORT)
            }
            Self::Request(Request::Logs { max_lines }) => limit(
                "max_lines",
                usize::from(*max_lines),
                usize::from(MAX_LOG_LINES),
            ),
            Self::Response(Response::Status(s)) => {
                limit("device_id", s.device_id.len(), MAX_SHORT)?;
                limit("agent_version", s.agent_version.len(), MAX_SHORT)?;
                limit("details_json", s.details_json.len(), MAX_TEXT)
            }
            Self::Response(Response::Config { toml }) => limit("toml", toml.len(), MAX_TEXT),
            Self::Response(Response::WifiNetworks(list)) => {
                limit("networks", list.len(), MAX_NETWORKS)?;
                list.iter()
                    .try_for_each(|n| limit("ssid", n.ssid.len(), MAX_SSID))
            }
            Self::Response(Response::Logs { lines }) => {
                limit("lines", lines.len(), usize::from(MAX_LOG_LINES))?;
                lines
                    .iter()
                    .try_for_each(|l| limit("line", l.len(), MAX_LOG_LINE))
            }
            Self::Response(Response::Error { message, .. }) => {
                limit("message", message.len(), MAX_SHORT)
            }
            _ => Ok(()),
        }
    }

    /// Encodes the message; an error if a field or the whole is over its limit.
    pub fn encode(&self) -> Result<Vec<u8>, MessageError> {
        self.validate()?;
        let kind = self.kind();
        let out = vec![VERSION, self.tag()];
        let out = match self {
            Self::PakeStart(m) => body(kind, &m.pake.as_slice(), out),
            Self::PakeReply(m) => body(kind, &(m.pake.as_slice(), &m.confirm), out),
            Self::PakeConfirm(m) => body(kind, &m.confirm, out),
            Self::OwnerHello(m) => body(kind, &(&m.owner_key, &m.challenge, &m.signature[..]), out),
            Self::DeviceProof(m) => body(kind, &(&m.device_key, &m.signature[..]), out),
            Self::SessionHello(m) => body(kind, &(&m.client_key, &m.ephemeral), out),
            Self::SessionAccept(m) => {
                body(kind, &(&m.device_key, &m.ephemeral, &m.signature[..]), out)
            }
            Self::SessionFinish(m) => body(kind, &&m.signature[..], out),
            Self::Record(r) => body(kind, &(r.counter, r.sealed.as_slice()), out),
            Self::Request(r) => match r {
                Request::ConfigSet { key, value } => body(kind, &(key, value), out),
                Request::WifiSet { ssid, passphrase } => {
                    body(kind, &(ssid, passphrase.as_str()), out)
                }
                Request::Logs { max_lines } => body(kind, max_lines, out),
                Request::Bind {
                    hub_url,
                    ca_pem,
                    owner_token,
                } => body(kind, &(hub_url, ca_pem, owner_token.as_str()), out),
                _ => Ok(out),
            },
            Self::Response(r) => match r {
                Response::Status(s) => body(kind, s, out),
                Response::Config { toml } => body(kind, toml, out),
                Response::WifiNetworks(list) => body(kind, list, out),
                Response::Logs { lines } => body(kind, lines, out),
                Response::Ok => Ok(out),
                Response::Error { code, message } => body(kind, &(*code as u8, message), out),
            },
        }?;
        if out.len() > MAX_MESSAGE {
            return Err(MessageError::TooLarge {
                len: out.len(),
                max: MAX_MESSAGE,
            });
        }
        Ok(out)
    }

    /// Decodes a message, checking version, type, field limits, trailing bytes and that the
    /// bytes are the message's canonical encoding.
    pub fn decode(bytes: &[u8]) -> Result<Self, MessageError> {
        let &[version, tag, ref b @ ..] = bytes else {
            return Err(MessageError::Truncated { len: bytes.len() });
        };
        if version != VERSION {
            return Err(MessageError::Version { version });
        }
        let kind = kind_of(tag);
        let msg = match tag {
            tag::PAKE_START => {
                let pake: &[u8] = parse(kind, b)?;
                Self::PakeStart(PakeStart {
                    pake: pake.to_vec(),
                })
            }
            tag::PAKE_REPLY => {
                let (pake, confirm): (&[u8], [u8; 32]) = parse(kind, b)?;
                Self::PakeReply(PakeReply {
                    pake: pake.to_vec(),
                    confirm,
                })
            }
            tag::PAKE_CONFIRM => Self::PakeConfirm(PakeConfirm {
                confirm: parse(kind, b)?,
            }),
            tag::OWNER_HELLO => {
                let (owner_key, challenge, signature): ([u8; 32], [u8; 32], &[u8]) =
                    parse(kind, b)?;
                Self::OwnerHello(OwnerHello {
                    owner_key,
                    challenge,
                    signature: sig("signature", signature)?,
                })
            }
            tag::DEVICE_PROOF => {
                let (device_key, signature): ([u8; 32], &[u8]) = parse(kind, b)?;
                Self::DeviceProof(DeviceProof {
                    device_key,
                    signature: sig("signature", signature)?,
                })
            }
            tag::SESSION_HELLO => {
                let (client_key, ephemeral) = parse(kind, b)?;
                Self::SessionHello(SessionHello {
                    client_key,
                    ephemeral,
                })
            }
            tag::SESSION_ACCEPT => {
                let (device_key, ephemeral, signature): ([u8; 32], [u8; 32], &[u8]) =
                    parse(kind, b)?;
                Self::SessionAccept(SessionAccept {
                    device_key,
                    ephemeral,
                    signature: sig("signature", signature)?,
                })
            }
            tag::SESSION_FINISH => {
                let signature: &[u8] = parse(kind, b)?;
                Self::SessionFinish(SessionFinish {
                    signature: sig("signature", signature)?,
                })
            }
            tag::RECORD => {
                let (counter, sealed): (u64, &[u8]) = parse(kind, b)?;
                limit("sealed", sealed.len(), MAX_MESSAGE)?;
                Self::Record(Record {
                    counter,
                    sealed: sealed.to_vec(),
                })
            }
            tag::REQ_STATUS => empty(kind, b, Self::Request(Request::Status))?,
            tag::REQ_CONFIG_GET => empty(kind, b, Self::Request(Request::ConfigGet))?,
            tag::REQ_CONFIG_SET => {
                let (key, value): (&str, &str) = parse(kind, b)?;
                Self::Request(Request::ConfigSet {
                    key: key.to_owned(),
                    value: value.to_owned(),
                })
            }
            tag::REQ_WIFI_SCAN => empty(kind, b, Self::Request(Request::WifiScan))?,
            tag::REQ_WIFI_SET => {
                let (ssid, passphrase): (&str, &str) = parse(kind, b)?;
                Self::Request(Request::WifiSet {
                    ssid: ssid.to_owned(),
                    passphrase: Zeroizing::new(passphrase.to_owned()),
                })
            }
            tag::REQ_LOGS => Self::Request(Request::Logs {
                max_lines: parse(kind, b)?,
            }),
            tag::REQ_REBOOT => empty(kind, b, Self::Request(Request::Reboot))?,
            tag::REQ_UNPAIR => empty(kind, b, Self::Request(Request::Unpair))?,
            tag::REQ_FACTORY_RESET => empty(kind, b, Self::Request(Request::FactoryReset))?,
            tag::REQ_BIND => {
                let (hub_url, ca_pem, owner_token): (&str, &str, &str) = parse(kind, b)?;
                Self::Request(Request::Bind {
                    hub_url: hub_url.to_owned(),
                    ca_pem: ca_pem.to_owned(),
                    owner_token: Zeroizing::new(owner_token.to_owned()),
                })
            }
            tag::RESP_STATUS => Self::Response(Response::Status(parse(kind, b)?)),
            tag::RESP_CONFIG => {
                let toml: &str = parse(kind, b)?;
                Self::Response(Response::Config {
                    toml: toml.to_owned(),
                })
            }
            tag::RESP_WIFI_NETWORKS => Self::Response(Response::WifiNetworks(parse(kind, b)?)),
            tag::RESP_LOGS => Self::Response(Response::Logs {
                lines: parse(kind, b)?,
            }),
            tag::RESP_OK => empty(kind, b, Self::Response(Response::Ok))?,
            tag::RESP_ERROR => {
                let (code, message): (u8, &str) = parse(kind, b)?;
                Self::Response(Response::Error {
                    code: ErrorCode::from_u8(code)?,
                    message: message.to_owned(),
                })
            }
            _ => return Err(MessageError::UnknownType { tag }),
        };
        // postcard accepts overlong varints; one message has one encoding, so refuse them.
        if msg.encode()? != bytes {
            return Err(MessageError::NonCanonical { kind });
        }
        Ok(msg)
    }
}

fn kind_of(tag: u8) -> &'static str {
    match tag {
        tag::PAKE_START => "PakeStart",
        tag::PAKE_REPLY => "PakeReply",
        tag::PAKE_CONFIRM => "PakeConfirm",
        tag::OWNER_HELLO => "OwnerHello",
        tag::DEVICE_PROOF => "DeviceProof",
        tag::SESSION_HELLO => "SessionHello",
        tag::SESSION_ACCEPT => "SessionAccept",
        tag::SESSION_FINISH => "SessionFinish",
        tag::RECORD => "Record",
        tag::REQ_STATUS => "Request::Status",
        tag::REQ_CONFIG_GET => "Request::ConfigGet",
        tag::REQ_CONFIG_SET => "Request::ConfigSet",
        tag::REQ_WIFI_SCAN => "Request::WifiScan",
        tag::REQ_WIFI_SET => "Request::WifiSet",
        tag::REQ_LOGS => "Request::Logs",
        tag::REQ_REBOOT => "Request::Reboot",
        tag::REQ_UNPAIR => "Request::Unpair",
        tag::REQ_FACTORY_RESET => "Request::FactoryReset",
        tag::REQ_BIND => "Request::Bind",
        tag::RESP_STATUS => "Response::Status",
        tag::RESP_CONFIG => "Response::Config",
        tag::RESP_WIFI_NETWORKS => "Response::WifiNetworks",
        tag::RESP_LOGS => "Response::Logs",
        tag::RESP_OK => "Response::Ok",
        tag::RESP_ERROR => "Response::Error",
        _ => "unknown",
    }
}

fn body<T: Serialize + ?Sized>(
    kind: &'static str,
    value: &T,
    out: Vec<u8>,
) -> Result<Vec<u8>, MessageError> {
    postcard::to_extend(value, out).map_err(|source| MessageError::Malformed { kind, source })
}

fn parse<'a, T: Deserialize<'a>>(kind: &'static str, bytes: &'a [u8]) -> Result<T, MessageError> {
    let (value, rest) = postcard::take_from_bytes(bytes)
        .map_err(|source| MessageError::Malformed { kind, source })?;
    if !rest.is_empty() {
        return Err(MessageError::Trailing {
            kind,
            extra: rest.len(),
        });
    }
    Ok(value)
}

fn empty(kind: &'static str, bytes: &[u8], msg: Message) -> Result<Message, MessageError> {
    if !bytes.is_empty() {
        return Err(MessageError::Trailing {
            kind,
            extra: bytes.len(),
        });
    }
    Ok(msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn samples() -> Vec<Message> {
        vec![
            Message::PakeStart(PakeStart {
                pake: vec![0x41; 33],
            }),
            Message::PakeReply(PakeReply {
                pake: vec![0x42; 33],
                confirm: [7; 32],
            }),
            Message::PakeConfirm(PakeConfirm { confirm: [8; 32] }),
            Message::OwnerHello(OwnerHello {
                owner_key: [1; 32],
                challenge: [2; 32],
                signature: [11; 64],
            }),
            Message::DeviceProof(DeviceProof {
                device_key: [3; 32],
                signature: [4; 64],
            }),
            Message::SessionHello(SessionHello {
                client_key: [5; 32],
                ephemeral: [6; 32],
            }),
            Message::SessionAccept(SessionAccept {
                device_key: [7; 32],
                ephemeral: [8; 32],
                signature: [9; 64],
            }),
            Message::SessionFinish(SessionFinish {
                signature: [10; 64],
            }),
            Message::Record(Record {
                counter: u64::MAX,
                sealed: vec![1, 2, 3],
            }),
            Message::Request(Request::Status),
            Message::Request(Request::ConfigGet),
            Message::Request(Request::ConfigSet {
                key: "limits.gpu_duty_cycle".into(),
                value: "0.5".into(),
            }),
            Message::Request(Request::WifiScan),
            Message::Request(Request::WifiSet {
                ssid: "home".into(),
                passphrase: Zeroizing::new("correct horse".into()),
            }),
            Message::Request(Request::Logs { max_lines: 100 }),
            Message::Request(Request::Reboot),
            Message::Request(Request::Unpair),
            Message::Request(Request::FactoryReset),
            Message::Request(Request::Bind {
                hub_url: "https://hub.example:8443".into(),
                ca_pem: "-----BEGIN CERTIFICATE-----\n...".into(),
                owner_token: Zeroizing::new("owner-1".into()),
            }),
            Message::Response(Response::Status(StatusReport {
                device_id: "ab".repeat(16),
                agent_version: "0.1.0".into(),
                uptime_s: 12345,
                details_json: r#"{"gpu":"ok"}"#.into(),
            })),
            Message::Response(Response::Config {
                toml: "[limits]\ngpu_duty_cycle = 0.5\n".into(),
            }),
            Message::Response(Response::WifiNetworks(vec![WifiNetwork {
                ssid: "café".into(),
                signal_dbm: -61,
                secured: true,
            }])),
            Message::Response(Response::Logs {
                lines: vec!["one".into(), "two".into()],
            }),
            Message::Response(Response::Ok),
            Message::Response(Response::error(ErrorCode::NotOwner)),
        ]
    }

    #[test]
    fn every_message_round_trips_with_its_header() {
        let mut tags = std::collections::HashSet::new();
        for m in samples() {
            let bytes = m.encode().expect("encode");
            assert_eq!(bytes[0], VERSION);
            assert!(tags.insert(bytes[1]), "duplicate tag {}", bytes[1]);
            assert_eq!(Message::decode(&bytes).expect("decode"), m, "{}", m.kind());
        }
    }

    #[test]
    fn wire_bytes_are_pinned() {
        let ok = Message::Response(Response::Ok).encode().expect("encode");
        assert_eq!(ok, [1, 0x44]);
        let set = Message::Request(Request::ConfigSet {
            key: "a".into(),
            value: "bc".into(),
        })
        .encode()
        .expect("encode");
        assert_eq!(set, [1, 0x32, 1, b'a', 2, b'b', b'c']);
        let err = Message::Response(Response::Error {
            code: ErrorCode::Busy,
            message: "x".into(),
        })
        .encode()
        .expect("encode");
        assert_eq!(err, [1, 0x45, 5, 1, b'x']);
    }

    #[test]
    fn bad_headers_and_trailing_bytes_are_typed_errors() {
        assert_eq!(
            Message::decode(&[1]),
            Err(MessageError::Truncated { len: 1 })
        );
        assert_eq!(
            Message::decode(&[2, 0x44]),
            Err(MessageError::Version { version: 2 })
        );
        assert_eq!(
            Message::decode(&[1, 0x99]),
            Err(MessageError::UnknownType { tag: 0x99 })
        );
        assert_eq!(
            Message::decode(&[1, 0x44, 0]),
            Err(MessageError::Trailing {
                kind: "Response::Ok",
                extra: 1
            })
        );
        for m in samples() {
            let mut bytes = m.encode().expect("encode");
            bytes.push(0);
            assert!(
                matches!(Message::decode(&bytes), Err(MessageError::Trailing { .. })),
                "{}",
                m.kind()
            );
            bytes.pop();
            for cut in 2..bytes.len() {
                assert!(
                    Message::decode(&bytes[..cut]).is_err(),
                    "{} cut at {cut}",
                    m.kind()
                );
            }
        }
        assert_eq!(
            Message::decode(&[1, 0x45, 99, 0]),
            Err(MessageError::UnknownErrorCode { code: 99 })
        );
    }

    /// Found by the `message_decode` fuzz target: `max_lines = 86` as an overlong varint.
    #[test]
    fn overlong_varints_are_refused() {
        assert_eq!(
            Message::decode(&[1, 0x35, 0xd6, 0x00]),
            Err(MessageError::NonCanonical {
                kind: "Request::Logs"
            })
        );
        assert_eq!(
            Message::decode(&[1, 0x35, 0x56]).expect("decode"),
            Message::Request(Request::Logs { max_lines: 86 })
        );
        // A record counter re-encoded overlong is refused too.
        let mut record = vec![1, 0x20, 0x80, 0x00, 1, 7];
        assert!(matches!(
            Message::decode(&record),
            Err(MessageError::NonCanonical { .. })
        ));
        record.drain(2..4);
        record.insert(2, 0);
        assert!(Message::decode(&record).is_ok());
    }

    #[test]
    fn oversize_fields_are_refused_both_ways() {
        let long = Message::Request(Request::WifiSet {
            ssid: "x".repeat(MAX_SSID + 1),
            passphrase: Zeroizing::new(String::new()),
        });
        let want = MessageError::FieldTooLong {
            field: "ssid",
            len: 33,
            max: 32,
        };
        assert_eq!(long.encode(), Err(want.clone()));
        let mut raw = vec![1, 0x34, 33];
        raw.extend_from_slice(&[b'x'; 33]);
        raw.push(0);
        assert_eq!(Message::decode(&raw), Err(want));

        let short_pake = [1, 0x01, 2, 0x41, 0];
        assert!(matches!(
            Message::decode(&short_pake),
            Err(MessageError::FieldLength { field: "pake", .. })
        ));
        let mut short_sig = vec![1, 0x12, 63];
        short_sig.extend_from_slice(&[0; 63]);
        assert!(matches!(
            Message::decode(&short_sig),
            Err(MessageError::FieldLength {
                field: "signature",
                ..
            })
        ));
        let too_big = Message::Response(Response::Logs {
            lines: vec!["y".repeat(MAX_LOG_LINE); 20],
        });
        assert!(matches!(
            too_big.encode(),
            Err(MessageError::TooLarge { .. })
        ));
        // A length prefix far past the input is an error, not an allocation.
        assert!(Message::decode(&[1, 0x41, 0xff, 0xff, 0xff, 0xff, 0x0f]).is_err());
    }

    #[test]
    fn debug_redacts_the_wifi_passphrase() {
        let m = Request::WifiSet {
            ssid: "home".into(),
            passphrase: Zeroizing::new("hunter22".into()),
        };
        assert!(!format!("{m:?}").contains("hunter22"));
    }
}
