//! The per-device setup secret: an 11-digit manual code and the QR payload that carries it.
//!
//! A code is 10 random digits and a Verhoeff check digit, so a single mistyped digit or swapped
//! pair of neighbours is caught before any pairing attempt (and its failure count) is spent.
//! Trivial codes (a run of 8 or more equal, ascending or descending digits, such as `12345678` or
//! `00000000`, Matter's list generalised) are never issued, and are refused when typed.
//!
//! The QR payload is `EDGE:1:<device id, 32 hex digits>:<11 digits>`, in upper case so that it
//! fits a QR code's alphanumeric mode; parsing accepts either case and surrounding whitespace.
//! The code is a secret: it lives in a [`Zeroizing`] buffer and its `Debug` prints no digits.

use std::fmt;

use edge_identity::keys::DeviceId;
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

/// Errors making or parsing a setup code or QR payload. They never quote the code's digits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SetupCodeError {
    /// The code has the wrong number of digits.
    #[error("a setup code has {expected} digits; this one has {len}")]
    Length {
        /// Digits found (after removing spaces and dashes).
        len: usize,
        /// Always 11: ten random digits and the check digit.
        expected: usize,
    },
    /// A character other than a digit, space or dash.
    #[error("a setup code has only digits; character {position} is not one")]
    NotDigit {
        /// 1-based position of the character in the typed text.
        position: usize,
    },
    /// The check digit does not match: a digit was mistyped.
    #[error("the setup code's check digit does not match: check it for a typo")]
    CheckDigit,
    /// The code is trivial; no device issues one, so it was mistyped.
    #[error(
        "the setup code is trivial (a run of equal or consecutive digits); no device issues one"
    )]
    Trivial,
    /// The system random source failed.
    #[error("the system random source failed")]
    Random,
    /// The QR payload is not `EDGE:1:<device id>:<code>`.
    #[error("not an edge pairing QR payload: {reason}")]
    Qr {
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The QR payload has a version this build does not know.
    #[error("QR payload version {version} is not supported (this build knows version 1)")]
    QrVersion {
        /// The version field as found (at most 8 characters of it).
        version: String,
    },
}

/// Digits in a code, the check digit included.
pub const CODE_LEN: usize = 11;
/// A run of this many equal, ascending or descending digits makes a code trivial.
pub const TRIVIAL_RUN: usize = 8;
/// The QR payload's prefix.
pub const QR_PREFIX: &str = "EDGE";
/// The QR payload's format version.
pub const QR_VERSION: &str = "1";

/// A device's setup code: 11 ASCII digits, the last a Verhoeff check digit. Clones are wiped on
/// drop too.
#[derive(Clone)]
pub struct SetupCode(Zeroizing<String>);

impl SetupCode {
    /// A fresh random code from the system random source.
    pub fn generate() -> Result<Self, SetupCodeError> {
        Self::generate_with(&SystemRandom::new())
    }

    /// A fresh random code from `rng`; trivial codes are drawn again.
    pub fn generate_with(rng: &dyn SecureRandom) -> Result<Self, SetupCodeError> {
        Self::generate_from(|buf| rng.fill(buf).map_err(|_| SetupCodeError::Random))
    }

    fn generate_from(
        mut fill: impl FnMut(&mut [u8]) -> Result<(), SetupCodeError>,
    ) -> Result<Self, SetupCodeError> {
        loop {
            let mut digits = Zeroizing::new([0u8; CODE_LEN]);
            let mut filled = 0;
            while filled < CODE_LEN - 1 {
                let mut bytes = Zeroizing::new([0u8; 16]);
                fill(&mut bytes[..])?;
                // 250 is the largest multiple of 10 under 256: rejecting the rest keeps digits uniform.
                for &b in bytes.iter().filter(|&&b| b < 250) {
                    if filled == CODE_LEN - 1 {
                        break;
                    }
                    digits[filled] = b % 10;
                    filled += 1;
                }
            }
            digits[CODE_LEN - 1] = verhoeff_check_digit(&digits[..CODE_LEN - 1]);
            if !is_trivial(&digits[..CODE_LEN - 1]) {
                return Ok(Self::from_digits(&digits));
            }
        }
    }

