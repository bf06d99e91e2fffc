//! Pairing: SPAKE2 over the setup code, key confirmation, the device's identity proof, and the
//! device-side limits, modelled on Matter's commissioning and HomeKit's failure counter.
//!
//! ```text
//! client → PakeStart   { X = SPAKE2-A(pw) }
//! device → PakeReply   { Y = SPAKE2-B(pw), mac_d = HMAC(kc_d, TH1) }
//! client → PakeConfirm { mac_c = HMAC(kc_c, TH2) }
//! client → Record(OwnerHello { owner_key, challenge })
//! device → Record(DeviceProof { device_key, Sign_device("edge-pairing-v1 device-proof" | TH2 | challenge | owner_key) })
//!
//! pw  = "edge-setup-code-v1:" | 11 digits;  SPAKE2 identities "edge-app", "edge-device:<device id>"
//! K   = SPAKE2 key (it already hashes pw, both identities, X, Y)
//! TH1 = H(PakeStart bytes | Y | device id),  TH2 = H(TH1 | mac_d)
//! PRK = HKDF-Extract(salt = TH1, K);  kc_d, kc_c = Expand(PRK, "… confirm device|client")
//! keys = Expand(PRK, "edge-pairing-v1 c2d|d2c" | TH2)
//! ```
//!
//! The code is never a key: it only enters SPAKE2. A recorded transcript gives an offline guesser
//! nothing to test guesses against, because every MAC depends on an ephemeral secret that never
//! left its side; an active attacker gets one guess per connection, and each is charged.
//!
//! The [`PairingWindow`] holds the limits. It opens only while the device is unowned, for
//! [`WINDOW_LIFETIME`]; it serves one handshake at a time (others get `Busy`), each at most
//! [`HANDSHAKE_TIMEOUT`]; [`MAX_WINDOW_FAILURES`] failures close it. The persistent failure count
//! is loaded by the caller and must be stored durably (written and fsync'd) whenever a step asks:
//! an attempt is charged when the device answers `PakeStart` — before the client can learn anything
//! from the reply — and refunded if it ends in a pairing. From [`SLOW_FROM`] failures over the
//! device's life, attempts are paced ([`PairingWindow::gap`]): the count slows a guesser, and never
//! locks the owner out of a box that has no shell (it used to lock pairing for good at 100).

use std::time::{Duration, Instant};

use edge_identity::keys::{DeviceId, Identity};
use ring::hkdf;
use ring::hmac;
use spake2::{Ed25519Group, Spake2};
use zeroize::Zeroizing;

use crate::message::{
    DeviceProof, ErrorCode, Message, MessageError, OwnerHello, PakeConfirm, PakeReply, PakeStart,
    Response,
};
use crate::session::{self, Role, SecureChannel, SessionError, SessionKeys, transcript};
use crate::setup_code::{DeviceFingerprint, SetupCode};

/// How long a pairing window stays open.
pub const WINDOW_LIFETIME: Duration = Duration::from_secs(15 * 60);
/// How long one pairing handshake may take, from `PakeStart` to the `DeviceProof`. Nobody types
/// anything once it has begun (the app scanned the code before), so a few round trips over BLE
/// fit many times over; a stalled attempt holds the window's one slot for no longer than this (it
/// held it for a minute before).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Failed attempts that close a window.
pub const MAX_WINDOW_FAILURES: u32 = 20;
/// Persistent failed attempts from which attempts are paced.
pub const SLOW_FROM: u32 = 100;
/// The longest pause between two attempts (from 1000 failures on).
pub const MAX_GAP: Duration = Duration::from_secs(60);

const APP_IDENTITY: &[u8] = b"edge-app";
const PASSWORD_PREFIX: &[u8] = b"edge-setup-code-v1:";
const LABEL: &[u8] = b"edge-pairing-v1";
const PROOF_DOMAIN: &[u8] = b"edge-pairing-v1 device-proof";
const OWNER_DOMAIN: &[u8] = b"edge-pairing-v1 owner-hello";

/// Errors in pairing, on either side.
#[derive(Debug, thiserror::Error)]
pub enum PairingError {
    /// The device has an owner; pairing needs an unpair or factory reset first.
    #[error("the device already has an owner")]
    AlreadyOwned,
    /// Too many failures over the device's life: the next attempt must wait.
    #[error("{failures} failed attempts: try again in {retry_in:?}")]
    Slowed {
        /// The persistent failure count, at least [`SLOW_FROM`].
        failures: u32,
        /// How long until an attempt is taken.
        retry_in: Duration,
    },
    /// The window has closed and stays closed; only a new [`PairingWindow`] pairs again.
    #[error("the pairing window is closed: {reason:?}")]
    WindowClosed {
        /// Why it closed.
        reason: CloseReason,
    },
    /// Another handshake is in progress.
    #[error("another pairing session is in progress")]
    Busy,
    /// The handshake took longer than [`HANDSHAKE_TIMEOUT`].
    #[error("the pairing handshake took longer than {limit:?}")]
    Timeout {
        /// Always [`HANDSHAKE_TIMEOUT`].
        limit: Duration,
    },
    /// A message came that this step does not take.
    #[error("unexpected {got} during pairing (expected {expected})")]
    Unexpected {
        /// The message type this step takes, e.g. `"PakeStart"`.
        expected: &'static str,
        /// The type that came, as [`Message::kind`] spells it, or `"a later pairing message"`
        /// when no handshake is in progress.
        got: &'static str,
    },
    /// Key confirmation failed: the setup code was wrong, or the handshake was tampered with.
    #[error("key confirmation failed: wrong setup code or a tampered handshake")]
    WrongCode,
    /// The SPAKE2 message is malformed.
    #[error("malformed SPAKE2 message: {0}")]
    Pake(String),
    /// The device's proof names another device than the one expected.
    #[error("the device's key does not match the device id {expected}")]
    WrongDevice {
        /// The device id expected (from the QR code or the advertisement).
        expected: DeviceFingerprint,
    },
    /// The device's identity signature does not verify.
    #[error("the device's identity proof does not verify")]
    BadProof,
    /// The owner's hello is not signed by the key it asks the device to take as its owner.
    #[error("the owner's hello is not signed by the owner key it names")]
    BadOwnerProof,
    /// The device refused with an error response.
    #[error("refused by the device: {code:?}: {message}")]
    Refused {
        /// The code in the device's `Error` response.
        code: ErrorCode,
        /// The device's message.
        message: String,
    },
    /// A message did not decode.
    #[error(transparent)]
    Message(#[from] MessageError),
    /// Sealing or opening the `OwnerHello`/`DeviceProof` records failed, or deriving their keys
    /// or the challenge did.
    #[error(transparent)]
    Session(#[from] SessionError),
}

impl PairingError {
    /// The code to send to the peer for this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::AlreadyOwned | Self::WindowClosed { .. } => ErrorCode::WindowClosed,
            Self::Slowed { .. } => ErrorCode::Slowed,
            Self::Busy => ErrorCode::Busy,
            Self::Timeout { .. } => ErrorCode::Timeout,
            Self::Unexpected { .. } | Self::Pake(_) | Self::Message(_) => ErrorCode::BadRequest,
            Self::WrongCode | Self::WrongDevice { .. } | Self::BadProof | Self::BadOwnerProof => {
                ErrorCode::Unauthorized
            }
            Self::Refused { code, .. } => *code,
            Self::Session(e) => e.code(),
        }
    }

