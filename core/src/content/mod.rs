//! Content (SPEC R7, R4.3, R6.3, start-up phase 7): the catalogue of items this node holds,
//! what peers hold, the sync queue and its workers, multi-peer verified transfers, and serving.
//!
//! - `verify`: content identity and verification (`blake3::hazmat`).
//! - `proto`: the wire messages and their bounds.
//! - `stream`: how drivers split pieces out of a connection's byte stream.
//! - `transfer`: one item being fetched.
//!
//! The node never touches piece bytes beyond passing them on: a piece arrives as
//! `Input::Piece` with the hash the driver computed over its bytes; the module compares it with
//! the verified chaining value, and only then hands the bytes to the driver to store
//! (`Output::StorePiece`). A piece is held once the driver reports it durable (`Input::Stored`).
//! Serving reads the store: the module checks what it holds and asks the driver to answer
//! (`Output::Serve`); the driver re-verifies what it reads before sending it.

pub mod bits;
pub mod proto;
pub mod stream;
pub mod transfer;
pub mod verify;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;

use serde::{Deserialize, Serialize};

pub use verify::{ContentId, Layout, PIECE_LEN, PIECES_PER_PAGE, VerifyError};

use crate::config::Replicate;
use crate::context::{Cx, Output, Startup};
use crate::event::{CloseReason, Event, Violation};
use crate::handshake::Link;
use crate::id::{ConnId, NodeId};
use crate::node::Closed;
use crate::penalties::Offender;
use crate::request::{Origin, Pending, RequestId};
use crate::time::Mono;
use crate::wire;
use bits::Bits;
use proto::{ANNOUNCE_MAX, LISTING_MAX, Listed, Request, Response};
use transfer::{Avail, COPIES_MAX, LATE_MIN_MS, Source, Transfer, WINDOW_PIECES};

/// Items remembered from peers' listings and announcements (ids, sizes, holders).
pub const REMOTE_MAX: usize = 200_000;
/// Items waiting in the sync queue.
pub const QUEUE_MAX: usize = REMOTE_MAX;
/// Announcements waiting for one peer; past it the oldest are dropped (the peer's next
/// listing of us carries them).
pub const ANNOUNCE_QUEUE_MAX: usize = 1024;
/// Items removed by the operator that replication will not fetch back (newest kept).
pub const REMOVED_MAX: usize = 10_000;
/// Misbehaviour points for a bad piece or bad metadata: enough to ban at once (honest peers
/// only serve what they verified).
pub const POINTS_BAD_DATA: u32 = 100;
/// A transfer with no source and no progress for this long fails (it is queued again when a
/// holder appears).
pub const IDLE_MAX_MS: u64 = 30_000;
/// A transfer without progress for this long looks again for sources among the peers that
/// listed or announced the item.
pub const STALL_MS: u64 = 10_000;
/// A partial source's bitfield is asked again after this long.
pub const HAVE_REFRESH_MS: u64 = 5_000;
/// The module's housekeeping period while it has work.
pub const TICK_MS: u64 = 1_000;
/// Slowest rate assumed when sizing a piece request's deadline (bytes per second).
const RATE_FLOOR: u64 = 256 * 1024;
/// Rate assumed for a source not measured yet.
const RATE_UNKNOWN: u64 = 4 * 1024 * 1024;
/// Items in the popular-content list (SPEC R4.3).
pub const POPULAR_MAX: usize = crate::discovery::POPULAR_CONTENT_MAX;

/// Piece bytes on their way from the transport to the store. Never serialized: the event log
/// and snapshots carry the piece's id, index and hash, not its bytes.
#[derive(Clone, Default)]
pub struct PieceData(pub Vec<u8>);

impl fmt::Debug for PieceData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PieceData({} bytes)", self.0.len())
    }
}

impl PartialEq for PieceData {
    /// Bytes are not part of an input's identity (replay has none); the hash beside them is.
    fn eq(&self, _: &PieceData) -> bool {
        true
    }
}

impl Eq for PieceData {}

impl Serialize for PieceData {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_unit()
    }
}

impl<'de> Deserialize<'de> for PieceData {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<PieceData, D::Error> {
        <()>::deserialize(d).map(|()| PieceData::default())
    }
}

/// A piece, named.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PieceRef {
    pub id: ContentId,
    pub index: u64,
}

/// What the driver serves from its store on the node's behalf.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Serve {
    /// `proto::Response::Head` from the stored metadata.
    Head { id: ContentId },
    /// `proto::Response::Page`.
    Page { id: ContentId, page: u64 },
    /// The piece, re-verified as it is read (`Message::Piece` and the bytes).
    Piece { id: ContentId, index: u64, size: u64 },
}

/// Why a transfer ended without the item.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TransferFailure {
    /// No connected peer holds it (or every one failed).
    NoSource,
    /// Storing a piece failed (a full disk, an I/O error).
    Store,
    /// The item does not fit `storage_max_bytes`.
    NoRoom,
}

impl fmt::Display for TransferFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TransferFailure::NoSource => "no connected peer holds it",
            TransferFailure::Store => "storing a piece failed",
            TransferFailure::NoRoom => "it does not fit storage_max_bytes",
        })
    }
}

/// An item in the local catalogue (held wholly or partly, or being fetched).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Item {
    pub size: u64,
    pub held: Bits,
    /// Added on this node (`mynet add`), rather than replicated.
    pub here: bool,
    /// Its metadata is in the store (so the node can serve its head and pages).
    pub head_stored: bool,
    /// Times peers asked us for its pieces (popular content).
    pub served: u64,
}

impl Item {
    pub fn layout(&self) -> Layout {
        Layout { size: self.size }
    }

    pub fn complete(&self) -> bool {
        self.held.all()
    }

    fn listed(&self, id: ContentId) -> Listed {
        Listed { id, size: self.size, complete: self.complete() }
    }
}

/// An item a peer told us about.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Remote {
    size: u64,
    /// Holders on open connections, and whether they hold all of it.
    holders: BTreeMap<ConnId, bool>,
}

