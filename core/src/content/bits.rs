//! A fixed-length bit set (which pieces are held).

use serde::{Deserialize, Serialize};

/// Bits `0..len`; one bit per piece (128 KiB for a 1 TiB file).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bits {
    words: Vec<u64>,
    len: u64,
    ones: u64,
}

impl Bits {
    /// `len` clear bits.
    pub fn new(len: u64) -> Bits {
        Bits { words: vec![0; len.div_ceil(64) as usize], len, ones: 0 }
    }

    /// `len` set bits.
    pub fn full(len: u64) -> Bits {
        let mut bits = Bits::new(len);
        for i in 0..len {
            bits.set(i);
        }
        bits
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Set bits.
    pub fn ones(&self) -> u64 {
        self.ones
    }

    pub fn all(&self) -> bool {
        self.ones == self.len
    }

    pub fn get(&self, i: u64) -> bool {
        i < self.len && self.words[(i / 64) as usize] & (1 << (i % 64)) != 0
    }

    /// Sets bit `i`; true if it was clear.
    pub fn set(&mut self, i: u64) -> bool {
        if i >= self.len || self.get(i) {
            return false;
        }
        self.words[(i / 64) as usize] |= 1 << (i % 64);
        self.ones += 1;
        true
    }

    /// Clears bit `i`; true if it was set.
    pub fn clear(&mut self, i: u64) -> bool {
        if !self.get(i) {
            return false;
        }
        self.words[(i / 64) as usize] &= !(1 << (i % 64));
        self.ones -= 1;
        true
    }

    /// The lowest clear bit at or after `from`, if any.
    pub fn next_clear(&self, from: u64) -> Option<u64> {
        let mut i = from;
        while i < self.len {
            let word = self.words[(i / 64) as usize] | ((1u64 << (i % 64)) - 1);
            if word != u64::MAX {
                let at = (i / 64) * 64 + u64::from(word.trailing_ones());
                return (at < self.len).then_some(at);
            }
            i = (i / 64 + 1) * 64;
        }
        None
    }

    /// Bits `start..end` as bytes, LSB first (a page's availability on the wire).
    pub fn to_bytes(&self, start: u64, end: u64) -> Vec<u8> {
        let mut out = vec![0u8; (end.saturating_sub(start)).div_ceil(8) as usize];
        for i in start..end.min(self.len) {
            if self.get(i) {
                out[((i - start) / 8) as usize] |= 1 << ((i - start) % 8);
            }
        }
        out
    }
}

/// Bit `i` of a wire bitfield.
pub fn byte_bit(bytes: &[u8], i: u64) -> bool {
    bytes.get((i / 8) as usize).is_some_and(|b| b & (1 << (i % 8)) != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_clear_and_next_clear() {
        let mut b = Bits::new(130);
        assert_eq!(b.next_clear(0), Some(0));
        for i in 0..70 {
            b.set(i);
        }
        assert_eq!((b.ones(), b.next_clear(0), b.next_clear(64)), (70, Some(70), Some(70)));
        b.clear(3);
        assert_eq!(b.next_clear(0), Some(3));
        let full = Bits::full(130);
        assert!(full.all());
        assert_eq!(full.next_clear(0), None);
        let bytes = b.to_bytes(64, 72);
        assert_eq!(bytes, vec![0b0011_1111]);
        assert!(byte_bit(&bytes, 5) && !byte_bit(&bytes, 6) && !byte_bit(&bytes, 1000));
    }
}
