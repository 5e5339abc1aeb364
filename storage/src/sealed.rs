//! The encrypted-item format, "mynet sealed v1" (SPEC R9): XChaCha20-Poly1305 in the STREAM
//! construction (Hoang, Reyhanitabar, Rogaway, Vizár, 2015) over 64 KiB segments, so any byte
//! range decrypts by reading only the segments that cover it.
//!
//! ```text
//! header (48 bytes, authenticated as the associated data of every segment):
//!   magic "MYNETSE1" | algorithm 1 | segment size log2 (16) | 2 zero bytes
//!   | plaintext length (u64 LE) | nonce prefix (19 random bytes) | 9 zero bytes
//! segment i (i = 0 .. n-1, n = max(1, ceil(len / 64 KiB))):
//!   ciphertext of plaintext[i*64K ..][..64K] | Poly1305 tag (16 bytes)
//!   nonce = prefix (19) | i as u32 big-endian (4) | 1 if i = n-1 else 0 (1)
//! ```
//!
//! What this defends: a flipped bit anywhere fails the segment it is in (the header's, every
//! segment); segments cannot be reordered (the counter), dropped from the end or the file
//! extended (the last-segment flag and the authenticated length). The nonce prefix is random per
//! sealing, so one key seals many files; 19 random bytes make a collision negligible.
//!
//! Key material never passes through the node: the runtime seals and opens files with keys from
//! the key registry ([`crate::keys`]).

use std::io::{self, Read, Seek, SeekFrom, Write};

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{Tag, XChaCha20Poly1305, XNonce};
use thiserror::Error;
use zeroize::Zeroizing;

/// Plaintext bytes per segment.
pub const SEGMENT_LEN: usize = 1 << SEGMENT_LOG2;
const SEGMENT_LOG2: u8 = 16;
/// Authentication tag per segment.
pub const TAG_LEN: usize = 16;
/// The header's length.
pub const HEADER_LEN: usize = 48;
/// Random bytes of each sealing's nonce prefix.
pub const NONCE_PREFIX_LEN: usize = 19;
const MAGIC: &[u8; 8] = b"MYNETSE1";
const ALGORITHM_XCHACHA20POLY1305_STREAM: u8 = 1;
/// The algorithm's name in key records.
pub const ALGORITHM: &str = "xchacha20poly1305-stream-64k";

/// A 256-bit key, wiped from memory when dropped.
pub struct SealKey(Zeroizing<[u8; 32]>);

impl SealKey {
    pub fn from_bytes(bytes: [u8; 32]) -> SealKey {
        SealKey(Zeroizing::new(bytes))
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new((&*self.0).into())
    }
}

impl std::fmt::Debug for SealKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SealKey(..)")
    }
}

/// Why sealed bytes could not be opened.
#[derive(Debug, Error)]
pub enum SealError {
    #[error("not a sealed item (bad magic)")]
    NotSealed,
    #[error("sealed with an unknown algorithm ({0}) or segment size")]
    Unsupported(u8),
    #[error("segment {segment} does not authenticate: wrong key, or the bytes were altered")]
    Authentication { segment: u64 },
    #[error("sealed bytes end early (segment {segment} is incomplete)")]
    Truncated { segment: u64 },
    #[error("sealed bytes run past the last segment")]
    TrailingBytes,
    #[error("range {start}+{len} is beyond the plaintext's {plain_len} bytes")]
    Range { start: u64, len: u64, plain_len: u64 },
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// A parsed header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub plain_len: u64,
    pub nonce_prefix: [u8; NONCE_PREFIX_LEN],
}