    /// The encoded `Error` response to send in the clear for this error.
    pub fn reply(&self) -> Vec<u8> {
        let code = self.code();
        // An error response with a standard description always fits; the fallback is the same
        // response with an empty message, encoded by hand.
        Message::Response(Response::error(code))
            .encode()
            .unwrap_or_else(|_| vec![crate::message::VERSION, 0x45, code as u8, 0])
    }
}

/// Why a window closed. Nothing reopens it: a new window is a new [`PairingWindow`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// [`WINDOW_LIFETIME`] passed.
    Expired,
    /// [`MAX_WINDOW_FAILURES`] attempts failed.
    TooManyFailures,
    /// A client paired; the window serves no second pairing.
    Paired,
}

/// The transport connection a message came on, numbered by the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnId(pub u64);

#[derive(Debug, Clone, Copy)]
struct Active {
    conn: ConnId,
    started: Instant,
}

/// The device-side pairing limits, as a pure policy object (time is passed in).
#[derive(Debug)]
pub struct PairingWindow {
    opened_at: Instant,
    window_failures: u32,
    failures: u32,
    active: Option<Active>,
    closed: Option<CloseReason>,
    /// When the last attempt began (for the pace).
    last_attempt: Option<Instant>,
}

impl PairingWindow {
    /// Opens a window at `now` for a device that is `owned` or not, with the persisted count.
    pub fn open(now: Instant, owned: bool, persisted_failures: u32) -> Result<Self, PairingError> {
        if owned {
            return Err(PairingError::AlreadyOwned);
        }
        Ok(Self {
            opened_at: now,
            window_failures: 0,
            failures: persisted_failures,
            active: None,
            closed: None,
            last_attempt: None,
        })
    }

    /// The least time between two attempts at a lifetime count of `failures`: none below
    /// [`SLOW_FROM`], then 6 s for every further hundred, at most [`MAX_GAP`]. A window (20
    /// attempts, and later windows need the pairing button) then lasts minutes, not seconds, for
    /// a guesser; an owner who mistyped waits a minute at worst.
    pub fn gap(failures: u32) -> Duration {
        if failures < SLOW_FROM {
            return Duration::ZERO;
        }
        let hundreds = u64::from((failures - SLOW_FROM) / 100 + 1);
        (Duration::from_secs(6) * hundreds as u32).min(MAX_GAP)
    }

    /// The persistent failure count as it stands (charged attempts included).
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Failed (or charged, in-flight) attempts in this window.
    pub fn window_failures(&self) -> u32 {
        self.window_failures
    }

    /// The connection whose handshake is in progress.
    pub fn active(&self) -> Option<ConnId> {
        self.active.map(|a| a.conn)
    }

    /// Whether the window was open at the last [`PairingWindow::tick`].
    pub fn is_open(&self) -> bool {
        self.closed.is_none()
    }

    /// Why the window is closed at `now`, or `None` while it is open.
    pub fn closed(&mut self, now: Instant) -> Option<CloseReason> {
        self.tick(now);
        self.closed
    }

    /// Applies the passage of time: a handshake past [`HANDSHAKE_TIMEOUT`] fails, and the window
    /// closes after [`WINDOW_LIFETIME`] (failing any handshake still in progress).
    pub fn tick(&mut self, now: Instant) {
        if let Some(a) = self.active
            && now.saturating_duration_since(a.started) > HANDSHAKE_TIMEOUT
        {
            self.fail(a.conn);
        }
        if self.closed.is_none() && now.saturating_duration_since(self.opened_at) >= WINDOW_LIFETIME
        {
            if let Some(a) = self.active {
                self.fail(a.conn);
            }
            self.closed.get_or_insert(CloseReason::Expired);
        }
    }

    /// Whether a handshake could start at `now` (changes nothing but the clock).
    pub fn admissible(&mut self, now: Instant) -> Result<(), PairingError> {
        self.tick(now);
        if let Some(reason) = self.closed {
            return Err(PairingError::WindowClosed { reason });
        }
        if self.active.is_some() {
            return Err(PairingError::Busy);
        }
        if let Some(last) = self.last_attempt {
            let next = last + Self::gap(self.failures);
            if now < next {
                return Err(PairingError::Slowed {
                    failures: self.failures,
                    retry_in: next - now,
                });
            }
        }
        Ok(())
    }

