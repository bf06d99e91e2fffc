//! The pairing button: presses of one key on a Linux input device (evdev), e.g. a `gpio-keys`
//! button at `/dev/input/by-path/platform-gpio-keys-event`.
//!
//! The device is read as a stream of `struct input_event` records: a `timeval` (two `long`s), then
//! `u16` type, `u16` code and `i32` value, in native byte order ([`EVENT_SIZE`]: 24 bytes on 64-bit
//! Linux). A press is a key-down: type `EV_KEY`, the configured code, value 1; it counts at once,
//! not after a hold. A key held down for [`RESET_HOLD`] (no release, value 0, in between) is a
//! hold as well, said once: the physical factory reset. Auto-repeats (2), other codes and other
//! event types are ignored. The hold is timed by this reader's monotonic clock from when it read
//! the key-down. Debouncing is the driver's (`gpio-keys`' `debounce-interval`).
//!
//! The file is opened non-blocking and polled with a timeout, so the thread waiting on it notices
//! shutdown. Anything pollable reads the same, so a FIFO or a plain file stands in for the device
//! in tests. Limits: no `EVIOCGRAB` (other readers see the key too), and no reopening: a device
//! that goes away ends the button.

use std::fs::File;
use std::io::Read;
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

/// `EV_KEY`: the event type of keys and buttons.
pub const EV_KEY: u16 = 1;

/// `KEY_CONNECT`, a usual code for a pairing button.
pub const KEY_CONNECT: u16 = 218;

/// How long the key must be held down to be a hold (the factory reset).
pub const RESET_HOLD: Duration = Duration::from_secs(10);

/// `KEY_MAX`: the highest key code.
pub const KEY_MAX: u16 = 0x2ff;

/// Bytes in one `struct input_event`: a `timeval` of two `long`s, then type, code and value.
pub const EVENT_SIZE: usize = 2 * std::mem::size_of::<usize>() + 8;

/// Errors opening or reading the button's device.
#[derive(Debug, thiserror::Error)]
pub enum ButtonError {
    /// The device could not be opened.
    #[error("cannot open input device {path}: {source}")]
    Open {
        /// The device path as configured: a `by-path` link is named, not its target.
        path: PathBuf,
        /// The OS error from the non-blocking open, e.g. `EACCES` for a user outside `input`.
        source: std::io::Error,
    },
    /// The device could not be read (it went away: `ENODEV`).
    #[error("cannot read input device {path}: {source}")]
    Read {
        /// The device path as configured.
        path: PathBuf,
        /// The OS error from `poll(2)` or `read(2)`; `ENODEV` once the device is unplugged.
        source: std::io::Error,
    },
    /// The input ended inside a record.
    #[error("input device {path} ended inside an event ({bytes} of {EVENT_SIZE} bytes)")]
    Truncated {
        /// The device path as configured.
        path: PathBuf,
        /// Bytes of the last, partial record.
        bytes: usize,
    },
}

/// What a wait on the button saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// The key was pressed: one key-down, possibly read before this wait began.
    Pressed,
    /// The key has been held down for the hold time since its last press (once per press).
    Held,
    /// No press within the timeout.
    TimedOut,
    /// The input ended (the device went away, a FIFO's writer closed it): no press will come.
    Ended,
}

/// One opened button, read by the thread that waits on it.
pub trait Button: Send {
    /// Waits up to `timeout` for the next press; presses that came while nobody waited are
    /// reported one per call.
    fn wait(&mut self, timeout: Duration) -> Result<Wait, ButtonError>;
}

/// Opens buttons: [`EvdevButtons`], or the fakes' for tests.
pub trait Buttons: Send + Sync {
    /// The button that is key `key` on input device `device`.
    fn open(&self, device: &Path, key: u16) -> Result<Box<dyn Button>, ButtonError>;
}

/// One input event, its time left out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputEvent {
    /// Event type (`EV_KEY`, `EV_SYN`, ...).
    pub kind: u16,
    /// Key code, for `EV_KEY`.
    pub code: u16,
    /// 1 press, 0 release, 2 auto-repeat, for `EV_KEY`.
    pub value: i32,
}

