//! Reconciliation (SPEC R8): the catalogue of every item's signed metadata converges on every
//! replica, at a cost that follows the difference, not the catalogue.
//!
//! - `sketch`: rateless IBLT cells, the peeling decoder and the difference estimate.
//! - `meta`: signed item metadata and the conflict rule (a total order).
//! - `catalogue`: the winning metadata per item and the key set kept in step with it.
//! - `proto`: wire messages and bounds.
//! - `session`: one round from the asker's side (pure; the benchmark drives it too).
//! - this file: the module: rounds with each peer, fetching what we lack (`Get`), offering
//!   what the peer lacks (`Offer`), pushing new metadata to peers, status.
//!
//! **Why rateless IBLT.** Its cost is about 1.35–2 cells of 50 bytes per differing item
//! whatever the catalogue's size, it needs no round trips beyond "how different are we" and
//! "these cells" (negentropy's range splitting needs `log_16 n` round trips and sends whole id
//! lists at its leaves: 166 KB for 100 differences among a million), and the cells of a
//! growing prefix are a pure function of the set, so each node keeps its own up to date per
//! change and answers every peer from it without per-peer state. When the difference is a
//! large part of the peer's set, listing its keys costs less, and that is the bulk path.
//!
//! Rounds: on every new connection both sides start one; afterwards the peer with the lower
//! node id starts one every `reconcile_interval_ms`. A round that found differences fetches and
//! offers them, then runs again at once, until a round finds nothing (at most
//! [`STREAK_MAX`] in a row, then the interval), so concurrent writes during a round are caught
//! by the next one. Metadata we accept is pushed at once to the other peers.

pub mod catalogue;
pub mod meta;
pub mod proto;
pub mod session;
pub mod sketch;

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::{Deserialize, Serialize};

use crate::content::verify::ContentId;
use crate::context::{Cx, Deferred};
use crate::event::{CloseReason, Event, Violation};
use crate::handshake::Link;
use crate::id::{ConnId, NodeId};
use crate::identity::Identity;
use crate::node::Closed;
use crate::penalties::Offender;
use crate::request::{Origin, Pending, RequestId};
use crate::states::{ItemEdit, KeyEdit, Named};
use crate::time::Mono;
use crate::wire::{self, FRAME_HEADER_LEN};
use catalogue::{Catalogue, Put};
use meta::{Invalid, KeyRecord, Meta, Signed};
use proto::{IN_FLIGHT_MAX, KEYS_PER_PAGE, METAS_BYTES_MAX, METAS_PER_MESSAGE, Request, Response};
use session::{Found, OURS_PER_STEP_MAX, Session};
use sketch::Key;

/// Rounds in a row that found differences before waiting for the interval.
pub const STREAK_MAX: u32 = 8;
/// Items waiting to be fetched from one peer, or offered to it.
pub const QUEUE_MAX: usize = 50_000;
/// Peers a received new version is pushed to at once (the publisher pushes to all its peers;
/// gossip with this fan-out reaches the rest in a few hops, and rounds catch any it missed).
pub const FORWARD_FANOUT: usize = 3;
/// How soon work that found no request slot is tried again.
pub const RETRY_MS: u64 = 1_000;
/// Misbehaviour points for metadata from a key that may not publish (a misconfigured honest
/// node forwards it too; bad signatures and malformed metadata close the connection).
pub const POINTS_NOT_PUBLISHER: u32 = 20;

const TAG_ROUND: u64 = 0;
const TAG_GET: u64 = 1;
const TAG_OFFER: u64 = 2;

/// `reconcile` in status and in the simulator's summary.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReconcileStats {
    /// Rounds finished (as the asker).
    pub rounds: u64,
    /// Rounds that found nothing different.
    pub idle_rounds: u64,
    /// Bytes of every round's reconciliation messages (both directions, frames).
    pub bytes: u64,
    /// Bytes of the rounds that found nothing.
    pub idle_bytes: u64,
    /// Rounds that took the bulk path.
    pub bulk_rounds: u64,
    /// Rounds whose first cells did not peel and asked for more.
    pub extended_rounds: u64,
    /// Metadata fetched (`Get`) and offered (`Offer`).
    pub fetched: u64,
    pub offered: u64,
    /// What rounds found (SPEC R8.1), summed: items missing here, missing at the peer, and
    /// conflicts (both hold the item in different versions).
    #[serde(default)]
    pub missing_here: u64,
    #[serde(default)]
    pub missing_there: u64,
    #[serde(default)]
    pub conflicts: u64,
    /// Metadata accepted: new items, and newer versions that replaced ours.
    pub new_items: u64,
    pub replaced: u64,
    /// Metadata refused, by reason.
    pub refused_malformed: u64,
    pub refused_bad_signature: u64,
    pub refused_not_publisher: u64,
    pub refused_future: u64,
    /// Metadata this node signed.
    pub published: u64,
}

