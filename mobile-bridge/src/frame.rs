//! Framing: messages cut into frames that fit a small link MTU, and put back together.
//!
//! A frame is a 4-byte header, 2 more bytes on a message's first frame, then payload:
//!
//! ```text
//! byte 0     message id (u8, the sender counts up and wraps)
//! byte 1     flags: 0x01 FIRST, 0x02 LAST, other bits zero
//! bytes 2-3  fragment index (u16 big-endian), 0 on the FIRST frame
//! bytes 4-5  FIRST frame only: the message's total length (u16 big-endian, 1..=max)
//! rest       payload, at least one byte
//! ```
//!
//! Over BLE a frame is one ATT write or notification, so it is at most ATT MTU - 3 bytes (20 at
//! the minimum MTU of 23, 182 at 185). Over TCP the same frames are each preceded by their length
//! as a u16 big-endian ([`StreamDecoder`]); a LAN sender uses [`LAN_MAX_FRAME`].
//!
//! The [`Reassembler`] holds one message in flight. A frame that does not continue it exactly
//! (out of order, duplicated, from another message, past the announced length, or a LAST frame
//! that ends short) is an error that drops the partial message; the next message then works. A
//! new FIRST frame while a message is partial reports the abandoned one and starts the new one.

/// Errors cutting or reassembling frames.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The frame is shorter than its header.
    #[error("frame of {len} bytes is shorter than its {needed}-byte header")]
    Truncated {
        /// The frame's whole length.
        len: usize,
        /// [`HEADER_LEN`], or [`FIRST_HEADER_LEN`] for a frame with the FIRST flag.
        needed: usize,
    },
    /// Unknown flag bits, or flags that contradict the index.
    #[error("bad frame header: {reason}")]
    BadHeader {
        /// A fixed phrase: `unknown flag bits`, `FIRST flag and index 0 go together` or
        /// `empty payload`.
        reason: &'static str,
    },
    /// The announced message length is zero or over the limit.
    #[error("message length {len} is outside 1..={max}")]
    TooLarge {
        /// The length a FIRST frame announced, the length of a message given to [`fragment`], or a
        /// stream frame's length prefix.
        len: usize,
        /// The [`Reassembler`]'s `max_message`, [`MAX_MESSAGE`] when fragmenting, or
        /// [`LAN_MAX_FRAME`] for a stream frame.
        max: usize,
    },
    /// A continuation frame arrived with no message in progress.
    #[error("fragment {index} of message {msg_id} arrived with no message in progress")]
    NoMessage {
        /// The stray frame's message id (byte 0).
        msg_id: u8,
        /// The stray frame's fragment index (never 0: a FIRST frame starts a message).
        index: u16,
    },
    /// A frame of another message arrived while one was in progress.
    #[error("frame of message {got} arrived while message {expected} was in progress")]
    WrongMessage {
        /// The id of the message in progress.
        expected: u8,
        /// The frame's message id.
        got: u8,
    },
    /// A frame repeated one already received.
    #[error("duplicate fragment {index} of message {msg_id}")]
    Duplicate {
        /// The id of the message in progress.
        msg_id: u8,
        /// The repeated index; 0 when the message's FIRST frame came again.
        index: u16,
    },
    /// A frame skipped ahead: at least one fragment was lost or reordered.
    #[error("fragment {got} of message {msg_id} arrived, expected {expected}")]
    OutOfOrder {
        /// The id of the message in progress.
        msg_id: u8,
        /// The next index expected.
        expected: u16,
        /// The index received.
        got: u16,
    },
    /// The frames carry more bytes than the first frame announced.
    #[error("message {msg_id} overran its announced length of {total} bytes")]
    Overrun {
        /// The id of the message that overran.
        msg_id: u8,
        /// The length its FIRST frame announced, in bytes.
        total: usize,
    },
    /// The LAST frame came before the announced length was reached.
    #[error("message {msg_id} ended at {got} of its {total} bytes")]
    EndsShort {
        /// The id of the message that ended short.
        msg_id: u8,
        /// Payload bytes received, all its frames together.
        got: usize,
        /// The length its FIRST frame announced, in bytes.
        total: usize,
    },
    /// A FIRST frame arrived while another message was partial; that one is dropped.
    #[error("message {msg_id} was abandoned unfinished; a new message started")]
    Abandoned {
        /// The id of the partial message that was dropped.
        msg_id: u8,
    },
    /// The frame size is too small to carry a header and a byte of payload.
    #[error("frame size {max_frame} is below the minimum of {min}")]
    FrameSize {
        /// The `max_frame` asked for, or, from [`stream_encode`], the length of a frame that is
        /// empty or over [`LAN_MAX_FRAME`].
        max_frame: usize,
        /// Always [`MIN_FRAME`].
        min: usize,
    },
}

