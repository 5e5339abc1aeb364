//! Content (SPEC R7, R4.3, R6.3, start-up phase 7): the catalogue of items this node holds,
//! what peers hold, the sync queue and its workers, multi-peer verified transfers, and serving.
//!
//! - `verify`: content identity and verification (`blake3::hazmat`).
//! - `proto`: the wire messages and their bounds.
//! - `stream`: how drivers split pieces out of a connection's byte stream.
//! - `transfer`: one item being fetched.
//! - `downlink`: what all transfers together may ask for, from the measured delivery rate.
//! - `exchange`: answering peers, learning what they hold (announcements), and taking in
//!   what the catalogue names (`catalogued`).
//! - `fetch`: answers to our requests, the sync queue, and the transfer scheduler.
//! - `status`: what the module reports (status, `mynet ls`, popular items, its own checks).
//! - this file: the module's state, status, timers, phase 7, connections, operator inputs.
//!
//! The node never touches piece bytes beyond passing them on: a piece arrives as
//! `Input::Piece` with the hash the driver computed over its bytes; the module compares it with
//! the verified chaining value, and only then hands the bytes to the driver to store
//! (`Output::StorePiece`). A piece is held once the driver reports it durable (`Input::Stored`).
//! Serving reads the store: the module checks what it holds and asks the driver to answer
//! (`Output::Serve`); the driver re-verifies what it reads before sending it.

pub mod bits;
pub mod downlink;
mod exchange;
mod fetch;
pub mod proto;
mod status;
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
use proto::{ANNOUNCE_MAX, Listed, Request, Response};
use transfer::{Avail, COPIES_MAX, LATE_MIN_MS, SOURCE_TIMEOUTS_TRUSTED, Source, Transfer, WINDOW_PIECES};

/// Items remembered from the catalogue and peers' announcements (ids, sizes, holders).
pub const REMOTE_MAX: usize = 200_000;
/// Items waiting in the sync queue.
pub const QUEUE_MAX: usize = REMOTE_MAX;
/// Announcements waiting for one peer; past it the oldest are dropped (the transfer asks
/// every peer when it knows no holder).
pub const ANNOUNCE_QUEUE_MAX: usize = 1024;
/// Items removed by the operator that replication will not fetch back (newest kept).
pub const REMOVED_MAX: usize = 10_000;
/// Misbehaviour points for a bad piece or bad metadata: enough to ban at once (honest peers
/// only serve what they verified).
pub const POINTS_BAD_DATA: u32 = 100;
/// A transfer with no progress and no piece in flight for this long fails (it is queued again
/// when a holder appears).
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
}

/// An item a peer told us about.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Remote {
    size: u64,
    /// Holders on open connections, and whether they hold all of it.
    holders: BTreeMap<ConnId, bool>,
    /// The catalogue names it (signed metadata): only then is it replicated.
    catalogued: bool,
    /// Its state is one `replicate_states` allows.
    allowed: bool,
}

/// What the module knows of a connected peer.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Peer {
    node: NodeId,
    /// Items it told us it holds (bounded by `REMOTE_MAX` overall).
    holds: BTreeSet<ContentId>,
    announce: VecDeque<Listed>,
    announce_pending: bool,
    /// Measured delivery rate, bytes per second (0: not measured).
    rate: u64,
    /// When its last piece arrived.
    last_piece: Option<Mono>,
    failures: u32,
    /// Time from asking it for a piece to the piece arriving, smoothed (milliseconds; raised
    /// to the wait of a request that timed out). A piece's deadline is at least twice this.
    latency_ms: u64,
}

impl Peer {
    fn note_latency(&mut self, ms: u64) {
        self.latency_ms = if self.latency_ms == 0 { ms } else { (self.latency_ms * 3 + ms) / 4 };
    }
}

/// Content and sync counters for status (SPEC R10.1).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncStats {
    pub synced_content: u64,
    /// Time from starting to completing the items synced, summed (mean time to replicate:
    /// `sync_ms / synced_content`).
    pub sync_ms: u64,
    pub failed_syncs: u64,
    pub bytes_synced: u64,
    pub wasted_bytes: u64,
    /// Pieces that answered a request after its deadline, still needed, and kept.
    pub late_pieces_kept: u64,
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
    /// Pieces reaching us from all sources together, bytes per second (smoothed; 0 before
    /// the first measurement).
    #[serde(default)]
    pub downlink_rate: u64,
    /// Piece requests that timed out or were cancelled but whose bytes may still come.
    #[serde(default)]
    pub pieces_owed: u64,
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
    /// The catalogue's first rounds since start-up are over.
    settled: bool,
    /// Items the operator asked for (`mynet get`) and that are not held yet: searched for
    /// in the DHT when no peer holds them, and retried whatever the replication policy.
    wanted: BTreeSet<ContentId>,
    /// Our own link: the delivery rate and what is still on its way.
    down: downlink::Downlink,
}