impl Header {
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[..8].copy_from_slice(MAGIC);
        out[8] = ALGORITHM_XCHACHA20POLY1305_STREAM;
        out[9] = SEGMENT_LOG2;
        out[12..20].copy_from_slice(&self.plain_len.to_le_bytes());
        out[20..20 + NONCE_PREFIX_LEN].copy_from_slice(&self.nonce_prefix);
        out
    }

    pub fn decode(bytes: &[u8; HEADER_LEN]) -> Result<Header, SealError> {
        if &bytes[..8] != MAGIC {
            return Err(SealError::NotSealed);
        }
        if bytes[8] != ALGORITHM_XCHACHA20POLY1305_STREAM || bytes[9] != SEGMENT_LOG2 {
            return Err(SealError::Unsupported(bytes[8]));
        }
        // Reserved bytes must be zero (they are authenticated too, but a reader that accepted
        // other values would let a future format be misread as this one).
        if bytes[10..12] != [0, 0] || bytes[20 + NONCE_PREFIX_LEN..].iter().any(|b| *b != 0) {
            return Err(SealError::Unsupported(bytes[8]));
        }
        let mut len = [0u8; 8];
        len.copy_from_slice(&bytes[12..20]);
        let mut nonce_prefix = [0u8; NONCE_PREFIX_LEN];
        nonce_prefix.copy_from_slice(&bytes[20..20 + NONCE_PREFIX_LEN]);
        Ok(Header { plain_len: u64::from_le_bytes(len), nonce_prefix })
    }

    /// Segments in the sealed form (at least one, so an empty plaintext still authenticates).
    pub fn segments(&self) -> u64 {
        self.plain_len.div_ceil(SEGMENT_LEN as u64).max(1)
    }

    fn nonce(&self, segment: u64) -> XNonce {
        let mut nonce = [0u8; 24];
        nonce[..NONCE_PREFIX_LEN].copy_from_slice(&self.nonce_prefix);
        nonce[NONCE_PREFIX_LEN..23].copy_from_slice(&(segment as u32).to_be_bytes());
        nonce[23] = u8::from(segment + 1 == self.segments());
        nonce.into()
    }

    fn plain_segment_len(&self, segment: u64) -> usize {
        let start = segment * SEGMENT_LEN as u64;
        (self.plain_len - start.min(self.plain_len)).min(SEGMENT_LEN as u64) as usize
    }
}

/// Length of the sealed form of `plain_len` bytes.
pub fn sealed_len(plain_len: u64) -> u64 {
    let segments = plain_len.div_ceil(SEGMENT_LEN as u64).max(1);
    HEADER_LEN as u64 + plain_len + segments * TAG_LEN as u64
}

/// The largest plaintext the format holds (the segment counter is 32 bits).
pub const PLAIN_MAX: u64 = (u32::MAX as u64) * SEGMENT_LEN as u64;

/// Seals `plain_len` bytes read from `input` into `output`, streaming one segment at a time.
/// `nonce_prefix` must be fresh random bytes for every sealing under the same key.
pub fn seal(
    key: &SealKey,
    nonce_prefix: [u8; NONCE_PREFIX_LEN],
    plain_len: u64,
    mut input: impl Read,
    mut output: impl Write,
) -> Result<(), SealError> {
    if plain_len > PLAIN_MAX {
        return Err(SealError::Range { start: 0, len: plain_len, plain_len: PLAIN_MAX });
    }
    let header = Header { plain_len, nonce_prefix };
    let aad = header.encode();
    output.write_all(&aad)?;
    let cipher = key.cipher();
    let mut buf = Zeroizing::new(vec![0u8; SEGMENT_LEN]);
    for segment in 0..header.segments() {
        let len = header.plain_segment_len(segment);
        input.read_exact(&mut buf[..len])?;
        let tag = cipher
            .encrypt_in_place_detached(&header.nonce(segment), &aad, &mut buf[..len])
            .map_err(|_| SealError::Authentication { segment })?;
        output.write_all(&buf[..len])?;
        output.write_all(&tag)?;
    }
    output.flush()?;
    Ok(())
}

/// Seals a byte slice (tests, small items).
pub fn seal_to_vec(key: &SealKey, nonce_prefix: [u8; NONCE_PREFIX_LEN], plain: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(sealed_len(plain.len() as u64) as usize);
    // Writing to a Vec cannot fail, and the length is the slice's.
    let _ = seal(key, nonce_prefix, plain.len() as u64, plain, &mut out);
    out
}

