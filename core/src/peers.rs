//! What the node remembers about other nodes: discovered peers and dial back-off (SPEC R5.5).
//!
//! The table is bounded by `max_known_peers` and indexed so that nothing per message or per
//! closed connection walks it: random sampling draws from id vectors (O(k log n) for k peers),
//! eviction takes the first entry of an ordered set (O(log n)).

use core::net::SocketAddr;
use std::collections::{BTreeMap, BTreeSet};

use rand_chacha::ChaCha8Rng;
use rand_core::Rng;
use serde::{Deserialize, Serialize};

use crate::id::{NodeId, PublicKey};
use crate::time::Mono;
use crate::wire::PeerRecord;

/// Dial failures after which an unverified peer is forgotten.
pub const UNVERIFIED_FAILURES_MAX: u32 = 3;
/// Longest pause between two dials of one peer.
pub const REDIAL_BACKOFF_MS_MAX: u64 = 120_000;

/// How we first heard of a peer (`mynet peers`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Found {
    /// A bootstrap node from the config.
    Bootstrap,
    /// Peer exchange (another peer's answer).
    #[default]
    Exchange,
    /// A DHT lookup reached it.
    Dht,
    /// A LAN multicast announcement.
    Lan,
    /// It connected to us.
    Inbound,
}

/// A peer we have heard of.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KnownPeer {
    /// Its key, as claimed by whoever told us; a handshake must prove it.
    pub public_key: PublicKey,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Whether we have completed a verified handshake with it.
    pub verified: bool,
    /// When we first heard of it (SPEC R5.5 `discovered_at`).
    pub discovered_at: Mono,
    /// Last time it was connected or announced.
    pub last_seen: Mono,
    /// Dial failures since the last success.
    pub failures: u32,
    /// How we first heard of it.
    #[serde(default)]
    pub found_by: Found,
    /// Earliest time to dial it again.
    pub next_dial: Mono,
    /// Position in the pool of every known id.
    slot: u32,
    /// Position in the pool of verified ids, if verified.
    verified_slot: Option<u32>,
    /// The `last_seen` its eviction key was made with. Sightings do not move the key (most
    /// discovery records are peers we know); eviction refreshes stale keys lazily.
    ranked_at: Mono,
}

impl KnownPeer {
    /// Eviction key: unverified before verified, then the longest unseen, then by id.
    fn rank(&self, id: NodeId) -> (bool, Mono, NodeId) {
        (self.verified, self.ranked_at, id)
    }
}

/// Stale eviction keys refreshed per eviction at most; past it the first is evicted anyway,
/// so one eviction costs O(log n) whatever the table holds.
const RERANK_PER_EVICTION_MAX: usize = 16;

/// Pools at most this large are sampled exactly (a shuffled scan); larger ones by drawing
/// random positions, at most `want * 4 + 64` times.
pub const SCAN_MAX: usize = 256;

/// The table of known peers, bounded by `max`.
///
/// Only `peers` and `max` are stored (snapshots, state hash): every peer carries its positions
/// and its eviction key, so the indexes are rebuilt exactly on restore.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(from = "Stored")]
pub struct KnownPeers {
    peers: BTreeMap<NodeId, KnownPeer>,
    /// Every known peer as a dial candidate, in no particular order (each peer's `slot` is its
    /// position). Sampling reads what it needs here, without a lookup per draw.
    #[serde(skip)]
    all: Vec<Dialable>,
    /// Every verified peer as discovery passes it on (each one's `verified_slot` is its position).
    #[serde(skip)]
    verified: Vec<PeerRecord>,
    /// Eviction order, least useful first.
    #[serde(skip)]
    ranked: BTreeSet<(bool, Mono, NodeId)>,
    max: usize,
}

/// A known peer as `fill_peers` looks at it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Dialable {
    id: NodeId,
    addr: SocketAddr,
    next_dial: Mono,
}

impl KnownPeer {
    fn dialable(&self, id: NodeId) -> Dialable {
        Dialable { id, addr: self.addr, next_dial: self.next_dial }
    }

