//! The LAN transport (feature `lan`): whole protocol messages over any async byte stream (TCP
//! in practice), as frames of at most [`LAN_MAX_FRAME`] bytes each carrying a u16 length prefix.
//! A thin adapter: the protocol itself is in the pure modules.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::frame::{
    Fragmenter, LAN_MAX_FRAME, MAX_MESSAGE, Reassembler, StreamDecoder, stream_encode,
};
use crate::link::{Link, TransportError};

/// Messages in and out over one stream.
pub struct LanLink<S> {
    stream: S,
    decoder: StreamDecoder,
    reassembler: Reassembler,
    fragmenter: Fragmenter,
}

impl<S: AsyncRead + AsyncWrite + Unpin> LanLink<S> {
    /// Wraps a connected stream; messages up to [`MAX_MESSAGE`] bytes go both ways.
    pub fn new(stream: S) -> Result<Self, TransportError> {
        Ok(Self {
            stream,
            decoder: StreamDecoder::default(),
            reassembler: Reassembler::new(MAX_MESSAGE),
            fragmenter: Fragmenter::new(LAN_MAX_FRAME)?,
        })
    }

    /// Sends one whole message as length-prefixed frames in one write, then flushes.
    pub async fn send(&mut self, message: &[u8]) -> Result<(), TransportError> {
        let mut out = Vec::with_capacity(message.len() + 64);
        for frame in self.fragmenter.fragment(message)? {
            out.extend(stream_encode(&frame)?);
        }
        self.stream.write_all(&out).await?;
        self.stream.flush().await?;
        Ok(())
    }

    /// The next whole message; `None` when the peer closed the stream between messages.
    pub async fn recv(&mut self) -> Result<Option<Vec<u8>>, TransportError> {
        let mut buf = [0u8; 4096];
        loop {
            while let Some(frame) = self.decoder.next_frame()? {
                if let Some(message) = self.reassembler.push(&frame)? {
                    return Ok(Some(message));
                }
            }
            let n = self.stream.read(&mut buf).await?;
            if n == 0 {
                if self.reassembler.in_progress() {
                    return Err(TransportError::Io(std::io::ErrorKind::UnexpectedEof.into()));
                }
                return Ok(None);
            }
            self.decoder.extend(&buf[..n]);
        }
    }

    /// The stream, e.g. to read its peer address.
    pub fn get_ref(&self) -> &S {
        &self.stream
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Link for LanLink<S> {
    async fn send(&mut self, message: &[u8]) -> Result<(), TransportError> {
        LanLink::send(self, message).await
    }

    async fn recv(&mut self) -> Result<Option<Vec<u8>>, TransportError> {
        LanLink::recv(self).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn messages_of_any_size_cross_whole_and_garbage_is_an_error() {
        let (a, b) = tokio::io::duplex(1024);
        let (mut a, mut b) = (
            LanLink::new(a).expect("link"),
            LanLink::new(b).expect("link"),
        );
        let big: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        for message in [&b"hello"[..], &big] {
            let (sent, got) = tokio::join!(a.send(message), b.recv());
            sent.expect("send");
            assert_eq!(got.expect("recv").as_deref(), Some(message));
        }
        drop(a);
        assert!(b.recv().await.expect("clean close").is_none());

        let (mut raw, b) = tokio::io::duplex(64);
        let mut b = LanLink::new(b).expect("link");
        raw.write_all(&[0xff, 0xff, 1, 2, 3]).await.expect("write");
        assert!(matches!(b.recv().await, Err(TransportError::Frame(_))));
    }
}
