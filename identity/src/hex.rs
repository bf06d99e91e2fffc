//! Lowercase hex, the one spelling the project uses for keys, signatures and digests.

/// Lowercase hex of `bytes`.
pub fn encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Bytes of an even-length lowercase hex string; `None` if it is not one.
pub fn decode(hex: &str) -> Option<Vec<u8>> {
    // Canonical spelling only: lowercase, no signs, so that one value has one encoding.
    if !hex.len().is_multiple_of(2) || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).ok())
        .collect()
}

/// A fixed-size value from hex, e.g. a 32-byte key; `None` on bad hex or the wrong length.
pub fn decode_array<const N: usize>(hex: &str) -> Option<[u8; N]> {
    decode(hex)?.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_only_canonical_spelling() {
        assert_eq!(encode(&[0, 0xab, 0x10]), "00ab10");
        assert_eq!(decode("00ab10"), Some(vec![0, 0xab, 0x10]));
        assert_eq!(decode("00AB10"), None);
        assert_eq!(decode("abc"), None);
        assert_eq!(decode_array::<2>("00ab10"), None);
        assert_eq!(decode_array::<3>("00ab10"), Some([0, 0xab, 0x10]));
    }
}