    fn record(&self, id: NodeId) -> PeerRecord {
        PeerRecord { node_id: id, address: self.addr, public_key: self.public_key }
    }
}

/// What a snapshot holds of [`KnownPeers`].
#[derive(Deserialize)]
struct Stored {
    peers: BTreeMap<NodeId, KnownPeer>,
    max: usize,
}

impl From<Stored> for KnownPeers {
    fn from(stored: Stored) -> KnownPeers {
        let unset = Dialable { id: NodeId([0; 32]), addr: SocketAddr::from(([0, 0, 0, 0], 0)), next_dial: Mono(0) };
        let mut all = vec![unset; stored.peers.len()];
        let verified_len = stored.peers.values().filter(|p| p.verified_slot.is_some()).count();
        let mut verified =
            vec![PeerRecord { node_id: unset.id, address: unset.addr, public_key: PublicKey([0; 32]) }; verified_len];
        let mut ranked = BTreeSet::new();
        for (id, p) in &stored.peers {
            // A snapshot is our own writing; a slot out of range would only come from a
            // corrupt one, and then `check` reports the table out of step.
            if let Some(slot) = all.get_mut(p.slot as usize) {
                *slot = p.dialable(*id);
            }
            if let Some(slot) = p.verified_slot.and_then(|v| verified.get_mut(v as usize)) {
                *slot = p.record(*id);
            }
            ranked.insert(p.rank(*id));
        }
        KnownPeers { peers: stored.peers, all, verified, ranked, max: stored.max }
    }
}

impl KnownPeers {
    /// An empty table holding at most `max` peers.
    pub fn new(max: usize) -> KnownPeers {
        KnownPeers { max: max.max(1), ..KnownPeers::default() }
    }

    /// Changes the bound, forgetting peers if it shrank.
    pub fn set_max(&mut self, max: usize) {
        self.max = max.max(1);
        while self.peers.len() > self.max {
            self.evict_one();
        }
    }

    /// How many peers are known.
    pub fn len(&self) -> usize {
        self.peers.len()
    }

    /// Whether no peer is known.
    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    /// One known peer.
    pub fn get(&self, id: &NodeId) -> Option<&KnownPeer> {
        self.peers.get(id)
    }

    /// Records a peer heard of through peer exchange; returns whether it was new.
    pub fn learn(&mut self, record: &PeerRecord, now: Mono) -> bool {
        self.learn_from(record, now, Found::Exchange)
    }

    /// Records a peer heard of through `found`; returns whether it was new.
    pub fn learn_from(&mut self, record: &PeerRecord, now: Mono, found: Found) -> bool {
        if self.peers.contains_key(&record.node_id) {
            self.update(record.node_id, |known| {
                known.last_seen = now;
                if !known.verified {
                    known.addr = record.address;
                    known.public_key = record.public_key;
                }
            });
            return false;
        }
        if self.peers.len() >= self.max && !self.evict_one() {
            return false;
        }
        self.insert(record.node_id, record.public_key, record.address, false, now, found);
        true
    }

    /// Records a peer whose handshake we verified.
    pub fn verified(&mut self, id: NodeId, public_key: PublicKey, addr: Option<SocketAddr>, now: Mono, found: Found) {
        if !self.peers.contains_key(&id) {
            let Some(addr) = addr else { return };
            if self.peers.len() >= self.max && !self.evict_one() {
                return;
            }
            self.insert(id, public_key, addr, true, now, found);
            return;
        }
        self.update(id, |entry| {
            entry.public_key = public_key;
            entry.verified = true;
            entry.failures = 0;
            entry.last_seen = now;
            if let Some(addr) = addr {
                entry.addr = addr;
            }
        });
    }

    /// Records a failed dial and schedules the next one with exponential back-off.
    pub fn dial_failed(&mut self, id: &NodeId, now: Mono) {
        self.dial_failed_wait(id, now, 0);
    }