/// What the module knows of a connected peer.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Peer {
    node: NodeId,
    /// Items it told us it holds (bounded by `REMOTE_MAX` overall).
    holds: BTreeSet<ContentId>,
    /// Its listing: still paging (`Some(after)`), or done.
    listing: Option<Option<ContentId>>,
    listing_pending: bool,
    announce: VecDeque<Listed>,
    announce_pending: bool,
    /// Measured delivery rate, bytes per second (0: not measured).
    rate: u64,
    /// When its last piece arrived.
    last_piece: Option<Mono>,
    failures: u32,
}

/// Content and sync counters for status (SPEC R10.1).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncStats {
    pub synced_content: u64,
    pub failed_syncs: u64,
    pub bytes_synced: u64,
    pub wasted_bytes: u64,
    pub bad_pieces: u64,
    pub pieces_served: u64,
    pub damaged_pieces: u64,
}

/// `content` in status.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContentStatus {
    pub items: u64,
    pub bytes_stored: u64,
    pub complete: u64,
    pub partial: u64,
}

/// `sync` in status.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncStatus {
    #[serde(flatten)]
    pub stats: SyncStats,
    pub queue: u64,
    pub active_transfers: u64,
}

/// An item as `mynet ls` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItemStatus {
    pub id: ContentId,
    pub size: u64,
    pub pieces: u64,
    pub pieces_held: u64,
    /// `complete`, `partial` (fetching or interrupted), `queued`, `fetching` (metadata not
    /// found yet).
    pub state: &'static str,
}

/// The start-up initial sync (phase 7): the items it waits for, until when.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Initial {
    deadline: Mono,
}

/// A request of ours, so its answer finds its transfer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
enum Asked {
    Head(ContentId),
    Page(ContentId, u64),
    Have(ContentId, u64),
    Piece(ContentId, u64),
}

impl Asked {
    fn item(self) -> ContentId {
        match self {
            Asked::Head(id) | Asked::Page(id, _) | Asked::Have(id, _) | Asked::Piece(id, _) => id,
        }
    }
}

/// Our requests by connection and id (nested, so the state stays representable as JSON).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct AskedTable(BTreeMap<ConnId, BTreeMap<RequestId, Asked>>);

impl AskedTable {
    fn insert(&mut self, conn: ConnId, request: RequestId, asked: Asked) {
        self.0.entry(conn).or_default().insert(request, asked);
    }

    fn remove(&mut self, conn: ConnId, request: RequestId) -> Option<Asked> {
        let on_conn = self.0.get_mut(&conn)?;
        let asked = on_conn.remove(&request);
        if on_conn.is_empty() {
            self.0.remove(&conn);
        }
        asked
    }

    fn forget(&mut self, conn: ConnId) {
        self.0.remove(&conn);
    }

    fn clear(&mut self) {
        self.0.clear();
    }

    fn iter(&self) -> impl Iterator<Item = (ConnId, RequestId, Asked)> + '_ {
        self.0.iter().flat_map(|(c, m)| m.iter().map(move |(r, a)| (*c, *r, *a)))
    }
}

/// The content module's state.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Content {
    items: BTreeMap<ContentId, Item>,
    remote: BTreeMap<ContentId, Remote>,
    queue: VecDeque<ContentId>,
    queued: BTreeSet<ContentId>,
    active: BTreeMap<ContentId, Transfer>,
    peers: BTreeMap<ConnId, Peer>,
    asked: AskedTable,
    removed: VecDeque<ContentId>,
    stats: SyncStats,
    bytes_stored: u64,
    initial: Option<Initial>,
    next_tick: Option<Mono>,
    /// Items whose transfer found no source, asked again every [`RETRY_MS`].
    retry: BTreeSet<ContentId>,
    retry_at: Option<Mono>,
}

/// How often items whose transfer found no source are tried again.
pub const RETRY_MS: u64 = 30_000;

fn wrap(request: Request) -> wire::Request {
    wire::Request::Content(request)
}

impl Content {
    // ---- reading ----

    /// The local catalogue.
    pub fn items(&self) -> &BTreeMap<ContentId, Item> {
        &self.items
    }

    /// Whether the item is held completely.
    pub fn holds(&self, id: &ContentId) -> bool {
        self.items.get(id).is_some_and(Item::complete)
    }

    pub fn status(&self) -> (ContentStatus, SyncStatus) {
        let complete = self.items.values().filter(|i| i.complete()).count() as u64;
        let content = ContentStatus {
            items: self.items.len() as u64,
            bytes_stored: self.bytes_stored,
            complete,
            partial: self.items.len() as u64 - complete,
        };
        let sync = SyncStatus {
            stats: self.stats.clone(),
            queue: self.queue.len() as u64,
            active_transfers: self.active.len() as u64,
        };
        (content, sync)
    }

    /// Every item for `mynet ls`, in id order.
    pub fn list(&self) -> Vec<ItemStatus> {
        let mut out: Vec<ItemStatus> = self
            .items
            .iter()
            .map(|(id, item)| ItemStatus {
                id: *id,
                size: item.size,
                pieces: item.layout().pieces(),
                pieces_held: item.held.ones(),
                state: if item.complete() {
                    "complete"
                } else if self.queued.contains(id) {
                    "queued"
                } else {
                    "partial"
                },
            })
            .collect();
        for id in self.queue.iter().filter(|id| !self.items.contains_key(id)) {
            let size = self.remote.get(id).map_or(0, |r| r.size);
            let pieces = Layout { size }.pieces();
            out.push(ItemStatus { id: *id, size, pieces, pieces_held: 0, state: "queued" });
        }
        // Transfers still looking for the item's metadata.
        for (id, t) in self.active.iter().filter(|(id, _)| !self.items.contains_key(id)) {
            let size = t.layout.map_or(0, |l| l.size);
            let pieces = Layout { size }.pieces();
            out.push(ItemStatus { id: *id, size, pieces, pieces_held: 0, state: "fetching" });
        }
        out.sort_by_key(|i| i.id);
        out
    }

