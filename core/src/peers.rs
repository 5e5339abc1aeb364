//! What the node remembers about other nodes: discovered peers, dial back-off, and the
//! misbehaviour scores that lead to a blacklist (SPEC R5.5, R6.3). Everything here is bounded.

use core::net::{IpAddr, SocketAddr};
use std::collections::BTreeMap;

use rand_chacha::ChaCha8Rng;
use rand_core::Rng;
use serde::{Deserialize, Serialize};

use crate::id::{NodeId, PublicKey};
use crate::time::Mono;
use crate::wire::PeerRecord;

/// Score at which an offender is blacklisted.
pub const BAN_SCORE: u32 = 100;
/// Most offenders tracked at once; the lowest score is forgotten first.
pub const OFFENDERS_MAX: usize = 4096;
/// Dial failures after which an unverified peer is forgotten.
pub const UNVERIFIED_FAILURES_MAX: u32 = 3;
/// Longest pause between two dials of one peer.
pub const REDIAL_BACKOFF_MS_MAX: u64 = 120_000;

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
    /// Earliest time to dial it again.
    pub next_dial: Mono,
}

/// The table of known peers, bounded by `max`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct KnownPeers {
    peers: BTreeMap<NodeId, KnownPeer>,
    max: usize,
}

impl KnownPeers {
    /// An empty table holding at most `max` peers.
    pub fn new(max: usize) -> KnownPeers {
        KnownPeers { peers: BTreeMap::new(), max: max.max(1) }
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

    /// Records a peer heard of through discovery; returns whether it was new.
    pub fn learn(&mut self, record: &PeerRecord, now: Mono) -> bool {
        if let Some(known) = self.peers.get_mut(&record.node_id) {
            known.last_seen = now;
            if !known.verified {
                known.addr = record.address;
                known.public_key = record.public_key;
            }
            return false;
        }
        if self.peers.len() >= self.max && !self.evict_one() {
            return false;
        }
        self.peers.insert(
            record.node_id,
            KnownPeer {
                public_key: record.public_key,
                addr: record.address,
                verified: false,
                discovered_at: now,
                last_seen: now,
                failures: 0,
                next_dial: now,
            },
        );
        true
    }

    /// Records a peer whose handshake we verified.
    pub fn verified(&mut self, id: NodeId, public_key: PublicKey, addr: Option<SocketAddr>, now: Mono) {
        let entry = match self.peers.get_mut(&id) {
            Some(entry) => entry,
            None => {
                let Some(addr) = addr else { return };
                if self.peers.len() >= self.max && !self.evict_one() {
                    return;
                }
                self.peers.entry(id).or_insert(KnownPeer {
                    public_key,
                    addr,
                    verified: true,
                    discovered_at: now,
                    last_seen: now,
                    failures: 0,
                    next_dial: now,
                })
            }
        };
        entry.public_key = public_key;
        entry.verified = true;
        entry.failures = 0;
        entry.last_seen = now;
        if let Some(addr) = addr {
            entry.addr = addr;
        }
    }

    /// Records a failed dial and schedules the next one with exponential back-off.
    pub fn dial_failed(&mut self, id: &NodeId, now: Mono) {
        let Some(entry) = self.peers.get_mut(id) else { return };
        entry.failures = entry.failures.saturating_add(1);
        if !entry.verified && entry.failures >= UNVERIFIED_FAILURES_MAX {
            self.peers.remove(id);
            return;
        }
        let backoff_ms = 1000u64.saturating_mul(1 << entry.failures.min(20)).min(REDIAL_BACKOFF_MS_MAX);
        entry.next_dial = now.plus_ms(backoff_ms);
    }

    /// Forgets a peer (e.g. it proved another identity than the one we were told).
    pub fn forget(&mut self, id: &NodeId) {
        self.peers.remove(id);
    }

    /// Dial candidates: due, not excluded. Order is the table's (deterministic).
    pub fn candidates(&self, now: Mono, exclude: impl Fn(&NodeId, &KnownPeer) -> bool) -> Vec<(NodeId, SocketAddr)> {
        self.peers.iter().filter(|(id, p)| p.next_dial <= now && !exclude(id, p)).map(|(id, p)| (*id, p.addr)).collect()
    }

    /// Up to `max` verified peers chosen at random, none of them in `exclude`.
    pub fn sample_verified(
        &self,
        rng: &mut ChaCha8Rng,
        max: usize,
        exclude: impl Fn(&NodeId) -> bool,
    ) -> Vec<PeerRecord> {
        let mut pool: Vec<(&NodeId, &KnownPeer)> = self.peers.iter().filter(|(_, p)| p.verified).collect();
        // Shuffle a uniform random prefix, then drop excluded ids from it: the exclusion test
        // runs on the prefix only, and the survivors are still a uniform sample.
        let mut out = Vec::with_capacity(max.min(pool.len()));
        let mut shuffled = 0;
        while out.len() < max && shuffled < pool.len() {
            let batch = (max - out.len()).max(8);
            partial_shuffle_from(rng, &mut pool, shuffled, batch);
            let end = (shuffled + batch).min(pool.len());
            for (id, p) in &pool[shuffled..end] {
                if out.len() < max && !exclude(id) {
                    out.push(PeerRecord { node_id: **id, address: p.addr, public_key: p.public_key });
                }
            }
            shuffled = end;
        }
        out
    }

    /// Forgets the least useful peer: unverified before verified, then the longest unseen.
    fn evict_one(&mut self) -> bool {
        let victim = self.peers.iter().min_by_key(|(id, p)| (p.verified, p.last_seen, **id)).map(|(id, _)| *id);
        match victim {
            Some(id) => self.peers.remove(&id).is_some(),
            None => false,
        }
    }
}

/// Moves a uniform random selection of `k` elements to the front (Fisher-Yates prefix).
pub fn partial_shuffle<T>(rng: &mut ChaCha8Rng, items: &mut [T], k: usize) {
    partial_shuffle_from(rng, items, 0, k);
}

/// Continues a Fisher-Yates prefix shuffle: fills positions `from..from + k`.
pub fn partial_shuffle_from<T>(rng: &mut ChaCha8Rng, items: &mut [T], from: usize, k: usize) {
    let n = items.len();
    for i in from..(from + k).min(n) {
        let j = i + (rng.next_u64() % (n - i) as u64) as usize;
        items.swap(i, j);
    }
}

/// Who misbehaved: a proven identity, or only an address when no identity was proven yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Offender {
    /// A peer whose handshake verified.
    Node(NodeId),
    /// An address that failed before proving anything.
    Ip(IpAddr),
}