impl InputEvent {
    /// A key-down of `code`.
    pub fn press(code: u16) -> Self {
        Self {
            kind: EV_KEY,
            code,
            value: 1,
        }
    }

    /// A key-up of key `code`.
    pub fn release(code: u16) -> Self {
        Self {
            kind: EV_KEY,
            code,
            value: 0,
        }
    }

    /// Decodes one record as the kernel writes it.
    pub fn decode(record: &[u8; EVENT_SIZE]) -> Self {
        let at = EVENT_SIZE - 8;
        Self {
            kind: u16::from_ne_bytes([record[at], record[at + 1]]),
            code: u16::from_ne_bytes([record[at + 2], record[at + 3]]),
            value: i32::from_ne_bytes([
                record[at + 4],
                record[at + 5],
                record[at + 6],
                record[at + 7],
            ]),
        }
    }

    /// Encodes it as the kernel would, with a zero time (for tests and simulators).
    pub fn encode(&self) -> [u8; EVENT_SIZE] {
        let mut record = [0; EVENT_SIZE];
        let at = EVENT_SIZE - 8;
        record[at..at + 2].copy_from_slice(&self.kind.to_ne_bytes());
        record[at + 2..at + 4].copy_from_slice(&self.code.to_ne_bytes());
        record[at + 4..].copy_from_slice(&self.value.to_ne_bytes());
        record
    }
}

/// Opens [`EvdevButton`]s.
#[derive(Debug, Clone, Copy, Default)]
pub struct EvdevButtons;

impl Buttons for EvdevButtons {
    fn open(&self, device: &Path, key: u16) -> Result<Box<dyn Button>, ButtonError> {
        Ok(Box::new(EvdevButton::open(device, key)?))
    }
}

/// A key on an evdev device (or anything that reads like one).
#[derive(Debug)]
pub struct EvdevButton {
    path: PathBuf,
    file: File,
    key: u16,
    /// Bytes of a record not complete yet.
    partial: Vec<u8>,
    /// Presses read but not reported yet.
    presses: usize,
    /// When the key went down, while it is down and its hold is not reported yet.
    down_since: Option<Instant>,
    /// How long a hold is ([`RESET_HOLD`]).
    hold: Duration,
    ended: bool,
}

impl EvdevButton {
    /// Opens `path` (non-blocking) for key `key`.
    pub fn open(path: &Path, key: u16) -> Result<Self, ButtonError> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(OFlag::O_NONBLOCK.bits())
            .open(path)
            .map_err(|source| ButtonError::Open {
                path: path.to_owned(),
                source,
            })?;
        Ok(Self {
            path: path.to_owned(),
            file,
            key,
            partial: Vec::with_capacity(EVENT_SIZE),
            presses: 0,
            down_since: None,
            hold: RESET_HOLD,
            ended: false,
        })
    }

    /// The same button with a hold of `hold` instead of [`RESET_HOLD`] (tests).
    pub fn with_hold(mut self, hold: Duration) -> Self {
        self.hold = hold;
        self
    }

    fn read_error(&self, source: std::io::Error) -> ButtonError {
        ButtonError::Read {
            path: self.path.clone(),
            source,
        }
    }

    /// Reads what is there (one `read`; the file is non-blocking).
    fn read_some(&mut self) -> Result<(), ButtonError> {
        let mut buf = [0u8; EVENT_SIZE * 32];
        match self.file.read(&mut buf) {
            Ok(0) => {
                self.ended = true;
                let bytes = std::mem::take(&mut self.partial).len();
                if bytes > 0 {
                    return Err(ButtonError::Truncated {
                        path: self.path.clone(),
                        bytes,
                    });
                }
            }
            Ok(n) => {
                self.partial.extend_from_slice(&buf[..n]);
                let whole = self.partial.len() / EVENT_SIZE * EVENT_SIZE;
                for record in self.partial[..whole].chunks_exact(EVENT_SIZE) {
                    let Ok(record) = <&[u8; EVENT_SIZE]>::try_from(record) else {
                        continue;
                    };
                    let event = InputEvent::decode(record);
                    if event == InputEvent::press(self.key) {
                        self.presses += 1;
                        self.down_since = Some(Instant::now());
                    } else if event == InputEvent::release(self.key) {
                        self.down_since = None;
                    }
                }
                self.partial.drain(..whole);
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
                ) => {}
            Err(e) => return Err(self.read_error(e)),
        }
        Ok(())
    }
}

