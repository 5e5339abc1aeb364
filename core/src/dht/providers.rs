//! Provider records this node stores for others: who holds which item, bounded per key, per
//! publisher and in total, each expiring unless republished.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::discovery::PeerRecord;
use crate::id::NodeId;
use crate::time::Mono;

/// Providers kept per key (the newest replace the oldest).
pub const PER_KEY_MAX: usize = 20;
/// Records one publisher may have stored here.
pub const PER_PUBLISHER_MAX: u32 = 50_000;
/// Records stored in total.
pub const TOTAL_MAX: usize = 500_000;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Stored {
    record: PeerRecord,
    expires: Mono,
}

/// The provider records held here.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ProviderStore {
    #[serde(with = "crate::id::map_as_pairs")]
    by_key: BTreeMap<[u8; 32], Vec<Stored>>,
    per_publisher: BTreeMap<NodeId, u32>,
    /// Expiry index: (when, key, provider).
    expiry: BTreeSet<(Mono, [u8; 32], NodeId)>,
    total: usize,
}

impl ProviderStore {
    /// Records stored.
    pub fn len(&self) -> usize {
        self.total
    }

    /// Whether none is stored.
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// Keys with at least one provider.
    pub fn keys(&self) -> usize {
        self.by_key.len()
    }

    /// Stores (or refreshes) `provider` for `key` until `expires`; false if a bound refused it.
    pub fn add(&mut self, key: [u8; 32], provider: PeerRecord, expires: Mono) -> bool {
        let list = self.by_key.entry(key).or_default();
        if let Some(s) = list.iter_mut().find(|s| s.record.node_id == provider.node_id) {
            self.expiry.remove(&(s.expires, key, provider.node_id));
            s.expires = expires;
            s.record = provider;
            self.expiry.insert((expires, key, provider.node_id));
            return true;
        }
        let count = self.per_publisher.get(&provider.node_id).copied().unwrap_or(0);
        if count >= PER_PUBLISHER_MAX || (self.total >= TOTAL_MAX && list.len() < PER_KEY_MAX) {
            if list.is_empty() {
                self.by_key.remove(&key);
            }
            return false;
        }
        if list.len() >= PER_KEY_MAX {
            // The record closest to expiry makes way.
            let Some(pos) = list.iter().enumerate().min_by_key(|(_, s)| s.expires).map(|(i, _)| i) else {
                return false;
            };
            let old = list.remove(pos);
            self.expiry.remove(&(old.expires, key, old.record.node_id));
            Self::uncount(&mut self.per_publisher, &old.record.node_id);
            self.total -= 1;
        }
        let list = self.by_key.entry(key).or_default();
        list.push(Stored { record: provider, expires });
        self.expiry.insert((expires, key, provider.node_id));
        *self.per_publisher.entry(provider.node_id).or_insert(0) += 1;
        self.total += 1;
        true
    }

    fn uncount(per_publisher: &mut BTreeMap<NodeId, u32>, node: &NodeId) {
        if let Some(n) = per_publisher.get_mut(node) {
            *n -= 1;
            if *n == 0 {
                per_publisher.remove(node);
            }
        }
    }

    /// Providers of `key`, at most `n`, newest expiry first.
    pub fn get(&self, key: &[u8; 32], n: usize) -> Vec<PeerRecord> {
        let Some(list) = self.by_key.get(key) else { return Vec::new() };
        let mut list: Vec<&Stored> = list.iter().collect();
        list.sort_by(|a, b| b.expires.cmp(&a.expires).then(a.record.node_id.cmp(&b.record.node_id)));
        list.into_iter().take(n).map(|s| s.record).collect()
    }

    /// Drops records that expired by `now`; returns how many.
    pub fn expire(&mut self, now: Mono) -> usize {
        let mut dropped = 0;
        while let Some(&(at, key, node)) = self.expiry.first() {
            if at > now {
                break;
            }
            self.expiry.pop_first();
            if let Some(list) = self.by_key.get_mut(&key) {
                list.retain(|s| s.record.node_id != node);
                if list.is_empty() {
                    self.by_key.remove(&key);
                }
            }
            Self::uncount(&mut self.per_publisher, &node);
            self.total -= 1;
            dropped += 1;
        }
        dropped
    }

    /// When the next record expires.
    pub fn next_expiry(&self) -> Option<Mono> {
        self.expiry.first().map(|e| e.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::net::SocketAddr;

    fn record(n: u8) -> PeerRecord {
        PeerRecord {
            node_id: NodeId([n; 32]),
            address: SocketAddr::from(([10, 0, 0, n], 7401)),
            public_key: crate::id::PublicKey([n; 32]),
        }
    }

    #[test]
    fn bounded_per_key_refreshed_and_expired() {
        let mut store = ProviderStore::default();
        for n in 0..30u8 {
            assert!(store.add([1; 32], record(n), Mono(1_000 + u64::from(n))));
        }
        assert_eq!(store.len(), PER_KEY_MAX);
        assert_eq!(store.get(&[1; 32], 100).len(), PER_KEY_MAX);
        assert!(store.get(&[1; 32], 100).iter().all(|r| r.node_id.0[0] >= 10), "the oldest made way");
        assert!(store.add([1; 32], record(29), Mono(5_000)), "a refresh");
        assert_eq!(store.len(), PER_KEY_MAX);
        assert_eq!(store.expire(Mono(2_000)), PER_KEY_MAX - 1);
        assert_eq!(store.get(&[1; 32], 10), vec![record(29)]);
        assert_eq!(store.next_expiry(), Some(Mono(5_000)));
        assert_eq!(store.expire(Mono(5_000)), 1);
        assert!(store.is_empty() && store.keys() == 0);
    }
}