    /// The most requested items we hold (SPEC R4.3 popular content).
    pub fn popular(&self) -> Vec<[u8; 32]> {
        let mut served: Vec<(u64, ContentId)> =
            self.items.iter().filter(|(_, i)| i.complete() && i.served > 0).map(|(id, i)| (i.served, *id)).collect();
        served.sort_by(|a, b| b.cmp(a));
        served.into_iter().take(POPULAR_MAX).map(|(_, id)| id.0).collect()
    }

    /// Held pieces that are not durable yet cannot exist: checks the catalogue's sums.
    pub fn check(&self) -> Result<(), String> {
        let mut bytes = 0;
        for (id, item) in &self.items {
            let layout = item.layout();
            if item.held.len() != layout.pieces() {
                return Err(format!("item {id}: {} bits for {} pieces", item.held.len(), layout.pieces()));
            }
            bytes += held_bytes(item);
        }
        if bytes != self.bytes_stored {
            return Err(format!("bytes_stored {} but held pieces sum to {bytes}", self.bytes_stored));
        }
        if self.queue.len() != self.queued.len() {
            return Err("sync queue and its index disagree".into());
        }
        Ok(())
    }

    // ---- timers ----

    pub fn poll_timeout(&self) -> Option<Mono> {
        let initial = self.initial.as_ref().map(|i| i.deadline);
        [self.next_tick, initial, self.retry_at].into_iter().flatten().min()
    }

    pub fn handle_timeout(&mut self, cx: &mut Cx<'_>) {
        let now = cx.now.mono;
        if self.next_tick.is_some_and(|at| at <= now) {
            self.next_tick = None;
            let ids: Vec<ContentId> = self.active.keys().copied().collect();
            for id in ids {
                let Some(t) = self.active.get(&id) else { continue };
                let idle = now.ms_since(t.progress);
                if idle >= IDLE_MAX_MS {
                    // Nothing arrived for a long time: give up for now; the retry starts over
                    // with every peer known to hold the item.
                    self.fail(cx, id, TransferFailure::NoSource);
                    continue;
                }
                if idle >= STALL_MS {
                    self.refresh_sources(id);
                }
                self.pump(cx, id);
            }
            let conns: Vec<ConnId> = self.peers.keys().copied().collect();
            for conn in conns {
                self.flush_announcements(cx, conn);
            }
            self.start_transfers(cx);
        }
        if self.retry_at.is_some_and(|at| at <= now) {
            self.retry_at = None;
            for id in std::mem::take(&mut self.retry) {
                if !self.holds(&id) && !self.removed.contains(&id) {
                    self.push_queue(id, false, true);
                }
            }
            self.start_transfers(cx);
        }
        if self.initial.as_ref().is_some_and(|i| i.deadline <= now) {
            self.end_initial_sync(cx);
        }
        self.arm(cx);
    }

    /// Keeps the housekeeping tick running while there is work.
    fn arm(&mut self, cx: &Cx<'_>) {
        let busy = !self.active.is_empty() || self.peers.values().any(|p| !p.announce.is_empty());
        if busy && self.next_tick.is_none() {
            self.next_tick = Some(cx.now.mono.plus_ms(TICK_MS));
        }
    }

    // ---- start-up phase 7 ----

    /// Start-up reached the initial sync: it ends when what the first listings queued is
    /// fetched, or after `initial_sync_max_ms`.
    pub fn enter_initial_sync(&mut self, cx: &mut Cx<'_>) {
        self.initial = Some(Initial { deadline: cx.now.mono.plus_ms(cx.config.initial_sync_max_ms) });
        self.start_transfers(cx);
        self.check_initial(cx);
    }

    fn check_initial(&mut self, cx: &mut Cx<'_>) {
        if self.initial.is_none() {
            return;
        }
        let listing = self.peers.values().any(|p| p.listing_pending);
        if !listing && self.queue.is_empty() && self.active.is_empty() {
            self.end_initial_sync(cx);
        }
    }

    fn end_initial_sync(&mut self, cx: &mut Cx<'_>) {
        if self.initial.take().is_some() {
            let pending = (self.queue.len() + self.active.len()) as u64;
            cx.event(Event::InitialSyncDone { synced: self.stats.synced_content, pending });
            cx.startup(Startup::InitialSyncDone);
        }
    }

    // ---- connections ----

    pub fn on_established(&mut self, cx: &mut Cx<'_>, link: &Link) {
        let peer = Peer {
            node: link.node_id,
            holds: BTreeSet::new(),
            listing: Some(None),
            listing_pending: false,
            announce: VecDeque::new(),
            announce_pending: false,
            rate: 0,
            last_piece: None,
            failures: 0,
        };
        self.peers.insert(link.conn, peer);
        self.request_listing(cx, link.conn);
    }

    pub fn on_closed(&mut self, cx: &mut Cx<'_>, closed: &Closed) {
        let conn = closed.conn;
        let Some(peer) = self.peers.remove(&conn) else { return };
        for id in &peer.holds {
            if let Some(remote) = self.remote.get_mut(id) {
                remote.holders.remove(&conn);
                if remote.holders.is_empty() && !self.queued.contains(id) && !self.active.contains_key(id) {
                    self.remote.remove(id);
                }
            }
        }
        self.asked.forget(conn);
        let ids: Vec<ContentId> = self.active.keys().copied().collect();
        for id in ids {
            if let Some(t) = self.active.get_mut(&id) {
                t.drop_source(conn);
            }
            self.pump(cx, id);
        }
        self.check_initial(cx);
    }

    pub fn on_restart(&mut self) {
        // Every connection is gone; transfers resume from the held pieces when peers return.
        self.peers.clear();
        self.asked.clear();
        self.remote.clear();
        let ids: Vec<ContentId> = self.active.keys().copied().collect();
        for id in ids.into_iter().rev() {
            if let Some(t) = self.active.remove(&id) {
                self.push_queue(id, t.wanted, true);
            }
        }
        self.initial = None;
        self.next_tick = None;
        self.retry_at = None;
        for id in std::mem::take(&mut self.retry) {
            self.push_queue(id, false, true);
        }
    }

    pub fn on_shutdown(&mut self) {
        self.next_tick = None;
        self.retry_at = None;
        self.initial = None;
    }