    /// Records a failed dial whose peer asked us to wait `wait_ms` (a refusal's retry hint):
    /// the next one is after the back-off and the wait, whichever is later.
    pub fn dial_failed_wait(&mut self, id: &NodeId, now: Mono, wait_ms: u64) {
        let Some(entry) = self.peers.get_mut(id) else { return };
        entry.failures = entry.failures.saturating_add(1);
        if !entry.verified && entry.failures >= UNVERIFIED_FAILURES_MAX {
            self.remove(id);
            return;
        }
        let backoff_ms = 1000u64.saturating_mul(1 << entry.failures.min(20)).min(REDIAL_BACKOFF_MS_MAX);
        entry.next_dial = now.plus_ms(backoff_ms.max(wait_ms));
        if let Some(slot) = self.all.get_mut(entry.slot as usize) {
            *slot = entry.dialable(*id);
        }
    }

    /// Forgets a peer (e.g. it proved another identity than the one we were told).
    pub fn forget(&mut self, id: &NodeId) {
        self.remove(id);
    }

    /// Up to `want` dial candidates chosen at random: due at `now` and not excluded.
    pub fn candidates(
        &self,
        rng: &mut ChaCha8Rng,
        now: Mono,
        want: usize,
        exclude: impl Fn(&NodeId) -> bool,
    ) -> Vec<(NodeId, SocketAddr)> {
        let due = |d: &Dialable| d.next_dial <= now && !exclude(&d.id);
        pick(rng, &self.all, want, due).into_iter().map(|d| (d.id, d.addr)).collect()
    }

    /// Up to `max` verified peers chosen at random, none of them in `exclude`.
    pub fn sample_verified(
        &self,
        rng: &mut ChaCha8Rng,
        max: usize,
        exclude: impl Fn(&NodeId) -> bool,
    ) -> Vec<PeerRecord> {
        pick(rng, &self.verified, max, |r| !exclude(&r.node_id))
    }

    /// Checks that the indexes agree with the table (O(n): for tests and fuzzing).
    pub fn check(&self) -> Result<(), String> {
        if self.peers.len() > self.max || self.all.len() != self.peers.len() || self.ranked.len() != self.peers.len() {
            return Err(format!(
                "{} peers (max {}), {} in the pool, {} ranked",
                self.peers.len(),
                self.max,
                self.all.len(),
                self.ranked.len()
            ));
        }
        let mut verified = 0;
        for (id, p) in &self.peers {
            if self.all.get(p.slot as usize) != Some(&p.dialable(*id)) || !self.ranked.contains(&p.rank(*id)) {
                return Err(format!("{id:?}: index out of step"));
            }
            match p.verified_slot {
                Some(v) if p.verified && self.verified.get(v as usize) == Some(&p.record(*id)) => verified += 1,
                None if !p.verified => {}
                _ => return Err(format!("{id:?}: verified index out of step")),
            }
        }
        if verified != self.verified.len() {
            return Err(format!("{verified} verified peers, {} in the verified pool", self.verified.len()));
        }
        Ok(())
    }

    fn insert(&mut self, id: NodeId, public_key: PublicKey, addr: SocketAddr, verified: bool, now: Mono, found: Found) {
        let mut peer = KnownPeer {
            found_by: found,
            public_key,
            addr,
            verified,
            discovered_at: now,
            last_seen: now,
            failures: 0,
            next_dial: now,
            slot: self.all.len() as u32,
            verified_slot: None,
            ranked_at: now,
        };
        self.all.push(peer.dialable(id));
        if verified {
            peer.verified_slot = Some(self.verified.len() as u32);
            self.verified.push(peer.record(id));
        }
        self.ranked.insert(peer.rank(id));
        self.peers.insert(id, peer);
    }

