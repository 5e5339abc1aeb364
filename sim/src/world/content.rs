//! Content in the simulator: the `--content` workload, each node's store, serving, pieces on
//! the wire, and the content invariants.
//!
//! Verification stays honest at scale: every item's bytes are generated (BLAKE3 XOF from the
//! seed) and hashed for real once, when the item is created: its id is the plain BLAKE3 of
//! those bytes and every piece hash is `piece_cv` over the real piece. Nodes then run the same
//! code as in production: heads are verified against the id with `blake3::hazmat`, each piece's
//! hash is compared with its verified chaining value. What the simulator skips is re-hashing
//! the same bytes at every hop: a piece on the wire carries the hash of the bytes it stands
//! for (the real one, or for a corrupting peer the hash of corrupted bytes), exactly what the
//! production transport computes.

use mynet_core::RequestId;
use mynet_core::content::proto::{self, PieceHeader};
use mynet_core::content::verify::{Layout, PIECE_LEN, page_cv, piece_cv};
use mynet_core::content::{ContentId, PieceData, PieceRef, Serve};
use mynet_core::wire::Response;

use super::*;

/// Fastest simulated disk write of a piece group.
const DISK_US: u64 = 2_000;
/// Pieces per connection past the point where a cancel can recall them: the production
/// writer's piece and its queue of one (`PIECES_QUEUED_MAX` in the runtime).
pub(super) const PIECES_COMMITTED_MAX: usize = 2;
/// Pieces per connection in the node's uplink at once. One: the uplink is shared round-robin
/// among connections a piece at a time, as TCP shares a link among flows, rather than one
/// connection's queue holding up every other's.
pub(super) const PIECES_IN_UPLINK_MAX: usize = 1;

/// A generated item.
#[derive(Clone, Debug)]
pub struct SimItem {
    pub id: ContentId,
    pub size: u64,
    /// Per piece: the hash a genuine copy has (chaining value, or the id for one piece).
    pub hashes: Vec<[u8; 32]>,
    /// The node it is added at, and when.
    pub origin: usize,
    pub at_us: u64,
}

impl SimItem {
    /// Its head: the piece hashes of a one-page item, the page list of a larger one.
    pub fn head(&self) -> Vec<[u8; 32]> {
        let layout = Layout { size: self.size };
        if layout.pages() == 1 {
            return self.hashes.clone();
        }
        (0..layout.pages()).map(|page| page_cv(layout, page, self.page(page))).collect()
    }

    /// The piece hashes of page `page`.
    pub fn page(&self, page: u64) -> &[[u8; 32]] {
        let range = Layout { size: self.size }.page_pieces(page);
        &self.hashes[range.start as usize..range.end as usize]
    }

    /// Generates `size` bytes from `key` and hashes them for real.
    pub fn generate(key: [u8; 32], size: u64, origin: usize, at_us: u64) -> SimItem {
        let mut xof = blake3::Hasher::new_keyed(&key).finalize_xof();
        let mut whole = blake3::Hasher::new();
        let layout = Layout { size };
        let mut hashes = Vec::with_capacity(layout.pieces() as usize);
        let mut piece = vec![0u8; PIECE_LEN as usize];
        for index in 0..layout.pieces() {
            let len = layout.piece_len(index) as usize;
            xof.fill(&mut piece[..len]);
            whole.update(&piece[..len]);
            if layout.pieces() > 1 {
                hashes.push(piece_cv(index, &piece[..len]));
            }
        }
        let id = ContentId(*whole.finalize().as_bytes());
        if layout.pieces() == 1 {
            hashes.push(id.0);
        }
        SimItem { id, size, hashes, origin, at_us }
    }
}

/// How a misbehaving content server misbehaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContentFault {
    /// Serves pieces whose bytes are corrupted.
    BadPieces,
    /// Answers piece requests with nothing at all (a stall mid-piece).
    Stalls,
    /// Claims not to hold pieces it advertised.
    Lies,
}