    /// Parses a typed code: spaces and dashes are ignored; length and check digit are checked.
    pub fn parse(typed: &str) -> Result<Self, SetupCodeError> {
        let mut digits = Zeroizing::new([0u8; CODE_LEN]);
        let mut len = 0;
        for (i, c) in typed.chars().enumerate() {
            match c {
                ' ' | '-' => continue,
                '0'..='9' => {
                    if len < CODE_LEN {
                        digits[len] = c as u8 - b'0';
                    }
                    len += 1;
                }
                _ => return Err(SetupCodeError::NotDigit { position: i + 1 }),
            }
        }
        if len != CODE_LEN {
            return Err(SetupCodeError::Length {
                len,
                expected: CODE_LEN,
            });
        }
        if !verhoeff_valid(&digits[..]) {
            return Err(SetupCodeError::CheckDigit);
        }
        if is_trivial(&digits[..CODE_LEN - 1]) {
            return Err(SetupCodeError::Trivial);
        }
        Ok(Self::from_digits(&digits))
    }

    fn from_digits(digits: &[u8; CODE_LEN]) -> Self {
        let mut s = Zeroizing::new(String::with_capacity(CODE_LEN));
        s.extend(digits.iter().map(|d| char::from(b'0' + d)));
        Self(s)
    }

    /// The 11 digits, for the PAKE and for rendering. Handle as a secret: do not log it.
    pub fn digits(&self) -> &str {
        &self.0
    }

    /// The code as printed on a label, grouped `1234-567-8901`.
    pub fn grouped(&self) -> Zeroizing<String> {
        let d = self.digits();
        Zeroizing::new(format!("{}-{}-{}", &d[..4], &d[4..7], &d[7..]))
    }
}

impl fmt::Debug for SetupCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SetupCode(<redacted>)")
    }
}

/// A device id as carried by a QR payload or advertisement: 32 lowercase hex digits. It names the
/// device a client expects; the device's proof is checked against it.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct DeviceFingerprint(String);

impl DeviceFingerprint {
    /// The fingerprint of a device id.
    pub fn of(id: DeviceId) -> Self {
        Self(id.to_string())
    }

    /// Parses 32 hex digits, either case.
    pub fn parse(hex: &str) -> Result<Self, SetupCodeError> {
        if hex.len() != 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(SetupCodeError::Qr {
                reason: "the device id is not 32 hex digits",
            });
        }
        Ok(Self(hex.to_ascii_lowercase()))
    }

    /// Whether this names the device holding `public_key`.
    pub fn matches_key(&self, public_key: &[u8; 32]) -> bool {
        self.0 == DeviceId::from_public_key(public_key).to_string()
    }

    /// The 32 lowercase hex digits, whichever case the QR payload used.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DeviceFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for DeviceFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeviceFingerprint({})", self.0)
    }
}

/// What a device's QR label carries: its id and its setup code.
#[derive(Debug)]
pub struct QrPayload {
    /// The device the code belongs to.
    pub device: DeviceFingerprint,
    /// The setup code: the secret that enters SPAKE2, checked (check digit, not trivial) when
    /// parsed.
    pub code: SetupCode,
}

impl QrPayload {
    /// Parses `EDGE:1:<device id>:<code>` (either case, whitespace around it ignored).
    pub fn parse(text: &str) -> Result<Self, SetupCodeError> {
        let mut parts = text.trim().split(':');
        let prefix = parts.next().unwrap_or_default();
        if !prefix.eq_ignore_ascii_case(QR_PREFIX) {
            return Err(SetupCodeError::Qr {
                reason: "it does not start with EDGE:",
            });
        }
        let version = parts.next().ok_or(SetupCodeError::Qr {
            reason: "the version is missing",
        })?;
        if version != QR_VERSION {
            return Err(SetupCodeError::QrVersion {
                version: version.chars().take(8).collect(),
            });
        }
        let (Some(device), Some(code), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(SetupCodeError::Qr {
                reason: "expected four fields separated by ':'",
            });
        };
        Ok(Self {
            device: DeviceFingerprint::parse(device)?,
            code: SetupCode::parse(code)?,
        })
    }

    /// The payload text to encode in the QR code (upper case, for QR alphanumeric mode).
    pub fn render(&self) -> Zeroizing<String> {
        Zeroizing::new(format!(
            "{QR_PREFIX}:{QR_VERSION}:{}:{}",
            self.device.as_str().to_ascii_uppercase(),
            self.code.digits()
        ))
    }
}