    /// Starts `conn`'s handshake and charges it as a failure: the returned count must be stored
    /// durably before the device sends anything back.
    pub fn begin(&mut self, now: Instant, conn: ConnId) -> Result<u32, PairingError> {
        self.admissible(now)?;
        self.window_failures += 1;
        self.failures = self.failures.saturating_add(1);
        self.active = Some(Active { conn, started: now });
        self.last_attempt = Some(now);
        Ok(self.failures)
    }

    /// Checks that `conn` holds the handshake in progress and that it has not run out of time.
    pub fn check(&mut self, now: Instant, conn: ConnId) -> Result<(), PairingError> {
        let held = self.active.is_some_and(|a| a.conn == conn);
        self.tick(now);
        match self.active {
            Some(a) if a.conn == conn => Ok(()),
            Some(_) => Err(PairingError::Busy),
            None if held => Err(PairingError::Timeout {
                limit: HANDSHAKE_TIMEOUT,
            }),
            None => Err(PairingError::Unexpected {
                expected: "PakeStart",
                got: "a later pairing message",
            }),
        }
    }

    /// Ends `conn`'s handshake as failed; its charge stands. Closes the window at the limits.
    pub fn fail(&mut self, conn: ConnId) {
        if self.active.is_some_and(|a| a.conn == conn) {
            self.active = None;
        }
        if self.window_failures >= MAX_WINDOW_FAILURES {
            self.closed.get_or_insert(CloseReason::TooManyFailures);
        }
    }

    /// Ends `conn`'s handshake as a pairing: refunds its charge and closes the window. The
    /// returned count is to be stored with the owner key.
    pub fn succeed(&mut self, conn: ConnId) -> u32 {
        if self.active.is_some_and(|a| a.conn == conn) {
            self.active = None;
            self.window_failures = self.window_failures.saturating_sub(1);
            self.failures = self.failures.saturating_sub(1);
        }
        self.closed = Some(CloseReason::Paired);
        self.failures
    }
}

/// The secrets a pairing handshake derives from the SPAKE2 key.
struct PairingKeys {
    device_confirm: hmac::Key,
    device_mac: [u8; 32],
    client_confirm: hmac::Key,
    th2: [u8; 32],
    session: SessionKeys,
}

fn password(code: &SetupCode) -> Zeroizing<Vec<u8>> {
    Zeroizing::new([PASSWORD_PREFIX, code.digits().as_bytes()].concat())
}

fn device_identity(device_id: &str) -> spake2::Identity {
    spake2::Identity::new(format!("edge-device:{device_id}").as_bytes())
}

fn transcript1(start: &[u8], reply_pake: &[u8], device_id: &str) -> [u8; 32] {
    transcript(&[LABEL, b"th1", start, reply_pake, device_id.as_bytes()])
}

/// The key schedule: confirmation keys, MACs and session keys from the SPAKE2 key and TH1.
fn schedule(spake_key: &[u8], th1: &[u8; 32]) -> Result<PairingKeys, PairingError> {
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, th1).extract(spake_key);
    let hmac_key = |label: &[u8]| {
        session::expand(&prk, &[LABEL, label]).map(|k| hmac::Key::new(hmac::HMAC_SHA256, &k[..]))
    };
    let device_confirm = hmac_key(b" confirm device")?;
    let client_confirm = hmac_key(b" confirm client")?;
    let mut device_mac = [0; 32];
    device_mac.copy_from_slice(hmac::sign(&device_confirm, th1).as_ref());
    let th2 = transcript(&[LABEL, b"th2", th1, &device_mac]);
    let session = session::session_keys(&prk, LABEL, &th2)?;
    Ok(PairingKeys {
        device_confirm,
        device_mac,
        client_confirm,
        th2,
        session,
    })
}

fn proof_message(th2: &[u8; 32], challenge: &[u8; 32], owner_key: &[u8; 32]) -> Vec<u8> {
    [PROOF_DOMAIN, th2, challenge, owner_key].concat()
}

/// What the owner signs in its hello: the transcript, its challenge and its key, so the
/// signature belongs to this pairing and no other.
fn owner_hello_message(th2: &[u8; 32], challenge: &[u8; 32], owner_key: &[u8; 32]) -> Vec<u8> {
    [OWNER_DOMAIN, th2, challenge, owner_key].concat()
}

fn refused_or_unexpected(msg: Message, expected: &'static str) -> PairingError {
    match msg {
        Message::Response(Response::Error { code, message }) => {
            PairingError::Refused { code, message }
        }
        other => PairingError::Unexpected {
            expected,
            got: other.kind(),
        },
    }
}

/// What the device must do after a pairing step. Persisting comes first, always.
#[must_use = "persist what the step asks, then send its reply"]
#[derive(Debug)]
pub enum DeviceStep {
    /// Store the failure count durably (write and fsync), and only then send `reply`.
    PersistThenSend {
        /// The persistent failure count to store.
        failures: u32,
        /// The message to send once it is stored.
        reply: Vec<u8>,
    },
    /// Nothing to send; wait for the client's next message.
    Wait,
    /// A client paired: store the owner key and the count durably, then send `reply`.
    Paired(Box<Paired>),
}

/// The outcome of a successful pairing, on the device.
#[derive(Debug)]
pub struct Paired {
    /// The new owner's Ed25519 public key, to store.
    pub owner_key: [u8; 32],
    /// The persistent failure count (this attempt refunded), to store.
    pub failures: u32,
    /// The sealed `DeviceProof`, to send once both are stored.
    pub reply: Vec<u8>,
    /// The channel, which goes on as the owner's control channel.
    pub channel: SecureChannel,
}