/// A misbehaviour score, decaying by one point a second.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Penalty {
    /// Points at `updated`.
    pub score: u32,
    /// When the score was last changed.
    pub updated: Mono,
    /// Blacklisted until this instant, if banned.
    pub banned_until: Option<Mono>,
}

/// Misbehaviour scores and the blacklist, bounded by [`OFFENDERS_MAX`].
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Penalties {
    scores: BTreeMap<Offender, Penalty>,
}

impl Penalties {
    /// Adds `points` to `who`; returns the new score and whether this banned it.
    pub fn add(&mut self, who: Offender, points: u32, now: Mono, ban_ms: u64) -> (u32, bool) {
        if !self.scores.contains_key(&who) && self.scores.len() >= OFFENDERS_MAX {
            let victim = self
                .scores
                .iter()
                .filter(|(_, p)| p.banned_until.is_none_or(|until| until <= now))
                .min_by_key(|(k, p)| (p.score, p.updated, **k))
                .map(|(k, _)| *k);
            match victim {
                Some(victim) => {
                    self.scores.remove(&victim);
                }
                None => return (0, false),
            }
        }
        let entry = self.scores.entry(who).or_insert(Penalty { score: 0, updated: now, banned_until: None });
        let decayed = entry.score.saturating_sub(now.ms_since(entry.updated).min(u64::from(u32::MAX)) as u32 / 1000);
        entry.score = decayed.saturating_add(points);
        entry.updated = now;
        let newly_banned = entry.score >= BAN_SCORE && entry.banned_until.is_none_or(|until| until <= now);
        if newly_banned {
            entry.banned_until = Some(now.plus_ms(ban_ms));
        }
        (entry.score, newly_banned)
    }

    /// Whether `who` is blacklisted at `now`.
    pub fn is_banned(&self, who: &Offender, now: Mono) -> bool {
        self.scores.get(who).and_then(|p| p.banned_until).is_some_and(|until| now < until)
    }

    /// Offenders currently tracked.
    pub fn len(&self) -> usize {
        self.scores.len()
    }

    /// Whether nobody is tracked.
    pub fn is_empty(&self) -> bool {
        self.scores.is_empty()
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
        table.verified(NodeId([0; 32]), PublicKey([0; 32]), Some(SocketAddr::from(([10, 0, 0, 0], 1))), Mono(0));
        for i in 1..20 {
            table.learn(&record(i), Mono(u64::from(i)));
        }
        assert_eq!(table.len(), 4);
        assert!(table.get(&NodeId([0; 32])).is_some(), "the verified peer survives eviction");
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        assert_eq!(table.sample_verified(&mut rng, 50, |_| false).len(), 1);
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

    #[test]
    fn penalties_ban_and_expire() {
        let mut penalties = Penalties::default();
        let who = Offender::Node(NodeId([1; 32]));
        assert_eq!(penalties.add(who, 60, Mono(0), 1000), (60, false));
        assert_eq!(penalties.add(who, 60, Mono(0), 1000), (120, true));
        assert!(penalties.is_banned(&who, Mono(999_999)));
        assert!(!penalties.is_banned(&who, Mono(1_000_000)));
    }

    /// Regression (review): once the table was full of offenders that had ever been banned,
    /// expired bans were never evicted and nobody new could be banned again.
    #[test]
    fn expired_bans_make_room_for_new_offenders() {
        let mut penalties = Penalties::default();
        for i in 0..OFFENDERS_MAX as u32 {
            let mut id = [0u8; 32];
            id[..4].copy_from_slice(&i.to_be_bytes());
            penalties.add(Offender::Node(NodeId(id)), BAN_SCORE, Mono(0), 1000);
        }
        let newcomer = Offender::Node(NodeId([0xff; 32]));
        assert_eq!(penalties.add(newcomer, BAN_SCORE, Mono(2_000_000), 1000), (BAN_SCORE, true));
        assert!(penalties.is_banned(&newcomer, Mono(2_000_001)));
        assert_eq!(penalties.len(), OFFENDERS_MAX);
    }
}
