//! The owner's encrypted channel, and the mutually authenticated handshake that opens it later.
//!
//! **Records.** A [`SecureChannel`] seals each message with ChaCha20-Poly1305 under a key per
//! direction. The 96-bit nonce is a direction word (1 client→device, 2 device→client) and the
//! sender's 64-bit record counter, big-endian; the counter travels in the record and the record
//! header (`[version, type, counter]`) is the AEAD's associated data. The receiver takes only
//! counters above the last it accepted, so a replayed or reordered record is refused, and a
//! tampered one fails authentication; a refused record changes no state. Callers should drop the
//! connection on any error.
//!
//! **Session handshake** (after pairing, between the stored owner key and the device key):
//!
//! ```text
//! client → SessionHello  { client_key, X25519 e_c }
//! device → SessionAccept { device_key, X25519 e_d, sig_d = Sign_device("edge-session-v1 device" | TH1) }
//! client → SessionFinish { sig_c = Sign_owner("edge-session-v1 client" | TH2) }
//! TH1 = H(hello bytes | device_key | e_d),  TH2 = H(TH1 | sig_d)
//! keys = HKDF-SHA256(salt = TH2, ikm = X25519(e_c, e_d)), info "… c2d" | TH2 and "… d2c" | TH2
//! ```
//!
//! A client key that is not the stored owner is refused with `NotOwner` before any work.

use std::time::{Duration, Instant};

use edge_identity::keys::Identity;
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use ring::agreement::{self, EphemeralPrivateKey, X25519};
use ring::digest;
use ring::hkdf;
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

use crate::message::{
    ErrorCode, MAX_INNER, Message, MessageError, RECORD_PREFIX, Record, Response, SessionAccept,
    SessionFinish, SessionHello,
};
use crate::setup_code::DeviceFingerprint;

/// How long a session handshake may take, from the `SessionHello` to the `SessionFinish` (one round
/// trip with nobody in the loop).
pub const SESSION_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

const DIR_C2D: u32 = 1;
const DIR_D2C: u32 = 2;
const SESSION_LABEL: &[u8] = b"edge-session-v1";
const SIGN_DEVICE: &[u8] = b"edge-session-v1 device";
const SIGN_CLIENT: &[u8] = b"edge-session-v1 client";

/// Errors in the record layer and the session handshake.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// A message did not decode.
    #[error(transparent)]
    Message(#[from] MessageError),
    /// A record's counter is not above the last accepted one.
    #[error("record {counter} replayed or reordered (next acceptable is {expected})")]
    Replay {
        /// The record's counter.
        counter: u64,
        /// The lowest counter still acceptable.
        expected: u64,
    },
    /// A record's AEAD tag did not verify.
    #[error("record {counter} failed authentication (tampered, or sealed under another key)")]
    Tampered {
        /// The record's counter.
        counter: u64,
    },
    /// The send counter is used up; open a new session.
    #[error("record counter exhausted; open a new session")]
    Exhausted,
    /// Something other than the expected message arrived.
    #[error("expected {expected}, got {got}")]
    Unexpected {
        /// What this step takes: a type name such as `"SessionAccept"`, or `"a message that
        /// travels in a record"`.
        expected: &'static str,
        /// The type that came, as [`Message::kind`] spells it.
        got: &'static str,
    },
    /// The device has no owner, so no session can be opened.
    #[error("the device has no owner; pair it first")]
    NotPaired,
    /// The client's key is not the device's owner.
    #[error("the client key is not the device's owner")]
    NotOwner,
    /// The peer is not the device the client paired with.
    #[error("the device presented another identity key than the one paired with")]
    WrongDevice,
    /// A handshake signature did not verify.
    #[error("the {who}'s handshake signature does not verify")]
    BadSignature {
        /// `"device"` (checked by the client) or `"client"` (checked by the device).
        who: &'static str,
    },
    /// The peer's ephemeral key is unusable (a low-order point).
    #[error("the peer's ephemeral key is invalid")]
    BadKey,
    /// The handshake took too long.
    #[error("the handshake took {elapsed:?}, over the limit of {limit:?}")]
    Timeout {
        /// Time since the handshake began.
        elapsed: Duration,
        /// Always [`SESSION_HANDSHAKE_TIMEOUT`].
        limit: Duration,
    },
    /// The peer refused with an error response.
    #[error("refused by the device: {code:?}: {message}")]
    Refused {
        /// The code in the peer's `Error` response.
        code: ErrorCode,
        /// The device's message.
        message: String,
    },
    /// The system random source or a key derivation failed.
    #[error("cryptographic failure: {what}")]
    Crypto {
        /// The step, e.g. `"HKDF expand"`, `"AEAD seal"`, `"X25519 key"`, `"system random source"`.
        what: &'static str,
    },
}