    // ---- operator inputs ----

    /// An item was imported into the store (`mynet add`): every piece is durable.
    pub fn added(&mut self, cx: &mut Cx<'_>, id: ContentId, size: u64) {
        let Ok(layout) = Layout::new(size) else { return };
        let previous = self
            .items
            .insert(id, Item { size, held: Bits::full(layout.pieces()), here: true, head_stored: true, served: 0 });
        self.bytes_stored += size - previous.as_ref().map_or(0, held_bytes);
        self.removed.retain(|r| *r != id);
        self.unqueue(&id);
        if let Some(t) = self.active.remove(&id) {
            self.cancel_all(cx, &t);
        }
        cx.event(Event::ItemAdded { id, size });
        self.announce(cx, Listed { id, size, complete: true });
        self.start_transfers(cx);
    }

    /// The operator wants the item (`mynet get`): fetch it first, whatever the policy.
    pub fn want(&mut self, cx: &mut Cx<'_>, id: ContentId) {
        self.removed.retain(|r| *r != id);
        if self.holds(&id) {
            return;
        }
        if let Some(t) = self.active.get_mut(&id) {
            t.wanted = true;
            return;
        }
        self.push_queue(id, true, true);
        self.start_transfers(cx);
    }

    /// The operator dropped the local copy (`mynet rm`).
    pub fn remove(&mut self, cx: &mut Cx<'_>, id: ContentId) {
        if let Some(t) = self.active.remove(&id) {
            self.cancel_all(cx, &t);
        }
        self.unqueue(&id);
        if let Some(item) = self.items.remove(&id) {
            self.bytes_stored -= held_bytes(&item);
        }
        if self.removed.len() >= REMOVED_MAX {
            self.removed.pop_front();
        }
        self.removed.push_back(id);
        cx.output(Output::DeleteItem { id });
        cx.event(Event::ItemRemoved { id });
        self.start_transfers(cx);
    }

    /// The store found a held piece damaged (read back for serving, or `mynet verify`).
    pub fn damaged(&mut self, cx: &mut Cx<'_>, piece: PieceRef) {
        let Some(item) = self.items.get_mut(&piece.id) else { return };
        if !item.held.clear(piece.index) {
            return;
        }
        self.bytes_stored -= item.layout().piece_len(piece.index);
        self.stats.damaged_pieces += 1;
        cx.event(Event::PieceDamaged { id: piece.id, index: piece.index });
        if !self.active.contains_key(&piece.id) {
            self.push_queue(piece.id, true, true);
            self.start_transfers(cx);
        } else if let Some(t) = self.active.get_mut(&piece.id) {
            t.low = t.low.min(piece.index);
        }
    }

    /// Pieces the driver made durable.
    pub fn stored(&mut self, cx: &mut Cx<'_>, pieces: &[PieceRef]) {
        let mut touched = BTreeSet::new();
        for piece in pieces {
            let Some(t) = self.active.get_mut(&piece.id) else { continue };
            if !t.storing.remove(&piece.index) {
                continue;
            }
            let Some(item) = self.items.get_mut(&piece.id) else { continue };
            if item.held.set(piece.index) {
                let len = item.layout().piece_len(piece.index);
                self.bytes_stored += len;
                self.stats.bytes_synced += len;
            }
            touched.insert(piece.id);
        }
        for id in touched {
            self.advance(cx, id);
        }
    }

    /// Storing pieces failed (`error` from the driver: a full disk, an I/O error). Nothing is
    /// held; the transfer stops and the item stays partial.
    pub fn store_failed(&mut self, cx: &mut Cx<'_>, pieces: &[PieceRef], error: &str) {
        let ids: BTreeSet<ContentId> = pieces.iter().map(|p| p.id).collect();
        for id in ids {
            cx.event(Event::StoreFailed { id, error: error.to_string() });
            if self.active.contains_key(&id) {
                self.fail(cx, id, TransferFailure::Store);
            }
        }
    }

    // ---- serving ----

    pub fn handle_request(&mut self, cx: &mut Cx<'_>, conn: ConnId, id: RequestId, request: Request) {
        match request {
            Request::List { after } => {
                use core::ops::Bound;
                let start = after.map_or(Bound::Unbounded, Bound::Excluded);
                let mut items: Vec<Listed> = self
                    .items
                    .range((start, Bound::Unbounded))
                    .filter(|(_, i)| i.head_stored && i.held.ones() > 0)
                    .take(LISTING_MAX + 1)
                    .map(|(cid, i)| i.listed(*cid))
                    .collect();
                let more = items.len() > LISTING_MAX;
                items.truncate(LISTING_MAX);
                cx.respond(conn, id, wire::Response::Content(Response::Listing { items, more }));
            }
            Request::Announce { items } => {
                cx.respond(conn, id, wire::Response::Content(Response::Ack));
                for listed in items {
                    self.learn(cx, conn, listed);
                }
                self.start_transfers(cx);
            }
            Request::Head { id: cid } => match self.items.get(&cid) {
                Some(item) if item.head_stored => {
                    cx.output(Output::Serve { conn, request: id, what: Serve::Head { id: cid } })
                }
                _ => cx.respond(conn, id, wire::Response::Content(Response::NotHeld)),
            },
            Request::Page { id: cid, page } => match self.items.get(&cid) {
                Some(item) if item.head_stored && page < item.layout().pages() => {
                    cx.output(Output::Serve { conn, request: id, what: Serve::Page { id: cid, page } })
                }
                _ => cx.respond(conn, id, wire::Response::Content(Response::NotHeld)),
            },
            Request::Have { id: cid, page } => {
                let answer = match self.items.get(&cid) {
                    Some(item) if page < item.layout().pages() => {
                        let range = item.layout().page_pieces(page);
                        Response::Have { bits: item.held.to_bytes(range.start, range.end) }
                    }
                    _ => Response::NotHeld,
                };
                cx.respond(conn, id, wire::Response::Content(answer));
            }
            Request::Piece { id: cid, index } => match self.items.get_mut(&cid) {
                Some(item) if item.held.get(index) => {
                    item.served += 1;
                    self.stats.pieces_served += 1;
                    let size = item.size;
                    cx.output(Output::Serve { conn, request: id, what: Serve::Piece { id: cid, index, size } })
                }
                _ => cx.respond(conn, id, wire::Response::Content(Response::NotHeld)),
            },
        }
        self.arm(cx);
    }

