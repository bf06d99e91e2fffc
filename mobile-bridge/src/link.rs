//! What the transports have in common (feature `transport`): a [`Link`] carries whole protocol
//! messages, whatever cuts them into frames underneath, so the pairing and control code that
//! serves them is written once for the LAN and for Bluetooth LE.

use std::future::Future;

use crate::frame::FrameError;

/// Errors of a transport.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// Reading or writing the connection failed; a peer that closes inside a message reads as
    /// `UnexpectedEof`.
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    /// The peer sent something that is not a frame stream; the connection cannot go on.
    #[error("bad frame from the peer: {0}")]
    Frame(#[from] FrameError),
    /// BlueZ refused or failed.
    #[cfg(feature = "ble")]
    #[error("Bluetooth: {0}")]
    Bluetooth(#[from] bluer::Error),
}

/// Whole messages in and out over one connection.
pub trait Link: Send {
    /// Sends one whole message, cut into as many frames as the link needs, and flushes it.
    fn send(&mut self, message: &[u8]) -> impl Future<Output = Result<(), TransportError>> + Send;

    /// The next whole message; `None` when the peer closed the link between messages.
    fn recv(&mut self) -> impl Future<Output = Result<Option<Vec<u8>>, TransportError>> + Send;
}