    /// Changes one entry, keeping the verified pool in step. The eviction key moves only when
    /// the entry becomes verified; a newer `last_seen` is taken into account at eviction.
    fn update(&mut self, id: NodeId, change: impl FnOnce(&mut KnownPeer)) {
        let Some(entry) = self.peers.get_mut(&id) else { return };
        let (was_verified, old_rank) = (entry.verified, entry.rank(id));
        change(entry);
        if entry.verified && !was_verified {
            self.ranked.remove(&old_rank);
            entry.ranked_at = entry.last_seen;
            self.ranked.insert(entry.rank(id));
        }
        if entry.verified && entry.verified_slot.is_none() {
            entry.verified_slot = Some(self.verified.len() as u32);
            self.verified.push(entry.record(id));
        }
        // The pools carry copies of what sampling reads.
        if let Some(slot) = self.all.get_mut(entry.slot as usize) {
            *slot = entry.dialable(id);
        }
        if let Some(slot) = entry.verified_slot.and_then(|v| self.verified.get_mut(v as usize)) {
            *slot = entry.record(id);
        }
    }

    fn remove(&mut self, id: &NodeId) -> bool {
        let Some(peer) = self.peers.remove(id) else { return false };
        self.ranked.remove(&peer.rank(*id));
        if let Some(moved) = swap_remove(&mut self.all, peer.slot as usize)
            && let Some(p) = self.peers.get_mut(&moved.id)
        {
            p.slot = peer.slot;
        }
        if let Some(slot) = peer.verified_slot
            && let Some(moved) = swap_remove(&mut self.verified, slot as usize)
            && let Some(p) = self.peers.get_mut(&moved.node_id)
        {
            p.verified_slot = Some(slot);
        }
        true
    }

    /// Forgets the least useful peer: unverified before verified, then the longest unseen.
    fn evict_one(&mut self) -> bool {
        for _ in 0..RERANK_PER_EVICTION_MAX {
            let Some(&(verified, ranked_at, id)) = self.ranked.first() else { return false };
            let Some(peer) = self.peers.get_mut(&id) else { return false };
            if peer.last_seen <= ranked_at {
                return self.remove(&id);
            }
            // Seen since it was ranked: move it to where it belongs and look again.
            self.ranked.pop_first();
            peer.ranked_at = peer.last_seen;
            self.ranked.insert((verified, peer.ranked_at, id));
        }
        match self.ranked.first().map(|(_, _, id)| *id) {
            Some(id) => self.remove(&id),
            None => false,
        }
    }
}

/// Removes `pool[at]` by moving the last element there; returns the moved element, if any.
fn swap_remove<T: Copy>(pool: &mut Vec<T>, at: usize) -> Option<T> {
    if at >= pool.len() {
        return None;
    }
    pool.swap_remove(at);
    pool.get(at).copied()
}

/// Up to `want` distinct ids from `pool` that `accept` takes, uniformly at random (Fisher-Yates).
/// Pools up to `SCAN_MAX` are drawn from until exhausted (exact); larger ones at most
/// `want * 4 + 64` times with a shuffle that only records the positions it moved (O(k log k),
/// no copy of the pool), so the cost does not grow with the pool.
fn pick<T: Clone>(rng: &mut ChaCha8Rng, pool: &[T], want: usize, mut accept: impl FnMut(&T) -> bool) -> Vec<T> {
    let n = pool.len();
    let mut out = Vec::with_capacity(want.min(n));
    if n <= SCAN_MAX {
        // Small pools: shuffle positions in place (a few hundred bytes).
        let mut order: Vec<u16> = (0..n as u16).collect();
        for i in 0..n {
            if out.len() == want {
                break;
            }
            let j = i + (rng.next_u64() % (n - i) as u64) as usize;
            order.swap(i, j);
            let item = &pool[usize::from(order[i])];
            if accept(item) {
                out.push(item.clone());
            }
        }
        return out;
    }
    let steps = n.min(want.saturating_mul(4).saturating_add(64));
    let mut moved: BTreeMap<usize, usize> = BTreeMap::new();
    for i in 0..steps {
        if out.len() == want {
            break;
        }
        let j = i + (rng.next_u64() % (n - i) as u64) as usize;
        let at_j = moved.get(&j).copied().unwrap_or(j);
        let at_i = moved.remove(&i).unwrap_or(i);
        if j != i {
            moved.insert(j, at_i);
        }
        if accept(&pool[at_j]) {
            out.push(pool[at_j].clone());
        }
    }
    out
}