    // ---- answers ----

    pub fn handle_response(&mut self, cx: &mut Cx<'_>, conn: ConnId, pending: &Pending, response: Response) {
        if pending.kind == wire::Kind::List {
            return self.on_listing(cx, conn, response);
        }
        if pending.kind == wire::Kind::Announce {
            if let Some(peer) = self.peers.get_mut(&conn) {
                peer.announce_pending = false;
            }
            return self.flush_announcements(cx, conn);
        }
        let Some(asked) = self.asked.remove(conn, pending.id) else { return };
        match (asked, response) {
            (Asked::Head(id), Response::Head { size, cvs }) => self.on_head(cx, conn, id, size, cvs),
            (Asked::Page(id, page), Response::Page { cvs }) => self.on_page(cx, conn, id, page, cvs),
            (Asked::Have(id, page), Response::Have { bits }) => {
                if let Some(source) = self.active.get_mut(&id).and_then(|t| t.sources.get_mut(&conn)) {
                    source.avail = Avail::Page { page, bits, at: cx.now.mono };
                }
                self.pump(cx, id);
            }
            (asked, _) => {
                // NotHeld: the peer does not (or no longer) hold it; stop asking it for this item.
                let id = asked.item();
                if let Asked::Piece(_, index) = asked
                    && let Some(t) = self.active.get_mut(&id)
                {
                    t.settle(index, conn, pending.id);
                }
                if let Some(t) = self.active.get_mut(&id) {
                    if let Asked::Head(_) = asked {
                        t.head_pending = None;
                    }
                    t.drop_source(conn);
                }
                if let Some(remote) = self.remote.get_mut(&id) {
                    remote.holders.remove(&conn);
                }
                self.pump(cx, id);
            }
        }
    }

    pub fn on_request_failed(&mut self, cx: &mut Cx<'_>, conn: ConnId, pending: &Pending) {
        if pending.kind == wire::Kind::List {
            if let Some(peer) = self.peers.get_mut(&conn) {
                peer.listing_pending = false;
                peer.listing = None;
            }
            return self.check_initial(cx);
        }
        if pending.kind == wire::Kind::Announce {
            if let Some(peer) = self.peers.get_mut(&conn) {
                peer.announce_pending = false;
            }
            return;
        }
        let Some(asked) = self.asked.remove(conn, pending.id) else { return };
        if let Some(peer) = self.peers.get_mut(&conn) {
            peer.failures += 1;
        }
        let id = asked.item();
        if let Some(t) = self.active.get_mut(&id) {
            match asked {
                Asked::Head(_) => t.head_pending = None,
                Asked::Page(_, page) => {
                    t.page_pending.remove(&page);
                }
                Asked::Have(..) => {
                    if let Some(s) = t.sources.get_mut(&conn) {
                        s.avail = Avail::Unknown;
                    }
                }
                Asked::Piece(_, index) => {
                    t.settle(index, conn, pending.id);
                }
            }
        }
        self.pump(cx, id);
    }

    /// A late answer to a piece request we gave up on or cancelled: its bytes were wasted.
    pub fn on_late_piece(&mut self, len: u64) {
        self.stats.wasted_bytes += len;
    }

    /// A piece arrived in answer to `pending` (its kind matched). `hash` is what the driver
    /// computed over the bytes (`stream::piece_hash`).
    #[allow(clippy::too_many_arguments)]
    pub fn on_piece(
        &mut self,
        cx: &mut Cx<'_>,
        conn: ConnId,
        peer: NodeId,
        pending: &Pending,
        header: proto::PieceHeader,
        hash: [u8; 32],
        data: PieceData,
    ) {
        let Some(Asked::Piece(id, index)) = self.asked.remove(conn, pending.id) else { return };
        let Some(t) = self.active.get_mut(&id) else {
            self.stats.wasted_bytes += header.piece_len().unwrap_or(0);
            return;
        };
        t.settle(index, conn, pending.id);
        let layout = t.layout.unwrap_or(Layout { size: header.size });
        let expected = t.expected(index);
        let honest = header.id == id
            && header.index == index
            && header.size == layout.size
            && data_len_ok(&data, layout.piece_len(index))
            && expected == Some(hash);
        if !honest {
            // Honest peers serve only what they verified: the sender is banned and the piece is
            // fetched elsewhere.
            self.stats.bad_pieces += 1;
            cx.event(Event::BadPiece { conn, peer, id, index });
            t.drop_source(conn);
            cx.misbehaved(conn, CloseReason::Protocol(Violation::BadPiece { index }));
            cx.penalise(Offender::Node(peer), POINTS_BAD_DATA);
            return self.pump(cx, id);
        }
        let now = cx.now.mono;
        t.progress = now;
        t.served_by.insert(conn);
        let len = layout.piece_len(index);
        if let Some(p) = self.peers.get_mut(&conn) {
            // Delivery rate: bytes over the time since the previous delivery (or the request).
            let since = p.last_piece.map_or(pending.sent, |last| last.max(pending.sent));
            let us = now.0.saturating_sub(since.0).max(1);
            let sample = len.saturating_mul(1_000_000) / us;
            p.rate = if p.rate == 0 { sample } else { (p.rate * 7 + sample) / 8 };
            p.last_piece = Some(now);
        }
        // The first verified copy wins; a duplicate still in flight is cancelled.
        if let Some(copies) = t.in_flight.remove(&index) {
            for (c, r, _) in copies {
                cx.requests.cancel(c, r);
                self.asked.remove(c, r);
                if let Some(source) = t.sources.get_mut(&c) {
                    source.pieces = source.pieces.saturating_sub(1);
                }
            }
        }
        let Some(item) = self.items.get(&id) else { return };
        if item.held.get(index) || !t.storing.insert(index) {
            self.stats.wasted_bytes += len;
        } else {
            cx.output(Output::StorePiece { piece: PieceRef { id, index }, data });
        }
        self.pump(cx, id);
    }