/// Verhoeff's dihedral group D5 multiplication table.
const VERHOEFF_D: [[u8; 10]; 10] = [
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
    [1, 2, 3, 4, 0, 6, 7, 8, 9, 5],
    [2, 3, 4, 0, 1, 7, 8, 9, 5, 6],
    [3, 4, 0, 1, 2, 8, 9, 5, 6, 7],
    [4, 0, 1, 2, 3, 9, 5, 6, 7, 8],
    [5, 9, 8, 7, 6, 0, 4, 3, 2, 1],
    [6, 5, 9, 8, 7, 1, 0, 4, 3, 2],
    [7, 6, 5, 9, 8, 2, 1, 0, 4, 3],
    [8, 7, 6, 5, 9, 3, 2, 1, 0, 4],
    [9, 8, 7, 6, 5, 4, 3, 2, 1, 0],
];
/// Verhoeff's permutation table.
const VERHOEFF_P: [[u8; 10]; 8] = [
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
    [1, 5, 7, 6, 2, 8, 3, 0, 9, 4],
    [5, 8, 0, 3, 7, 9, 6, 1, 4, 2],
    [8, 9, 1, 6, 0, 4, 3, 5, 2, 7],
    [9, 4, 5, 3, 1, 2, 6, 8, 7, 0],
    [4, 2, 8, 6, 5, 7, 3, 9, 0, 1],
    [2, 7, 9, 3, 8, 0, 6, 4, 1, 5],
    [7, 0, 4, 6, 9, 1, 3, 2, 5, 8],
];
/// Verhoeff's inverse table.
const VERHOEFF_INV: [u8; 10] = [0, 4, 3, 2, 1, 5, 6, 7, 8, 9];

fn verhoeff_fold(digits: &[u8], offset: usize) -> u8 {
    digits.iter().rev().enumerate().fold(0, |c, (i, &d)| {
        VERHOEFF_D[usize::from(c)][usize::from(VERHOEFF_P[(i + offset) % 8][usize::from(d)])]
    })
}

/// The Verhoeff check digit (0..=9) for `digits` (values 0..=9).
fn verhoeff_check_digit(digits: &[u8]) -> u8 {
    VERHOEFF_INV[usize::from(verhoeff_fold(digits, 1))]
}

/// Whether `digits`, check digit last, pass the Verhoeff check.
fn verhoeff_valid(digits: &[u8]) -> bool {
    verhoeff_fold(digits, 0) == 0
}