/// `reconcile` in status.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReconcileStatus {
    pub items: u64,
    /// BLAKE3 over the catalogue's fingerprint: equal on replicas that agree.
    pub digest: String,
    pub index_cells: u64,
    #[serde(flatten)]
    pub stats: ReconcileStats,
    pub active_rounds: u64,
}

/// What the module knows of one connected peer.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Peer {
    node: NodeId,
    /// We start its periodic rounds (our id is the lower).
    lead: bool,
    session: Option<Session>,
    round_bytes: u64,
    /// The round found something: run another once the exchange drains.
    again: bool,
    streak: u32,
    next_round: Option<Mono>,
    /// Round requests waiting for a slot, and those in flight.
    outbox: VecDeque<Request>,
    asked: BTreeMap<RequestId, Request>,
    /// Versions to fetch from it (by key: skipped if one arrives meanwhile) and items to
    /// offer to it (each deduplicated by its set).
    get: VecDeque<Key>,
    get_set: BTreeSet<ContentId>,
    offer: VecDeque<ContentId>,
    offer_set: BTreeSet<ContentId>,
    gets: BTreeMap<RequestId, Vec<ContentId>>,
    offers_in_flight: u32,
    /// Work is waiting but the request layer had no slot (the connection's other protocols
    /// filled it) and nothing of ours is in flight to bring us back: try again then.
    retry_at: Option<Mono>,
}

impl Peer {
    fn in_flight(&self) -> usize {
        self.asked.len() + self.gets.len() + self.offers_in_flight as usize
    }

    fn idle(&self) -> bool {
        self.session.is_none()
            && !self.again
            && self.in_flight() == 0
            && self.outbox.is_empty()
            && self.get.is_empty()
            && self.offer.is_empty()
    }

    fn queue_get(&mut self, key: Key) {
        if self.get.len() < QUEUE_MAX && self.get_set.insert(ContentId(key.id)) {
            self.get.push_back(key);
        }
    }

    fn queue_offer(&mut self, id: ContentId) {
        if self.offer.len() < QUEUE_MAX && self.offer_set.insert(id) {
            self.offer.push_back(id);
        }
    }
}

/// The reconciliation module's state.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Reconcile {
    catalogue: Catalogue,
    peers: BTreeMap<ConnId, Peer>,
    stats: ReconcileStats,
    /// Start-up was told the first rounds are over.
    settled: bool,
}

fn wrap(request: Request) -> wire::Request {
    wire::Request::Reconcile(request)
}

/// Bytes of a frame carrying `body` (envelope tag, request id, body, frame header).
fn frame_len<T: Serialize>(id: RequestId, body: &T) -> u64 {
    let id_len = postcard::experimental::serialized_size(&id.0).unwrap_or(5);
    let body_len = postcard::experimental::serialized_size(body).unwrap_or(0);
    (FRAME_HEADER_LEN + 1 + id_len + 1 + body_len) as u64
}

impl Reconcile {
    // ---- reading ----

    pub fn catalogue(&self) -> &Catalogue {
        &self.catalogue
    }

    pub fn stats(&self) -> &ReconcileStats {
        &self.stats
    }

    pub fn status(&self) -> ReconcileStatus {
        ReconcileStatus {
            items: self.catalogue.len() as u64,
            digest: crate::hex::encode(&self.catalogue.digest()),
            index_cells: self.catalogue.set().sketch().len() as u64,
            stats: self.stats.clone(),
            active_rounds: self.peers.values().filter(|p| p.session.is_some()).count() as u64,
        }
    }

    /// A round or its exchange is under way with some peer.
    pub fn busy(&self) -> bool {
        self.peers.values().any(|p| !p.idle())
    }

    // ---- timers ----