    // ---- listings and announcements ----

    fn request_listing(&mut self, cx: &mut Cx<'_>, conn: ConnId) {
        let Some(peer) = self.peers.get_mut(&conn) else { return };
        let Some(after) = peer.listing else { return };
        if peer.listing_pending {
            return;
        }
        if cx.request(conn, wrap(Request::List { after }), Origin::Content, 0).is_ok() {
            peer.listing_pending = true;
        }
    }

    fn on_listing(&mut self, cx: &mut Cx<'_>, conn: ConnId, response: Response) {
        let Response::Listing { items, more } = response else { return };
        let last = items.last().map(|l| l.id);
        for listed in items {
            self.learn(cx, conn, listed);
        }
        if let Some(peer) = self.peers.get_mut(&conn) {
            peer.listing_pending = false;
            peer.listing = if more && last.is_some() && self.remote.len() < REMOTE_MAX { Some(last) } else { None };
        }
        self.request_listing(cx, conn);
        self.start_transfers(cx);
        self.check_initial(cx);
    }

    /// A peer holds (part of) an item: remember it, add it as a source of a running
    /// transfer, and queue it if the policy wants it.
    fn learn(&mut self, cx: &mut Cx<'_>, conn: ConnId, listed: Listed) {
        if Layout::new(listed.size).is_err() {
            return;
        }
        let Some(peer) = self.peers.get_mut(&conn) else { return };
        if !self.remote.contains_key(&listed.id) && self.remote.len() >= REMOTE_MAX {
            return;
        }
        peer.holds.insert(listed.id);
        let remote =
            self.remote.entry(listed.id).or_insert_with(|| Remote { size: listed.size, holders: BTreeMap::new() });
        remote.holders.insert(conn, listed.complete);
        if let Some(t) = self.active.get_mut(&listed.id) {
            let avail = if listed.complete { Avail::All } else { Avail::Unknown };
            let source = t.sources.entry(conn).or_insert(Source { avail: Avail::Unknown, pieces: 0 });
            if listed.complete || source.avail == Avail::Unknown {
                source.avail = avail;
            }
            t.progress = cx.now.mono;
            return self.pump(cx, listed.id);
        }
        if self.holds(&listed.id) || self.queued.contains(&listed.id) || self.removed.contains(&listed.id) {
            return;
        }
        if cx.config.replicate == Replicate::All {
            self.push_queue(listed.id, false, false);
        }
    }

    /// Tells every peer about an item we added or completed.
    fn announce(&mut self, cx: &mut Cx<'_>, listed: Listed) {
        let conns: Vec<ConnId> = self.peers.keys().copied().collect();
        for conn in conns {
            if let Some(peer) = self.peers.get_mut(&conn) {
                if peer.announce.len() >= ANNOUNCE_QUEUE_MAX {
                    peer.announce.pop_front();
                }
                peer.announce.push_back(listed);
            }
            self.flush_announcements(cx, conn);
        }
        self.arm(cx);
    }

    fn flush_announcements(&mut self, cx: &mut Cx<'_>, conn: ConnId) {
        let Some(peer) = self.peers.get_mut(&conn) else { return };
        if peer.announce_pending || peer.announce.is_empty() {
            return;
        }
        let n = peer.announce.len().min(ANNOUNCE_MAX);
        let items: Vec<Listed> = peer.announce.iter().take(n).copied().collect();
        if cx.request(conn, wrap(Request::Announce { items }), Origin::Content, 0).is_ok() {
            peer.announce.drain(..n);
            peer.announce_pending = true;
        }
    }

    // ---- the queue and transfers ----

    fn push_queue(&mut self, id: ContentId, front: bool, force: bool) {
        if self.queued.contains(&id) || self.active.contains_key(&id) {
            return;
        }
        if self.queue.len() >= QUEUE_MAX && !force {
            return;
        }
        self.queued.insert(id);
        if front {
            self.queue.push_front(id);
        } else {
            self.queue.push_back(id);
        }
    }

    fn unqueue(&mut self, id: &ContentId) {
        if self.queued.remove(id) {
            self.queue.retain(|q| q != id);
        }
    }

    /// Starts transfers from the queue while workers are free.
    fn start_transfers(&mut self, cx: &mut Cx<'_>) {
        let workers = cx.config.sync_workers.max(1) as usize;
        while self.active.len() < workers {
            let Some(id) = self.queue.pop_front() else { break };
            self.queued.remove(&id);
            if self.holds(&id) {
                continue;
            }
            let wanted = self.items.get(&id).is_some_and(|i| i.here);
            let size = self.items.get(&id).map(|i| i.size).or_else(|| self.remote.get(&id).map(|r| r.size));
            if let Some(size) = size {
                let held = self.items.get(&id).map_or(0, held_bytes);
                if self.bytes_stored + self.reserved() + (size - held) > cx.config.storage_max_bytes {
                    cx.event(Event::TransferFailed { id, reason: TransferFailure::NoRoom });
                    self.stats.failed_syncs += 1;
                    continue;
                }
            }
            let layout = size.and_then(|s| Layout::new(s).ok());
            let mut t = Transfer::new(id, layout, cx.now.mono, wanted);
            if let Some(remote) = self.remote.get(&id) {
                for (conn, complete) in &remote.holders {
                    let avail = if *complete { Avail::All } else { Avail::Unknown };
                    t.sources.insert(*conn, Source { avail, pieces: 0 });
                }
            }

            if t.sources.is_empty() {
                // Nobody told us they hold it (an operator's `get`): ask every peer for its head.
                for conn in self.peers.keys() {
                    t.sources.insert(*conn, Source { avail: Avail::Unknown, pieces: 0 });
                }
            }
            if let Some(item) = self.items.get(&id) {
                t.low = item.held.next_clear(0).unwrap_or(item.layout().pieces());
            }
            self.active.insert(id, t);
            // Peers that listed it before (a retry): ask them again.
            self.refresh_sources(id);
            let sources = self.active.get(&id).map_or(0, |t| t.sources.len() as u32);
            cx.event(Event::TransferStarted { id, sources });
            self.pump(cx, id);
        }
        self.arm(cx);
    }