enum Handshake {
    AwaitConfirm {
        conn: ConnId,
        // Boxed: ring's HMAC key holds both padded key states.
        client_confirm: Box<hmac::Key>,
        th2: [u8; 32],
        session: SessionKeys,
    },
    AwaitOwnerHello {
        conn: ConnId,
        th2: [u8; 32],
        channel: SecureChannel,
    },
}

impl Handshake {
    fn conn(&self) -> ConnId {
        match self {
            Self::AwaitConfirm { conn, .. } | Self::AwaitOwnerHello { conn, .. } => *conn,
        }
    }
}

/// The device side of pairing: a window, the setup code and at most one handshake.
pub struct DevicePairing {
    window: PairingWindow,
    code: SetupCode,
    device_id: String,
    handshake: Option<Handshake>,
}

impl std::fmt::Debug for DevicePairing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevicePairing")
            .field("window", &self.window)
            .field("device_id", &self.device_id)
            .field("handshake", &self.handshake.as_ref().map(Handshake::conn))
            .finish_non_exhaustive()
    }
}

impl DevicePairing {
    /// Serves `window` for the device `device_id` whose setup code is `code`.
    pub fn new(window: PairingWindow, code: SetupCode, device_id: DeviceId) -> Self {
        Self {
            window,
            code,
            device_id: device_id.to_string(),
            handshake: None,
        }
    }

    /// The window and its counts.
    pub fn window(&self) -> &PairingWindow {
        &self.window
    }

    /// Applies the passage of time (timeouts, window expiry).
    pub fn tick(&mut self, now: Instant) {
        self.window.tick(now);
        if self.window.active().is_none() {
            self.handshake = None;
        }
    }

    /// The link for `conn` went away: its handshake, if any, fails (its charge stands).
    pub fn disconnected(&mut self, conn: ConnId) {
        if self.handshake.as_ref().is_some_and(|h| h.conn() == conn) {
            self.handshake = None;
            self.window.fail(conn);
        }
    }

    /// Takes one whole message from `conn` at `now`. On `Err`, send [`PairingError::reply`]
    /// (nothing is left to persist: charges are only made by steps that say so).
    pub fn handle(
        &mut self,
        now: Instant,
        conn: ConnId,
        message: &[u8],
        identity: &Identity,
    ) -> Result<DeviceStep, PairingError> {
        match self.handshake.as_ref().map(Handshake::conn) {
            Some(c) if c == conn => {
                if let Err(e) = self.window.check(now, conn) {
                    self.handshake = None;
                    return Err(e);
                }
                let result = self.continue_handshake(conn, message, identity);
                if result.is_err() {
                    self.handshake = None;
                    self.window.fail(conn);
                }
                result
            }
            _ => {
                self.tick(now);
                self.start(now, conn, message)
            }
        }
    }

    fn start(
        &mut self,
        now: Instant,
        conn: ConnId,
        message: &[u8],
    ) -> Result<DeviceStep, PairingError> {
        let start = match Message::decode(message)? {
            Message::PakeStart(s) => s,
            other => {
                return Err(PairingError::Unexpected {
                    expected: "PakeStart",
                    got: other.kind(),
                });
            }
        };
        self.window.admissible(now)?;
        let (spake, pake) = Spake2::<Ed25519Group>::start_b(
            &spake2::Password::new(&*password(&self.code)),
            &spake2::Identity::new(APP_IDENTITY),
            &device_identity(&self.device_id),
        );
        // A malformed point teaches the sender nothing about the code, so it is not charged.
        let key = Zeroizing::new(
            spake
                .finish(&start.pake)
                .map_err(|e| PairingError::Pake(e.to_string()))?,
        );
        let th1 = transcript1(message, &pake, &self.device_id);
        let keys = schedule(&key, &th1)?;
        let reply = Message::PakeReply(PakeReply {
            pake,
            confirm: keys.device_mac,
        })
        .encode()?;
        let failures = self.window.begin(now, conn)?;
        self.handshake = Some(Handshake::AwaitConfirm {
            conn,
            client_confirm: Box::new(keys.client_confirm),
            th2: keys.th2,
            session: keys.session,
        });
        Ok(DeviceStep::PersistThenSend { failures, reply })
    }

    fn continue_handshake(
        &mut self,
        conn: ConnId,
        message: &[u8],
        identity: &Identity,
    ) -> Result<DeviceStep, PairingError> {
        match self.handshake.take() {
            Some(Handshake::AwaitConfirm {
                client_confirm,
                th2,
                session,
                ..
            }) => {
                let confirm = match Message::decode(message)? {
                    Message::PakeConfirm(c) => c,
                    other => return Err(refused_or_unexpected(other, "PakeConfirm")),
                };
                hmac::verify(&client_confirm, &th2, &confirm.confirm)
                    .map_err(|_| PairingError::WrongCode)?;
                let channel = SecureChannel::new(Role::Device, &session)?;
                self.handshake = Some(Handshake::AwaitOwnerHello { conn, th2, channel });
                Ok(DeviceStep::Wait)
            }
            Some(Handshake::AwaitOwnerHello {
                th2, mut channel, ..
            }) => {
                let hello = match channel.open(message)? {
                    Message::OwnerHello(h) => h,
                    other => return Err(refused_or_unexpected(other, "OwnerHello")),
                };
                let claimed = owner_hello_message(&th2, &hello.challenge, &hello.owner_key);
                if !edge_identity::keys::verify(&hello.owner_key, &claimed, &hello.signature) {
                    return Err(PairingError::BadOwnerProof);
                }
                let signature =
                    identity.sign(&proof_message(&th2, &hello.challenge, &hello.owner_key));
                let reply = channel.seal(&Message::DeviceProof(DeviceProof {
                    device_key: *identity.public_key(),
                    signature,
                }))?;
                let failures = self.window.succeed(conn);
                Ok(DeviceStep::Paired(Box::new(Paired {
                    owner_key: hello.owner_key,
                    failures,
                    reply,
                    channel,
                })))
            }
            None => Err(PairingError::Unexpected {
                expected: "PakeStart",
                got: "a later pairing message",
            }),
        }
    }
}