impl SessionError {
    /// The code to send to the peer for this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Message(_) | Self::Unexpected { .. } | Self::BadKey => ErrorCode::BadRequest,
            Self::NotOwner => ErrorCode::NotOwner,
            Self::Timeout { .. } => ErrorCode::Timeout,
            Self::Refused { code, .. } => *code,
            Self::Crypto { .. } | Self::Exhausted => ErrorCode::Internal,
            Self::Replay { .. }
            | Self::Tampered { .. }
            | Self::NotPaired
            | Self::WrongDevice
            | Self::BadSignature { .. } => ErrorCode::Unauthorized,
        }
    }
}

/// Which end of a channel this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The owner's app.
    Client,
    /// The device: it answers the handshake and signs with its identity key.
    Device,
}

/// The two directions' keys and the transcript hash they were derived with.
pub(crate) struct SessionKeys {
    pub(crate) c2d: Zeroizing<[u8; 32]>,
    pub(crate) d2c: Zeroizing<[u8; 32]>,
}

fn crypto(what: &'static str) -> impl FnOnce(ring::error::Unspecified) -> SessionError {
    move |_| SessionError::Crypto { what }
}

/// SHA-256 over `parts`, each preceded by its length (u32 big-endian) so that no two part lists
/// hash alike.
pub(crate) fn transcript(parts: &[&[u8]]) -> [u8; 32] {
    let mut ctx = digest::Context::new(&digest::SHA256);
    for part in parts {
        let len = u32::try_from(part.len()).unwrap_or(u32::MAX);
        ctx.update(&len.to_be_bytes());
        ctx.update(part);
    }
    let mut out = [0; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// 32 bytes of HKDF-Expand output.
pub(crate) fn expand(prk: &hkdf::Prk, info: &[&[u8]]) -> Result<Zeroizing<[u8; 32]>, SessionError> {
    let mut out = Zeroizing::new([0; 32]);
    prk.expand(info, hkdf::HKDF_SHA256)
        .and_then(|okm| okm.fill(&mut out[..]))
        .map_err(crypto("HKDF expand"))?;
    Ok(out)
}

/// The per-direction keys: HKDF-Expand of `prk` with `label` and the transcript hash as info.
pub(crate) fn session_keys(
    prk: &hkdf::Prk,
    label: &[u8],
    th: &[u8; 32],
) -> Result<SessionKeys, SessionError> {
    Ok(SessionKeys {
        c2d: expand(prk, &[label, b" c2d", th])?,
        d2c: expand(prk, &[label, b" d2c", th])?,
    })
}

/// An established channel: seals outgoing and opens incoming messages.
pub struct SecureChannel {
    role: Role,
    // Boxed: ring's expanded keys are large, and channels move through enums and steps.
    keys: Box<ChannelKeys>,
    next_send: u64,
    next_recv: u64,
}

impl std::fmt::Debug for SecureChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecureChannel")
            .field("role", &self.role)
            .field("next_send", &self.next_send)
            .field("next_recv", &self.next_recv)
            .finish_non_exhaustive()
    }
}