/// A node's simulated store: what is durable survives crashes.
#[derive(Clone, Debug, Default)]
pub struct SimStore {
    pub heads: BTreeSet<ContentId>,
    pub held: BTreeMap<ContentId, BTreeSet<u64>>,
}

/// The workload and its statistics.
#[derive(Debug, Default)]
pub struct Workload {
    pub items: Vec<SimItem>,
    pub by_id: BTreeMap<ContentId, usize>,
    pub bytes_transferred: u64,
    pub replicate_us: Durations,
    pub skipped: u64,
}

/// `content` in the summary.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct ContentSummary {
    pub items: usize,
    pub replicas_expected: usize,
    pub replicas_complete: usize,
    pub bytes_transferred: u64,
    pub wasted_bytes: u64,
    pub bad_pieces_caught: u64,
    pub time_to_replicate: Percentiles,
    pub items_not_added: u64,
}

impl World {
    /// Creates the `--content` workload: items of varied sizes added at random honest nodes
    /// between 5% and 40% of the run.
    pub(super) fn schedule_content(&mut self) {
        let count = self.config.content;
        let duration_us = self.config.duration_ms * 1000;
        for i in 0..count {
            let mut key = [0u8; 32];
            self.rng.fill_bytes(&mut key);
            // Sizes from 1 KiB to 16 MiB, log-uniform; some exactly on piece boundaries; or the
            // sizes the run asks for.
            let exp = 10 + self.rng.next_u64() % 14;
            let mut size = (1u64 << exp) + self.rng.next_u64() % (1u64 << exp);
            if i % 7 == 0 {
                size = size.div_ceil(PIECE_LEN) * PIECE_LEN;
            }
            if let Some(&chosen) = self.config.content_sizes.get(i) {
                size = chosen;
            }
            let origin = (self.rng.next_u64() % self.publisher_count() as u64) as usize;
            let at = duration_us / 20 + self.rng.next_u64() % (duration_us * 35 / 100).max(1);
            let item = SimItem::generate(key, size, origin, at);
            self.content.by_id.insert(item.id, i);
            self.content.items.push(item);
            self.schedule(at, Ev::AddItem(i));
        }
        // Misbehaving servers among the nodes, when the profile has adversaries.
        if self.config.faults.adversaries > 0.0 && count > 0 {
            let faulty = ((self.honest as f64 * self.config.faults.adversaries).ceil() as usize).min(self.honest / 4);
            for k in 0..faulty {
                let n = 1 + (self.rng.next_u64() % (self.honest as u64 - 1).max(1)) as usize;
                let fault = [ContentFault::BadPieces, ContentFault::Stalls, ContentFault::Lies][k % 3];
                if let Some(h) = self.honest_mut(n) {
                    h.content_fault = Some(fault);
                }
            }
        }
    }

    pub(super) fn add_item(&mut self, i: usize) -> Result<(), SimError> {
        // The drawn node, or if it is down (not joined yet, crashed) the next one that runs.
        let up = |w: &World, n: usize| w.honest(n).is_some_and(|h| h.journaled.is_some());
        let drawn = self.content.items[i].origin;
        let publishers = self.publisher_count();
        let Some(n) = (0..publishers).map(|k| (drawn + k) % publishers).find(|n| up(self, *n)) else {
            self.content.skipped += 1;
            return Ok(());
        };
        self.content.items[i].origin = n;
        let item = self.content.items[i].clone();
        if let Some(h) = self.honest_mut(n) {
            h.store.heads.insert(item.id);
            h.store.held.insert(item.id, (0..item.hashes.len() as u64).collect());
        }
        self.node_input(n, Input::Added { id: item.id, size: item.size })?;
        self.record_published(n, item.id);
        Ok(())
    }

