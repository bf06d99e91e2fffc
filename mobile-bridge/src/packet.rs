//! Messages over a packet transport, as Bluetooth LE carries them: every packet is one frame (one
//! GATT write from the app, one notification to it), so the frame size follows the link's MTU and
//! no length prefix is needed. Generic over the two directions, each an async reader or writer
//! that moves one packet per call (BlueZ hands them over as datagram sockets: see `ble`), so the
//! same code runs over a socket pair in tests.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::frame::{Fragmenter, MAX_MESSAGE, MIN_FRAME, Reassembler};
use crate::link::{Link, TransportError};

/// Messages over a pair of packet channels.
pub struct PacketLink<R, W> {
    rx: R,
    tx: W,
    buf: Vec<u8>,
    reassembler: Reassembler,
    fragmenter: Fragmenter,
}

impl<R: AsyncRead + Unpin + Send, W: AsyncWrite + Unpin + Send> PacketLink<R, W> {
    /// A link that reads packets of up to `rx_mtu` bytes from `rx` and writes packets of at most
    /// `tx_max` bytes to `tx` (an error if that is too small for a frame).
    pub fn new(rx: R, rx_mtu: usize, tx: W, tx_max: usize) -> Result<Self, TransportError> {
        Ok(Self {
            rx,
            tx,
            buf: vec![0; rx_mtu.max(MIN_FRAME)],
            reassembler: Reassembler::new(MAX_MESSAGE),
            fragmenter: Fragmenter::new(tx_max)?,
        })
    }

    async fn send_message(&mut self, message: &[u8]) -> Result<(), TransportError> {
        for frame in self.fragmenter.fragment(message)? {
            let sent = self.tx.write(&frame).await?;
            if sent != frame.len() {
                let cut = format!("a {}-byte packet went out as {sent} bytes", frame.len());
                return Err(std::io::Error::new(std::io::ErrorKind::WriteZero, cut).into());
            }
        }
        self.tx.flush().await?;
        Ok(())
    }

    async fn recv_message(&mut self) -> Result<Option<Vec<u8>>, TransportError> {
        loop {
            let n = self.rx.read(&mut self.buf).await?;
            if n == 0 {
                if self.reassembler.in_progress() {
                    return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
                }
                return Ok(None);
            }
            if let Some(message) = self.reassembler.push(&self.buf[..n])? {
                return Ok(Some(message));
            }
        }
    }
}

impl<R: AsyncRead + Unpin + Send, W: AsyncWrite + Unpin + Send> Link for PacketLink<R, W> {
    async fn send(&mut self, message: &[u8]) -> Result<(), TransportError> {
        self.send_message(message).await
    }

    async fn recv(&mut self) -> Result<Option<Vec<u8>>, TransportError> {
        self.recv_message().await
    }
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use tokio::io::ReadBuf;
    use tokio::net::UnixDatagram;

    use super::*;
    use crate::frame::ble_max_frame;

    /// One end of a datagram socket pair as a reader or writer of one packet per call: the kind
    /// of socket BlueZ hands out for a characteristic (`AcquireWrite`, `AcquireNotify`).
    struct Packets(UnixDatagram);

    impl AsyncRead for Packets {
        fn poll_read(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            self.0.poll_recv(cx, buf)
        }
    }

    impl AsyncWrite for Packets {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            self.0.poll_send(cx, buf)
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    type Ble = PacketLink<Packets, Packets>;

    /// A connected `SOCK_SEQPACKET` pair, as BlueZ makes for a characteristic: packets keep their
    /// bounds, and closing one end reads as end of stream at the other (a `SOCK_DGRAM` pair would
    /// block instead).
    fn pair() -> (UnixDatagram, UnixDatagram) {
        use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
        let (a, b) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        )
        .expect("socketpair");
        let open = |fd| {
            UnixDatagram::from_std(std::os::unix::net::UnixDatagram::from(fd)).expect("socket")
        };
        (open(a), open(b))
    }

    /// The device's and the app's ends of a BLE-like link with this ATT MTU: two packet socket
    /// pairs (app -> device writes, device -> app notifications).
    fn link(att_mtu: u16) -> (Ble, Ble) {
        let (writes_app, writes_dev) = pair();
        let (notes_dev, notes_app) = pair();
        let frame = ble_max_frame(att_mtu);
        let device = PacketLink::new(Packets(writes_dev), frame, Packets(notes_dev), frame);
        let app = PacketLink::new(Packets(notes_app), frame, Packets(writes_app), frame);
        (device.expect("device end"), app.expect("app end"))
    }

    #[tokio::test]
    async fn whole_messages_cross_in_mtu_sized_packets_both_ways() {
        for att_mtu in [23u16, 185, 517] {
            let (mut device, mut app) = link(att_mtu);
            let big: Vec<u8> = (0..5000u32).map(|i| (i * 7) as u8).collect();
            for message in [&b"x"[..], &big] {
                let (sent, got) = tokio::join!(app.send(message), device.recv());
                sent.expect("send");
                assert_eq!(
                    got.expect("recv").as_deref(),
                    Some(message),
                    "mtu {att_mtu}"
                );
                let (sent, got) = tokio::join!(device.send(message), app.recv());
                sent.expect("send");
                assert_eq!(
                    got.expect("recv").as_deref(),
                    Some(message),
                    "mtu {att_mtu}"
                );
            }
            drop(app);
            assert!(device.recv().await.expect("clean close").is_none());
        }
    }

    #[tokio::test]
    async fn a_bad_packet_or_a_link_cut_mid_message_is_an_error_not_a_panic() {
        let (writes_app, writes_dev) = pair();
        let (notes_dev, _notes_app) = pair();
        let frame = ble_max_frame(23);
        let mut device =
            PacketLink::new(Packets(writes_dev), frame, Packets(notes_dev), frame).expect("link");
        // A continuation frame with no message started: a clean frame error.
        writes_app.send(&[0, 0x02, 0, 1, 9, 9]).await.expect("send");
        assert!(matches!(device.recv().await, Err(TransportError::Frame(_))));
        // The first frame of a 100-byte message, then the app goes away.
        let mut first = vec![1, 0x01, 0, 0, 0, 100];
        first.extend([7; 14]);
        writes_app.send(&first).await.expect("send");
        drop(writes_app);
        match device.recv().await {
            Err(TransportError::Io(e)) => {
                assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof);
            }
            other => panic!("expected a cut-short error, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn an_mtu_too_small_for_a_frame_is_refused() {
        let (a, b) = pair();
        assert!(matches!(
            PacketLink::new(Packets(a), 20, Packets(b), ble_max_frame(8)),
            Err(TransportError::Frame(_))
        ));
    }
}