/// Largest message, in bytes, that a [`Reassembler`] accepts by default (and the protocol sends).
pub const MAX_MESSAGE: usize = 16 * 1024;
/// Header bytes on every frame.
pub const HEADER_LEN: usize = 4;
/// Header bytes on a message's first frame.
pub const FIRST_HEADER_LEN: usize = 6;
/// Smallest frame size [`fragment`] accepts: the first header and one byte.
pub const MIN_FRAME: usize = FIRST_HEADER_LEN + 1;
/// Frame size a LAN (TCP) sender uses.
pub const LAN_MAX_FRAME: usize = 4096;
/// The FIRST flag.
pub const FLAG_FIRST: u8 = 0x01;
/// The LAST flag.
pub const FLAG_LAST: u8 = 0x02;

/// The frame size for a BLE link with this ATT MTU (3 bytes go to the ATT header).
pub fn ble_max_frame(att_mtu: u16) -> usize {
    usize::from(att_mtu).saturating_sub(3)
}

/// A decoded frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// The message this frame belongs to.
    pub msg_id: u8,
    /// The fragment's index within the message.
    pub index: u16,
    /// Whether this is the message's first frame.
    pub first: bool,
    /// Whether this is the message's last frame.
    pub last: bool,
    /// The message's total length (first frame only).
    pub total: Option<u16>,
}

/// Splits a frame into its header and payload, checking the header's consistency.
pub fn decode_frame(frame: &[u8]) -> Result<(FrameHeader, &[u8]), FrameError> {
    let &[msg_id, flags, i0, i1, ..] = frame else {
        return Err(FrameError::Truncated {
            len: frame.len(),
            needed: HEADER_LEN,
        });
    };
    if flags & !(FLAG_FIRST | FLAG_LAST) != 0 {
        return Err(FrameError::BadHeader {
            reason: "unknown flag bits",
        });
    }
    let index = u16::from_be_bytes([i0, i1]);
    let first = flags & FLAG_FIRST != 0;
    if first != (index == 0) {
        return Err(FrameError::BadHeader {
            reason: "FIRST flag and index 0 go together",
        });
    }
    let (total, payload) = if first {
        let &[_, _, _, _, t0, t1, ref payload @ ..] = frame else {
            return Err(FrameError::Truncated {
                len: frame.len(),
                needed: FIRST_HEADER_LEN,
            });
        };
        (Some(u16::from_be_bytes([t0, t1])), payload)
    } else {
        (None, &frame[HEADER_LEN..])
    };
    if payload.is_empty() {
        return Err(FrameError::BadHeader {
            reason: "empty payload",
        });
    }
    let header = FrameHeader {
        msg_id,
        index,
        first,
        last: flags & FLAG_LAST != 0,
        total,
    };
    Ok((header, payload))
}

/// Cuts `message` into frames of at most `max_frame` bytes.
pub fn fragment(message: &[u8], msg_id: u8, max_frame: usize) -> Result<Vec<Vec<u8>>, FrameError> {
    if max_frame < MIN_FRAME {
        return Err(FrameError::FrameSize {
            max_frame,
            min: MIN_FRAME,
        });
    }
    let total = u16::try_from(message.len())
        .ok()
        .filter(|&t| t > 0 && usize::from(t) <= MAX_MESSAGE)
        .ok_or(FrameError::TooLarge {
            len: message.len(),
            max: MAX_MESSAGE,
        })?;
    let first_len = message.len().min(max_frame - FIRST_HEADER_LEN);
    let (head, rest) = message.split_at(first_len);
    let mut frames = Vec::with_capacity(1 + rest.len().div_ceil(max_frame - HEADER_LEN));
    let mut first = Vec::with_capacity(FIRST_HEADER_LEN + head.len());
    let flags = FLAG_FIRST | if rest.is_empty() { FLAG_LAST } else { 0 };
    first.extend_from_slice(&[msg_id, flags, 0, 0]);
    first.extend_from_slice(&total.to_be_bytes());
    first.extend_from_slice(head);
    frames.push(first);
    let chunks = rest.chunks(max_frame - HEADER_LEN);
    let count = chunks.len();
    // At most MAX_MESSAGE / (MIN_FRAME - HEADER_LEN) + 1 fragments, far below u16::MAX.
    for (index, chunk) in (1u16..).zip(chunks) {
        let flags = if usize::from(index) == count {
            FLAG_LAST
        } else {
            0
        };
        let mut frame = Vec::with_capacity(HEADER_LEN + chunk.len());
        frame.extend_from_slice(&[msg_id, flags]);
        frame.extend_from_slice(&index.to_be_bytes());
        frame.extend_from_slice(chunk);
        frames.push(frame);
    }
    Ok(frames)
}