fn read_header(input: &mut impl Read) -> Result<Header, SealError> {
    let mut bytes = [0u8; HEADER_LEN];
    input.read_exact(&mut bytes).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => SealError::NotSealed,
        _ => SealError::Io(e),
    })?;
    Header::decode(&bytes)
}

/// Reads and authenticates segment `segment` (positioned at its start) into `buf`.
fn open_segment(
    cipher: &XChaCha20Poly1305,
    header: &Header,
    aad: &[u8; HEADER_LEN],
    segment: u64,
    input: &mut impl Read,
    buf: &mut [u8],
) -> Result<usize, SealError> {
    let len = header.plain_segment_len(segment);
    let mut tag = [0u8; TAG_LEN];
    let read = input.read_exact(&mut buf[..len]).and_then(|()| input.read_exact(&mut tag));
    if let Err(e) = read {
        return Err(match e.kind() {
            io::ErrorKind::UnexpectedEof => SealError::Truncated { segment },
            _ => SealError::Io(e),
        });
    }
    cipher
        .decrypt_in_place_detached(&header.nonce(segment), aad, &mut buf[..len], Tag::from_slice(&tag))
        .map_err(|_| SealError::Authentication { segment })?;
    Ok(len)
}

/// Opens a whole sealed stream into `output`; returns the plaintext length. Nothing of a
/// segment is written before it authenticates, and bytes after the last segment are an error.
pub fn open(key: &SealKey, mut input: impl Read, mut output: impl Write) -> Result<u64, SealError> {
    let header = read_header(&mut input)?;
    let aad = header.encode();
    let cipher = key.cipher();
    let mut buf = Zeroizing::new(vec![0u8; SEGMENT_LEN]);
    for segment in 0..header.segments() {
        let len = open_segment(&cipher, &header, &aad, segment, &mut input, &mut buf)?;
        output.write_all(&buf[..len])?;
    }
    let mut probe = [0u8; 1];
    if input.read(&mut probe)? != 0 {
        return Err(SealError::TrailingBytes);
    }
    output.flush()?;
    Ok(header.plain_len)
}