/// Whether `digits` hold a run of [`TRIVIAL_RUN`] equal, ascending or descending digits
/// (consecutive modulo 10, so `7890123456` counts).
fn is_trivial(digits: &[u8]) -> bool {
    [0u8, 1, 9].iter().any(|&step| {
        let mut run = 1;
        digits.windows(2).any(|w| {
            run = if w[1] == (w[0] + step) % 10 {
                run + 1
            } else {
                1
            };
            run >= TRIVIAL_RUN
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digits(s: &str) -> Vec<u8> {
        s.bytes().map(|b| b - b'0').collect()
    }

    #[test]
    fn verhoeff_matches_known_values() {
        assert_eq!(verhoeff_check_digit(&digits("236")), 3);
        assert_eq!(verhoeff_check_digit(&digits("12345")), 1);
        assert!(verhoeff_valid(&digits("2363")));
        assert!(!verhoeff_valid(&digits("2364")));
    }

    #[test]
    fn verhoeff_catches_single_errors_and_swaps() {
        let code = SetupCode::generate().expect("generate");
        let good = digits(code.digits());
        for i in 0..CODE_LEN {
            for d in 0..10 {
                if d != good[i] {
                    let mut bad = good.clone();
                    bad[i] = d;
                    assert!(!verhoeff_valid(&bad), "substitution at {i}");
                }
            }
            if i + 1 < CODE_LEN && good[i] != good[i + 1] {
                let mut bad = good.clone();
                bad.swap(i, i + 1);
                assert!(!verhoeff_valid(&bad), "swap at {i}");
            }
        }
    }

    #[test]
    fn generated_codes_are_valid_and_not_trivial() {
        for _ in 0..200 {
            let code = SetupCode::generate().expect("generate");
            assert_eq!(code.digits().len(), CODE_LEN);
            let again = SetupCode::parse(&code.grouped()).expect("parse");
            assert_eq!(again.digits(), code.digits());
        }
    }

    #[test]
    fn trivial_codes_are_detected_and_never_issued() {
        for t in [
            "0000000000",
            "7777777777",
            "0123456789",
            "9876543210",
            "7890123456",
            "5512345678",
            "8765432155",
        ] {
            assert!(is_trivial(&digits(t)), "{t}");
            let mut full = digits(t);
            full.push(verhoeff_check_digit(&full));
            let typed: String = full.iter().map(|d| char::from(b'0' + d)).collect();
            assert_eq!(
                SetupCode::parse(&typed).expect_err("parse should fail"),
                SetupCodeError::Trivial
            );
        }
        assert!(!is_trivial(&digits("1234567099")));
        assert!(!is_trivial(&digits("3141592653")));

        // A source that first yields a trivial code (all fives; 255 is rejected), then a good one.
        let mut calls = 0;
        let code = SetupCode::generate_from(|buf| {
            calls += 1;
            let src: &[u8; 16] = if calls == 1 {
                &[
                    5, 255, 15, 25, 35, 45, 55, 65, 75, 85, 95, 105, 115, 125, 135, 145,
                ]
            } else {
                b"\x03\x01\x04\x01\x05\x09\x02\x06\x05\x03\x05\x08\x09\x07\x09\x03"
            };
            buf.copy_from_slice(src);
            Ok(())
        })
        .expect("generate_from");
        assert_eq!(calls, 2);
        assert_eq!(&code.digits()[..10], "3141592653");
        assert!(matches!(
            SetupCode::generate_from(|_| Err(SetupCodeError::Random)),
            Err(SetupCodeError::Random)
        ));
    }

    #[test]
    fn parse_reports_clear_errors() {
        let code = SetupCode::generate().expect("generate");
        let d = code.digits().to_owned();
        assert_eq!(
            SetupCode::parse(&d[..10]).expect_err("parse should fail"),
            SetupCodeError::Length {
                len: 10,
                expected: 11
            }
        );
        assert_eq!(
            SetupCode::parse(&format!("{d}1")).expect_err("parse should fail"),
            SetupCodeError::Length {
                len: 12,
                expected: 11
            }
        );
        assert_eq!(
            SetupCode::parse(&format!("{}x{}", &d[..3], &d[3..])).expect_err("parse should fail"),
            SetupCodeError::NotDigit { position: 4 }
        );
        let last = d.as_bytes()[10] - b'0';
        let wrong = format!("{}{}", &d[..10], (last + 1) % 10);
        assert_eq!(
            SetupCode::parse(&wrong).expect_err("parse should fail"),
            SetupCodeError::CheckDigit
        );
        let spaced = format!(" {} - {} {} ", &d[..4], &d[4..7], &d[7..]);
        assert_eq!(SetupCode::parse(&spaced).expect("parse").digits(), d);
    }

    #[test]
    fn debug_redacts_the_code() {
        let code = SetupCode::generate().expect("generate");
        let shown = format!("{code:?}");
        assert!(!shown.contains(code.digits()));
        let qr = QrPayload {
            device: DeviceFingerprint::parse(&"ab".repeat(16)).expect("parse"),
            code,
        };
        assert!(!format!("{qr:?}").contains(qr.code.digits()));
    }

    #[test]
    fn qr_payload_round_trips_and_rejects_junk() {
        let identity =
            edge_identity::keys::Identity::generate_ephemeral().expect("generate_ephemeral");
        let qr = QrPayload {
            device: DeviceFingerprint::of(identity.device_id()),
            code: SetupCode::generate().expect("generate"),
        };
        let text = qr.render();
        assert!(text.starts_with("EDGE:1:"));
        assert!(
            text.bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b':')
        );
        let back = QrPayload::parse(&text.to_lowercase()).expect("parse");
        assert_eq!(back.device, qr.device);
        assert!(back.device.matches_key(identity.public_key()));
        assert_eq!(back.code.digits(), qr.code.digits());

        let id = qr.device.as_str();
        let code = qr.code.digits();
        assert!(matches!(
            QrPayload::parse(&format!("EDGE:2:{id}:{code}")),
            Err(SetupCodeError::QrVersion { .. })
        ));
        for bad in [
            String::new(),
            "EDGE".into(),
            format!("HOME:1:{id}:{code}"),
            format!("EDGE:1:{id}"),
            format!("EDGE:1:{id}:{code}:extra"),
            format!("EDGE:1:{}:{code}", &id[1..]),
            format!("EDGE:1:{}zz:{code}", &id[2..]),
        ] {
            assert!(matches!(
                QrPayload::parse(&bad),
                Err(SetupCodeError::Qr { .. })
            ));
        }
    }
}