    /// Adds as sources every connected peer that listed or announced the item.
    fn refresh_sources(&mut self, id: ContentId) {
        let Some(t) = self.active.get_mut(&id) else { return };
        let holders = self.remote.get(&id).map(|r| &r.holders);
        for (conn, peer) in &self.peers {
            if !peer.holds.contains(&id) || t.sources.contains_key(conn) {
                continue;
            }
            let complete = holders.and_then(|h| h.get(conn)).copied().unwrap_or(false);
            let avail = if complete { Avail::All } else { Avail::Unknown };
            t.sources.insert(*conn, Source { avail, pieces: 0 });
        }
    }

    /// Bytes the running transfers will still add.
    fn reserved(&self) -> u64 {
        self.active
            .values()
            .map(|t| {
                let size = t.layout.map_or(0, |l| l.size);
                size - self.items.get(&t.id).map_or(0, held_bytes).min(size)
            })
            .sum()
    }

    fn fail(&mut self, cx: &mut Cx<'_>, id: ContentId, reason: TransferFailure) {
        let Some(t) = self.active.remove(&id) else { return };
        self.cancel_all(cx, &t);
        self.stats.failed_syncs += 1;
        cx.event(Event::TransferFailed { id, reason });
        if reason == TransferFailure::NoSource && (t.wanted || cx.config.replicate == Replicate::All) {
            // A holder may come back or turn up: try again later.
            self.retry.insert(id);
            self.retry_at.get_or_insert(cx.now.mono.plus_ms(RETRY_MS));
        }
        self.start_transfers(cx);
        self.check_initial(cx);
    }

    fn cancel_all(&mut self, cx: &mut Cx<'_>, t: &Transfer) {
        let keys: Vec<(ConnId, RequestId)> =
            self.asked.iter().filter(|(_, _, a)| a.item() == t.id).map(|(c, r, _)| (c, r)).collect();
        for (conn, request) in keys {
            self.asked.remove(conn, request);
            cx.requests.cancel(conn, request);
        }
    }

    fn on_head(&mut self, cx: &mut Cx<'_>, conn: ConnId, id: ContentId, size: u64, cvs: Vec<[u8; 32]>) {
        let Some(t) = self.active.get_mut(&id) else { return };
        t.head_pending = None;
        if t.head.is_some() {
            return;
        }
        let verified = Layout::new(size).and_then(|layout| {
            if t.layout.is_some_and(|l| l != layout) {
                return Err(VerifyError::RootMismatch);
            }
            if layout.pages() > 1 {
                verify::verify_page_list(&id, layout, &cvs)?;
            } else {
                verify::verify_pieces(&id, layout, &cvs)?;
            }
            Ok(layout)
        });
        let layout = match verified {
            Ok(layout) => layout,
            Err(_) => return self.bad_metadata(cx, conn, id),
        };
        t.layout = Some(layout);
        t.head = Some(cvs.clone());
        t.progress = cx.now.mono;
        let item = self.items.entry(id).or_insert_with(|| Item {
            size,
            held: Bits::new(layout.pieces()),
            here: false,
            head_stored: false,
            served: 0,
        });
        item.head_stored = true;
        cx.output(Output::StoreHead { id, size, cvs });
        self.pump(cx, id);
    }

    fn on_page(&mut self, cx: &mut Cx<'_>, conn: ConnId, id: ContentId, page: u64, cvs: Vec<[u8; 32]>) {
        let Some(t) = self.active.get_mut(&id) else { return };
        t.page_pending.remove(&page);
        let (Some(layout), Some(head)) = (t.layout, t.head.as_ref()) else { return };
        let Some(entry) = head.get(page as usize) else { return self.bad_metadata(cx, conn, id) };
        if verify::verify_page(layout, page, entry, &cvs).is_err() {
            return self.bad_metadata(cx, conn, id);
        }
        t.progress = cx.now.mono;
        if t.pages_needed().contains(&page) {
            t.pages.insert(page, cvs.clone());
        }
        cx.output(Output::StorePage { id, page, cvs });
        self.pump(cx, id);
    }

    fn bad_metadata(&mut self, cx: &mut Cx<'_>, conn: ConnId, id: ContentId) {
        if let Some(t) = self.active.get_mut(&id) {
            t.drop_source(conn);
        }
        if let Some(peer) = self.peers.get(&conn) {
            cx.penalise(Offender::Node(peer.node), POINTS_BAD_DATA);
        }
        cx.misbehaved(conn, CloseReason::Protocol(Violation::BadMetadata));
        self.pump(cx, id);
    }

    /// Held pieces moved on: advance the window; finish the item when it is whole.
    fn advance(&mut self, cx: &mut Cx<'_>, id: ContentId) {
        let (Some(t), Some(item)) = (self.active.get_mut(&id), self.items.get(&id)) else { return };
        t.low = item.held.next_clear(t.low).unwrap_or(item.layout().pieces());
        t.forget_pages_below();
        if !item.complete() {
            return self.pump(cx, id);
        }
        let size = item.size;
        let Some(t) = self.active.remove(&id) else { return };
        self.cancel_all(cx, &t);
        self.stats.synced_content += 1;
        cx.event(Event::ItemComplete {
            id,
            size,
            sources: t.served_by.len() as u32,
            ms: cx.now.mono.ms_since(t.started),
        });
        self.announce(cx, Listed { id, size, complete: true });
        self.start_transfers(cx);
        self.check_initial(cx);
    }

