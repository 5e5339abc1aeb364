//! Provider records from the publishing side: items we hold go out in batches by keyspace
//! region; a search for an item's providers dials the holders it finds.

use std::collections::BTreeMap;

use super::*;

impl Dht {
    /// `find_peers_with_content`: no connected peer holds `id`; ask the DHT who does.
    pub fn find_providers(&mut self, cx: &mut Cx<'_>, id: [u8; 32]) {
        if !cx.config.dht {
            return;
        }
        let now = cx.now.mono;
        let interval = cx.config.discovery_interval_ms;
        if self.seeking.get(&id).is_some_and(|at| now.ms_since(*at) < interval) {
            return;
        }
        if self.seeking.len() >= SEEKING_MAX {
            let oldest = self.seeking.iter().min_by_key(|(k, at)| (**at, **k)).map(|(k, _)| *k);
            if let Some(k) = oldest {
                self.seeking.remove(&k);
            }
        }
        self.seeking.insert(id, now);
        self.start_lookup(cx, id, Purpose::Providers, DISJOINT_PATHS);
    }

    /// We hold `id` (imported or fetched): publish a provider record for it soon.
    pub fn provide(&mut self, cx: &Cx<'_>, id: [u8; 32]) {
        if !cx.config.dht || self.provided.len() >= PROVIDED_MAX {
            return;
        }
        if self.provided.insert(id) {
            self.to_publish.insert(id);
            self.publish_at.get_or_insert(cx.now.mono.plus_ms(PUBLISH_DELAY_MS));
        }
    }

    /// We no longer hold `id`.
    pub fn unprovide(&mut self, id: &[u8; 32]) {
        self.provided.remove(id);
        self.to_publish.remove(id);
    }

    pub(super) fn dial_providers(&mut self, cx: &mut Cx<'_>, lookup: &Lookup) {
        let now = cx.now.mono;
        let mut dialled = 0;
        for p in &lookup.providers {
            if dialled >= PROVIDER_DIALS {
                break;
            }
            if p.node_id == cx.node_id || cx.penalties.is_banned(&Offender::Node(p.node_id), now) {
                continue;
            }
            // Connected already: content hears of the holder now.
            let conn = cx.conns.established_to(&p.node_id).map(|(c, _, _)| c);
            if let Some(conn) = conn
                && cx.conns.get(conn).is_some_and(|c| !c.transient)
            {
                cx.defer(Deferred::Holder { conn, id: lookup.target });
                dialled += 1;
                continue;
            }
            // A regular connection (the duplicate rule keeps it over a DHT contact).
            let dialling = cx.conns.iter().any(|(_, c)| !c.transient && c.peer_hint() == Some(p.node_id));
            if !dialling && cx.dial(p.address, Some(p.node_id), false).is_ok() {
                self.provider_dials.insert(p.node_id, lookup.target);
                dialled += 1;
            }
        }
    }

    /// A region lookup ended: each key goes to the `K` closest nodes that answered it.
    pub(super) fn publish_region(&mut self, cx: &mut Cx<'_>, lookup: &Lookup, keys: &[[u8; 32]]) {
        let nodes = lookup.closest_answered(2 * K);
        let mut batches: BTreeMap<NodeId, Vec<[u8; 32]>> = BTreeMap::new();
        let own = cx.advertised_addr();
        for key in keys {
            let mut by_distance: Vec<&PeerRecord> = nodes.iter().collect();
            by_distance.sort_by_key(|r| distance(&r.node_id.0, key));
            let cut = by_distance.get(K.saturating_sub(1)).map(|r| distance(&r.node_id.0, key));
            for r in by_distance.into_iter().take(K) {
                batches.entry(r.node_id).or_default().push(*key);
            }
            // We are among the closest ourselves: keep our own record.
            if let Some(addr) = own
                && cut.is_none_or(|c| distance(&cx.node_id.0, key) < c)
            {
                let me = PeerRecord { node_id: cx.node_id, address: addr, public_key: cx.public_key };
                self.providers.add(*key, me, cx.now.mono.plus_ms(2 * cx.config.provider_republish_ms));
            }
        }
        for (node, keys) in batches {
            let conn = cx.conns.established_to(&node).map(|(c, _, _)| c);
            let Some(conn) = conn else { continue };
            for chunk in keys.chunks(ADD_KEYS_MAX) {
                let request = wrap(Request::AddProviders { keys: chunk.to_vec() });
                if cx.request(conn, request, Origin::Dht, u64::MAX).is_ok() {
                    self.stats.records_published += chunk.len() as u64;
                }
            }
            if let Some(used) = self.transient.get_mut(&conn) {
                *used = cx.now.mono;
            }
        }
    }

    /// Starts the next region lookup of the publish queue: the keys sharing the first key's
    /// prefix, whose length makes a region hold about `K` nodes.
    pub(super) fn publish_next_region(&mut self, cx: &mut Cx<'_>) {
        if !self.regions.is_empty() {
            return;
        }
        let Some(first) = self.to_publish.first().copied() else { return };
        let estimate = self.table.network_size_estimate().max(1);
        let bits = (estimate / K as u64).max(1).ilog2().min(64) as usize;
        let keys: Vec<[u8; 32]> =
            self.to_publish.iter().take_while(|k| same_prefix(k, &first, bits)).copied().collect();
        for k in &keys {
            self.to_publish.remove(k);
        }
        let id = self.next_lookup;
        self.regions.insert(id, keys);
        self.start_lookup(cx, first, Purpose::Region, 1);
    }
}

fn same_prefix(a: &[u8; 32], b: &[u8; 32], bits: usize) -> bool {
    let bytes = bits / 8;
    if a[..bytes] != b[..bytes] {
        return false;
    }
    let rest = bits % 8;
    rest == 0 || (a[bytes] ^ b[bytes]) >> (8 - rest) == 0
}