/// Decrypts `len` plaintext bytes from `start`, reading only the segments that cover them.
pub fn open_range(key: &SealKey, mut input: impl Read + Seek, start: u64, len: u64) -> Result<Vec<u8>, SealError> {
    input.seek(SeekFrom::Start(0))?;
    let header = read_header(&mut input)?;
    let end = start.checked_add(len).filter(|end| *end <= header.plain_len);
    let Some(end) = end else {
        return Err(SealError::Range { start, len, plain_len: header.plain_len });
    };
    let mut out = Vec::with_capacity(len as usize);
    if len == 0 {
        return Ok(out);
    }
    let aad = header.encode();
    let cipher = key.cipher();
    let mut buf = Zeroizing::new(vec![0u8; SEGMENT_LEN]);
    let (first, last) = (start / SEGMENT_LEN as u64, (end - 1) / SEGMENT_LEN as u64);
    input.seek(SeekFrom::Start(HEADER_LEN as u64 + first * (SEGMENT_LEN + TAG_LEN) as u64))?;
    for segment in first..=last {
        let n = open_segment(&cipher, &header, &aad, segment, &mut input, &mut buf)?;
        let seg_start = segment * SEGMENT_LEN as u64;
        let from = start.saturating_sub(seg_start) as usize;
        let to = ((end - seg_start) as usize).min(n);
        out.extend_from_slice(&buf[from..to]);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::io::Cursor;

    fn key(b: u8) -> SealKey {
        SealKey::from_bytes([b; 32])
    }

    fn plain(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 % 251) as u8).collect()
    }

    #[test]
    fn lengths_at_segment_boundaries_round_trip() {
        for len in [0, 1, SEGMENT_LEN - 1, SEGMENT_LEN, SEGMENT_LEN + 1, 3 * SEGMENT_LEN] {
            let p = plain(len);
            let sealed = seal_to_vec(&key(1), [7; NONCE_PREFIX_LEN], &p);
            assert_eq!(sealed.len() as u64, sealed_len(len as u64), "len {len}");
            let mut out = Vec::new();
            assert_eq!(open(&key(1), &sealed[..], &mut out).expect("opens"), len as u64);
            assert_eq!(out, p, "len {len}");
        }
    }

    #[test]
    fn wrong_key_truncation_extension_and_reordering_are_refused() {
        let p = plain(3 * SEGMENT_LEN + 100);
        let sealed = seal_to_vec(&key(1), [7; NONCE_PREFIX_LEN], &p);
        let err = open(&key(2), &sealed[..], io::sink()).expect_err("wrong key");
        assert!(matches!(err, SealError::Authentication { segment: 0 }), "{err}");
        // Dropping the last segment: the header's length wants one more.
        let seg = SEGMENT_LEN + TAG_LEN;
        let cut = &sealed[..HEADER_LEN + 3 * seg];
        assert!(matches!(open(&key(1), cut, io::sink()), Err(SealError::Truncated { segment: 3 })));
        let mut longer = sealed.clone();
        longer.push(0);
        assert!(matches!(open(&key(1), &longer[..], io::sink()), Err(SealError::TrailingBytes)));
        // Swapping two full segments.
        let mut swapped = sealed.clone();
        let (a, b) = (HEADER_LEN, HEADER_LEN + seg);
        let first: Vec<u8> = swapped[a..a + seg].to_vec();
        swapped.copy_within(b..b + seg, a);
        swapped[b..b + seg].copy_from_slice(&first);
        assert!(matches!(open(&key(1), &swapped[..], io::sink()), Err(SealError::Authentication { segment: 0 })));
        assert!(matches!(open(&key(1), &b"not sealed"[..], io::sink()), Err(SealError::NotSealed)));
    }

    #[test]
    fn a_range_past_the_end_is_an_error_not_a_panic() {
        let sealed = seal_to_vec(&key(1), [7; NONCE_PREFIX_LEN], &plain(10));
        let err = open_range(&key(1), Cursor::new(&sealed), 5, 6).expect_err("past the end");
        assert!(matches!(err, SealError::Range { plain_len: 10, .. }));
        assert!(open_range(&key(1), Cursor::new(&sealed), u64::MAX, 2).is_err());
        assert_eq!(open_range(&key(1), Cursor::new(&sealed), 10, 0).expect("empty"), Vec::<u8>::new());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// Any range decrypts to the same bytes as the plaintext, reading only its segments.
        #[test]
        fn any_range_decrypts(len in 0usize..(3 * SEGMENT_LEN + 7), a in any::<u64>(), b in any::<u64>(), k in any::<u8>()) {
            let p = plain(len);
            let sealed = seal_to_vec(&key(k), [k; NONCE_PREFIX_LEN], &p);
            let (x, y) = if len == 0 { (0, 0) } else { ((a % len as u64) as usize, (b % len as u64) as usize) };
            let (start, end) = (x.min(y), x.max(y) + usize::from(len > 0));
            let got = open_range(&key(k), Cursor::new(&sealed), start as u64, (end - start) as u64).expect("range opens");
            prop_assert_eq!(&got[..], &p[start..end]);
        }

        /// Any flipped bit is detected: the whole stream refuses to open, and so does every
        /// range that reads the altered segment (or any range at all if the header changed).
        #[test]
        fn any_flipped_bit_is_detected(len in 1usize..(2 * SEGMENT_LEN + 9), at in any::<u64>(), bit in 0u8..8) {
            let p = plain(len);
            let mut sealed = seal_to_vec(&key(3), [9; NONCE_PREFIX_LEN], &p);
            let at = (at % sealed.len() as u64) as usize;
            sealed[at] ^= 1 << bit;
            prop_assert!(open(&key(3), &sealed[..], io::sink()).is_err());
            let segment = if at < HEADER_LEN { 0 } else { (at - HEADER_LEN) / (SEGMENT_LEN + TAG_LEN) };
            let start = (segment * SEGMENT_LEN).min(len - 1);
            prop_assert!(open_range(&key(3), Cursor::new(&sealed), start as u64, 1).is_err());
        }
    }
}