/// The client side of pairing, waiting for the device's `PakeReply`.
pub struct ClientPairing {
    spake: Spake2<Ed25519Group>,
    start: Vec<u8>,
    device: DeviceFingerprint,
}

impl std::fmt::Debug for ClientPairing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientPairing")
            .field("device", &self.device)
            .finish_non_exhaustive()
    }
}

impl ClientPairing {
    /// Starts pairing with `device` using `code`: the `PakeStart`.
    pub fn start(
        code: &SetupCode,
        device: DeviceFingerprint,
    ) -> Result<(Self, Vec<u8>), PairingError> {
        let (spake, pake) = Spake2::<Ed25519Group>::start_a(
            &spake2::Password::new(&*password(code)),
            &spake2::Identity::new(APP_IDENTITY),
            &device_identity(device.as_str()),
        );
        let start = Message::PakeStart(PakeStart { pake }).encode()?;
        let pairing = Self {
            spake,
            start: start.clone(),
            device,
        };
        Ok((pairing, start))
    }

    /// The device this pairing expects.
    pub fn device(&self) -> &DeviceFingerprint {
        &self.device
    }

    /// Checks the device's `PakeReply`. Returns the next state and the messages to send, in
    /// order: `PakeConfirm`, then the sealed `OwnerHello`, signed by `owner`, whose key the
    /// device is to take as its owner. A wrong code fails here.
    pub fn on_reply(
        self,
        reply: &[u8],
        owner: &Identity,
    ) -> Result<(AwaitingProof, Vec<Vec<u8>>), PairingError> {
        self.on_reply_naming(reply, owner, *owner.public_key())
    }

    /// [`ClientPairing::on_reply`], the hello naming `owner_key` whoever signs it (a test makes
    /// them differ).
    fn on_reply_naming(
        self,
        reply: &[u8],
        signer: &Identity,
        owner_key: [u8; 32],
    ) -> Result<(AwaitingProof, Vec<Vec<u8>>), PairingError> {
        let reply = match Message::decode(reply)? {
            Message::PakeReply(r) => r,
            other => return Err(refused_or_unexpected(other, "PakeReply")),
        };
        let key = Zeroizing::new(
            self.spake
                .finish(&reply.pake)
                .map_err(|e| PairingError::Pake(e.to_string()))?,
        );
        let th1 = transcript1(&self.start, &reply.pake, self.device.as_str());
        let keys = schedule(&key, &th1)?;
        hmac::verify(&keys.device_confirm, &th1, &reply.confirm)
            .map_err(|_| PairingError::WrongCode)?;
        let mut client_mac = [0; 32];
        client_mac.copy_from_slice(hmac::sign(&keys.client_confirm, &keys.th2).as_ref());
        let confirm = Message::PakeConfirm(PakeConfirm {
            confirm: client_mac,
        })
        .encode()?;
        let mut channel = SecureChannel::new(Role::Client, &keys.session)?;
        let mut challenge = [0; 32];
        session::random(&mut challenge)?;
        let signature = signer.sign(&owner_hello_message(&keys.th2, &challenge, &owner_key));
        let hello = channel.seal(&Message::OwnerHello(OwnerHello {
            owner_key,
            challenge,
            signature,
        }))?;
        let next = AwaitingProof {
            channel,
            th2: keys.th2,
            challenge,
            owner_key,
            device: self.device,
        };
        Ok((next, vec![confirm, hello]))
    }
}

/// The client side of pairing, waiting for the device's `DeviceProof`.
pub struct AwaitingProof {
    channel: SecureChannel,
    th2: [u8; 32],
    challenge: [u8; 32],
    owner_key: [u8; 32],
    device: DeviceFingerprint,
}

impl std::fmt::Debug for AwaitingProof {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwaitingProof")
            .field("device", &self.device)
            .finish_non_exhaustive()
    }
}

/// The outcome of a successful pairing, on the client.
#[derive(Debug)]
pub struct ClientPaired {
    /// The device's id, as checked against its key.
    pub device_id: DeviceFingerprint,
    /// The device's Ed25519 identity key, to store for later sessions.
    pub device_key: [u8; 32],
    /// The channel, which goes on as the owner's control channel.
    pub channel: SecureChannel,
}

impl AwaitingProof {
    /// The device this pairing expects.
    pub fn device(&self) -> &DeviceFingerprint {
        &self.device
    }