struct ChannelKeys {
    send: LessSafeKey,
    recv: LessSafeKey,
}

fn nonce(direction: u32, counter: u64) -> Nonce {
    let mut n = [0; 12];
    n[..4].copy_from_slice(&direction.to_be_bytes());
    n[4..].copy_from_slice(&counter.to_be_bytes());
    Nonce::assume_unique_for_key(n)
}

fn aad(counter: u64) -> [u8; 10] {
    let mut a = [0; 10];
    a[..2].copy_from_slice(&RECORD_PREFIX);
    a[2..].copy_from_slice(&counter.to_be_bytes());
    a
}

/// Whether a message may travel inside a record.
fn sealable(msg: &Message) -> bool {
    matches!(
        msg,
        Message::OwnerHello(_)
            | Message::DeviceProof(_)
            | Message::Request(_)
            | Message::Response(_)
    )
}

impl SecureChannel {
    pub(crate) fn new(role: Role, keys: &SessionKeys) -> Result<Self, SessionError> {
        let key = |k: &[u8; 32]| {
            UnboundKey::new(&CHACHA20_POLY1305, k)
                .map(LessSafeKey::new)
                .map_err(crypto("AEAD key"))
        };
        let (send, recv) = match role {
            Role::Client => (key(&keys.c2d)?, key(&keys.d2c)?),
            Role::Device => (key(&keys.d2c)?, key(&keys.c2d)?),
        };
        Ok(Self {
            role,
            keys: Box::new(ChannelKeys { send, recv }),
            next_send: 0,
            next_recv: 0,
        })
    }

    fn directions(&self) -> (u32, u32) {
        match self.role {
            Role::Client => (DIR_C2D, DIR_D2C),
            Role::Device => (DIR_D2C, DIR_C2D),
        }
    }

    /// Seals `msg` into an encoded `Record` message.
    pub fn seal(&mut self, msg: &Message) -> Result<Vec<u8>, SessionError> {
        if !sealable(msg) {
            return Err(SessionError::Unexpected {
                expected: "a message that travels in a record",
                got: msg.kind(),
            });
        }
        let mut buf = msg.encode()?;
        if buf.len() > MAX_INNER {
            return Err(MessageError::TooLarge {
                len: buf.len(),
                max: MAX_INNER,
            }
            .into());
        }
        let counter = self.next_send;
        if counter == u64::MAX {
            return Err(SessionError::Exhausted);
        }
        let (dir, _) = self.directions();
        self.keys
            .send
            .seal_in_place_append_tag(nonce(dir, counter), Aad::from(aad(counter)), &mut buf)
            .map_err(crypto("AEAD seal"))?;
        self.next_send = counter + 1;
        Ok(Message::Record(Record {
            counter,
            sealed: buf,
        })
        .encode()?)
    }

    /// Opens an encoded `Record` message; refuses replayed, reordered and tampered records.
    pub fn open(&mut self, wire: &[u8]) -> Result<Message, SessionError> {
        let record = match Message::decode(wire)? {
            Message::Record(r) => r,
            Message::Response(Response::Error { code, message }) => {
                return Err(SessionError::Refused { code, message });
            }
            other => {
                return Err(SessionError::Unexpected {
                    expected: "Record",
                    got: other.kind(),
                });
            }
        };
        let counter = record.counter;
        if counter < self.next_recv || counter == u64::MAX {
            return Err(SessionError::Replay {
                counter,
                expected: self.next_recv,
            });
        }
        let (_, dir) = self.directions();
        let mut buf = record.sealed;
        let plain = self
            .keys
            .recv
            .open_in_place(nonce(dir, counter), Aad::from(aad(counter)), &mut buf)
            .map_err(|_| SessionError::Tampered { counter })?;
        self.next_recv = counter + 1;
        let msg = Message::decode(plain)?;
        if !sealable(&msg) {
            return Err(SessionError::Unexpected {
                expected: "a message that travels in a record",
                got: msg.kind(),
            });
        }
        Ok(msg)
    }
}

