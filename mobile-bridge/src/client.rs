//! The client side, as a phone app or `edgectl` embeds it: pair from a QR payload or a typed
//! code, keep what pairing learned, open later sessions, and exchange requests and responses.
//!
//! The client holds a long-term Ed25519 key ([`Identity`]); pairing makes its public half the
//! device's owner. Transports stay outside: every method takes and returns whole messages, which
//! the caller frames ([`crate::frame`]) and moves.

use edge_identity::keys::Identity;

use crate::message::{Message, Request, Response};
use crate::pairing::{AwaitingProof, ClientPaired, ClientPairing, PairingError};
use crate::session::{ClientHandshake, SecureChannel, SessionError};
use crate::setup_code::{DeviceFingerprint, QrPayload, SetupCode, SetupCodeError};

/// Errors on the client side.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The QR payload or typed code is not valid.
    #[error(transparent)]
    SetupCode(#[from] SetupCodeError),
    /// Pairing failed, on this side or refused by the device.
    #[error(transparent)]
    Pairing(#[from] PairingError),
    /// The session or its records failed.
    #[error(transparent)]
    Session(#[from] SessionError),
    /// The device answered with something other than a response.
    #[error("expected a response, got {got}")]
    NotAResponse {
        /// The type that came instead, as [`Message::kind`] spells it.
        got: &'static str,
    },
}

/// What a client keeps about a paired device: enough to open later sessions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairedDevice {
    /// The device's id.
    pub device_id: DeviceFingerprint,
    /// The device's Ed25519 identity key.
    pub device_key: [u8; 32],
}

/// A client: the owner's long-term key and the steps it drives.
pub struct Client {
    identity: Identity,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("identity", &self.identity)
            .finish()
    }
}

impl Client {
    /// A client with this long-term key.
    pub fn new(identity: Identity) -> Self {
        Self { identity }
    }

    /// The long-term key.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// Starts pairing from a scanned QR payload: the pairing state and the first message.
    pub fn pair_with_qr(&self, payload: &str) -> Result<Pairing<'_>, ClientError> {
        let qr = QrPayload::parse(payload)?;
        self.pair(&qr.code, qr.device)
    }

    /// Starts pairing from a typed code with the device found by discovery.
    pub fn pair_with_code(
        &self,
        typed: &str,
        device: DeviceFingerprint,
    ) -> Result<Pairing<'_>, ClientError> {
        self.pair(&SetupCode::parse(typed)?, device)
    }

    fn pair(
        &self,
        code: &SetupCode,
        device: DeviceFingerprint,
    ) -> Result<Pairing<'_>, ClientError> {
        let (state, first) = ClientPairing::start(code, device)?;
        Ok(Pairing {
            client: self,
            state: PairingState::AwaitReply(state),
            outgoing: vec![first],
        })
    }

    /// Starts a session with a paired device: the handshake and its first message.
    pub fn connect(&self, device: &PairedDevice) -> Result<Connecting<'_>, ClientError> {
        let (handshake, hello) = ClientHandshake::start(&self.identity, &device.device_key)?;
        Ok(Connecting {
            client: self,
            device: device.device_id.clone(),
            handshake,
            hello,
        })
    }

    /// Starts a session with a device this client sent its owner hello to but whose proof never
    /// came (the link dropped): any key that hashes to `device` is taken (trust on first use),
    /// and [`Connecting::accept_learning`] gives the device to keep. A device that did not take
    /// this client as its owner refuses the session (`NotOwner`).
    pub fn resume(&self, device: DeviceFingerprint) -> Result<Connecting<'_>, ClientError> {
        let (handshake, hello) = ClientHandshake::start_first_use(&self.identity, device.clone())?;
        Ok(Connecting {
            client: self,
            device,
            handshake,
            hello,
        })
    }
}

enum PairingState {
    AwaitReply(ClientPairing),
    AwaitProof(AwaitingProof),
}