    /// Checks the device's sealed `DeviceProof` against the expected device id and challenge.
    pub fn on_proof(mut self, message: &[u8]) -> Result<ClientPaired, PairingError> {
        let proof = match self.channel.open(message)? {
            Message::DeviceProof(p) => p,
            other => return Err(refused_or_unexpected(other, "DeviceProof")),
        };
        if !self.device.matches_key(&proof.device_key) {
            return Err(PairingError::WrongDevice {
                expected: self.device,
            });
        }
        let signed = proof_message(&self.th2, &self.challenge, &self.owner_key);
        if !edge_identity::keys::verify(&proof.device_key, &signed, &proof.signature) {
            return Err(PairingError::BadProof);
        }
        Ok(ClientPaired {
            device_id: self.device,
            device_key: proof.device_key,
            channel: self.channel,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Request;

    struct Bench {
        device: Identity,
        owner: Identity,
        code: SetupCode,
        pairing: DevicePairing,
        now: Instant,
    }

    fn bench(failures: u32) -> Bench {
        let device = Identity::generate_ephemeral().expect("generate_ephemeral");
        let code = SetupCode::generate().expect("generate");
        let now = Instant::now();
        let window = PairingWindow::open(now, false, failures).expect("open");
        let pairing = DevicePairing::new(
            window,
            SetupCode::parse(code.digits()).expect("parse"),
            device.device_id(),
        );
        Bench {
            owner: Identity::generate_ephemeral().expect("generate_ephemeral"),
            device,
            code,
            pairing,
            now,
        }
    }

    fn fingerprint(b: &Bench) -> DeviceFingerprint {
        DeviceFingerprint::of(b.device.device_id())
    }

    fn wrong_code(code: &SetupCode) -> SetupCode {
        loop {
            let other = SetupCode::generate().expect("generate");
            if other.digits() != code.digits() {
                return other;
            }
        }
    }

    /// One failed attempt on `conn`: the device charges it, the client detects the wrong code.
    /// A client started with the right code on `conn`, and the device's charged reply.
    fn started(b: &mut Bench, conn: ConnId) -> (ClientPairing, Vec<u8>) {
        let (client, start) = ClientPairing::start(&b.code, fingerprint(b)).expect("start");
        let step = b
            .pairing
            .handle(b.now, conn, &start, &b.device)
            .expect("handle");
        let DeviceStep::PersistThenSend { reply, .. } = step else {
            panic!("expected a charge, got {step:?}");
        };
        (client, reply)
    }

    fn fail_once(b: &mut Bench, conn: ConnId) -> u32 {
        let (client, start) =
            ClientPairing::start(&wrong_code(&b.code), fingerprint(b)).expect("start");
        let step = b
            .pairing
            .handle(b.now, conn, &start, &b.device)
            .expect("handle");
        let DeviceStep::PersistThenSend { failures, reply } = step else {
            panic!("expected a charge, got {step:?}");
        };
        assert!(matches!(
            client.on_reply(&reply, &b.owner),
            Err(PairingError::WrongCode)
        ));
        b.pairing.disconnected(conn);
        failures
    }

    #[test]
    fn pairing_end_to_end_with_the_right_code() {
        let mut b = bench(3);
        let (client, start) = ClientPairing::start(&b.code, fingerprint(&b)).expect("start");
        let conn = ConnId(1);
        let DeviceStep::PersistThenSend { failures, reply } = b
            .pairing
            .handle(b.now, conn, &start, &b.device)
            .expect("handle")
        else {
            panic!("expected a charge");
        };
        assert_eq!(failures, 4, "the attempt is charged before the reply");
        let (client, out) = client.on_reply(&reply, &b.owner).expect("on_reply");
        assert_eq!(out.len(), 2);
        assert!(matches!(
            b.pairing
                .handle(b.now, conn, &out[0], &b.device)
                .expect("handle"),
            DeviceStep::Wait
        ));
        let DeviceStep::Paired(paired) = b
            .pairing
            .handle(b.now, conn, &out[1], &b.device)
            .expect("handle")
        else {
            panic!("expected pairing");
        };
        let Paired {
            owner_key,
            failures,
            reply,
            channel: mut device_channel,
        } = *paired;
        assert_eq!(&owner_key, b.owner.public_key());
        assert_eq!(failures, 3, "a successful attempt is refunded");
        let mut client = client.on_proof(&reply).expect("on_proof");
        assert_eq!(&client.device_key, b.device.public_key());
        assert_eq!(client.device_id, fingerprint(&b));

        // Both sides hold the same keys: records flow both ways.
        let wire = client
            .channel
            .seal(&Message::Request(Request::Status))
            .expect("seal");
        assert_eq!(
            device_channel.open(&wire).expect("open"),
            Message::Request(Request::Status)
        );
        let wire = device_channel
            .seal(&Message::Response(Response::Ok))
            .expect("seal");
        assert_eq!(
            client.channel.open(&wire).expect("open"),
            Message::Response(Response::Ok)
        );

        // The window is closed: the device is owned now.
        let (_, start) = ClientPairing::start(&b.code, fingerprint(&b)).expect("start");
        let err = b
            .pairing
            .handle(b.now, ConnId(2), &start, &b.device)
            .expect_err("handle should fail");
        assert!(matches!(
            err,
            PairingError::WindowClosed {
                reason: CloseReason::Paired
            }
        ));
        assert!(matches!(
            PairingWindow::open(b.now, true, 0),
            Err(PairingError::AlreadyOwned)
        ));
    }

    #[test]
    fn a_wrong_code_fails_cleanly_on_both_sides() {
        let mut b = bench(0);
        let conn = ConnId(7);
        let (client, start) =
            ClientPairing::start(&wrong_code(&b.code), fingerprint(&b)).expect("start");
        let DeviceStep::PersistThenSend { failures, reply } = b
            .pairing
            .handle(b.now, conn, &start, &b.device)
            .expect("handle")
        else {
            panic!("expected a charge");
        };
        assert_eq!(failures, 1);
        let err = client
            .on_reply(&reply, &b.owner)
            .expect_err("on_reply should fail");
        assert!(matches!(err, PairingError::WrongCode));
        assert_eq!(err.code(), ErrorCode::Unauthorized);

        // A client that presses on with a made-up confirmation is refused by the device.
        let forged = Message::PakeConfirm(PakeConfirm { confirm: [0; 32] })
            .encode()
            .expect("encode");
        let err = b
            .pairing
            .handle(b.now, conn, &forged, &b.device)
            .expect_err("handle should fail");
        assert!(matches!(err, PairingError::WrongCode));
        let reply = err.reply();
        assert_eq!(
            Message::decode(&reply).expect("decode"),
            Message::Response(Response::error(ErrorCode::Unauthorized))
        );
        assert_eq!(b.pairing.window().failures(), 1);
        assert_eq!(b.pairing.window().active(), None);

        // The window is still open and the right code works next.
        let (client, reply) = started(&mut b, conn);
        client.on_reply(&reply, &b.owner).expect("on_reply");
    }

    #[test]
    fn twenty_failures_close_the_window() {
        let mut b = bench(0);
        for i in 1..=MAX_WINDOW_FAILURES {
            assert_eq!(fail_once(&mut b, ConnId(u64::from(i))), i);
        }
        let (_, start) = ClientPairing::start(&b.code, fingerprint(&b)).expect("start");
        let err = b
            .pairing
            .handle(b.now, ConnId(99), &start, &b.device)
            .expect_err("handle should fail");
        assert!(matches!(
            err,
            PairingError::WindowClosed {
                reason: CloseReason::TooManyFailures
            }
        ));
        assert_eq!(err.code(), ErrorCode::WindowClosed);
        assert_eq!(b.pairing.window().failures(), MAX_WINDOW_FAILURES);
    }

    #[test]
    fn the_persistent_counter_paces_attempts_and_never_locks() {
        // Before, 100 failures locked pairing for good: on a box with no shell, only a factory
        // reset by someone who had one could bring it back.
        let mut b = bench(SLOW_FROM - 2);
        assert_eq!(fail_once(&mut b, ConnId(1)), SLOW_FROM - 1);
        assert_eq!(fail_once(&mut b, ConnId(2)), SLOW_FROM);
        let (_, start) = ClientPairing::start(&b.code, fingerprint(&b)).expect("start");
        let err = b
            .pairing
            .handle(b.now, ConnId(3), &start, &b.device)
            .expect_err("too soon");
        assert!(
            matches!(err, PairingError::Slowed { failures: 100, .. }),
            "{err}"
        );
        assert_eq!(err.code(), ErrorCode::Slowed);
        // After the pause an attempt is taken again.
        b.now += PairingWindow::gap(SLOW_FROM);
        assert!(matches!(
            b.pairing.handle(b.now, ConnId(4), &start, &b.device),
            Ok(DeviceStep::PersistThenSend { .. })
        ));
        // However high the count, a window opens and the pause stays bounded.
        assert!(PairingWindow::open(b.now, false, u32::MAX).is_ok());
        assert_eq!(PairingWindow::gap(SLOW_FROM - 1), Duration::ZERO);
        assert_eq!(PairingWindow::gap(SLOW_FROM), Duration::from_secs(6));
        assert_eq!(PairingWindow::gap(u32::MAX), MAX_GAP);
    }

    #[test]
    fn a_second_concurrent_session_is_refused_with_busy() {
        let mut b = bench(0);
        let (client, start) = ClientPairing::start(&b.code, fingerprint(&b)).expect("start");
        let DeviceStep::PersistThenSend { reply, .. } = b
            .pairing
            .handle(b.now, ConnId(1), &start, &b.device)
            .expect("handle")
        else {
            panic!("expected a charge");
        };
        let (_, start2) = ClientPairing::start(&b.code, fingerprint(&b)).expect("start");
        let err = b
            .pairing
            .handle(b.now, ConnId(2), &start2, &b.device)
            .expect_err("handle should fail");
        assert!(matches!(err, PairingError::Busy));
        assert_eq!(err.code(), ErrorCode::Busy);
        assert_eq!(b.pairing.window().failures(), 1, "a refusal is not charged");
        // The first session is undisturbed.
        let (_, out) = client.on_reply(&reply, &b.owner).expect("on_reply");
        assert!(matches!(
            b.pairing
                .handle(b.now, ConnId(1), &out[0], &b.device)
                .expect("handle"),
            DeviceStep::Wait
        ));
        assert!(matches!(
            b.pairing
                .handle(b.now, ConnId(1), &out[1], &b.device)
                .expect("handle"),
            DeviceStep::Paired(_)
        ));
    }

    #[test]
    fn a_stalled_handshake_fails_after_its_timeout() {
        let mut b = bench(0);
        let (client, start) = ClientPairing::start(&b.code, fingerprint(&b)).expect("start");
        let DeviceStep::PersistThenSend { reply, .. } = b
            .pairing
            .handle(b.now, ConnId(1), &start, &b.device)
            .expect("handle")
        else {
            panic!("expected a charge");
        };
        let (_, out) = client.on_reply(&reply, &b.owner).expect("on_reply");
        let late = b.now + HANDSHAKE_TIMEOUT + Duration::from_secs(1);
        let err = b
            .pairing
            .handle(late, ConnId(1), &out[0], &b.device)
            .expect_err("handle should fail");
        assert!(matches!(err, PairingError::Timeout { .. }));
        assert_eq!(b.pairing.window().active(), None);
        assert_eq!(
            b.pairing.window().failures(),
            1,
            "the stalled attempt stays charged"
        );

        // A stalled handshake does not hold the window: another client gets in once it is past.
        let mut b = bench(0);
        let (_, start) = ClientPairing::start(&b.code, fingerprint(&b)).expect("start");
        let _ = b
            .pairing
            .handle(b.now, ConnId(1), &start, &b.device)
            .expect("handle");
        let (_, start) = ClientPairing::start(&b.code, fingerprint(&b)).expect("start");
        let at = b.now + HANDSHAKE_TIMEOUT - Duration::from_secs(1);
        assert!(matches!(
            b.pairing.handle(at, ConnId(2), &start, &b.device),
            Err(PairingError::Busy)
        ));
        let at = b.now + HANDSHAKE_TIMEOUT + Duration::from_secs(1);
        assert!(matches!(
            b.pairing.handle(at, ConnId(2), &start, &b.device),
            Ok(DeviceStep::PersistThenSend { failures: 2, .. })
        ));
    }

    #[test]
    fn an_owner_hello_naming_a_key_its_sender_does_not_hold_is_refused() {
        let mut b = bench(0);
        let victim = Identity::generate_ephemeral().expect("key");
        let conn = ConnId(1);
        let (client, reply) = started(&mut b, conn);
        // Someone who knows the code asks the device to take another's key as its owner.
        let (_, out) = client
            .on_reply_naming(&reply, &b.owner, *victim.public_key())
            .expect("on_reply");
        assert!(matches!(
            b.pairing.handle(b.now, conn, &out[0], &b.device),
            Ok(DeviceStep::Wait)
        ));
        // Before, the device stored the named key as its owner here.
        let refused = b
            .pairing
            .handle(b.now, conn, &out[1], &b.device)
            .expect_err("a hello its sender cannot sign for");
        assert!(matches!(refused, PairingError::BadOwnerProof), "{refused}");
        assert_eq!(refused.code(), ErrorCode::Unauthorized);
    }

    #[test]
    fn the_window_expires_after_fifteen_minutes() {
        let mut b = bench(0);
        let (_, start) = ClientPairing::start(&b.code, fingerprint(&b)).expect("start");
        let at = b.now + WINDOW_LIFETIME;
        assert!(matches!(
            b.pairing.handle(at, ConnId(1), &start, &b.device),
            Err(PairingError::WindowClosed {
                reason: CloseReason::Expired
            })
        ));
    }

    #[test]
    fn the_client_refuses_a_device_with_another_id() {
        let mut b = bench(0);
        let other = Identity::generate_ephemeral().expect("generate_ephemeral");
        // The client expects `other`, but the device it reaches is `b.device`: the SPAKE2
        // identities differ, so key confirmation fails before any proof is needed.
        let (client, start) =
            ClientPairing::start(&b.code, DeviceFingerprint::of(other.device_id())).expect("start");
        let DeviceStep::PersistThenSend { reply, .. } = b
            .pairing
            .handle(b.now, ConnId(1), &start, &b.device)
            .expect("handle")
        else {
            panic!("expected a charge");
        };
        assert!(matches!(
            client.on_reply(&reply, &b.owner),
            Err(PairingError::WrongCode)
        ));
    }

    #[test]
    fn a_refusal_reaches_the_client_as_a_typed_error() {
        let b = bench(0);
        let (client, _) = ClientPairing::start(&b.code, fingerprint(&b)).expect("start");
        let busy = PairingError::Busy.reply();
        assert!(matches!(
            client.on_reply(&busy, &b.owner),
            Err(PairingError::Refused {
                code: ErrorCode::Busy,
                ..
            })
        ));
    }

    /// An offline attacker holds the transcript of a failed attempt (PakeStart, PakeReply, and
    /// the client's refusal to go on) and a candidate list that contains the right code. For each
    /// candidate it does everything the public protocol allows: run SPAKE2 as either side with
    /// the candidate against the recorded messages and compare the MAC it derives with the
    /// recorded one. Nothing matches, the right code included: without the ephemeral scalar of
    /// one of the two sides there is no verifier to test a guess against.
    #[test]
    fn a_recorded_transcript_gives_an_offline_guesser_nothing() {
        let mut b = bench(0);
        let conn = ConnId(1);
        let (client, start) =
            ClientPairing::start(&wrong_code(&b.code), fingerprint(&b)).expect("start");
        let DeviceStep::PersistThenSend { reply, .. } = b
            .pairing
            .handle(b.now, conn, &start, &b.device)
            .expect("handle")
        else {
            panic!("expected a charge");
        };
        assert!(client.on_reply(&reply, &b.owner).is_err());

        let Message::PakeStart(recorded_start) = Message::decode(&start).expect("decode") else {
            panic!()
        };
        let Message::PakeReply(recorded_reply) = Message::decode(&reply).expect("decode") else {
            panic!()
        };
        let device_id = fingerprint(&b);
        let th1 = transcript1(&start, &recorded_reply.pake, device_id.as_str());

        let mut candidates: Vec<SetupCode> = (0..40)
            .map(|_| SetupCode::generate().expect("generate"))
            .collect();
        candidates.push(SetupCode::parse(b.code.digits()).expect("parse"));
        let mut tried = 0;
        for candidate in &candidates {
            let pw = spake2::Password::new(&*password(candidate));
            let id_a = spake2::Identity::new(APP_IDENTITY);
            let id_b = device_identity(device_id.as_str());
            // As the client: a fresh X' against the device's recorded Y.
            let (as_a, _) = Spake2::<Ed25519Group>::start_a(&pw, &id_a, &id_b);
            // As the device: a fresh Y' against the client's recorded X.
            let (as_b, _) = Spake2::<Ed25519Group>::start_b(&pw, &id_a, &id_b);
            for key in [
                as_a.finish(&recorded_reply.pake).expect("finish"),
                as_b.finish(&recorded_start.pake).expect("finish"),
            ] {
                let keys = schedule(&key, &th1).expect("schedule");
                assert_ne!(keys.device_mac, recorded_reply.confirm);
                assert!(hmac::verify(&keys.device_confirm, &th1, &recorded_reply.confirm).is_err());
                tried += 1;
            }
        }
        assert_eq!(tried, 2 * candidates.len());

        // The check itself is sound: with the real ephemeral state (which only the device held)
        // the right code does reproduce a recorded MAC. Shown on a fresh, successful exchange.
        let pw = spake2::Password::new(&*password(&b.code));
        let id_a = spake2::Identity::new(APP_IDENTITY);
        let id_b = device_identity(device_id.as_str());
        let (a, x) = Spake2::<Ed25519Group>::start_a(&pw, &id_a, &id_b);
        let (dev, y) = Spake2::<Ed25519Group>::start_b(&pw, &id_a, &id_b);
        let start = Message::PakeStart(PakeStart { pake: x.clone() })
            .encode()
            .expect("encode");
        let th = transcript1(&start, &y, device_id.as_str());
        let device_keys = schedule(&dev.finish(&x).expect("finish"), &th).expect("schedule");
        let client_keys = schedule(&a.finish(&y).expect("finish"), &th).expect("schedule");
        assert_eq!(device_keys.device_mac, client_keys.device_mac);
    }
}
