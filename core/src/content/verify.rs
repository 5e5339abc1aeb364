//! Content identity and verification against the plain BLAKE3 hash of the whole file.
//!
//! A content id is `blake3(bytes)`, what `b3sum` prints. The file is cut into pieces of
//! [`PIECE_LEN`] bytes (a power of two, so every full piece is a complete BLAKE3 subtree). The
//! metadata carries each piece's chaining value; merging them in BLAKE3's tree shape must give
//! the id, so metadata is checked before a single piece is requested, and each piece is then
//! checked against its chaining value on arrival (`blake3::hazmat`).
//!
//! Large files: the piece chaining values travel in pages of [`PIECES_PER_PAGE`] (32 KiB, one
//! frame). Each page is itself a complete subtree of the file (1 GiB), so the list of page
//! chaining values (32 bytes per GiB) verifies against the id first, and each page then
//! verifies against its entry before any of its pieces is used. A 1 TiB file has 1,024 pages.

use blake3::hazmat::{ChainingValue, HasherExt, Mode, merge_subtrees_non_root, merge_subtrees_root};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::hex;

/// Bytes per piece (the last piece of a file may be shorter).
pub const PIECE_LEN: u64 = 1 << 20;
/// Piece chaining values per metadata page (32 KiB of them: one frame).
pub const PIECES_PER_PAGE: u64 = 1024;
/// Bytes a page covers.
pub const PAGE_LEN: u64 = PIECE_LEN * PIECES_PER_PAGE;
/// Most pages a file may have: the page list must fit one frame (1,900 pages: about 1.9 TiB).
pub const PAGES_MAX: u64 = 1900;
/// Largest file the page scheme describes.
pub const SIZE_MAX: u64 = PAGE_LEN * PAGES_MAX;

/// A content id: the BLAKE3 hash of the content's bytes. Shown as 64 hex characters.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ContentId(pub [u8; 32]);

crate::hex_serde!(ContentId);

impl ContentId {
    /// The id of `bytes` (for whole files in tests and small inputs; stores hash streaming).
    pub fn of(bytes: &[u8]) -> ContentId {
        ContentId(*blake3::hash(bytes).as_bytes())
    }

    /// Parses 64 hex characters.
    pub fn from_hex(text: &str) -> Result<ContentId, hex::HexError> {
        hex::decode_array(text).map(ContentId)
    }
}

impl std::fmt::Display for ContentId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(&self.0))
    }
}

impl std::fmt::Debug for ContentId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ContentId({})", hex::encode(&self.0[..4]))
    }
}

/// Why metadata or a piece was refused.
#[derive(Clone, Debug, Error, PartialEq, Eq, Serialize, Deserialize)]
pub enum VerifyError {
    #[error("size {size} is larger than the largest supported file ({SIZE_MAX} bytes)")]
    TooLarge { size: u64 },
    #[error("{got} chaining values for a file of {expected} pieces")]
    WrongCount { expected: u64, got: u64 },
    #[error("the chaining values do not merge to the content id")]
    RootMismatch,
    #[error("piece {index} does not exist in a file of {pieces} pieces")]
    NoSuchPiece { index: u64, pieces: u64 },
    #[error("piece {index} is {got} bytes; it must be {expected}")]
    PieceLength { index: u64, expected: u64, got: u64 },
    #[error("piece {index} does not match its chaining value")]
    PieceMismatch { index: u64 },
    #[error("page {page} does not match its entry in the page list")]
    PageMismatch { page: u64 },
}

/// The shape of a file of `size` bytes: how many pieces and pages, and how long each is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layout {
    /// The file's size in bytes.
    pub size: u64,
}

impl Layout {
    /// The layout of a file of `size` bytes, if the page scheme can describe it.
    pub fn new(size: u64) -> Result<Layout, VerifyError> {
        if size > SIZE_MAX {
            return Err(VerifyError::TooLarge { size });
        }
        Ok(Layout { size })
    }

    /// Pieces in the file (an empty file has one empty piece).
    pub fn pieces(&self) -> u64 {
        self.size.div_ceil(PIECE_LEN).max(1)
    }

    /// Metadata pages.
    pub fn pages(&self) -> u64 {
        self.pieces().div_ceil(PIECES_PER_PAGE)
    }

    /// Bytes of piece `index`.
    pub fn piece_len(&self, index: u64) -> u64 {
        self.size.saturating_sub(index.saturating_mul(PIECE_LEN)).min(PIECE_LEN)
    }

    /// The pieces page `page` covers.
    pub fn page_pieces(&self, page: u64) -> std::ops::Range<u64> {
        let start = page.saturating_mul(PIECES_PER_PAGE).min(self.pieces());
        start..(start + PIECES_PER_PAGE).min(self.pieces())
    }
}

/// The chaining value of piece `index` of a file with more than one piece.
pub fn piece_cv(index: u64, bytes: &[u8]) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new();
    hasher.set_input_offset(index * PIECE_LEN);
    hasher.update(bytes);
    hasher.finalize_non_root()
}