    pub fn poll_timeout(&self) -> Option<Mono> {
        self.peers.values().flat_map(|p| [p.next_round, p.retry_at]).flatten().min()
    }

    pub fn handle_timeout(&mut self, cx: &mut Cx<'_>) {
        let now = cx.now.mono;
        let stalled: Vec<ConnId> =
            self.peers.iter().filter(|(_, p)| p.retry_at.is_some_and(|at| at <= now)).map(|(c, _)| *c).collect();
        for conn in stalled {
            if let Some(peer) = self.peers.get_mut(&conn) {
                peer.retry_at = None;
            }
            self.pump(cx, conn);
        }
        let due: Vec<ConnId> = self
            .peers
            .iter()
            .filter(|(_, p)| p.next_round.is_some_and(|at| at <= cx.now.mono))
            .map(|(c, _)| *c)
            .collect();
        for conn in due {
            if let Some(peer) = self.peers.get_mut(&conn) {
                peer.next_round = None;
                peer.streak = 0;
            }
            self.start_round(cx, conn);
        }
    }

    // ---- connections ----

    pub fn on_established(&mut self, cx: &mut Cx<'_>, link: &Link) {
        let peer = Peer {
            node: link.node_id,
            lead: cx.node_id < link.node_id,
            session: None,
            round_bytes: 0,
            again: false,
            streak: 0,
            next_round: None,
            outbox: VecDeque::new(),
            asked: BTreeMap::new(),
            get: VecDeque::new(),
            get_set: BTreeSet::new(),
            offer: VecDeque::new(),
            offer_set: BTreeSet::new(),
            gets: BTreeMap::new(),
            offers_in_flight: 0,
            retry_at: None,
        };
        let lead = peer.lead;
        self.peers.insert(link.conn, peer);
        // The lower id starts rounds; while starting up both do, so a joining node's initial
        // sync waits for what its own first rounds find.
        if lead || cx.phase != crate::event::Phase::Ready {
            self.start_round(cx, link.conn);
        }
    }

    pub fn on_closed(&mut self, cx: &mut Cx<'_>, closed: &Closed) {
        self.peers.remove(&closed.conn);
        self.check_settled(cx);
    }

    /// The operator changed the config: a shorter round period applies now.
    pub fn on_config(&mut self, cx: &Cx<'_>) {
        let soonest = cx.now.mono.plus_ms(cx.config.reconcile_interval_ms);
        for peer in self.peers.values_mut() {
            if let Some(next) = peer.next_round.as_mut() {
                *next = (*next).min(soonest);
            }
        }
    }

    pub fn on_restart(&mut self) {
        self.peers.clear();
        self.settled = false;
    }

    pub fn on_shutdown(&mut self) {
        for peer in self.peers.values_mut() {
            peer.next_round = None;
        }
    }

    // ---- rounds (asking) ----

    fn start_round(&mut self, cx: &mut Cx<'_>, conn: ConnId) {
        let Some(peer) = self.peers.get_mut(&conn) else { return };
        if peer.session.is_some() {
            return;
        }
        let (session, first) = Session::start(self.catalogue.set());
        peer.session = Some(session);
        peer.round_bytes = 0;
        peer.again = false;
        peer.outbox.push_back(first);
        self.pump(cx, conn);
    }