/// An ephemeral X25519 key pair and its public half.
fn ephemeral(rng: &SystemRandom) -> Result<(EphemeralPrivateKey, [u8; 32]), SessionError> {
    let private = EphemeralPrivateKey::generate(&X25519, rng).map_err(crypto("X25519 key"))?;
    let public = private
        .compute_public_key()
        .map_err(crypto("X25519 public key"))?;
    let mut out = [0; 32];
    out.copy_from_slice(public.as_ref());
    Ok((private, out))
}

/// Session keys from an X25519 agreement and the transcript hash.
fn agree(
    private: EphemeralPrivateKey,
    peer: &[u8; 32],
    th2: &[u8; 32],
) -> Result<SessionKeys, SessionError> {
    let peer = agreement::UnparsedPublicKey::new(&X25519, peer);
    let prk = agreement::agree_ephemeral(private, &peer, |shared| {
        hkdf::Salt::new(hkdf::HKDF_SHA256, th2).extract(shared)
    })
    .map_err(|_| SessionError::BadKey)?;
    session_keys(&prk, SESSION_LABEL, th2)
}

fn signed(domain: &[u8], th: &[u8; 32]) -> Vec<u8> {
    [domain, th].concat()
}

/// Which device key a client's session takes.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Trust {
    /// The key learned at pairing.
    Key([u8; 32]),
    /// Any key that hashes to this device id (the QR code's): trust on first use, for a
    /// pairing whose link dropped after the device took the owner but before its proof came.
    FirstUse(DeviceFingerprint),
}

/// The client's half of a session handshake, waiting for the device's `SessionAccept`.
pub struct ClientHandshake {
    ephemeral: EphemeralPrivateKey,
    hello: Vec<u8>,
    trust: Trust,
}

impl std::fmt::Debug for ClientHandshake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientHandshake").finish_non_exhaustive()
    }
}

impl ClientHandshake {
    /// Starts a session as `owner` with the device holding `device_key`: the `SessionHello`.
    pub fn start(owner: &Identity, device_key: &[u8; 32]) -> Result<(Self, Vec<u8>), SessionError> {
        Self::trusting(owner, Trust::Key(*device_key))
    }

    /// Starts a session as `owner` with whichever device key hashes to `device` (trust on first
    /// use): for a pairing whose link dropped before the device's proof arrived. The device
    /// signs the handshake with that key, so only the device the QR code names can answer.
    pub fn start_first_use(
        owner: &Identity,
        device: DeviceFingerprint,
    ) -> Result<(Self, Vec<u8>), SessionError> {
        Self::trusting(owner, Trust::FirstUse(device))
    }

    fn trusting(owner: &Identity, trust: Trust) -> Result<(Self, Vec<u8>), SessionError> {
        let (ephemeral, public) = ephemeral(&SystemRandom::new())?;
        let hello = Message::SessionHello(SessionHello {
            client_key: *owner.public_key(),
            ephemeral: public,
        })
        .encode()?;
        let hs = Self {
            ephemeral,
            hello: hello.clone(),
            trust,
        };
        Ok((hs, hello))
    }

    /// Checks the device's `SessionAccept`: the channel and the `SessionFinish` to send.
    pub fn finish(
        self,
        accept: &[u8],
        owner: &Identity,
    ) -> Result<(SecureChannel, Vec<u8>), SessionError> {
        self.finish_learning(accept, owner)
            .map(|(channel, finish, _)| (channel, finish))
    }