/// Every piece's chaining value of `bytes` (a whole file in memory: tests and small files; the
/// store computes them piece by piece as it streams).
pub fn piece_cvs(bytes: &[u8]) -> Vec<[u8; 32]> {
    if bytes.len() as u64 <= PIECE_LEN {
        return vec![*blake3::hash(bytes).as_bytes()];
    }
    bytes.chunks(PIECE_LEN as usize).enumerate().map(|(i, piece)| piece_cv(i as u64, piece)).collect()
}

/// Merges the chaining values of consecutive complete subtrees, each `unit` bytes (a power of
/// two, at least one BLAKE3 chunk) except the last, covering `len` bytes, in BLAKE3's tree
/// shape: the left subtree takes the largest power of two of bytes less than the whole.
fn merge(cvs: &[ChainingValue], unit: u64, len: u64, root: bool) -> [u8; 32] {
    if cvs.len() == 1 {
        return cvs[0];
    }
    let left_len = (len.div_ceil(2)).next_power_of_two();
    let split = (left_len / unit) as usize;
    let left = merge(&cvs[..split], unit, left_len, false);
    let right = merge(&cvs[split..], unit, len - left_len, false);
    if root {
        *merge_subtrees_root(&left, &right, Mode::Hash).as_bytes()
    } else {
        merge_subtrees_non_root(&left, &right, Mode::Hash)
    }
}

/// Checks that the piece chaining values `cvs` of a file of `layout` merge to `id`.
pub fn verify_pieces(id: &ContentId, layout: Layout, cvs: &[[u8; 32]]) -> Result<(), VerifyError> {
    let expected = layout.pieces();
    if cvs.len() as u64 != expected {
        return Err(VerifyError::WrongCount { expected, got: cvs.len() as u64 });
    }
    // One piece: its "chaining value" is the file's hash itself (a root, not a chaining value).
    let root = if expected == 1 { cvs[0] } else { merge(cvs, PIECE_LEN, layout.size, true) };
    if root != id.0 {
        return Err(VerifyError::RootMismatch);
    }
    Ok(())
}

/// The chaining value of a page (the subtree of its pieces), from its pieces' chaining values.
/// Only meaningful for files of more than one page.
pub fn page_cv(layout: Layout, page: u64, cvs: &[[u8; 32]]) -> [u8; 32] {
    let pieces = layout.page_pieces(page);
    let len = layout.size.min((page + 1).saturating_mul(PAGE_LEN)) - page * PAGE_LEN;
    if pieces.end - pieces.start == 1 {
        return cvs.first().copied().unwrap_or_default();
    }
    merge(cvs, PIECE_LEN, len, false)
}

/// Checks the page list (one chaining value per page) of a file of more than one page against
/// `id`.
pub fn verify_page_list(id: &ContentId, layout: Layout, page_cvs: &[[u8; 32]]) -> Result<(), VerifyError> {
    let expected = layout.pages();
    if page_cvs.len() as u64 != expected {
        return Err(VerifyError::WrongCount { expected, got: page_cvs.len() as u64 });
    }
    if expected < 2 {
        // One page covers the whole file: its pieces verify against the id directly.
        return verify_pieces(id, layout, page_cvs).map_err(|_| VerifyError::RootMismatch);
    }
    if merge(page_cvs, PAGE_LEN, layout.size, true) != id.0 {
        return Err(VerifyError::RootMismatch);
    }
    Ok(())
}

/// Checks one page of piece chaining values against its (verified) entry in the page list.
pub fn verify_page(layout: Layout, page: u64, page_entry: &[u8; 32], cvs: &[[u8; 32]]) -> Result<(), VerifyError> {
    let range = layout.page_pieces(page);
    let expected = range.end - range.start;
    if cvs.len() as u64 != expected || expected == 0 {
        return Err(VerifyError::WrongCount { expected, got: cvs.len() as u64 });
    }
    if page_cv(layout, page, cvs) != *page_entry {
        return Err(VerifyError::PageMismatch { page });
    }
    Ok(())
}

