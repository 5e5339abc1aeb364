//! The content protocol's wire messages and their bounds.
//!
//! Metadata travels in frames: an announcement, an item's *head* (its piece chaining values
//! when it has one page, its page list otherwise), one page of piece chaining values, one
//! page's availability bitfield. Pieces travel out of band: the answer to [`Request::Piece`] is
//! a [`crate::wire::Message::Piece`] header frame followed by the piece's raw bytes, which the
//! driver reads, hashes and hands to the node as `Input::Piece` (so piece bytes never pass
//! through the node's frame buffer or its event log).

use serde::{Deserialize, Serialize};

use crate::content::verify::{ContentId, Layout, PAGES_MAX, PIECES_PER_PAGE};
use crate::wire::{Kind, RateLimit, WireError};

/// Items in one announcement.
pub const ANNOUNCE_MAX: usize = 64;
/// Content requests a peer may make of us per window: a fast downloader asks for about a
/// thousand pieces a second.
pub const RATE_LIMIT: RateLimit = RateLimit { max: 20_000, window_ms: 10_000 };
/// Content requests we keep in flight to one peer (pieces and metadata).
pub const IN_FLIGHT_MAX: usize = 12;
/// Bytes of one page's availability bitfield.
pub const BITFIELD_LEN_MAX: usize = (PIECES_PER_PAGE / 8) as usize;

/// An item as announced: its id, size, and whether the sender holds all of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listed {
    pub id: ContentId,
    pub size: u64,
    pub complete: bool,
}

/// What precedes a piece's raw bytes on the wire. The bytes that follow are
/// `Layout::new(size).piece_len(index)` long.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PieceHeader {
    pub id: ContentId,
    pub index: u64,
    /// The item's size (tells the receiver the piece's length and whether the piece is the
    /// whole file, whose hash is a root rather than a chaining value).
    pub size: u64,
}

impl PieceHeader {
    /// The length of the bytes that follow, if the header describes a real piece.
    pub fn piece_len(&self) -> Result<u64, WireError> {
        let layout = Layout::new(self.size).map_err(|e| WireError::OutOfBounds(e.to_string()))?;
        if self.index >= layout.pieces() {
            return Err(WireError::OutOfBounds(format!("piece {} of {} pieces", self.index, layout.pieces())));
        }
        Ok(layout.piece_len(self.index))
    }
}

/// The content protocol's requests.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Items the sender just added or completed.
    Announce { items: Vec<Listed> },
    /// The item's size and head (piece chaining values, or the page list).
    Head { id: ContentId },
    /// One page of piece chaining values of a multi-page item.
    Page { id: ContentId, page: u64 },
    /// Which pieces of one page the peer holds.
    Have { id: ContentId, page: u64 },
    /// One piece; answered by a `Message::Piece` header and the bytes, or `NotHeld`.
    Piece { id: ContentId, index: u64 },
}

/// The content protocol's answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// Answer to `Announce`.
    Ack,
    /// Answer to `Head`.
    Head { size: u64, cvs: Vec<[u8; 32]> },
    /// Answer to `Page`.
    Page { cvs: Vec<[u8; 32]> },
    /// Answer to `Have`: bit `i` (LSB first) of byte `i / 8` is the page's piece `i`.
    Have { bits: Vec<u8> },
    /// The peer does not hold what was asked (an answer to `Head`, `Page`, `Have`, `Piece`).
    NotHeld,
}

impl Request {
    pub fn kind(&self) -> Kind {
        match self {
            Request::Announce { .. } => Kind::Announce,
            Request::Head { .. } => Kind::GetHead,
            Request::Page { .. } => Kind::GetPage,
            Request::Have { .. } => Kind::GetHave,
            Request::Piece { .. } => Kind::GetPiece,
        }
    }

    pub fn expects(&self) -> Kind {
        match self {
            Request::Announce { .. } => Kind::Ack,
            Request::Head { .. } => Kind::Head,
            Request::Page { .. } => Kind::Page,
            Request::Have { .. } => Kind::Have,
            Request::Piece { .. } => Kind::Piece,
        }
    }

    pub fn check_bounds(&self) -> Result<(), WireError> {
        match self {
            Request::Announce { items } if items.len() > ANNOUNCE_MAX => {
                Err(WireError::OutOfBounds(format!("announcement of {} items; at most {ANNOUNCE_MAX}", items.len())))
            }
            Request::Page { page, .. } | Request::Have { page, .. } if *page >= PAGES_MAX => {
                Err(WireError::OutOfBounds(format!("page {page}; at most {PAGES_MAX} pages")))
            }
            _ => Ok(()),
        }
    }
}

impl Response {
    pub fn kind(&self) -> Kind {
        match self {
            Response::Ack => Kind::Ack,
            Response::Head { .. } => Kind::Head,
            Response::Page { .. } => Kind::Page,
            Response::Have { .. } => Kind::Have,
            Response::NotHeld => Kind::NotHeld,
        }
    }

    pub fn check_bounds(&self) -> Result<(), WireError> {
        let fail = |what: String| Err(WireError::OutOfBounds(what));
        match self {
            Response::Head { cvs, .. } if cvs.len() as u64 > PAGES_MAX.max(PIECES_PER_PAGE) => {
                fail(format!("head of {} entries", cvs.len()))
            }
            Response::Page { cvs } if cvs.len() as u64 > PIECES_PER_PAGE => {
                fail(format!("page of {} entries; at most {PIECES_PER_PAGE}", cvs.len()))
            }
            Response::Have { bits } if bits.len() > BITFIELD_LEN_MAX => {
                fail(format!("bitfield of {} bytes; at most {BITFIELD_LEN_MAX}", bits.len()))
            }
            _ => Ok(()),
        }
    }
}

/// Whether an answer of kind `got` settles a request expecting `expected`: its own kind, or
/// `NotHeld` for the requests that ask for something the peer may not hold.
pub fn answers(expected: Kind, got: Kind) -> bool {
    got == expected || (got == Kind::NotHeld && matches!(expected, Kind::Head | Kind::Page | Kind::Have | Kind::Piece))
}