/// Moves a uniform random selection of `k` elements to the front (Fisher-Yates prefix).
pub fn partial_shuffle<T>(rng: &mut ChaCha8Rng, items: &mut [T], k: usize) {
    let n = items.len();
    for i in 0..k.min(n) {
        let j = i + (rng.next_u64() % (n - i) as u64) as usize;
        items.swap(i, j);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::SeedableRng;

    fn record(i: u8) -> PeerRecord {
        PeerRecord {
            node_id: NodeId([i; 32]),
            address: SocketAddr::from(([10, 0, 0, i], 7401)),
            public_key: PublicKey([i; 32]),
        }
    }

    #[test]
    fn table_is_bounded_and_prefers_verified() {
        let mut table = KnownPeers::new(4);
        table.verified(
            NodeId([0; 32]),
            PublicKey([0; 32]),
            Some(SocketAddr::from(([10, 0, 0, 0], 1))),
            Mono(0),
            Found::Exchange,
        );
        for i in 1..20 {
            table.learn(&record(i), Mono(u64::from(i)));
        }
        assert_eq!(table.len(), 4);
        assert!(table.get(&NodeId([0; 32])).is_some(), "the verified peer survives eviction");
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        assert_eq!(table.sample_verified(&mut rng, 50, |_| false).len(), 1);
        table.check().expect("indexes in step");
    }

    fn id(i: u32) -> NodeId {
        let mut b = [0u8; 32];
        b[..4].copy_from_slice(&i.to_be_bytes());
        NodeId(b)
    }

    #[test]
    fn large_tables_stay_indexed_through_churn_and_sample_without_repeats() {
        let mut table = KnownPeers::new(1000);
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for i in 0..3000u32 {
            let record = PeerRecord {
                node_id: id(i),
                address: SocketAddr::from(([10, 1, (i >> 8) as u8, i as u8], 7401)),
                public_key: PublicKey([0; 32]),
            };
            table.learn(&record, Mono(u64::from(i)));
            if i % 3 == 0 {
                table.verified(id(i), PublicKey([1; 32]), None, Mono(u64::from(i)), Found::Exchange);
            }
            if i % 7 == 0 {
                table.dial_failed(&id(i / 2), Mono(u64::from(i)));
            }
            if i % 11 == 10 {
                table.forget(&id(i - 1));
            }
        }
        table.check().expect("indexes in step");
        assert_eq!(table.len(), 1000);
        let sample = table.sample_verified(&mut rng, 50, |_| false);
        assert_eq!(sample.len(), 50);
        let distinct: BTreeSet<NodeId> = sample.iter().map(|r| r.node_id).collect();
        assert_eq!(distinct.len(), 50);
        let candidates = table.candidates(&mut rng, Mono(10_000), 8, |id| id.0[3] % 2 == 0);
        assert_eq!(candidates.len(), 8);
        assert!(candidates.iter().all(|(id, _)| id.0[3] % 2 == 1));
        let restored: KnownPeers =
            postcard::from_bytes(&postcard::to_allocvec(&table).expect("encodes")).expect("decodes");
        restored.check().expect("indexes rebuilt on restore");
        let (mut a, mut b) = (ChaCha8Rng::seed_from_u64(9), ChaCha8Rng::seed_from_u64(9));
        assert_eq!(
            table.sample_verified(&mut a, 20, |_| false),
            restored.sample_verified(&mut b, 20, |_| false),
            "a restored table samples exactly as the live one"
        );
        table.set_max(10);
        table.check().expect("indexes in step after shrinking");
    }

    #[test]
    fn unverified_peer_is_forgotten_after_failures() {
        let mut table = KnownPeers::new(10);
        table.learn(&record(1), Mono(0));
        for _ in 0..UNVERIFIED_FAILURES_MAX {
            table.dial_failed(&NodeId([1; 32]), Mono(0));
        }
        assert!(table.is_empty());
    }
}