    /// Executes a node's content outputs.
    pub(super) fn apply_content(&mut self, n: usize, output: Output) {
        match output {
            Output::StorePiece { piece, .. } => {
                let epoch = self.nodes[n].epoch;
                self.schedule(self.now_us + DISK_US, Ev::StoreDone { node: n, epoch, piece });
            }
            Output::StoreHead { id, .. } => {
                if let Some(h) = self.honest_mut(n) {
                    h.store.heads.insert(id);
                }
            }
            Output::DeleteItem { id } => {
                if let Some(h) = self.honest_mut(n) {
                    h.store.heads.remove(&id);
                    h.store.held.remove(&id);
                }
            }
            Output::Serve { conn, request, what } => self.serve(n, conn, request, what),
            Output::CancelServe { conn, request } => {
                let end = self.end(n, conn);
                if let Some(link) = self.links.get_mut(&end) {
                    // The first waiting ones are committed (read for the writer) with the one
                    // on the uplink; a cancel reaches only those behind them.
                    let committed = PIECES_COMMITTED_MAX.saturating_sub(link.committed);
                    if let Some(at) = link.waiting.iter().skip(committed).position(|(r, _, _)| *r == request) {
                        link.waiting.remove(committed + at);
                    }
                }
            }
            _ => {}
        }
    }

    pub(super) fn store_done(&mut self, n: usize, epoch: u32, piece: PieceRef) -> Result<(), SimError> {
        if self.nodes[n].epoch != epoch {
            // The process crashed before the write was durable: it is lost.
            return Ok(());
        }
        if let Some(h) = self.honest_mut(n) {
            h.store.held.entry(piece.id).or_default().insert(piece.index);
        }
        self.node_input(n, Input::Stored { pieces: vec![piece] })
    }

    fn serve(&mut self, n: usize, conn: ConnId, request: RequestId, what: Serve) {
        let end = self.end(n, conn);
        let Some(h) = self.honest(n) else { return };
        let fault = h.content_fault;
        let answer = match what {
            Serve::Head { id } => match self.content.by_id.get(&id) {
                Some(&i) if h.store.heads.contains(&id) => {
                    let item = &self.content.items[i];
                    proto::Response::Head { size: item.size, cvs: item.head() }
                }
                _ => proto::Response::NotHeld,
            },
            Serve::Page { id, page } => match self.content.by_id.get(&id) {
                Some(&i)
                    if h.store.heads.contains(&id) && page < Layout { size: self.content.items[i].size }.pages() =>
                {
                    proto::Response::Page { cvs: self.content.items[i].page(page).to_vec() }
                }
                _ => proto::Response::NotHeld,
            },
            Serve::Piece { id, index, size } => {
                let held = h.store.held.get(&id).is_some_and(|s| s.contains(&index));
                let genuine =
                    self.content.by_id.get(&id).and_then(|&i| self.content.items[i].hashes.get(index as usize));
                match (held, genuine, fault) {
                    (_, _, Some(ContentFault::Stalls)) => return,
                    (true, Some(hash), fault) if fault != Some(ContentFault::Lies) => {
                        let mut hash = *hash;
                        if fault == Some(ContentFault::BadPieces) {
                            // The hash of the piece's bytes with one bit flipped.
                            hash = *blake3::hash(&[&hash[..], b"flipped"].concat()).as_bytes();
                        }
                        let header = PieceHeader { id, index, size };
                        return self.queue_piece(end, request, header, hash);
                    }
                    _ => proto::Response::NotHeld,
                }
            }
        };
        let message = Message::Response { id: request, body: Response::Content(answer) };
        if let Ok(bytes) = wire::encode_frame(&message) {
            self.send(end, bytes);
        }
    }