    /// [`ClientHandshake::finish`], and the device key it took.
    pub fn finish_learning(
        self,
        accept: &[u8],
        owner: &Identity,
    ) -> Result<(SecureChannel, Vec<u8>, [u8; 32]), SessionError> {
        let accept = match Message::decode(accept)? {
            Message::SessionAccept(a) => a,
            Message::Response(Response::Error { code, message }) => {
                return Err(SessionError::Refused { code, message });
            }
            other => {
                return Err(SessionError::Unexpected {
                    expected: "SessionAccept",
                    got: other.kind(),
                });
            }
        };
        let trusted = match &self.trust {
            Trust::Key(key) => accept.device_key == *key,
            Trust::FirstUse(device) => device.matches_key(&accept.device_key),
        };
        if !trusted {
            return Err(SessionError::WrongDevice);
        }
        let th1 = transcript(&[
            SIGN_DEVICE,
            &self.hello,
            &accept.device_key,
            &accept.ephemeral,
        ]);
        if !edge_identity::keys::verify(
            &accept.device_key,
            &signed(SIGN_DEVICE, &th1),
            &accept.signature,
        ) {
            return Err(SessionError::BadSignature { who: "device" });
        }
        let th2 = transcript(&[SIGN_CLIENT, &th1, &accept.signature]);
        let keys = agree(self.ephemeral, &accept.ephemeral, &th2)?;
        let finish = Message::SessionFinish(SessionFinish {
            signature: owner.sign(&signed(SIGN_CLIENT, &th2)),
        })
        .encode()?;
        Ok((
            SecureChannel::new(Role::Client, &keys)?,
            finish,
            accept.device_key,
        ))
    }
}

/// The device's half of a session handshake, waiting for the client's `SessionFinish`.
pub struct DeviceHandshake {
    started: Instant,
    client_key: [u8; 32],
    th2: [u8; 32],
    keys: SessionKeys,
}

impl std::fmt::Debug for DeviceHandshake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceHandshake")
            .field("started", &self.started)
            .finish_non_exhaustive()
    }
}

impl DeviceHandshake {
    /// Answers a `SessionHello` at `now`: refuses any key but `owner`, else the `SessionAccept`.
    pub fn accept(
        now: Instant,
        hello: &[u8],
        identity: &Identity,
        owner: Option<&[u8; 32]>,
    ) -> Result<(Self, Vec<u8>), SessionError> {
        let msg = match Message::decode(hello)? {
            Message::SessionHello(h) => h,
            other => {
                return Err(SessionError::Unexpected {
                    expected: "SessionHello",
                    got: other.kind(),
                });
            }
        };
        let owner = owner.ok_or(SessionError::NotPaired)?;
        if msg.client_key != *owner {
            return Err(SessionError::NotOwner);
        }
        let (private, public) = ephemeral(&SystemRandom::new())?;
        let device_key = *identity.public_key();
        let th1 = transcript(&[SIGN_DEVICE, hello, &device_key, &public]);
        let signature = identity.sign(&signed(SIGN_DEVICE, &th1));
        let th2 = transcript(&[SIGN_CLIENT, &th1, &signature]);
        let keys = agree(private, &msg.ephemeral, &th2)?;
        let reply = Message::SessionAccept(SessionAccept {
            device_key,
            ephemeral: public,
            signature,
        })
        .encode()?;
        let hs = Self {
            started: now,
            client_key: msg.client_key,
            th2,
            keys,
        };
        Ok((hs, reply))
    }

    /// Checks the client's `SessionFinish` at `now`: the channel.
    pub fn finish(self, now: Instant, finish: &[u8]) -> Result<SecureChannel, SessionError> {
        let elapsed = now.saturating_duration_since(self.started);
        if elapsed > SESSION_HANDSHAKE_TIMEOUT {
            return Err(SessionError::Timeout {
                elapsed,
                limit: SESSION_HANDSHAKE_TIMEOUT,
            });
        }
        let msg = match Message::decode(finish)? {
            Message::SessionFinish(f) => f,
            other => {
                return Err(SessionError::Unexpected {
                    expected: "SessionFinish",
                    got: other.kind(),
                });
            }
        };
        if !edge_identity::keys::verify(
            &self.client_key,
            &signed(SIGN_CLIENT, &self.th2),
            &msg.signature,
        ) {
            return Err(SessionError::BadSignature { who: "client" });
        }
        SecureChannel::new(Role::Device, &self.keys)
    }
}