/// Numbers outgoing messages and cuts them into frames.
#[derive(Debug, Clone)]
pub struct Fragmenter {
    next_id: u8,
    max_frame: usize,
}

impl Fragmenter {
    /// A fragmenter for frames of at most `max_frame` bytes.
    pub fn new(max_frame: usize) -> Result<Self, FrameError> {
        if max_frame < MIN_FRAME {
            return Err(FrameError::FrameSize {
                max_frame,
                min: MIN_FRAME,
            });
        }
        Ok(Self {
            next_id: 0,
            max_frame,
        })
    }

    /// The frames of the next message.
    pub fn fragment(&mut self, message: &[u8]) -> Result<Vec<Vec<u8>>, FrameError> {
        let frames = fragment(message, self.next_id, self.max_frame)?;
        self.next_id = self.next_id.wrapping_add(1);
        Ok(frames)
    }
}

/// A message being put back together.
#[derive(Debug)]
struct Partial {
    msg_id: u8,
    next_index: u16,
    total: usize,
    buf: Vec<u8>,
}

/// Puts frames back together into messages, one message at a time.
#[derive(Debug)]
pub struct Reassembler {
    max_message: usize,
    partial: Option<Partial>,
}

impl Default for Reassembler {
    fn default() -> Self {
        Self::new(MAX_MESSAGE)
    }
}

impl Reassembler {
    /// A reassembler for messages of at most `max_message` bytes (capped at 65535).
    pub fn new(max_message: usize) -> Self {
        Self {
            max_message: max_message.min(usize::from(u16::MAX)),
            partial: None,
        }
    }

    /// Whether a message is partly received.
    pub fn in_progress(&self) -> bool {
        self.partial.is_some()
    }

    /// Drops any partial message (a link reset).
    pub fn reset(&mut self) {
        self.partial = None;
    }

    /// Takes one frame: `Some(message)` when it completes one. On error the partial message is
    /// dropped (a FIRST frame that abandons one still starts its own message).
    pub fn push(&mut self, frame: &[u8]) -> Result<Option<Vec<u8>>, FrameError> {
        let result = self.push_inner(frame);
        if result.is_err() && !matches!(result, Err(FrameError::Abandoned { .. })) {
            self.partial = None;
        }
        result
    }

    fn push_inner(&mut self, frame: &[u8]) -> Result<Option<Vec<u8>>, FrameError> {
        let (header, payload) = decode_frame(frame)?;
        if let Some(total) = header.total {
            let total = usize::from(total);
            if total == 0 || total > self.max_message {
                return Err(FrameError::TooLarge {
                    len: total,
                    max: self.max_message,
                });
            }
            let abandoned = match self.partial.take() {
                // The partial message's own first frame, again.
                Some(p) if p.msg_id == header.msg_id => {
                    return Err(FrameError::Duplicate {
                        msg_id: p.msg_id,
                        index: 0,
                    });
                }
                Some(p) => Some(p.msg_id),
                None => None,
            };
            let mut buf = Vec::with_capacity(total);
            buf.extend_from_slice(payload);
            let partial = Partial {
                msg_id: header.msg_id,
                next_index: 1,
                total,
                buf,
            };
            let done = Self::check_length(&partial, header.last)?;
            if let Some(msg_id) = abandoned {
                if !done {
                    self.partial = Some(partial);
                }
                // A complete one-frame message that abandoned another is lost with the report;
                // the sender resends on the error reply it gets.
                return Err(FrameError::Abandoned { msg_id });
            }
            return Ok(if done {
                Some(partial.buf)
            } else {
                self.partial = Some(partial);
                None
            });
        }
        let Some(partial) = self.partial.as_mut() else {
            return Err(FrameError::NoMessage {
                msg_id: header.msg_id,
                index: header.index,
            });
        };
        if header.msg_id != partial.msg_id {
            return Err(FrameError::WrongMessage {
                expected: partial.msg_id,
                got: header.msg_id,
            });
        }
        if header.index < partial.next_index {
            return Err(FrameError::Duplicate {
                msg_id: partial.msg_id,
                index: header.index,
            });
        }
        if header.index > partial.next_index {
            return Err(FrameError::OutOfOrder {
                msg_id: partial.msg_id,
                expected: partial.next_index,
                got: header.index,
            });
        }
        if partial.buf.len() + payload.len() > partial.total {
            return Err(FrameError::Overrun {
                msg_id: partial.msg_id,
                total: partial.total,
            });
        }
        partial.buf.extend_from_slice(payload);
        partial.next_index = partial.next_index.wrapping_add(1);
        if Self::check_length(partial, header.last)? {
            Ok(self.partial.take().map(|p| p.buf))
        } else {
            Ok(None)
        }
    }