    /// Sends the piece now if this end has none on the uplink ([`PIECES_IN_UPLINK_MAX`]), else
    /// queues it (behind [`PIECES_COMMITTED_MAX`] committed ones a cancel can still reach it).
    fn queue_piece(&mut self, end: End, request: RequestId, header: PieceHeader, hash: [u8; 32]) {
        let Some(link) = self.links.get_mut(&end) else { return };
        if link.committed >= PIECES_IN_UPLINK_MAX {
            link.waiting.push_back((request, header, hash));
            return;
        }
        link.committed += 1;
        self.send_piece(end, request, header, hash);
    }

    /// A piece left `from`'s uplink: the oldest waiting one goes next.
    pub(super) fn piece_sent(&mut self, from: End) {
        let Some(link) = self.links.get_mut(&from) else { return };
        link.committed = link.committed.saturating_sub(1);
        if let Some((request, header, hash)) = link.waiting.pop_front() {
            link.committed += 1;
            self.send_piece(from, request, header, hash);
        }
    }

    fn send_piece(&mut self, end: End, request: RequestId, header: PieceHeader, hash: [u8; 32]) {
        let Some(peer) = self.links.get(&end).map(|l| l.peer) else { return };
        let len = header.piece_len().unwrap_or(0);
        self.messages += 1;
        self.bytes += len;
        self.content.bytes_transferred += len;
        let active = self.faults_active();
        let at = self.delivery_time(end, peer, len as usize + 64, active, true);
        if self.blocked_past_user_timeout(end, peer) {
            self.count("user_timeout_reset");
            return self.reset_link(end, self.now_us + USER_TIMEOUT_US, "connection timed out");
        }
        if let Some(link) = self.links.get_mut(&end) {
            link.last_piece_us = at;
        }
        // It has left the uplink once serialized (or, on an idle uplink, at once).
        let sent = self.nodes[end.0].uplink_free_us.max(self.now_us).min(at);
        self.schedule(sent, Ev::PieceSent { from: end });
        self.schedule(at, Ev::Piece { to: peer, request, header, hash });
    }

    pub(super) fn piece_arrives(
        &mut self,
        to: End,
        request: RequestId,
        header: PieceHeader,
        hash: [u8; 32],
    ) -> Result<(), SimError> {
        let genuine =
            self.content.by_id.get(&header.id).and_then(|&i| self.content.items[i].hashes.get(header.index as usize))
                == Some(&hash);
        if let Some(h) = self.honest_mut(to.0) {
            h.last_piece = Some((PieceRef { id: header.id, index: header.index }, genuine));
        }
        let input = Input::Piece { conn: to.2, request, header, hash, data: PieceData::default() };
        let result = self.deliver_input(to, input);
        if let Some(h) = self.honest_mut(to.0) {
            h.last_piece = None;
        }
        result
    }