    /// Sends what waits for a slot: round requests first, then fetches, then offers.
    fn pump(&mut self, cx: &mut Cx<'_>, conn: ConnId) {
        let Some(peer) = self.peers.get_mut(&conn) else { return };
        while peer.in_flight() < IN_FLIGHT_MAX {
            // The bulk path lists the next page only once what the last pages found has room
            // in the queues: an empty node joining a network larger than a queue lists the
            // peer's keys once, at the pace it fetches, instead of dropping the overflow and
            // listing everything again in the next round.
            let held = matches!(peer.outbox.front(), Some(Request::Keys { .. }))
                && (peer.get.len() + KEYS_PER_PAGE > QUEUE_MAX || peer.offer.len() + OURS_PER_STEP_MAX > QUEUE_MAX);
            if !held && let Some(request) = peer.outbox.pop_front() {
                let body = wrap(request.clone());
                match cx.request(conn, body.clone(), Origin::Reconcile, TAG_ROUND) {
                    Ok(id) => {
                        peer.round_bytes += frame_len(id, &body);
                        peer.asked.insert(id, request);
                    }
                    Err(_) => {
                        peer.outbox.push_front(request);
                        break;
                    }
                }
                continue;
            }
            if !peer.get.is_empty() {
                let mut ids = Vec::new();
                while ids.len() < METAS_PER_MESSAGE {
                    let Some(key) = peer.get.pop_front() else { break };
                    let id = ContentId(key.id);
                    peer.get_set.remove(&id);
                    // The version came meanwhile (pushed, or from another peer).
                    if self.catalogue.set().tag(&id) != Some(key.tag) {
                        ids.push(id);
                    }
                }
                if ids.is_empty() {
                    continue;
                }
                if let Ok(id) = cx.request(conn, wrap(Request::Get { ids: ids.clone() }), Origin::Reconcile, TAG_GET) {
                    self.stats.fetched += ids.len() as u64;
                    peer.gets.insert(id, ids);
                    continue;
                }
                break;
            }
            if !peer.offer.is_empty() {
                let mut metas = Vec::new();
                let mut bytes = 0;
                while metas.len() < METAS_PER_MESSAGE {
                    let Some(id) = peer.offer.front().copied() else { break };
                    let Some(signed) = self.catalogue.get(&id) else {
                        peer.offer.pop_front();
                        peer.offer_set.remove(&id);
                        continue;
                    };
                    let len = postcard::experimental::serialized_size(signed).unwrap_or(usize::MAX);
                    if bytes + len > METAS_BYTES_MAX {
                        break;
                    }
                    bytes += len;
                    metas.push(signed.clone());
                    peer.offer.pop_front();
                    peer.offer_set.remove(&id);
                }
                let n = metas.len() as u64;
                if n > 0 && cx.request(conn, wrap(Request::Offer { metas }), Origin::Reconcile, TAG_OFFER).is_ok() {
                    self.stats.offered += n;
                    peer.offers_in_flight += 1;
                    continue;
                }
                break;
            }
            break;
        }
        let waiting = !peer.outbox.is_empty() || !peer.get.is_empty() || !peer.offer.is_empty();
        if waiting && peer.in_flight() == 0 && peer.retry_at.is_none() {
            peer.retry_at = Some(cx.now.mono.plus_ms(RETRY_MS));
        }
        // The exchange drained after a round that found differences: look again.
        if peer.again && peer.session.is_none() && peer.in_flight() == 0 && peer.get.is_empty() && peer.offer.is_empty()
        {
            peer.again = false;
            if peer.streak < STREAK_MAX {
                return self.start_round(cx, conn);
            }
            peer.streak = 0;
            if peer.lead {
                peer.next_round = Some(cx.now.mono.plus_ms(cx.config.reconcile_interval_ms));
            }
        }
        self.check_settled(cx);
    }

    fn check_settled(&mut self, cx: &mut Cx<'_>) {
        if !self.settled && !self.busy() {
            self.settled = true;
            cx.defer(Deferred::CatalogueSettled);
        }
    }

    pub fn handle_response(&mut self, cx: &mut Cx<'_>, conn: ConnId, pending: &Pending, response: Response) {
        match pending.tag {
            TAG_ROUND => self.on_round_answer(cx, conn, pending.id, response),
            TAG_GET => {
                let Some(peer) = self.peers.get_mut(&conn) else { return };
                let Some(ids) = peer.gets.remove(&pending.id) else { return };
                let Response::Metas { metas, answered } = response else { return self.pump(cx, conn) };
                for id in ids.iter().skip(usize::from(answered)) {
                    // Not answered for lack of room: ask again (any version will do).
                    if peer.get.len() < QUEUE_MAX && peer.get_set.insert(*id) {
                        peer.get.push_front(Key { id: id.0, tag: [0; 8] });
                    }
                }
                let asked: BTreeSet<ContentId> = ids.into_iter().collect();
                if metas.iter().any(|m| !asked.contains(&m.meta.id)) {
                    return cx.misbehaved(conn, violation("metadata that was not asked for"));
                }
                self.take(cx, conn, metas);
                self.pump(cx, conn);
            }
            _ => {
                if let Some(peer) = self.peers.get_mut(&conn) {
                    peer.offers_in_flight = peer.offers_in_flight.saturating_sub(1);
                }
                self.pump(cx, conn);
            }
        }
    }