/// Operator `get`s remembered at once (past it, a `get` still fetches from peers).
pub const WANTED_MAX: usize = 10_000;

/// How often items whose transfer found no source are tried again.
pub const RETRY_MS: u64 = 30_000;

fn wrap(request: Request) -> wire::Request {
    wire::Request::Content(request)
}

impl Content {
    // ---- timers ----

    pub fn poll_timeout(&self) -> Option<Mono> {
        let initial = self.initial.as_ref().map(|i| i.deadline);
        [self.next_tick, initial, self.retry_at].into_iter().flatten().min()
    }

    pub fn handle_timeout(&mut self, cx: &mut Cx<'_>) {
        let now = cx.now.mono;
        if self.next_tick.is_some_and(|at| at <= now) {
            self.next_tick = None;
            let busy = self.in_flight_bytes(now) > 0;
            self.down.sample(now, busy);
            let ids: Vec<ContentId> = self.active.keys().copied().collect();
            for id in ids {
                let Some(t) = self.active.get(&id) else { continue };
                let idle = now.ms_since(t.progress);
                if idle >= IDLE_MAX_MS && !self.awaits_busy_source(t) {
                    // Nothing arrived for a long time and no piece is on its way from a source
                    // that is delivering: give up for now (a worker is freed); the retry
                    // starts over with every peer known to hold the item.
                    self.fail(cx, id, TransferFailure::NoSource);
                    continue;
                }
                if idle >= STALL_MS {
                    if self.remote.get(&id).is_none_or(|r| r.holders.is_empty()) {
                        // No connected peer is known to hold it: ask the DHT who does.
                        cx.defer(crate::context::Deferred::FindProviders(id.0));
                    }
                    self.refresh_sources(id);
                    self.widen_sources(id);
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

    /// Whether a piece of the transfer is in flight to a source that may yet deliver: one
    /// whose piece requests for this item timed out fewer than [`SOURCE_TIMEOUTS_TRUSTED`]
    /// times (each later deadline is twice its observed latency, so a busy uplink, slow but
    /// sure, delivers within it). Failing the transfer then would cancel pieces already on
    /// their way; a source that stalls loses this benefit after its second deadline.
    fn awaits_busy_source(&self, t: &Transfer) -> bool {
        t.in_flight
            .values()
            .flatten()
            .any(|(conn, _, _)| t.sources.get(conn).is_some_and(|s| s.timeouts < SOURCE_TIMEOUTS_TRUSTED))
    }

    /// Keeps the housekeeping tick running while there is work.
    fn arm(&mut self, cx: &Cx<'_>) {
        let busy = !self.active.is_empty() || self.peers.values().any(|p| !p.announce.is_empty());
        if busy && self.next_tick.is_none() {
            self.next_tick = Some(cx.now.mono.plus_ms(TICK_MS));
        }
    }

    // ---- start-up phase 7 ----

    /// Start-up reached the initial sync: it ends when what the first reconciliation rounds queued is
    /// fetched, or after `initial_sync_max_ms`.
    pub fn enter_initial_sync(&mut self, cx: &mut Cx<'_>) {
        self.initial = Some(Initial { deadline: cx.now.mono.plus_ms(cx.config.initial_sync_max_ms) });
        self.start_transfers(cx);
        self.check_initial(cx);
    }

    /// The catalogue's first reconciliation rounds are over (what they found is queued).
    pub fn catalogue_settled(&mut self) {
        self.settled = true;
    }

    pub(crate) fn check_initial(&mut self, cx: &mut Cx<'_>) {
        if self.initial.is_none() {
            return;
        }
        if self.settled && self.queue.is_empty() && self.active.is_empty() {
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
            announce: VecDeque::new(),
            announce_pending: false,
            rate: 0,
            last_piece: None,
            failures: 0,
            latency_ms: 0,
        };
        self.peers.insert(link.conn, peer);
        self.flush_announcements(cx, link.conn);
    }

    pub fn on_closed(&mut self, cx: &mut Cx<'_>, closed: &Closed) {
        let conn = closed.conn;
        let Some(peer) = self.peers.remove(&conn) else { return };
        for id in &peer.holds {
            if let Some(remote) = self.remote.get_mut(id) {
                remote.holders.remove(&conn);
                if remote.holders.is_empty()
                    && !remote.catalogued
                    && !self.queued.contains(id)
                    && !self.active.contains_key(id)
                {
                    self.remote.remove(id);
                }
            }
        }
        self.asked.forget(conn);
        self.down.forget(conn);
        let ids: Vec<ContentId> = self.active.keys().copied().collect();
        for id in ids {
            if let Some(t) = self.active.get_mut(&id) {
                t.drop_source(conn);
            }
            self.pump(cx, id);
        }
        self.check_initial(cx);
    }

    /// The operator changed the config: more workers, room or states may start transfers.
    pub fn on_config(&mut self, cx: &mut Cx<'_>) {
        if cx.phase.past_bootstrap() {
            self.start_transfers(cx);
        }
    }

    pub fn on_restart(&mut self) {
        // Every connection is gone; transfers resume from the held pieces when peers return.
        self.peers.clear();
        self.asked.clear();
        self.down.clear();
        // Holders were connections of the old process; what the catalogue named stays.
        self.remote.retain(|_, r| r.catalogued);
        for remote in self.remote.values_mut() {
            remote.holders.clear();
        }
        let ids: Vec<ContentId> = self.active.keys().copied().collect();
        for id in ids.into_iter().rev() {
            if let Some(t) = self.active.remove(&id) {
                self.push_queue(id, t.wanted, true);
            }
        }
        self.initial = None;
        self.settled = false;
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
        cx.defer(crate::context::Deferred::Provide(id.0));
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
        if self.wanted.len() < WANTED_MAX {
            self.wanted.insert(id);
        }
        if let Some(t) = self.active.get_mut(&id) {
            t.wanted = true;
            return;
        }
        self.push_queue(id, true, true);
        self.start_transfers(cx);
    }

    /// A bootstrap node's popular items (SPEC R4.3): queued first, if the policy replicates.
    pub fn queue_popular(&mut self, cx: &mut Cx<'_>, ids: &[[u8; 32]]) {
        if cx.config.replicate != Replicate::All {
            return;
        }
        for id in ids.iter().rev().map(|id| ContentId(*id)) {
            if !self.holds(&id) && !self.removed.contains(&id) {
                self.push_queue(id, true, false);
            }
        }
        self.start_transfers(cx);
    }

    /// The operator dropped the local copy (`mynet rm`).
    pub fn remove(&mut self, cx: &mut Cx<'_>, id: ContentId) {
        if let Some(t) = self.active.remove(&id) {
            self.cancel_all(cx, &t);
        }
        self.unqueue(&id);
        self.wanted.remove(&id);
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
    (base_ms + u64::from(queued) * len.max(1) * 1000 / rate).min(PIECE_TIMEOUT_MAX_MS)
}

/// The longest a piece request waits.
pub const PIECE_TIMEOUT_MAX_MS: u64 = 120_000;

#[cfg(test)]
mod tests {
    use super::*;

    fn item(size: u64, served: u64, complete: bool) -> Item {
        let pieces = Layout { size }.pieces();
        let held = if complete { Bits::full(pieces) } else { Bits::new(pieces) };
        Item { size, held, here: false, head_stored: true, served }
    }

    #[test]
    fn popular_lists_complete_items_most_served_first_and_bounded() {
        let mut content = Content::default();
        for i in 0..(POPULAR_MAX as u8 + 20) {
            content.items.insert(ContentId([i; 32]), item(10, u64::from(i), true));
        }
        content.items.insert(ContentId([250; 32]), item(10, 1_000, false));
        let popular = content.popular();
        assert_eq!(popular.len(), POPULAR_MAX);
        assert_eq!(popular[0], [POPULAR_MAX as u8 + 19; 32], "most served first");
        assert!(!popular.contains(&[250; 32]), "a partial item is not offered");
        assert!(!popular.contains(&[0; 32]), "never served: not popular");
    }

    #[test]
    fn held_bytes_count_the_short_last_piece() {
        let mut it = item(2 * PIECE_LEN + 10, 0, false);
        it.held.set(0);
        it.held.set(2);
        assert_eq!(held_bytes(&it), PIECE_LEN + 10);
        assert_eq!(pipeline_depth(0), 2);
        assert_eq!(pipeline_depth(1 << 40), proto::IN_FLIGHT_MAX as u32 - 2);
        assert!(piece_timeout(10_000, 0, 4, PIECE_LEN) > 10_000);
    }
}
