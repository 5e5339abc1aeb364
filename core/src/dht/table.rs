//! The routing table: 256 k-buckets over the XOR distance from our id, each with a
//! replacement cache, and IP-diversity caps against Sybils.
//!
//! Rules (Kademlia, with what libp2p learned in production):
//! - Only peers that completed our handshake on an address we dialled enter (the caller
//!   checks); so every entry is a proven identity at an address known to reach it.
//! - A full bucket keeps its long-lived responsive entries: a newcomer goes to the replacement
//!   cache and takes a slot only when an entry failed [`FAILURES_EVICT`] times in a row.
//! - At most [`SUBNET_PER_BUCKET_MAX`] entries per /24 (IPv4) or /48 (IPv6) in one bucket and
//!   [`SUBNET_PER_TABLE_MAX`] in the table. Loopback addresses are exempt (one host's tests).

use core::net::{IpAddr, SocketAddr};
use std::collections::BTreeMap;

use rand_chacha::ChaCha8Rng;
use rand_core::Rng;
use serde::{Deserialize, Serialize};

use crate::discovery::PeerRecord;
use crate::id::{NodeId, PublicKey};
use crate::time::Mono;

/// Bucket size, and how many nodes a lookup converges on.
pub const K: usize = 20;
/// Replacements remembered per bucket.
pub const REPLACEMENTS_MAX: usize = K;
/// Failures in a row after which an entry gives its slot to a replacement.
pub const FAILURES_EVICT: u8 = 2;
/// Entries per /24 or /48 in one bucket.
pub const SUBNET_PER_BUCKET_MAX: usize = 2;
/// Entries per /24 or /48 in the whole table.
pub const SUBNET_PER_TABLE_MAX: u8 = 3;
/// The round trip assumed for a peer never measured.
pub const RTT_UNKNOWN_MS: u32 = 250;

/// XOR distance, as bytes (compared big-endian: the usual Kademlia order).
pub fn distance(a: &[u8; 32], b: &[u8; 32]) -> [u8; 32] {
    std::array::from_fn(|i| a[i] ^ b[i])
}

/// The bucket of `id` relative to `local`: the length of their common prefix (0: the far
/// half of the keyspace). `None` for `local` itself.
pub fn bucket_of(local: &[u8; 32], id: &[u8; 32]) -> Option<usize> {
    let d = distance(local, id);
    let byte = d.iter().position(|b| *b != 0)?;
    Some(byte * 8 + d[byte].leading_zeros() as usize)
}

/// A /24 (IPv4) or /48 (IPv6) network; `None` for loopback addresses, which are not capped.
pub fn subnet(ip: IpAddr) -> Option<[u8; 7]> {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    };
    if ip.is_loopback() {
        return None;
    }
    Some(match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            [4, o[0], o[1], o[2], 0, 0, 0]
        }
        IpAddr::V6(v6) => {
            let o = v6.octets();
            [6, o[0], o[1], o[2], o[3], o[4], o[5]]
        }
    })
}

/// One verified peer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub id: NodeId,
    pub public_key: PublicKey,
    /// The address we dialled and reached it at.
    pub addr: SocketAddr,
    /// Smoothed round trip of its answers (handshakes at first).
    pub rtt_ms: u32,
    pub added: Mono,
    pub last_seen: Mono,
    /// Failures in a row (a lookup's deadline passed, or a dial failed).
    pub failures: u8,
}

impl Entry {
    /// As discovery and the DHT pass it on.
    pub fn record(&self) -> PeerRecord {
        PeerRecord { node_id: self.id, address: self.addr, public_key: self.public_key }
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Bucket {
    /// Least recently seen first.
    entries: Vec<Entry>,
    /// Newest last.
    replacements: Vec<Entry>,
    /// When a lookup last went through this bucket's range (refresh).
    touched: Mono,
}

/// What [`Table::verified`] did with a peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    Added,
    Updated,
    /// The bucket is full of responsive peers: kept as a replacement.
    Replacement,
    /// Over an IP-diversity cap.
    SubnetCap,
    /// Our own id.
    Local,
}

/// The routing table.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Table {
    local: NodeId,
    buckets: Vec<Bucket>,
    /// Entries (not replacements) per subnet.
    #[serde(with = "crate::id::map_as_pairs")]
    subnets: BTreeMap<[u8; 7], u8>,
    len: usize,
}