    fn on_round_answer(&mut self, cx: &mut Cx<'_>, conn: ConnId, id: RequestId, response: Response) {
        let Some(peer) = self.peers.get_mut(&conn) else { return };
        let Some(asked) = peer.asked.remove(&id) else { return };
        let Some(session) = peer.session.as_mut() else { return };
        peer.round_bytes += frame_len(id, &wire::Response::Reconcile(response.clone()));
        let step = match session.on_answer(self.catalogue.set(), &asked, response) {
            Ok(step) => step,
            Err(bad) => return cx.misbehaved(conn, violation(bad.0)),
        };
        peer.outbox.extend(step.send);
        let differed = !step.found.theirs.is_empty() || !step.found.ours.is_empty();
        self.absorb(conn, step.found);
        let Some(peer) = self.peers.get_mut(&conn) else { return };
        if differed {
            peer.again = true;
        }
        if step.done {
            let session = peer.session.take();
            let (bulk, extended, equal) = session.map_or((false, 0, false), |s| (s.bulk, s.extended, s.equal));
            self.stats.rounds += 1;
            self.stats.bytes += peer.round_bytes;
            self.stats.bulk_rounds += u64::from(bulk);
            self.stats.extended_rounds += u64::from(extended > 0);
            if equal {
                self.stats.idle_rounds += 1;
                self.stats.idle_bytes += peer.round_bytes;
            }
            if peer.again {
                peer.streak += 1;
            } else {
                peer.streak = 0;
                if peer.lead {
                    peer.next_round = Some(cx.now.mono.plus_ms(cx.config.reconcile_interval_ms));
                }
            }
        }
        self.pump(cx, conn);
    }

    /// What a round found: fetch their versions, offer ours. For an item both have in
    /// different versions, their version is fetched first; if ours wins it is offered back then.
    fn absorb(&mut self, conn: ConnId, found: Found) {
        let Some(peer) = self.peers.get_mut(&conn) else { return };
        let diff = found.split();
        self.stats.missing_here += diff.missing_here.len() as u64;
        self.stats.missing_there += diff.missing_there.len() as u64;
        self.stats.conflicts += diff.conflicts.len() as u64;
        // Missing here, and the peer's side of a conflict: fetched (unless it came meanwhile).
        for key in diff.missing_here.into_iter().chain(diff.conflicts.into_iter().map(|(_, theirs)| theirs)) {
            if self.catalogue.set().tag(&ContentId(key.id)) != Some(key.tag) {
                peer.queue_get(key);
            }
        }
        for key in diff.missing_there {
            if self.catalogue.set().tag(&ContentId(key.id)) == Some(key.tag) {
                peer.queue_offer(ContentId(key.id));
            }
        }
    }

    pub fn on_request_failed(&mut self, cx: &mut Cx<'_>, conn: ConnId, pending: &Pending) {
        let Some(peer) = self.peers.get_mut(&conn) else { return };
        match pending.tag {
            TAG_ROUND => {
                // The round is lost; the next one starts over.
                peer.asked.clear();
                peer.outbox.clear();
                peer.session = None;
                peer.again = false;
                if peer.lead {
                    peer.next_round = Some(cx.now.mono.plus_ms(cx.config.reconcile_interval_ms));
                }
            }
            TAG_GET => {
                peer.gets.remove(&pending.id);
            }
            _ => peer.offers_in_flight = peer.offers_in_flight.saturating_sub(1),
        }
        self.pump(cx, conn);
    }

    // ---- answering ----

    pub fn handle_request(&mut self, cx: &mut Cx<'_>, conn: ConnId, id: RequestId, request: Request) {
        let answer = match request {
            Request::Get { ids } => self.catalogue.answer_get(&ids),
            Request::Offer { metas } => {
                let (refused, reason) = self.take(cx, conn, metas);
                Response::Taken { refused, reason }
            }
            other => match self.catalogue.set().answer(&other) {
                Some(answer) => answer,
                None => return,
            },
        };
        cx.respond(conn, id, wire::Response::Reconcile(answer));
    }

    // ---- metadata ----