/// Fills `out` from the system random source.
pub(crate) fn random(out: &mut [u8]) -> Result<(), SessionError> {
    SystemRandom::new()
        .fill(out)
        .map_err(crypto("system random source"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Request;

    fn pair_of_channels() -> (SecureChannel, SecureChannel) {
        let keys = SessionKeys {
            c2d: Zeroizing::new([1; 32]),
            d2c: Zeroizing::new([2; 32]),
        };
        (
            SecureChannel::new(Role::Client, &keys).expect("new"),
            SecureChannel::new(Role::Device, &keys).expect("new"),
        )
    }

    #[test]
    fn records_round_trip_both_ways() {
        let (mut client, mut device) = pair_of_channels();
        for _ in 0..3 {
            let wire = client
                .seal(&Message::Request(Request::Status))
                .expect("seal");
            assert_eq!(
                device.open(&wire).expect("open"),
                Message::Request(Request::Status)
            );
            let wire = device.seal(&Message::Response(Response::Ok)).expect("seal");
            assert_eq!(
                client.open(&wire).expect("open"),
                Message::Response(Response::Ok)
            );
        }
    }

    #[test]
    fn replayed_reordered_and_tampered_records_are_refused() {
        let (mut client, mut device) = pair_of_channels();
        let r0 = client
            .seal(&Message::Request(Request::Status))
            .expect("seal");
        let r1 = client
            .seal(&Message::Request(Request::ConfigGet))
            .expect("seal");
        let r2 = client
            .seal(&Message::Request(Request::WifiScan))
            .expect("seal");
        device.open(&r0).expect("open");
        assert!(matches!(
            device.open(&r0),
            Err(SessionError::Replay {
                counter: 0,
                expected: 1
            })
        ));
        device.open(&r2).expect("open");
        assert!(matches!(
            device.open(&r1),
            Err(SessionError::Replay {
                counter: 1,
                expected: 3
            })
        ));
        let r3 = client
            .seal(&Message::Request(Request::Reboot))
            .expect("seal");
        for i in 2..r3.len() {
            let mut bad = r3.clone();
            bad[i] ^= 0x01;
            assert!(device.open(&bad).is_err(), "flip at byte {i} accepted");
        }
        // A refused record changes nothing: the genuine one still opens.
        assert_eq!(
            device.open(&r3).expect("open"),
            Message::Request(Request::Reboot)
        );
        // A record reflected back to its sender does not open (other direction, other key).
        let echo = client
            .seal(&Message::Request(Request::Status))
            .expect("seal");
        assert!(matches!(
            client.open(&echo),
            Err(SessionError::Tampered { .. })
        ));
        // Handshake messages do not travel in records.
        assert!(
            client
                .seal(&Message::Record(Record {
                    counter: 0,
                    sealed: vec![]
                }))
                .is_err()
        );
    }

    #[test]
    fn a_first_use_session_takes_only_the_key_the_device_id_names() {
        let device = Identity::generate_ephemeral().expect("key");
        let impostor = Identity::generate_ephemeral().expect("key");
        let owner = Identity::generate_ephemeral().expect("key");
        let named = DeviceFingerprint::of(device.device_id());
        let now = Instant::now();
        let answer = |identity: &Identity| {
            let (hs, hello) =
                ClientHandshake::start_first_use(&owner, named.clone()).expect("start");
            let (_, accept) =
                DeviceHandshake::accept(now, &hello, identity, Some(owner.public_key()))
                    .expect("accept");
            hs.finish_learning(&accept, &owner)
        };
        let (_, _, learned) = answer(&device).expect("the named device");
        assert_eq!(&learned, device.public_key());
        // A box that holds another key (and so hashes to another id) is refused.
        assert!(matches!(answer(&impostor), Err(SessionError::WrongDevice)));
    }

    #[test]
    fn session_handshake_authenticates_both_sides() {
        let device = Identity::generate_ephemeral().expect("generate_ephemeral");
        let owner = Identity::generate_ephemeral().expect("generate_ephemeral");
        let now = Instant::now();
        let (hs, hello) = ClientHandshake::start(&owner, device.public_key()).expect("start");
        let (dhs, accept) = DeviceHandshake::accept(now, &hello, &device, Some(owner.public_key()))
            .expect("accept");
        let (mut c, finish) = hs.finish(&accept, &owner).expect("finish");
        let mut d = dhs
            .finish(now + Duration::from_secs(1), &finish)
            .expect("finish");
        let wire = c.seal(&Message::Request(Request::Status)).expect("seal");
        assert_eq!(
            d.open(&wire).expect("open"),
            Message::Request(Request::Status)
        );
        let wire = d.seal(&Message::Response(Response::Ok)).expect("seal");
        assert_eq!(
            c.open(&wire).expect("open"),
            Message::Response(Response::Ok)
        );
    }

    #[test]
    fn a_stranger_gets_not_owner_and_a_forger_gets_a_bad_signature() {
        let device = Identity::generate_ephemeral().expect("generate_ephemeral");
        let owner = Identity::generate_ephemeral().expect("generate_ephemeral");
        let stranger = Identity::generate_ephemeral().expect("generate_ephemeral");
        let now = Instant::now();
        let (_, hello) = ClientHandshake::start(&stranger, device.public_key()).expect("start");
        let err = DeviceHandshake::accept(now, &hello, &device, Some(owner.public_key()))
            .expect_err("accept should fail");
        assert!(matches!(err, SessionError::NotOwner));
        assert_eq!(err.code(), ErrorCode::NotOwner);
        assert!(matches!(
            DeviceHandshake::accept(now, &hello, &device, None),
            Err(SessionError::NotPaired)
        ));

        // The stranger claims the owner's key but can only sign with its own.
        let (hs, _) = ClientHandshake::start(&owner, device.public_key()).expect("start");
        let forged_hello = hs.hello.clone();
        let (dhs, accept) =
            DeviceHandshake::accept(now, &forged_hello, &device, Some(owner.public_key()))
                .expect("accept");
        let (_, finish) = hs.finish(&accept, &stranger).expect("finish");
        assert!(matches!(
            dhs.finish(now, &finish),
            Err(SessionError::BadSignature { who: "client" })
        ));

        // An impostor device (another key) is refused by the client.
        let impostor = Identity::generate_ephemeral().expect("generate_ephemeral");
        let (hs, hello) = ClientHandshake::start(&owner, device.public_key()).expect("start");
        let (_, accept) = DeviceHandshake::accept(now, &hello, &impostor, Some(owner.public_key()))
            .expect("accept");
        assert!(matches!(
            hs.finish(&accept, &owner),
            Err(SessionError::WrongDevice)
        ));
    }

    #[test]
    fn a_stalled_session_handshake_times_out() {
        let device = Identity::generate_ephemeral().expect("generate_ephemeral");
        let owner = Identity::generate_ephemeral().expect("generate_ephemeral");
        let now = Instant::now();
        let (hs, hello) = ClientHandshake::start(&owner, device.public_key()).expect("start");
        let (dhs, accept) = DeviceHandshake::accept(now, &hello, &device, Some(owner.public_key()))
            .expect("accept");
        let (_, finish) = hs.finish(&accept, &owner).expect("finish");
        assert!(matches!(
            dhs.finish(
                now + SESSION_HANDSHAKE_TIMEOUT + Duration::from_secs(1),
                &finish
            ),
            Err(SessionError::Timeout { .. })
        ));
    }
}