impl Table {
    /// An empty table around `local`.
    pub fn new(local: NodeId) -> Table {
        Table { local, buckets: vec![Bucket::default(); 256], subnets: BTreeMap::new(), len: 0 }
    }

    /// Entries in the table (replacements not counted).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The entry for `id`.
    pub fn get(&self, id: &NodeId) -> Option<&Entry> {
        let b = bucket_of(&self.local.0, &id.0)?;
        self.buckets[b].entries.iter().find(|e| e.id == *id)
    }

    /// Every entry, bucket by bucket.
    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.buckets.iter().flat_map(|b| b.entries.iter())
    }

    /// Replacements held, over all buckets.
    pub fn replacements(&self) -> usize {
        self.buckets.iter().map(|b| b.replacements.len()).sum()
    }

    /// Entries per non-empty bucket, as (bucket, entries).
    pub fn bucket_sizes(&self) -> Vec<(u16, u16)> {
        let sizes = self.buckets.iter().enumerate().filter(|(_, b)| !b.entries.is_empty());
        sizes.map(|(i, b)| (i as u16, b.entries.len() as u16)).collect()
    }

    fn subnet_full(&self, bucket: &Bucket, addr: &SocketAddr, except: Option<&NodeId>) -> bool {
        let Some(net) = subnet(addr.ip()) else { return false };
        let in_bucket =
            bucket.entries.iter().filter(|e| Some(&e.id) != except && subnet(e.addr.ip()) == Some(net)).count();
        let in_table = self.subnets.get(&net).copied().unwrap_or(0);
        in_bucket >= SUBNET_PER_BUCKET_MAX || in_table >= SUBNET_PER_TABLE_MAX
    }

    fn count_subnet(&mut self, addr: &SocketAddr, add: bool) {
        let Some(net) = subnet(addr.ip()) else { return };
        if add {
            *self.subnets.entry(net).or_insert(0) += 1;
        } else if let Some(n) = self.subnets.get_mut(&net) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.subnets.remove(&net);
            }
        }
    }

    /// A peer completed our handshake on `addr`, which we dialled, or answered us: add it,
    /// refresh it, or keep it as a replacement.
    pub fn verified(&mut self, record: &PeerRecord, rtt_ms: Option<u32>, now: Mono) -> Admission {
        let Some(b) = bucket_of(&self.local.0, &record.node_id.0) else { return Admission::Local };
        let bucket = &self.buckets[b];
        if let Some(pos) = bucket.entries.iter().position(|e| e.id == record.node_id) {
            let moved = bucket.entries[pos].addr != record.address;
            if moved && self.subnet_full(bucket, &record.address, Some(&record.node_id)) {
                return Admission::SubnetCap;
            }
            let old = self.buckets[b].entries[pos].addr;
            if moved {
                self.count_subnet(&old, false);
                self.count_subnet(&record.address, true);
            }
            let bucket = &mut self.buckets[b];
            let mut entry = bucket.entries.remove(pos);
            entry.addr = record.address;
            entry.last_seen = now;
            entry.failures = 0;
            if let Some(rtt) = rtt_ms {
                entry.rtt_ms = smooth(entry.rtt_ms, rtt);
            }
            bucket.entries.push(entry);
            return Admission::Updated;
        }
        if self.subnet_full(bucket, &record.address, None) {
            return Admission::SubnetCap;
        }
        let entry = Entry {
            id: record.node_id,
            public_key: record.public_key,
            addr: record.address,
            rtt_ms: rtt_ms.unwrap_or(RTT_UNKNOWN_MS),
            added: now,
            last_seen: now,
            failures: 0,
        };
        let bucket = &mut self.buckets[b];
        bucket.replacements.retain(|r| r.id != record.node_id);
        if bucket.entries.len() < K {
            bucket.entries.push(entry);
            self.len += 1;
            self.count_subnet(&record.address, true);
            return Admission::Added;
        }
        // Full: a stale entry gives way; responsive ones never do.
        if let Some(pos) = bucket.entries.iter().position(|e| e.failures >= FAILURES_EVICT) {
            let old = bucket.entries.remove(pos);
            bucket.entries.push(entry);
            self.count_subnet(&old.addr, false);
            self.count_subnet(&record.address, true);
            return Admission::Added;
        }
        if bucket.replacements.len() >= REPLACEMENTS_MAX {
            bucket.replacements.remove(0);
        }
        bucket.replacements.push(entry);
        Admission::Replacement
    }

    /// Whether [`Table::verified`] would give `record` a slot now (not merely keep it as a
    /// replacement): its bucket has room or a stale entry, and the caps allow it.
    pub fn has_room_for(&self, record: &PeerRecord) -> bool {
        let Some(b) = bucket_of(&self.local.0, &record.node_id.0) else { return false };
        let bucket = &self.buckets[b];
        if bucket.entries.iter().any(|e| e.id == record.node_id) {
            return false;
        }
        let room = bucket.entries.len() < K || bucket.entries.iter().any(|e| e.failures >= FAILURES_EVICT);
        room && !self.subnet_full(bucket, &record.address, None)
    }

    /// Whether `id` is closer to us than our `K`-th closest entry (or the table holds fewer):
    /// the neighbourhood where a node must be known for lookups of it to succeed. Inbound
    /// peers are dialled back only there; farther buckets fill from our own lookups.
    pub fn is_near(&self, id: &NodeId) -> bool {
        let closest = self.closest(&self.local.0, K, |_| true);
        closest.len() < K
            || closest.last().is_some_and(|e| distance(&id.0, &self.local.0) < distance(&e.id.0, &self.local.0))
    }

    /// A contact with `id` failed; after [`FAILURES_EVICT`] in a row it gives its slot to the
    /// newest replacement that fits the caps (or stays, marked, if there is none).
    pub fn failed(&mut self, id: &NodeId) {
        let Some(b) = bucket_of(&self.local.0, &id.0) else { return };
        let bucket = &mut self.buckets[b];
        if let Some(pos) = bucket.replacements.iter().position(|r| r.id == *id) {
            bucket.replacements.remove(pos);
            return;
        }
        let Some(pos) = bucket.entries.iter().position(|e| e.id == *id) else { return };
        bucket.entries[pos].failures = bucket.entries[pos].failures.saturating_add(1);
        if bucket.entries[pos].failures < FAILURES_EVICT {
            return;
        }
        let old = bucket.entries[pos].clone();
        // Newest replacement first, skipping those the caps would refuse once `old` is gone.
        self.count_subnet(&old.addr, false);
        let bucket = &self.buckets[b];
        let fits = bucket.replacements.iter().rposition(|r| {
            let Some(net) = subnet(r.addr.ip()) else { return true };
            let in_bucket =
                bucket.entries.iter().filter(|e| e.id != old.id && subnet(e.addr.ip()) == Some(net)).count();
            in_bucket < SUBNET_PER_BUCKET_MAX && self.subnets.get(&net).copied().unwrap_or(0) < SUBNET_PER_TABLE_MAX
        });
        match fits {
            Some(r) => {
                let bucket = &mut self.buckets[b];
                let replacement = bucket.replacements.remove(r);
                let addr = replacement.addr;
                bucket.entries.remove(pos);
                bucket.entries.push(replacement);
                self.count_subnet(&addr, true);
            }
            None => self.count_subnet(&old.addr, true),
        }
    }

    /// Forgets `id` (a banned peer).
    pub fn remove(&mut self, id: &NodeId) {
        let Some(b) = bucket_of(&self.local.0, &id.0) else { return };
        let bucket = &mut self.buckets[b];
        bucket.replacements.retain(|r| r.id != *id);
        if let Some(pos) = bucket.entries.iter().position(|e| e.id == *id) {
            let old = bucket.entries.remove(pos);
            self.len -= 1;
            self.count_subnet(&old.addr, false);
        }
    }

    /// The `n` entries closest to `target`, closest first, among those `keep` accepts.
    pub fn closest(&self, target: &[u8; 32], n: usize, mut keep: impl FnMut(&Entry) -> bool) -> Vec<&Entry> {
        let mut all: Vec<(&Entry, [u8; 32])> =
            self.entries().filter(|e| keep(e)).map(|e| (e, distance(&e.id.0, target))).collect();
        if all.len() > n {
            all.select_nth_unstable_by(n, |a, b| a.1.cmp(&b.1));
            all.truncate(n);
        }
        all.sort_by_key(|a| a.1);
        all.into_iter().map(|(e, _)| e).collect()
    }

    /// The median round trip of the entries ([`RTT_UNKNOWN_MS`] when empty): the deadline of
    /// a contact with a peer never measured.
    pub fn median_rtt(&self) -> u32 {
        let mut rtts: Vec<u32> = self.entries().map(|e| e.rtt_ms).collect();
        if rtts.is_empty() {
            return RTT_UNKNOWN_MS;
        }
        let mid = rtts.len() / 2;
        *rtts.select_nth_unstable(mid).1
    }

    /// A lookup went through bucket `b`'s range.
    pub fn touch(&mut self, target: &[u8; 32], now: Mono) {
        if let Some(b) = bucket_of(&self.local.0, target) {
            self.buckets[b].touched = now;
        }
    }

    /// The bucket least recently touched among those that can hold anyone (up to one past the
    /// deepest non-empty one), if it was last touched before `stale_before`.
    pub fn stale_bucket(&self, stale_before: Mono) -> Option<usize> {
        let deepest = self.buckets.iter().rposition(|b| !b.entries.is_empty())?;
        let last = (deepest + 1).min(255);
        (0..=last).filter(|b| self.buckets[*b].touched < stale_before).min_by_key(|b| (self.buckets[*b].touched, *b))
    }

    /// A random id in bucket `b`'s range.
    pub fn random_in_bucket(&self, b: usize, rng: &mut ChaCha8Rng) -> [u8; 32] {
        let mut id = [0u8; 32];
        rng.fill_bytes(&mut id);
        let (byte, bit) = (b / 8, b % 8);
        let keep = 0xffu8.checked_shl(8 - bit as u32).unwrap_or(0);
        id[..byte].copy_from_slice(&self.local.0[..byte]);
        let flip = 0x80u8 >> bit;
        id[byte] = (self.local.0[byte] & keep) | ((!self.local.0[byte]) & flip) | (id[byte] & !(keep | flip));
        id
    }

    /// An estimate of the network's size from how deep the table reaches: a full bucket `b`
    /// means about `K * 2^b` nodes, and the deepest buckets hold what is left.
    pub fn network_size_estimate(&self) -> u64 {
        let deepest_full = self.buckets.iter().rposition(|b| b.entries.len() >= K / 2);
        match deepest_full {
            Some(b) => (K as u64) << (b + 1).min(40),
            None => self.len as u64,
        }
    }

    /// Checks the table entry by entry: ids match keys, buckets and counts agree, caps hold.
    pub fn check(&self) -> Result<(), String> {
        let mut subnets: BTreeMap<[u8; 7], u8> = BTreeMap::new();
        let mut len = 0;
        for (i, bucket) in self.buckets.iter().enumerate() {
            if bucket.entries.len() > K || bucket.replacements.len() > REPLACEMENTS_MAX {
                return Err(format!("bucket {i} over its bounds"));
            }
            for e in bucket.entries.iter().chain(&bucket.replacements) {
                if NodeId::from_public_key(&e.public_key) != e.id {
                    return Err(format!("entry {} does not match its key", e.id.short()));
                }
                if bucket_of(&self.local.0, &e.id.0) != Some(i) {
                    return Err(format!("entry {} in bucket {i}", e.id.short()));
                }
            }
            for e in &bucket.entries {
                len += 1;
                if let Some(net) = subnet(e.addr.ip()) {
                    *subnets.entry(net).or_insert(0) += 1;
                    let in_bucket = bucket.entries.iter().filter(|x| subnet(x.addr.ip()) == Some(net)).count();
                    if in_bucket > SUBNET_PER_BUCKET_MAX {
                        return Err(format!("bucket {i} holds {in_bucket} entries of one subnet"));
                    }
                }
            }
        }
        if len != self.len || subnets != self.subnets {
            return Err("routing table counts out of step".into());
        }
        if subnets.values().any(|n| *n > SUBNET_PER_TABLE_MAX) {
            return Err("routing table over its per-subnet cap".into());
        }
        Ok(())
    }
}