    /// Validates and applies metadata from a peer: the refused count and the first reason.
    fn take(&mut self, cx: &mut Cx<'_>, conn: ConnId, metas: Vec<Signed>) -> (u16, Option<Invalid>) {
        let mut refused = 0u16;
        let mut first = None;
        let mut learned = Vec::new();
        for signed in metas {
            // What we hold already, or what loses to it, needs no signature check (several
            // peers push each new version; verifying is the expensive part).
            match self.catalogue.get(&signed.meta.id) {
                Some(held) if *held == signed => continue,
                Some(held) if held.beats(&signed) => {
                    if let Some(peer) = self.peers.get_mut(&conn) {
                        peer.queue_offer(signed.meta.id);
                    }
                    continue;
                }
                _ => {}
            }
            if let Err(invalid) = signed.validate(&cx.config.publishers, cx.now.wall_ms) {
                refused += 1;
                first = first.or(Some(invalid));
                self.count_refused(invalid);
                continue;
            }
            let id = signed.meta.id;
            // Key records converge with the catalogue but are not content to fetch.
            let named = signed.meta.is_item().then(|| Named::of(&signed.meta));
            match self.catalogue.put(signed) {
                Put::New => {
                    self.stats.new_items += 1;
                    learned.extend(named);
                    self.forward(cx, id, Some(conn));
                }
                Put::Replaced => {
                    self.stats.replaced += 1;
                    learned.extend(named);
                    self.forward(cx, id, Some(conn));
                }
                // Checked above: what we hold, or what loses to it, never gets here.
                Put::Same | Put::Kept => {}
            }
        }
        if !learned.is_empty() {
            cx.defer(Deferred::Catalogued(learned));
        }
        if let Some(invalid) = first {
            let peer = self.peers.get(&conn).map(|p| p.node);
            cx.event(Event::MetaRefused { conn: Some(conn), reason: invalid });
            match invalid {
                Invalid::Malformed | Invalid::BadSignature => {
                    cx.misbehaved(conn, CloseReason::Protocol(Violation::ItemMeta(invalid)))
                }
                Invalid::NotPublisher => {
                    if let Some(node) = peer {
                        cx.penalise(Offender::Node(node), POINTS_NOT_PUBLISHER);
                    }
                }
                Invalid::Future => {}
            }
        }
        (refused, first)
    }

    fn count_refused(&mut self, invalid: Invalid) {
        let s = &mut self.stats;
        match invalid {
            Invalid::Malformed => s.refused_malformed += 1,
            Invalid::BadSignature => s.refused_bad_signature += 1,
            Invalid::NotPublisher => s.refused_not_publisher += 1,
            Invalid::Future => s.refused_future += 1,
        }
    }

    /// Pushes an item's metadata: a version we made to every peer, one we received to
    /// [`FORWARD_FANOUT`] peers drawn at random (not `except`, which sent it).
    fn forward(&mut self, cx: &mut Cx<'_>, id: ContentId, except: Option<ConnId>) {
        let mut conns: Vec<ConnId> = self.peers.keys().copied().filter(|c| Some(*c) != except).collect();
        if except.is_some() {
            crate::peers::partial_shuffle(cx.rng, &mut conns, FORWARD_FANOUT);
            conns.truncate(FORWARD_FANOUT);
        }
        for conn in conns {
            if let Some(peer) = self.peers.get_mut(&conn) {
                peer.queue_offer(id);
            }
            self.pump(cx, conn);
        }
    }

    // ---- operator inputs ----

    /// An item was added here: publish its metadata unless the catalogue has some already.
    pub fn publish(&mut self, cx: &mut Cx<'_>, identity: &Identity, id: ContentId, size: u64) {
        if self.catalogue.get(&id).is_some() {
            return;
        }
        self.sign_and_apply(cx, identity, Meta::new(id, size, cx.now.wall_ms, identity.public_key()));
    }

    /// A new version of an item's metadata with these tags, signed by us (a publisher's edit).
    pub fn describe(&mut self, cx: &mut Cx<'_>, identity: &Identity, id: ContentId, size: u64, tags: Vec<String>) {
        let mut meta = self.next_meta(cx, identity, id, size);
        meta.tags = tags;
        self.sign_and_apply(cx, identity, meta);
    }

    /// The next version of `id`'s metadata (a copy of the current one, or new), by us.
    fn next_meta(&self, cx: &Cx<'_>, identity: &Identity, id: ContentId, size: u64) -> Meta {
        let previous = self.catalogue.get(&id);
        let mut meta = match previous {
            Some(p) => p.meta.clone(),
            None => Meta::new(id, size, 0, identity.public_key()),
        };
        meta.version = meta::next_version(cx.now.wall_ms, previous);
        meta.author = identity.public_key();
        meta
    }

