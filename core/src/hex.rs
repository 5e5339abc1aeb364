//! Lowercase hex encoding for ids and keys, without a dependency.

use thiserror::Error;

/// A hex string that could not be decoded.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum HexError {
    #[error("expected {expected} hex characters, got {got}")]
    Length { expected: usize, got: usize },
    #[error("invalid hex character {ch:?} at position {pos}")]
    Char { ch: char, pos: usize },
}

/// Encodes bytes as lowercase hex.
pub fn encode(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push(DIGITS[usize::from(byte >> 4)] as char);
        out.push(DIGITS[usize::from(byte & 0x0f)] as char);
    }
    out
}

/// Decodes exactly `N` bytes from hex (either case).
pub fn decode_array<const N: usize>(text: &str) -> Result<[u8; N], HexError> {
    if text.len() != N * 2 {
        return Err(HexError::Length { expected: N * 2, got: text.chars().count() });
    }
    let mut out = [0u8; N];
    let bytes = text.as_bytes();
    for (i, slot) in out.iter_mut().enumerate() {
        let hi = nibble(bytes[2 * i], 2 * i, text)?;
        let lo = nibble(bytes[2 * i + 1], 2 * i + 1, text)?;
        *slot = (hi << 4) | lo;
    }
    Ok(out)
}

/// Decodes any even number of hex characters.
pub fn decode(text: &str) -> Result<Vec<u8>, HexError> {
    if !text.len().is_multiple_of(2) {
        return Err(HexError::Length { expected: text.len() + 1, got: text.len() });
    }
    let bytes = text.as_bytes();
    (0..bytes.len() / 2)
        .map(|i| Ok((nibble(bytes[2 * i], 2 * i, text)? << 4) | nibble(bytes[2 * i + 1], 2 * i + 1, text)?))
        .collect()
}

fn nibble(byte: u8, pos: usize, text: &str) -> Result<u8, HexError> {
    match byte {
        b'0'..=b'9' => Ok(byte - b'0'),
        b'a'..=b'f' => Ok(byte - b'a' + 10),
        b'A'..=b'F' => Ok(byte - b'A' + 10),
        _ => Err(HexError::Char { ch: text[pos..].chars().next().unwrap_or('?'), pos }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_errors() {
        let bytes = [0u8, 1, 0xab, 0xff];
        assert_eq!(encode(&bytes), "0001abff");
        assert_eq!(decode_array::<4>("0001ABff"), Ok(bytes));
        assert_eq!(decode_array::<4>("0001ab"), Err(HexError::Length { expected: 8, got: 6 }));
        assert_eq!(decode_array::<2>("0g00"), Err(HexError::Char { ch: 'g', pos: 1 }));
    }
}
