//! The reconciliation protocol's wire messages and their bounds.
//!
//! Every answer fits a frame: cells travel at most [`CELLS_PER_MESSAGE`] at a time (50 bytes
//! each), keys [`KEYS_PER_PAGE`] at a time, metadata by a byte budget. A request past what the
//! responder keeps (cells beyond its prefix) is answered [`Response::Refused`] with the reason,
//! and the asker changes path (the bulk listing) rather than asking again.

use serde::{Deserialize, Serialize};

use crate::content::verify::ContentId;
use crate::reconcile::meta::{Invalid, Signed};
use crate::reconcile::sketch::{Cell, Key, LEN_MAX};
use crate::wire::{Kind, RateLimit, WireError};

/// Cells in one answer (60,000 bytes).
pub const CELLS_PER_MESSAGE: usize = 1_200;
/// Cell counts in a `Differs` answer (the difference estimate): 2 bytes each.
pub const ESTIMATE_CELLS: usize = 256;
/// The most items a peer may say its catalogue holds (2^40: far past any real network, and
/// small enough that no arithmetic on it overflows).
pub const SET_COUNT_MAX: u64 = 1 << 40;
/// Keys in one bulk page (40 bytes each: 56,000 bytes).
pub const KEYS_PER_PAGE: usize = 1_400;
/// Items named in one `Get` or carried by one `Offer`.
pub const METAS_PER_MESSAGE: usize = 64;
/// Encoded metadata bytes one `Metas` answer or `Offer` carries at most (the rest is asked or
/// offered again).
pub const METAS_BYTES_MAX: usize = 56 * 1024;
/// Reconciliation requests a peer may make of us per window.
pub const RATE_LIMIT: RateLimit = RateLimit { max: 2_000, window_ms: 10_000 };
/// Reconciliation requests we keep in flight to one peer.
pub const IN_FLIGHT_MAX: usize = 4;

/// A cell as it travels: its count modulo 2^16 (the receiver subtracts its own count, and a
/// difference within a cell is far below 2^15), its checksum as 8 fixed bytes: 50 bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireCell {
    pub key: Key,
    pub checksum: [u8; 8],
    pub count: [u8; 2],
}

impl WireCell {
    pub fn from_cell(cell: &Cell) -> WireCell {
        WireCell { key: cell.key, checksum: cell.checksum.to_le_bytes(), count: (cell.count as u16).to_le_bytes() }
    }

    /// `self - ours`, as a cell of the difference.
    pub fn minus(&self, ours: &Cell) -> Cell {
        let theirs = Cell { key: self.key, checksum: u64::from_le_bytes(self.checksum), count: 0 };
        let mut diff = theirs.minus(ours);
        diff.count = count_minus(self.count, ours);
        diff
    }
}

/// Count difference of one cell from its wire count.
pub fn count_minus(theirs: [u8; 2], ours: &Cell) -> i64 {
    i64::from(u16::from_le_bytes(theirs).wrapping_sub(ours.count as u16) as i16)
}

/// Why a request was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Refusal {
    /// Cells past the responder's prefix (`len` cells); settle by the bulk listing instead.
    BeyondIndex { len: u32 },
}

/// The reconciliation protocol's requests.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// A round starts: the asker's set size and cell 0.
    Start { count: u64, cell: WireCell },
    /// The responder's cells `from..to`.
    Cells { from: u32, to: u32 },
    /// The bulk path: a page of the responder's keys, in id order, after `after`.
    Keys { after: Option<ContentId> },
    /// Signed metadata of these items.
    Get { ids: Vec<ContentId> },
    /// Metadata the asker found the responder lacks (or holds an older version of).
    Offer { metas: Vec<Signed> },
}