    /// An operator's description of an item with its state, key and group (SPEC R9): the item's
    /// new metadata, and for a group member a new version of the root naming it. Refused (an
    /// event says why) if the root is unknown, is a member itself, or has no room for another
    /// relation.
    pub fn edit(&mut self, cx: &mut Cx<'_>, identity: &Identity, edit: ItemEdit) {
        let mut root_meta = None;
        if let Some(root) = edit.group.filter(|r| *r != edit.id) {
            let Some(current) = self.catalogue.get(&root).filter(|s| s.meta.is_item()) else {
                return cx.event(Event::EditRefused {
                    id: edit.id,
                    reason: format!("group root {root} is not in the catalogue"),
                });
            };
            if current.meta.group.is_some_and(|g| g != root) {
                return cx.event(Event::EditRefused {
                    id: edit.id,
                    reason: format!("{root} is itself a member of another group"),
                });
            }
            let mut meta = self.next_meta(cx, identity, root, current.meta.size);
            meta.group = Some(root);
            let kind = edit.relation.clone().unwrap_or_else(|| "member".to_string());
            meta.relations.retain(|r| r.child != edit.id);
            if meta.relations.len() >= meta::RELATIONS_MAX {
                return cx.event(Event::EditRefused {
                    id: edit.id,
                    reason: format!("group {root} already has {} members", meta::RELATIONS_MAX),
                });
            }
            meta.relations.push(meta::Relation { kind, child: edit.id });
            meta.relations.sort();
            root_meta = Some(meta);
        }
        let mut meta = self.next_meta(cx, identity, edit.id, edit.size);
        meta.tags = edit.tags;
        let declared_preview = edit.relation.as_deref() == Some(crate::states::PREVIEW_TAG);
        meta.state = crate::states::classify(edit.key_id.is_some(), declared_preview, &mut meta.tags);
        meta.key_id = edit.key_id;
        meta.plain_hash = edit.plain_hash;
        meta.group = edit.group;
        if let Err(invalid) = meta.check() {
            return cx.event(Event::MetaRefused { conn: None, reason: invalid });
        }
        self.sign_and_apply(cx, identity, meta);
        if let Some(root) = root_meta {
            self.sign_and_apply(cx, identity, root);
        }
    }

    /// A key record, signed by us (`mynet key add`, `mynet key rm --revoke`). A record once
    /// revoked stays revoked: a later edit cannot bring the key back.
    pub fn key_edit(&mut self, cx: &mut Cx<'_>, identity: &Identity, edit: KeyEdit) {
        let id = meta::key_record_id(&edit.key_id);
        let previous = self.catalogue.get(&id).and_then(|s| s.meta.key.clone());
        let record = KeyRecord {
            key_id: edit.key_id,
            algorithm: edit.algorithm,
            valid_from_ms: previous.as_ref().map_or(cx.now.wall_ms, |p| p.valid_from_ms),
            valid_until_ms: edit.valid_until_ms,
            revoked: edit.revoked || previous.is_some_and(|p| p.revoked),
        };
        let version = meta::next_version(cx.now.wall_ms, self.catalogue.get(&id));
        self.sign_and_apply(cx, identity, Meta::key_record(record, version, identity.public_key()));
    }

    fn sign_and_apply(&mut self, cx: &mut Cx<'_>, identity: &Identity, meta: Meta) {
        let publishers = &cx.config.publishers;
        if !publishers.is_empty() && !publishers.contains(&identity.public_key()) {
            return cx.event(Event::NotPublisher { id: meta.id });
        }
        if meta.check().is_err() {
            return cx.event(Event::MetaRefused { conn: None, reason: Invalid::Malformed });
        }
        let (id, named) = (meta.id, meta.is_item().then(|| Named::of(&meta)));
        let signed = meta.sign(identity);
        if matches!(self.catalogue.put(signed), Put::New | Put::Replaced) {
            self.stats.published += 1;
            if let Some(named) = named {
                cx.defer(Deferred::Catalogued(vec![named]));
            }
            self.forward(cx, id, None);
        }
    }
}

fn violation(what: &str) -> CloseReason {
    CloseReason::Protocol(Violation::Reconcile(what.to_string()))
}
