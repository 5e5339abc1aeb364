//! One item being fetched: its verified metadata window, which pieces are in flight to whom,
//! which are being stored, and each source peer's availability.
//!
//! Memory per transfer is bounded whatever the file size: the head (32 bytes per page, or per
//! piece for files of one page), at most [`PAGES_LOADED_MAX`] pages of piece chaining values
//! (32 KiB each), the in-flight table (at most `IN_FLIGHT_MAX` per source), the pieces being
//! stored, and one page's bitfield per partial source. The held bits live with the item.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::content::bits::byte_bit;
use crate::content::verify::{ContentId, Layout, PIECES_PER_PAGE};
use crate::id::ConnId;
use crate::request::RequestId;
use crate::time::Mono;

/// Pieces ahead of the lowest missing one that may be requested (two pages).
pub const WINDOW_PIECES: u64 = 2 * PIECES_PER_PAGE;
/// Pages of piece chaining values kept at once.
pub const PAGES_LOADED_MAX: usize = 3;
/// Requests for one piece at once: the first, plus one endgame duplicate.
pub const COPIES_MAX: usize = 2;
/// A piece is late (and may get its one endgame duplicate) after twice the time its source's
/// measured rate predicts, and never before this.
pub const LATE_MIN_MS: u64 = 500;

/// What a source has of the item.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Avail {
    /// All of it (it listed or announced the item complete).
    All,
    /// Not known yet (a partial holder): ask for a page's bitfield.
    Unknown,
    /// Being asked.
    Asking,
    /// One page's pieces, as of `at`.
    Page { page: u64, bits: Vec<u8>, at: Mono },
}

/// A peer we fetch the item from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Source {
    pub avail: Avail,
    /// Pieces requested from it and not settled.
    pub pieces: u32,
    /// Its piece requests for this item that timed out.
    pub timeouts: u32,
}

impl Source {
    pub fn new(avail: Avail) -> Source {
        Source { avail, pieces: 0, timeouts: 0 }
    }
}

/// Piece timeouts after which a source no longer keeps its transfer alive (a stalled source
/// is given its first deadline and one doubled one).
pub const SOURCE_TIMEOUTS_TRUSTED: u32 = 2;

/// The item being fetched.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Transfer {
    pub id: ContentId,
    pub layout: Option<Layout>,
    /// Verified: the piece chaining values (one page) or the page list (several pages).
    pub head: Option<Vec<[u8; 32]>>,
    /// Whom we asked for the head (at most once each).
    pub head_asked: BTreeSet<ConnId>,
    pub head_pending: Option<ConnId>,
    /// Verified pages of piece chaining values (multi-page items).
    pub pages: BTreeMap<u64, Vec<[u8; 32]>>,
    pub page_pending: BTreeMap<u64, ConnId>,
    /// The lowest piece not held.
    pub low: u64,
    /// Requests per piece (at most [`COPIES_MAX`]), with when each was sent.
    pub in_flight: BTreeMap<u64, Vec<(ConnId, RequestId, Mono)>>,
    /// Verified pieces being made durable.
    pub storing: BTreeSet<u64>,
    pub sources: BTreeMap<ConnId, Source>,
    pub started: Mono,
    /// Last time a piece or metadata arrived, or a source appeared.
    pub progress: Mono,
    /// Distinct peers that delivered pieces.
    pub served_by: BTreeSet<ConnId>,
    /// Whether the operator asked for it (`mynet get`).
    pub wanted: bool,
    /// Drawn from the node's generator: breaks ties among equally rare pieces differently on
    /// each node.
    pub salt: u64,
    /// Every connected peer was added as a source after a stall (once per attempt).
    pub widened: bool,
}

impl Transfer {
    pub fn new(id: ContentId, layout: Option<Layout>, now: Mono, wanted: bool, salt: u64) -> Transfer {
        Transfer {
            id,
            layout,
            head: None,
            head_asked: BTreeSet::new(),
            head_pending: None,
            pages: BTreeMap::new(),
            page_pending: BTreeMap::new(),
            low: 0,
            in_flight: BTreeMap::new(),
            storing: BTreeSet::new(),
            sources: BTreeMap::new(),
            started: now,
            progress: now,
            served_by: BTreeSet::new(),
            wanted,
            salt,
            widened: false,
        }
    }

    /// Bytes of the piece requests in flight (each copy counts: each comes over our link).
    pub fn bytes_in_flight(&self) -> u64 {
        let Some(layout) = self.layout else { return 0 };
        self.in_flight.iter().map(|(index, copies)| layout.piece_len(*index) * copies.len() as u64).sum()
    }

    /// Whether the item has more than one page (its head is a page list).
    pub fn paged(&self) -> bool {
        self.layout.is_some_and(|l| l.pages() > 1)
    }

    /// The expected hash of piece `index`, if its metadata is loaded.
    pub fn expected(&self, index: u64) -> Option<[u8; 32]> {
        let head = self.head.as_ref()?;
        if !self.paged() {
            return head.get(index as usize).copied();
        }
        let page = self.pages.get(&(index / PIECES_PER_PAGE))?;
        page.get((index % PIECES_PER_PAGE) as usize).copied()
    }

    /// The pages the window needs, lowest first.
    pub fn pages_needed(&self) -> Vec<u64> {
        let Some(layout) = self.layout.filter(|_| self.paged()) else { return Vec::new() };
        let first = self.low / PIECES_PER_PAGE;
        let last = (self.low + WINDOW_PIECES - 1).min(layout.pieces() - 1) / PIECES_PER_PAGE;
        (first..=last).collect()
    }

    /// Drops pages the window has passed.
    pub fn forget_pages_below(&mut self) {
        let first = self.low / PIECES_PER_PAGE;
        self.pages.retain(|page, _| *page >= first);
    }

    /// Whether `source` has piece `index`, as far as we know.
    pub fn has(source: &Source, index: u64) -> bool {
        match &source.avail {
            Avail::All => true,
            Avail::Page { page, bits, .. } => {
                index / PIECES_PER_PAGE == *page && byte_bit(bits, index % PIECES_PER_PAGE)
            }
            Avail::Unknown | Avail::Asking => false,
        }
    }

    /// Removes one request of piece `index`; true if it was there.
    pub fn settle(&mut self, index: u64, conn: ConnId, request: RequestId) -> bool {
        let Some(copies) = self.in_flight.get_mut(&index) else { return false };
        let before = copies.len();
        copies.retain(|c| (c.0, c.1) != (conn, request));
        let removed = copies.len() != before;
        if copies.is_empty() {
            self.in_flight.remove(&index);
        }
        if removed && let Some(source) = self.sources.get_mut(&conn) {
            source.pieces = source.pieces.saturating_sub(1);
        }
        removed
    }

    /// Forgets a source and every request to it; returns the pieces that lost a request.
    pub fn drop_source(&mut self, conn: ConnId) {
        self.sources.remove(&conn);
        self.in_flight.retain(|_, copies| {
            copies.retain(|(c, _, _)| *c != conn);
            !copies.is_empty()
        });
        self.page_pending.retain(|_, c| *c != conn);
        if self.head_pending == Some(conn) {
            self.head_pending = None;
        }
    }
}