    /// Sends what the transfer can send now: its head, the pages its window needs, bitfield
    /// questions to partial sources, and piece requests up to each source's pipeline depth.
    fn pump(&mut self, cx: &mut Cx<'_>, id: ContentId) {
        let Some(t) = self.active.get_mut(&id) else { return };
        let now = cx.now.mono;
        // Sources best first: measured rate, discounted by failures.
        let mut ranked: Vec<(u64, ConnId)> = t
            .sources
            .keys()
            .map(|c| {
                let p = self.peers.get(c);
                let rate = p.map_or(RATE_UNKNOWN, |p| if p.rate == 0 { RATE_UNKNOWN } else { p.rate });
                let failures = u64::from(p.map_or(0, |p| p.failures)).min(16);
                (rate / (1 + failures * failures), *c)
            })
            .collect();
        ranked.sort_by(|a, b| b.cmp(a));
        if t.head.is_none() {
            if t.head_pending.is_none() {
                let next = ranked.iter().map(|(_, c)| *c).find(|c| !t.head_asked.contains(c));
                if let Some(conn) = next
                    && let Ok(request) = cx.request(conn, wrap(Request::Head { id }), Origin::Content, 0)
                {
                    t.head_asked.insert(conn);
                    t.head_pending = Some(conn);
                    self.asked.insert(conn, request, Asked::Head(id));
                } else if next.is_none() {
                    // Everyone we could ask said no or failed: nobody connected holds it.
                    return self.fail(cx, id, TransferFailure::NoSource);
                }
            }
            return self.arm(cx);
        }
        let Some(layout) = t.layout else { return };
        for page in t.pages_needed() {
            if t.pages.contains_key(&page) || t.page_pending.contains_key(&page) {
                continue;
            }
            let from = ranked.iter().map(|(_, c)| *c).find(|c| t.sources.get(c).is_some_and(|s| s.avail == Avail::All));
            let from = from.or_else(|| ranked.first().map(|(_, c)| *c));
            if let Some(conn) = from
                && let Ok(request) = cx.request(conn, wrap(Request::Page { id, page }), Origin::Content, 0)
            {
                t.page_pending.insert(page, conn);
                self.asked.insert(conn, request, Asked::Page(id, page));
            }
        }
        let pieces = layout.pieces();
        let low_page = t.low / PIECES_PER_PAGE;
        for &(_, conn) in &ranked {
            let Some(source) = t.sources.get_mut(&conn) else { continue };
            let stale = match &source.avail {
                Avail::Unknown => true,
                Avail::Page { page, at, .. } => *page != low_page || now.ms_since(*at) >= HAVE_REFRESH_MS,
                _ => false,
            };
            if stale
                && source.pieces == 0
                && low_page < layout.pages()
                && let Ok(request) = cx.request(conn, wrap(Request::Have { id, page: low_page }), Origin::Content, 0)
            {
                source.avail = Avail::Asking;
                self.asked.insert(conn, request, Asked::Have(id, low_page));
            }
            let rate = self.peers.get(&conn).map_or(0, |p| p.rate);
            let depth = pipeline_depth(rate);
            let item = self.items.get(&id);
            let mut scan = t.low;
            let end = (t.low + WINDOW_PIECES).min(pieces);
            while t.sources.get(&conn).is_some_and(|s| s.pieces < depth) {
                // The lowest piece in the window that is free and this source has.
                let Some(source) = t.sources.get(&conn) else { break };
                let mut pick = None;
                while scan < end {
                    let i = scan;
                    scan += 1;
                    let held = item.is_some_and(|it| it.held.get(i));
                    if !held
                        && !t.storing.contains(&i)
                        && !t.in_flight.contains_key(&i)
                        && Transfer::has(source, i)
                        && t.expected(i).is_some()
                    {
                        pick = Some(i);
                        break;
                    }
                }
                // Endgame: everything left is in flight. A piece that is late at its source gets
                // one duplicate elsewhere (the first verified copy cancels the other).
                if pick.is_none() && t.low + WINDOW_PIECES >= pieces {
                    let peers = &self.peers;
                    pick = t
                        .in_flight
                        .iter()
                        .find(|(i, copies)| {
                            copies.len() < COPIES_MAX
                                && copies.iter().all(|(c, _, sent)| {
                                    let rate = peers.get(c).map_or(0, |p| p.rate).max(RATE_FLOOR);
                                    let due = (2 * layout.piece_len(**i) * 1000 / rate).max(LATE_MIN_MS);
                                    *c != conn && now.ms_since(*sent) >= due
                                })
                                && Transfer::has(source, **i)
                        })
                        .map(|(i, _)| *i);
                }
                let Some(index) = pick else { break };
                let timeout =
                    piece_timeout(cx.config.handshake_timeout_ms, rate, source.pieces + 1, layout.piece_len(index));
                let body = wrap(Request::Piece { id, index });
                let Ok(request) = cx.request_within(conn, body, Origin::Content, index, timeout) else { break };
                self.asked.insert(conn, request, Asked::Piece(id, index));
                t.in_flight.entry(index).or_default().push((conn, request, now));
                if let Some(source) = t.sources.get_mut(&conn) {
                    source.pieces += 1;
                }
            }
        }
        self.arm(cx);
    }
}

fn held_bytes(item: &Item) -> u64 {
    if item.complete() {
        return item.size;
    }
    let layout = item.layout();
    let last = layout.pieces() - 1;
    let full = item.held.ones() - u64::from(item.held.get(last));
    full * PIECE_LEN + if item.held.get(last) { layout.piece_len(last) } else { 0 }
}

fn data_len_ok(data: &PieceData, len: u64) -> bool {
    // Replay has no bytes (they are not in the log); the hash already covers them.
    data.0.is_empty() || data.0.len() as u64 == len
}

/// Pieces kept in flight to a source delivering `rate` bytes per second: about half a second of
/// its output, at least 2, and room left for metadata requests.
pub fn pipeline_depth(rate: u64) -> u32 {
    let ahead = rate / (2 * PIECE_LEN);
    (2 + ahead).min(proto::IN_FLIGHT_MAX as u64 - 2) as u32
}

/// A piece request's deadline: the base timeout plus the time to receive what is queued ahead
/// of it at the source's measured rate (so a slow source is not mistaken for a dead one, and a
/// stalled one costs one such deadline).
pub fn piece_timeout(base_ms: u64, rate: u64, queued: u32, len: u64) -> u64 {
    let rate = rate.max(RATE_FLOOR);
    (base_ms + u64::from(queued) * len.max(1) * 1000 / rate).min(120_000)
}