    /// Whether the message is complete; an error if the length and the LAST flag disagree.
    fn check_length(partial: &Partial, last: bool) -> Result<bool, FrameError> {
        let got = partial.buf.len();
        if got > partial.total {
            return Err(FrameError::Overrun {
                msg_id: partial.msg_id,
                total: partial.total,
            });
        }
        match (last, got == partial.total) {
            (true, true) => Ok(true),
            (false, false) => Ok(false),
            (true, false) => Err(FrameError::EndsShort {
                msg_id: partial.msg_id,
                got,
                total: partial.total,
            }),
            // The length is reached but the frame does not say LAST: the next frame would overrun.
            (false, true) => Err(FrameError::Overrun {
                msg_id: partial.msg_id,
                total: partial.total,
            }),
        }
    }
}

/// Prefixes a frame with its length for a byte stream (TCP).
pub fn stream_encode(frame: &[u8]) -> Result<Vec<u8>, FrameError> {
    let len = u16::try_from(frame.len())
        .ok()
        .filter(|&l| l > 0 && usize::from(l) <= LAN_MAX_FRAME)
        .ok_or(FrameError::FrameSize {
            max_frame: frame.len(),
            min: MIN_FRAME,
        })?;
    let mut out = Vec::with_capacity(2 + frame.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(frame);
    Ok(out)
}

/// Splits a byte stream into the frames [`stream_encode`] made.
#[derive(Debug, Default)]
pub struct StreamDecoder {
    buf: Vec<u8>,
}

impl StreamDecoder {
    /// Appends bytes read from the stream.
    pub fn extend(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole frame, if one is buffered. A length of 0 or over [`LAN_MAX_FRAME`] is an
    /// error after which the stream cannot be resynchronised: close the connection.
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
        let &[l0, l1, ..] = self.buf.as_slice() else {
            return Ok(None);
        };
        let len = usize::from(u16::from_be_bytes([l0, l1]));
        if len == 0 || len > LAN_MAX_FRAME {
            self.buf.clear();
            return Err(FrameError::TooLarge {
                len,
                max: LAN_MAX_FRAME,
            });
        }
        if self.buf.len() < 2 + len {
            return Ok(None);
        }
        let frame = self.buf[2..2 + len].to_vec();
        self.buf.drain(..2 + len);
        Ok(Some(frame))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31) ^ seed)
            .collect()
    }

    fn reassemble(frames: &[Vec<u8>]) -> Result<Vec<Vec<u8>>, FrameError> {
        let mut r = Reassembler::default();
        let mut out = Vec::new();
        for f in frames {
            if let Some(m) = r.push(f)? {
                out.push(m);
            }
        }
        Ok(out)
    }

    #[test]
    fn round_trips_at_every_size_and_mtu() {
        for max_frame in [MIN_FRAME, 20, 182, LAN_MAX_FRAME] {
            for len in [1, 2, 13, 14, 15, 16, 17, 30, 31, 300, MAX_MESSAGE] {
                let m = message(len, 7);
                let frames = fragment(&m, 9, max_frame).expect("fragment");
                assert!(frames.iter().all(|f| f.len() <= max_frame));
                assert_eq!(reassemble(&frames).expect("reassemble"), vec![m]);
            }
        }
    }

    #[test]
    fn header_layout_is_as_documented() {
        let frames = fragment(b"hello world, over BLE", 5, 20).expect("fragment");
        assert_eq!(&frames[0][..6], &[5, FLAG_FIRST, 0, 0, 0, 21]);
        assert_eq!(&frames[0][6..], b"hello world, o");
        assert_eq!(&frames[1][..4], &[5, FLAG_LAST, 0, 1]);
        assert_eq!(&frames[1][4..], b"ver BLE");
        let single = fragment(b"x", 0, 20).expect("fragment");
        assert_eq!(
            single,
            vec![vec![0, FLAG_FIRST | FLAG_LAST, 0, 0, 0, 1, b'x']]
        );
    }

    #[test]
    fn fragment_refuses_bad_sizes() {
        assert!(matches!(
            fragment(b"x", 0, MIN_FRAME - 1),
            Err(FrameError::FrameSize { .. })
        ));
        assert!(matches!(
            fragment(b"", 0, 20),
            Err(FrameError::TooLarge { .. })
        ));
        assert!(matches!(
            fragment(&message(MAX_MESSAGE + 1, 0), 0, 20),
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[test]
    fn each_fault_is_a_typed_error_and_the_next_message_works() {
        let m = message(100, 1);
        let frames = fragment(&m, 3, 20).expect("fragment");
        let next = fragment(&message(50, 2), 4, 20).expect("fragment");
        let cases: Vec<(Vec<Vec<u8>>, FrameError)> = vec![
            (
                vec![frames[0].clone(), frames[2].clone()],
                FrameError::OutOfOrder {
                    msg_id: 3,
                    expected: 1,
                    got: 2,
                },
            ),
            (
                vec![frames[0].clone(), frames[1].clone(), frames[1].clone()],
                FrameError::Duplicate {
                    msg_id: 3,
                    index: 1,
                },
            ),
            (
                vec![frames[0].clone(), next[1].clone()],
                FrameError::WrongMessage {
                    expected: 3,
                    got: 4,
                },
            ),
            (
                vec![frames[0].clone(), frames[0].clone()],
                FrameError::Duplicate {
                    msg_id: 3,
                    index: 0,
                },
            ),
            (
                vec![frames[1].clone()],
                FrameError::NoMessage {
                    msg_id: 3,
                    index: 1,
                },
            ),
            (
                vec![frames[0][..3].to_vec()],
                FrameError::Truncated { len: 3, needed: 4 },
            ),
            (
                vec![frames[0][..5].to_vec()],
                FrameError::Truncated { len: 5, needed: 6 },
            ),
            (
                vec![{
                    let mut f = frames[0].clone();
                    f[1] |= FLAG_LAST;
                    f
                }],
                FrameError::EndsShort {
                    msg_id: 3,
                    got: 14,
                    total: 100,
                },
            ),
            (
                vec![{
                    let mut f = frames[0].clone();
                    f[4..6].copy_from_slice(&10u16.to_be_bytes());
                    f
                }],
                FrameError::Overrun {
                    msg_id: 3,
                    total: 10,
                },
            ),
            (
                vec![{
                    let mut f = frames[0].clone();
                    f[4..6].copy_from_slice(&u16::MAX.to_be_bytes());
                    f
                }],
                FrameError::TooLarge {
                    len: 65535,
                    max: MAX_MESSAGE,
                },
            ),
            (
                vec![{
                    let mut f = frames[0].clone();
                    f[1] = 0x80 | FLAG_FIRST;
                    f
                }],
                FrameError::BadHeader {
                    reason: "unknown flag bits",
                },
            ),
        ];
        for (input, want) in cases {
            let mut r = Reassembler::default();
            let mut got = None;
            for f in &input {
                if let Err(e) = r.push(f) {
                    got = Some(e);
                    break;
                }
            }
            assert_eq!(got.as_ref(), Some(&want), "{input:?}");
            assert!(!r.in_progress());
            let mut out = None;
            for f in &frames {
                out = r.push(f).expect("push");
            }
            assert_eq!(out.as_deref(), Some(&m[..]));
        }
    }

    #[test]
    fn a_new_message_abandons_a_partial_one() {
        let a = fragment(&message(100, 1), 1, 20).expect("fragment");
        let b = message(60, 2);
        let bf = fragment(&b, 2, 20).expect("fragment");
        let mut r = Reassembler::default();
        assert_eq!(r.push(&a[0]), Ok(None));
        assert_eq!(r.push(&bf[0]), Err(FrameError::Abandoned { msg_id: 1 }));
        let mut out = None;
        for f in &bf[1..] {
            out = r.push(f).expect("push");
        }
        assert_eq!(out, Some(b));
    }

    #[test]
    fn stream_decoder_splits_frames_at_any_boundary() {
        let frames = fragment(&message(9000, 4), 0, LAN_MAX_FRAME).expect("fragment");
        let stream: Vec<u8> = frames
            .iter()
            .flat_map(|f| stream_encode(f).expect("stream_encode"))
            .collect();
        for chunk in [1, 3, 1000, stream.len()] {
            let mut d = StreamDecoder::default();
            let mut got = Vec::new();
            for c in stream.chunks(chunk) {
                d.extend(c);
                while let Some(f) = d.next_frame().expect("next_frame") {
                    got.push(f);
                }
            }
            assert_eq!(got, frames);
        }
        let mut d = StreamDecoder::default();
        d.extend(&[0xff, 0xff, 1]);
        assert!(matches!(d.next_frame(), Err(FrameError::TooLarge { .. })));
        assert_eq!(d.next_frame(), Ok(None));
    }
}