/// A pairing in progress: send [`Pairing::outgoing`], feed each reply to [`Pairing::receive`].
pub struct Pairing<'a> {
    client: &'a Client,
    state: PairingState,
    outgoing: Vec<Vec<u8>>,
}

impl std::fmt::Debug for Pairing<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pairing").finish_non_exhaustive()
    }
}

/// What a pairing step produced.
#[derive(Debug)]
pub enum PairingProgress<'a> {
    /// Still pairing: send these messages, in order, then wait for the next reply.
    Send(Pairing<'a>),
    /// Paired: store the device, and use the control channel.
    Done(PairedDevice, Control),
}

impl<'a> Pairing<'a> {
    /// The device this pairing is with (the QR code's, or discovery's for a typed code).
    pub fn device(&self) -> &DeviceFingerprint {
        match &self.state {
            PairingState::AwaitReply(state) => state.device(),
            PairingState::AwaitProof(state) => state.device(),
        }
    }

    /// Whether the owner hello has gone out (the device may have taken this client as its owner
    /// already): a link lost from here on is for [`Client::resume`], not for pairing again.
    pub fn hello_sent(&self) -> bool {
        matches!(self.state, PairingState::AwaitProof(_))
    }

    /// Messages to send now, in order (taken: a second call returns none).
    pub fn outgoing(&mut self) -> Vec<Vec<u8>> {
        std::mem::take(&mut self.outgoing)
    }

    /// Takes the device's next message.
    pub fn receive(self, message: &[u8]) -> Result<PairingProgress<'a>, ClientError> {
        match self.state {
            PairingState::AwaitReply(state) => {
                let (next, outgoing) = state.on_reply(message, &self.client.identity)?;
                Ok(PairingProgress::Send(Pairing {
                    client: self.client,
                    state: PairingState::AwaitProof(next),
                    outgoing,
                }))
            }
            PairingState::AwaitProof(state) => {
                let ClientPaired {
                    device_id,
                    device_key,
                    channel,
                } = state.on_proof(message)?;
                Ok(PairingProgress::Done(
                    PairedDevice {
                        device_id,
                        device_key,
                    },
                    Control { channel },
                ))
            }
        }
    }
}

/// A session handshake in progress.
pub struct Connecting<'a> {
    client: &'a Client,
    device: DeviceFingerprint,
    handshake: ClientHandshake,
    hello: Vec<u8>,
}

impl std::fmt::Debug for Connecting<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connecting").finish_non_exhaustive()
    }
}

impl Connecting<'_> {
    /// The `SessionHello` to send.
    pub fn hello(&self) -> &[u8] {
        &self.hello
    }

    /// Takes the device's `SessionAccept`: the control channel and the `SessionFinish` to send.
    pub fn accept(self, message: &[u8]) -> Result<(Control, Vec<u8>), ClientError> {
        let (channel, finish) = self.handshake.finish(message, &self.client.identity)?;
        Ok((Control { channel }, finish))
    }

    /// [`Connecting::accept`], and the device as the session proved it (its key, for a session
    /// started by [`Client::resume`]).
    pub fn accept_learning(
        self,
        message: &[u8],
    ) -> Result<(PairedDevice, Control, Vec<u8>), ClientError> {
        let (channel, finish, device_key) = self
            .handshake
            .finish_learning(message, &self.client.identity)?;
        let device = PairedDevice {
            device_id: self.device,
            device_key,
        };
        Ok((device, Control { channel }, finish))
    }
}

/// The owner's control channel: sealed requests out, responses in.
#[derive(Debug)]
pub struct Control {
    channel: SecureChannel,
}

impl Control {
    /// Seals a request into the next record, ready to send.
    pub fn request(&mut self, request: Request) -> Result<Vec<u8>, ClientError> {
        Ok(self.channel.seal(&Message::Request(request))?)
    }

    /// Opens the device's response.
    pub fn response(&mut self, message: &[u8]) -> Result<Response, ClientError> {
        match self.channel.open(message)? {
            Message::Response(r) => Ok(r),
            other => Err(ClientError::NotAResponse { got: other.kind() }),
        }
    }
}