    /// Safety: a node stores only pieces that were genuine, and the pieces it counts as held
    /// are durable in its store.
    pub(super) fn observe_content(&mut self, n: usize, output: &Output) -> Result<(), SimError> {
        let now = self.now_us;
        match output {
            Output::StorePiece { piece, .. } => {
                let genuine = self.honest(n).and_then(|h| h.last_piece).is_some_and(|(p, ok)| p == *piece && ok);
                if !genuine {
                    return Err(
                        self.invariant(n, Violation::UnverifiedPiece(format!("{} piece {}", piece.id, piece.index)))
                    );
                }
            }
            Output::Event(Event::ItemComplete { id, .. }) => {
                if let Some(&i) = self.content.by_id.get(id) {
                    let at = self.content.items[i].at_us;
                    self.content.replicate_us.record(now.saturating_sub(at));
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// After a restart, as the production driver does: an item that is complete in the store
    /// but unknown to the node (the process died between the import and the logged input) is
    /// announced to the node again.
    pub(super) fn reconcile_store(&mut self, n: usize) -> Result<(), SimError> {
        let Some(h) = self.honest(n) else { return Ok(()) };
        let Some(node) = h.journaled.as_ref().map(Journaled::node) else { return Ok(()) };
        let mut missing = Vec::new();
        for (id, held) in &h.store.held {
            let Some(&i) = self.content.by_id.get(id) else { continue };
            let item = &self.content.items[i];
            if held.len() == item.hashes.len() && h.store.heads.contains(id) && !node.content().holds(id) {
                missing.push((*id, item.size));
            }
        }
        for (id, size) in missing {
            self.node_input(n, Input::Added { id, size })?;
            self.record_published(n, id);
        }
        Ok(())
    }

    /// After a restart: every piece the node counts as held is durable in its store.
    pub(super) fn check_held_durable(&self, n: usize) -> Result<(), SimError> {
        let (Some(node), Some(h)) = (self.node(n), self.honest(n)) else { return Ok(()) };
        for (id, item) in node.content().items() {
            let stored = h.store.held.get(id);
            for index in 0..item.held.len() {
                if item.held.get(index) && !stored.is_some_and(|s| s.contains(&index)) {
                    let what = format!("{id} piece {index} counted as held but not durable");
                    return Err(self.invariant(n, Violation::UnverifiedPiece(what)));
                }
            }
        }
        Ok(())
    }

    /// Whether node `n` must end up holding every item (honest, replicating).
    pub(super) fn replicates(&self, n: usize) -> bool {
        self.honest(n).is_some_and(|h| h.content_fault.is_none())
            && self.config.node_config.replicate == mynet_core::config::Replicate::All
    }

    /// Liveness: every replicating node holds every item that was added.
    pub(super) fn check_content(&self) -> Result<(), SimError> {
        let budget_s = (self.config.duration_ms * 1000 - self.config.heal_at_us()) / 1_000_000;
        for n in (0..self.honest).filter(|n| self.replicates(*n)) {
            let Some(node) = self.node(n) else { continue };
            for item in self.content.items.iter().filter(|i| i.at_us <= self.now_us && self.added(i)) {
                if !node.content().holds(&item.id) {
                    let held = node.content().items().get(&item.id).map_or(0, |i| i.held.ones());
                    let failure = LivenessFailure::ContentMissing {
                        node: n,
                        item: item.id.to_string(),
                        held,
                        pieces: item.hashes.len() as u64,
                    };
                    return Err(SimError::Liveness {
                        failure,
                        node: Some(n),
                        budget_s,
                        command: self.config.command(),
                    });
                }
            }
            self.check_held_durable(n)?;
        }
        Ok(())
    }

    /// Whether an item was added, at a node that serves it honestly (an item whose only
    /// holder serves bad pieces or none cannot be expected anywhere else).
    pub(super) fn added(&self, item: &SimItem) -> bool {
        if self.honest(item.origin).is_some_and(|h| h.content_fault.is_some()) {
            return false;
        }
        self.honest(item.origin).is_some_and(|h| h.store.heads.contains(&item.id))
            || (0..self.honest).any(|n| self.node(n).is_some_and(|node| node.content().holds(&item.id)))
    }

    pub(super) fn content_summary(&self) -> ContentSummary {
        let replicating: Vec<usize> = (0..self.honest).filter(|n| self.replicates(*n)).collect();
        let added: Vec<&SimItem> =
            self.content.items.iter().filter(|i| i.at_us <= self.now_us && self.added(i)).collect();
        let mut summary = ContentSummary {
            items: added.len(),
            replicas_expected: added.len() * replicating.len(),
            bytes_transferred: self.content.bytes_transferred,
            time_to_replicate: self.content.replicate_us.percentiles(),
            items_not_added: self.content.skipped,
            ..ContentSummary::default()
        };
        for n in 0..self.honest {
            let Some(node) = self.node(n) else { continue };
            let (_, sync) = node.content().status();
            summary.wasted_bytes += sync.stats.wasted_bytes;
            summary.bad_pieces_caught += sync.stats.bad_pieces;
            if replicating.contains(&n) {
                summary.replicas_complete += added.iter().filter(|i| node.content().holds(&i.id)).count();
            }
        }
        summary
    }
}