/// The reconciliation protocol's answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// Answer to `Start`: the sets are equal.
    Equal,
    /// Answer to `Start`: they differ. The responder's size, prefix length and cell 0, and the
    /// counts of its cells `1..=counts.len()` (empty when cell 0 alone settles the difference).
    Differs { count: u64, len: u32, cell: WireCell, counts: Vec<[u8; 2]> },
    /// Answer to `Cells`.
    Cells { cells: Vec<WireCell> },
    /// Answer to `Keys`.
    Keys { keys: Vec<Key>, more: bool },
    /// Answer to `Get`: what the responder has of the first `answered` ids asked (the rest did
    /// not fit; ask again).
    Metas { metas: Vec<Signed>, answered: u16 },
    /// Answer to `Offer`: how many were refused, and the first reason.
    Taken { refused: u16, reason: Option<Invalid> },
    /// The request is past a bound of the responder's.
    Refused { reason: Refusal },
}

impl Request {
    pub fn kind(&self) -> Kind {
        match self {
            Request::Start { .. } => Kind::Reconcile,
            Request::Cells { .. } => Kind::GetCells,
            Request::Keys { .. } => Kind::GetKeys,
            Request::Get { .. } => Kind::GetMeta,
            Request::Offer { .. } => Kind::Offer,
        }
    }

    pub fn expects(&self) -> Kind {
        match self {
            Request::Start { .. } => Kind::Differs,
            Request::Cells { .. } => Kind::Cells,
            Request::Keys { .. } => Kind::Keys,
            Request::Get { .. } => Kind::Metas,
            Request::Offer { .. } => Kind::Taken,
        }
    }

    pub fn check_bounds(&self) -> Result<(), WireError> {
        let fail = |what: String| Err(WireError::OutOfBounds(what));
        match self {
            Request::Cells { from, to } if to <= from || (to - from) as usize > CELLS_PER_MESSAGE => {
                fail(format!("cells {from}..{to}; at most {CELLS_PER_MESSAGE} at a time"))
            }
            Request::Cells { to, .. } if *to as usize > LEN_MAX => fail(format!("cell {to}; at most {LEN_MAX}")),
            Request::Get { ids } if ids.len() > METAS_PER_MESSAGE => {
                fail(format!("{} ids; at most {METAS_PER_MESSAGE}", ids.len()))
            }
            Request::Offer { metas } => check_metas(metas),
            _ => Ok(()),
        }
    }
}

fn check_metas(metas: &[Signed]) -> Result<(), WireError> {
    if metas.len() > METAS_PER_MESSAGE {
        return Err(WireError::OutOfBounds(format!("{} items; at most {METAS_PER_MESSAGE}", metas.len())));
    }
    Ok(())
}

impl Response {
    pub fn kind(&self) -> Kind {
        match self {
            Response::Equal => Kind::Equal,
            Response::Differs { .. } => Kind::Differs,
            Response::Cells { .. } => Kind::Cells,
            Response::Keys { .. } => Kind::Keys,
            Response::Metas { .. } => Kind::Metas,
            Response::Taken { .. } => Kind::Taken,
            Response::Refused { .. } => Kind::Refused,
        }
    }

    pub fn check_bounds(&self) -> Result<(), WireError> {
        let fail = |what: String| Err(WireError::OutOfBounds(what));
        match self {
            Response::Differs { counts, .. } if counts.len() > ESTIMATE_CELLS => {
                fail(format!("{} counts; at most {ESTIMATE_CELLS}", counts.len()))
            }
            Response::Differs { count, .. } if *count > SET_COUNT_MAX => {
                fail(format!("a set of {count} items; at most {SET_COUNT_MAX}"))
            }
            Response::Cells { cells } if cells.len() > CELLS_PER_MESSAGE => {
                fail(format!("{} cells; at most {CELLS_PER_MESSAGE}", cells.len()))
            }
            Response::Keys { keys, .. } if keys.len() > KEYS_PER_PAGE => {
                fail(format!("{} keys; at most {KEYS_PER_PAGE}", keys.len()))
            }
            Response::Metas { metas, .. } => check_metas(metas),
            _ => Ok(()),
        }
    }
}

/// Whether an answer of kind `got` settles a reconciliation request expecting `expected`.
pub fn answers(expected: Kind, got: Kind) -> bool {
    let ours = matches!(expected, Kind::Differs | Kind::Cells | Kind::Keys | Kind::Metas | Kind::Taken);
    ours && (got == Kind::Refused || (expected == Kind::Differs && got == Kind::Equal))
}