impl Button for EvdevButton {
    fn wait(&mut self, timeout: Duration) -> Result<Wait, ButtonError> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.presses > 0 {
                self.presses -= 1;
                return Ok(Wait::Pressed);
            }
            let held_at = self.down_since.map(|since| since + self.hold);
            if held_at.is_some_and(|at| Instant::now() >= at) {
                self.down_since = None;
                return Ok(Wait::Held);
            }
            if self.ended {
                return Ok(Wait::Ended);
            }
            // Poll before reading: a FIFO that never had a writer reads as its end, but does
            // not poll readable. A hold under way wakes it when it is due.
            let until = held_at.map_or(deadline, |at| at.min(deadline));
            let left = until.saturating_duration_since(Instant::now());
            let millis = left.as_nanos().div_ceil(1_000_000).min(i32::MAX as u128) as i32;
            let mut fds = [PollFd::new(self.file.as_fd(), PollFlags::POLLIN)];
            match poll(
                &mut fds,
                PollTimeout::try_from(millis).unwrap_or(PollTimeout::MAX),
            ) {
                Ok(0) if until < deadline => {}
                Ok(0) => return Ok(Wait::TimedOut),
                Ok(_) => self.read_some()?,
                Err(Errno::EINTR) => {}
                Err(e) => return Err(self.read_error(e.into())),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const WAIT: Duration = Duration::from_secs(5);

    fn event(kind: u16, code: u16, value: i32) -> [u8; EVENT_SIZE] {
        InputEvent { kind, code, value }.encode()
    }

    /// Every press of `button` until its input ends.
    fn presses(button: &mut EvdevButton) -> Result<usize, ButtonError> {
        let mut n = 0;
        loop {
            match button.wait(WAIT)? {
                Wait::Pressed => n += 1,
                Wait::Held => panic!("a hold, with every press released"),
                Wait::Ended => return Ok(n),
                Wait::TimedOut => panic!("no end of input within {WAIT:?}"),
            }
        }
    }

    /// A press, and what a real device sends around it that is not one.
    fn a_press_among_noise(key: u16) -> Vec<u8> {
        [
            event(EV_KEY, key, 1),
            event(0, 0, 0), // EV_SYN
            event(EV_KEY, key, 2),
            event(EV_KEY, key, 0),
            event(0, 0, 0),
            event(EV_KEY, KEY_CONNECT + 1, 1), // another key
            event(4, 4, i32::from(key)),       // EV_MSC scan code
            event(2, key, 1),                  // EV_REL with the same code
        ]
        .concat()
    }

    fn fifo(dir: &Path) -> PathBuf {
        let path = dir.join("button");
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600))
            .expect("mkfifo");
        path
    }

    #[test]
    fn a_key_held_down_is_a_hold_once_and_a_released_one_is_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = fifo(dir.path());
        let hold = Duration::from_millis(300);
        let mut button = EvdevButton::open(&path, KEY_CONNECT)
            .expect("open")
            .with_hold(hold);
        let mut writer = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .expect("write end");
        // Down and up again, with a repeat between: a press, and no hold.
        let tap = [
            event(EV_KEY, KEY_CONNECT, 1),
            event(EV_KEY, KEY_CONNECT, 2),
            event(EV_KEY, KEY_CONNECT, 0),
        ]
        .concat();
        writer.write_all(&tap).expect("write");
        assert_eq!(button.wait(WAIT).expect("wait"), Wait::Pressed);
        assert_eq!(button.wait(hold * 3).expect("wait"), Wait::TimedOut);
        // Down and kept down (auto-repeats only): a press at once, then one hold, not before.
        let down = [event(EV_KEY, KEY_CONNECT, 1), event(EV_KEY, KEY_CONNECT, 2)].concat();
        writer.write_all(&down).expect("write");
        let pressed = Instant::now();
        assert_eq!(button.wait(WAIT).expect("wait"), Wait::Pressed);
        assert_eq!(button.wait(WAIT).expect("wait"), Wait::Held);
        assert!(pressed.elapsed() >= hold, "held {:?}", pressed.elapsed());
        assert_eq!(button.wait(hold * 2).expect("wait"), Wait::TimedOut, "once");
        // Another key held does not count.
        writer
            .write_all(&event(EV_KEY, KEY_CONNECT + 1, 1))
            .expect("write");
        assert_eq!(button.wait(hold * 2).expect("wait"), Wait::TimedOut);
    }

    #[test]
    fn only_key_downs_of_the_key_count_read_through_a_fifo() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = fifo(dir.path());
        let mut button = EvdevButton::open(&path, KEY_CONNECT).expect("open the read end");
        // Nobody has opened the FIFO for writing yet: quiet, not ended.
        assert_eq!(
            button.wait(Duration::from_millis(50)).expect("wait"),
            Wait::TimedOut
        );
        let mut writer = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .expect("write end");
        let noise = a_press_among_noise(KEY_CONNECT);
        // Three presses, one written a byte at a time so records arrive split.
        writer.write_all(&noise).expect("write");
        writer.write_all(&noise).expect("write");
        writer.flush().expect("flush");
        assert_eq!(button.wait(WAIT).expect("wait"), Wait::Pressed);
        for byte in &noise {
            writer.write_all(&[*byte]).expect("write");
        }
        drop(writer);
        assert_eq!(presses(&mut button).expect("clean end"), 2);
        assert_eq!(button.wait(WAIT).expect("wait"), Wait::Ended);
    }

    #[test]
    fn a_truncated_last_record_is_an_error_naming_the_device_after_the_whole_ones() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("events");
        let mut bytes = [event(EV_KEY, 0x100, 1), event(EV_KEY, 0x100, 1)].concat();
        bytes.extend_from_slice(&event(EV_KEY, 0x100, 1)[..EVENT_SIZE - 3]);
        std::fs::write(&path, &bytes).expect("write");
        let mut button = EvdevButton::open(&path, 0x100).expect("open a plain file");
        assert_eq!(button.wait(WAIT).expect("first"), Wait::Pressed);
        assert_eq!(button.wait(WAIT).expect("second"), Wait::Pressed);
        let err = button.wait(WAIT).expect_err("truncated");
        assert!(
            matches!(err, ButtonError::Truncated { bytes, .. } if bytes == EVENT_SIZE - 3),
            "{err}"
        );
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
        assert_eq!(button.wait(WAIT).expect("then the end"), Wait::Ended);
    }

    #[test]
    fn an_empty_or_short_input_never_panics() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("events");
        for len in 0..EVENT_SIZE {
            std::fs::write(&path, vec![0xff; len]).expect("write");
            let mut button = EvdevButton::open(&path, KEY_CONNECT).expect("open");
            match button.wait(WAIT) {
                Ok(Wait::Ended) => assert_eq!(len, 0),
                Err(ButtonError::Truncated { bytes, .. }) => assert_eq!(bytes, len),
                other => panic!("{len} bytes: {other:?}"),
            }
        }
    }

    #[test]
    fn a_missing_device_is_an_error_naming_it() {
        let path = Path::new("/nonexistent/input/event7");
        let err = EvdevButton::open(path, KEY_CONNECT).expect_err("missing");
        assert!(
            err.to_string()
                .starts_with("cannot open input device /nonexistent/input/event7:"),
            "{err}"
        );
    }

    #[test]
    fn records_are_the_kernels_layout() {
        assert_eq!(EVENT_SIZE, 2 * std::mem::size_of::<usize>() + 8);
        let record = InputEvent::press(KEY_CONNECT).encode();
        let at = EVENT_SIZE - 8;
        assert_eq!(record[..at], vec![0; at][..], "time left zero");
        assert_eq!(record[at..at + 2], EV_KEY.to_ne_bytes());
        assert_eq!(record[at + 2..at + 4], KEY_CONNECT.to_ne_bytes());
        assert_eq!(record[at + 4..], 1i32.to_ne_bytes());
        assert_eq!(InputEvent::decode(&record), InputEvent::press(KEY_CONNECT));
    }
}