/// Checks piece `index` of a file of `layout` against its chaining value from verified
/// metadata (for a one-piece file, the id itself).
pub fn verify_piece(layout: Layout, index: u64, cv: &[u8; 32], bytes: &[u8]) -> Result<(), VerifyError> {
    let pieces = layout.pieces();
    if index >= pieces {
        return Err(VerifyError::NoSuchPiece { index, pieces });
    }
    let expected = layout.piece_len(index);
    if bytes.len() as u64 != expected {
        return Err(VerifyError::PieceLength { index, expected, got: bytes.len() as u64 });
    }
    let actual = if pieces == 1 { *blake3::hash(bytes).as_bytes() } else { piece_cv(index, bytes) };
    if actual != *cv {
        return Err(VerifyError::PieceMismatch { index });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Non-repeating test bytes (BLAKE3 in XOF mode).
    fn bytes(len: usize, seed: u8) -> Vec<u8> {
        let mut out = vec![0u8; len];
        blake3::Hasher::new().update(&[seed]).finalize_xof().fill(&mut out);
        out
    }

    #[test]
    fn piece_cvs_merge_to_the_plain_blake3_hash_at_every_boundary() {
        let p = PIECE_LEN as usize;
        for len in [0, 1, 1024, p - 1, p, p + 1, 2 * p, 2 * p + 7, 3 * p, 5 * p - 3] {
            let data = bytes(len, len as u8);
            let id = ContentId::of(&data);
            let layout = Layout::new(len as u64).expect("small");
            let cvs = piece_cvs(&data);
            assert_eq!(cvs.len() as u64, layout.pieces(), "len {len}");
            verify_pieces(&id, layout, &cvs).unwrap_or_else(|e| panic!("len {len}: {e}"));
            for (i, piece) in data.chunks(p).enumerate() {
                verify_piece(layout, i as u64, &cvs[i], piece).expect("piece verifies");
            }
        }
    }

    #[test]
    fn a_changed_byte_or_a_wrong_length_is_refused() {
        let p = PIECE_LEN as usize;
        let data = bytes(3 * p + 5, 3);
        let (id, layout, cvs) =
            (ContentId::of(&data), Layout::new(data.len() as u64).expect("small"), piece_cvs(&data));
        let mut bad = data[p..2 * p].to_vec();
        bad[77] ^= 1;
        assert_eq!(verify_piece(layout, 1, &cvs[1], &bad), Err(VerifyError::PieceMismatch { index: 1 }));
        // A right piece offered as another index does not verify (offsets are in the hash).
        assert!(verify_piece(layout, 2, &cvs[2], &data[p..2 * p]).is_err());
        assert!(matches!(verify_piece(layout, 3, &cvs[3], &data[3 * p..]), Ok(())));
        assert!(matches!(
            verify_piece(layout, 3, &cvs[3], &data[3 * p..3 * p + 4]),
            Err(VerifyError::PieceLength { .. })
        ));
        assert!(matches!(verify_piece(layout, 4, &cvs[3], &[]), Err(VerifyError::NoSuchPiece { .. })));
        let mut forged = cvs.clone();
        forged[2][0] ^= 1;
        assert_eq!(verify_pieces(&id, layout, &forged), Err(VerifyError::RootMismatch));
        assert!(matches!(verify_pieces(&id, layout, &cvs[..3]), Err(VerifyError::WrongCount { .. })));
        assert_eq!(verify_pieces(&ContentId([0; 32]), layout, &cvs), Err(VerifyError::RootMismatch));
    }

    /// Pages: built from synthetic piece chaining values (a real multi-GiB file would be slow to
    /// hash here); the page list must merge to the same root as all the pieces do.
    #[test]
    fn pages_verify_against_the_same_root_as_the_pieces() {
        let size = 2 * PAGE_LEN + 5 * PIECE_LEN + 123;
        let layout = Layout::new(size).expect("fits");
        assert_eq!((layout.pieces(), layout.pages()), (2 * PIECES_PER_PAGE + 6, 3));
        let cvs: Vec<[u8; 32]> = (0..layout.pieces()).map(|i| *blake3::hash(&i.to_le_bytes()).as_bytes()).collect();
        let root = merge(&cvs, PIECE_LEN, size, true);
        let id = ContentId(root);
        verify_pieces(&id, layout, &cvs).expect("pieces merge to the root");
        let page_cvs: Vec<[u8; 32]> = (0..layout.pages())
            .map(|page| {
                let r = layout.page_pieces(page);
                page_cv(layout, page, &cvs[r.start as usize..r.end as usize])
            })
            .collect();
        verify_page_list(&id, layout, &page_cvs).expect("page list merges to the same root");
        for page in 0..layout.pages() {
            let r = layout.page_pieces(page);
            verify_page(layout, page, &page_cvs[page as usize], &cvs[r.start as usize..r.end as usize]).expect("page");
        }
        let mut forged = cvs[..PIECES_PER_PAGE as usize].to_vec();
        forged[9][1] ^= 1;
        assert_eq!(verify_page(layout, 0, &page_cvs[0], &forged), Err(VerifyError::PageMismatch { page: 0 }));
        assert!(Layout::new(SIZE_MAX + 1).is_err());
        assert_eq!(Layout::new(1 << 40).expect("1 TiB").pages(), 1024);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn any_size_verifies(len in 0usize..(4 * PIECE_LEN as usize + 9), seed in any::<u8>()) {
            let data = bytes(len, seed);
            let layout = Layout::new(len as u64).expect("small");
            prop_assert_eq!(verify_pieces(&ContentId::of(&data), layout, &piece_cvs(&data)), Ok(()));
        }
    }
}