/// EWMA with weight 1/4 on the new sample.
fn smooth(old: u32, sample: u32) -> u32 {
    ((u64::from(old) * 3 + u64::from(sample)) / 4) as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Identity;
    use rand_core::SeedableRng;

    fn peer(rng: &mut ChaCha8Rng, ip: [u8; 4]) -> PeerRecord {
        let mut secret = [0u8; 32];
        rng.fill_bytes(&mut secret);
        let id = Identity::from_secret_bytes(&secret);
        PeerRecord { node_id: id.node_id(), address: SocketAddr::from((ip, 7401)), public_key: id.public_key() }
    }

    #[test]
    fn full_buckets_keep_responsive_entries_and_caps_hold() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let local = peer(&mut rng, [10, 0, 0, 1]).node_id;
        let mut table = Table::new(local);
        // Bucket 0 is half the keyspace: fill it from distinct subnets.
        let mut n = 0u8;
        let mut added = Vec::new();
        while added.len() < K {
            let p = peer(&mut rng, [20, n, 0, 1]);
            n += 1;
            if bucket_of(&local.0, &p.node_id.0) == Some(0) {
                assert_eq!(table.verified(&p, Some(50), Mono(1)), Admission::Added);
                added.push(p);
            }
        }
        let newcomer = loop {
            let p = peer(&mut rng, [30, 0, 0, 1]);
            if bucket_of(&local.0, &p.node_id.0) == Some(0) {
                break p;
            }
        };
        assert_eq!(table.verified(&newcomer, Some(10), Mono(2)), Admission::Replacement);
        assert!(table.get(&newcomer.node_id).is_none(), "a newcomer does not evict a responsive entry");
        table.failed(&added[3].node_id);
        assert!(table.get(&added[3].node_id).is_some(), "one failure is not enough");
        table.failed(&added[3].node_id);
        assert!(table.get(&added[3].node_id).is_none());
        assert!(table.get(&newcomer.node_id).is_some(), "the replacement took the slot");
        table.check().expect("consistent");
        // Subnet caps: 3 per table, 2 per bucket.
        let mut table = Table::new(local);
        let verdicts: Vec<Admission> =
            (0..10).map(|_| table.verified(&peer(&mut rng, [40, 1, 2, 3]), None, Mono(1))).collect();
        let added = verdicts.iter().filter(|v| **v == Admission::Added).count();
        assert!((2..=3).contains(&added), "{verdicts:?}");
        table.check().expect("consistent");
        // Loopback is exempt.
        let mut table = Table::new(local);
        for _ in 0..10 {
            assert_eq!(table.verified(&peer(&mut rng, [127, 0, 0, 1]), None, Mono(1)), Admission::Added);
        }
    }

    #[test]
    fn random_ids_land_in_their_bucket_and_closest_is_sorted() {
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let local = peer(&mut rng, [10, 0, 0, 1]).node_id;
        let table = Table::new(local);
        for b in [0, 1, 7, 8, 9, 100, 255] {
            for _ in 0..20 {
                assert_eq!(bucket_of(&local.0, &table.random_in_bucket(b, &mut rng)), Some(b));
            }
        }
        let mut table = Table::new(local);
        for i in 0..200u32 {
            table.verified(&peer(&mut rng, [50, (i >> 8) as u8, i as u8, 1]), None, Mono(1));
        }
        let target = [7u8; 32];
        let closest = table.closest(&target, K, |_| true);
        assert_eq!(closest.len(), K);
        assert!(closest.windows(2).all(|w| distance(&w[0].id.0, &target) < distance(&w[1].id.0, &target)));
        let best = table.entries().map(|e| distance(&e.id.0, &target)).min();
        assert_eq!(best, Some(distance(&closest[0].id.0, &target)));
    }
}
