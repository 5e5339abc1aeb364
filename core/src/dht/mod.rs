//! Module: the Kademlia DHT (SPEC R5.2): the routing table, iterative lookups on the request
//! layer, periodic discovery through the DHT, and provider records (who holds which item).
//!
//! - **Contacts.** A lookup asks a candidate over an established connection if there is one,
//!   else dials it as a *transient* connection (it does not count towards `target_peers`,
//!   other modules leave it alone, and it closes after [`IDLE_MS`] unused unless discovery
//!   promotes it). Every contact has one deadline scaled to the peer's measured round trip
//!   (dial, secure handshake, Hello, question: about four round trips, doubled), so a dead
//!   peer costs one such deadline and the lookup goes on with others meanwhile.
//! - **Who enters the table**: a peer that completed our handshake on an address we dialled,
//!   except the configured bootstrap nodes (their inbound slots are for newcomers: a joining
//!   node's first lookup goes through its bootstrap link, later ones through the table).
//!   A peer that reached us inbound and named a listen address is dialled back once its
//!   connection closes (a probe), and enters if that works.
//! - **Providers.** Items this node holds are published to the `K` nodes closest to each
//!   item's id in batches by keyspace region (one lookup per region, not per item) and
//!   republished every `provider_republish_ms`; records expire after twice that.

pub mod lookup;
pub mod proto;
pub mod providers;
mod publish;
mod serve;
pub mod table;

use core::net::SocketAddr;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::{Deserialize, Serialize};

use crate::context::{Cx, Deferred};
use crate::discovery::PeerRecord;
use crate::event::{CloseReason, Direction, Event};
use crate::handshake::Link;
use crate::id::{ConnId, NodeId};
use crate::node::Closed;
use crate::penalties::{Offender, POINTS_HANDSHAKE};
use crate::request::{Origin, Pending, RequestId};
use crate::time::Mono;
use crate::wire;

use lookup::{Lookup, Purpose};
use proto::{ADD_KEYS_MAX, Request, Response};
use providers::ProviderStore;
use table::{K, Table, distance};

/// Lookups running at once (operator lookups beyond it wait in a queue).
pub const LOOKUPS_MAX: usize = 8;
/// Lookups queued behind the running ones.
pub const LOOKUP_QUEUE_MAX: usize = 64;
/// Transient connections open at once.
pub const TRANSIENT_MAX: usize = 24;
/// A transient connection unused this long is closed.
pub const IDLE_MS: u64 = 20_000;
/// Round trips a contact needs (TCP, Noise, Hello, the question) and the slack on them.
pub const CONTACT_RTTS: u64 = 4;
/// Shortest and longest contact deadline.
pub const CONTACT_MIN_MS: u64 = 400;
pub const CONTACT_MAX_MS: u64 = 5_000;
/// Inbound peers waiting to be dialled back.
pub const PROBES_MAX: usize = 64;
/// Probes dialled per probe round.
pub const PROBES_PER_ROUND: usize = 8;
/// Pause between probe rounds while probes wait.
pub const PROBE_INTERVAL_MS: u64 = 2_000;
/// The first discovery round after start-up comes this soon: a second look at our own
/// neighbourhood once the first lookup filled the table, over the contacts it left open.
pub const EARLY_ROUND_MS: u64 = 5_000;
/// A bucket is refreshed when no lookup went through it for this many discovery rounds.
pub const REFRESH_ROUNDS: u64 = 10;
/// Paths of a security-relevant lookup (provider searches).
pub const DISJOINT_PATHS: usize = 2;
/// Items we publish, at most.
pub const PROVIDED_MAX: usize = 1_000_000;
/// Wait after the first new item before publishing, to batch the ones that follow.
pub const PUBLISH_DELAY_MS: u64 = 5_000;
/// Providers dialled per provider search.
pub const PROVIDER_DIALS: usize = 3;
/// Provider searches remembered as running or recently done (not repeated within the round).
pub const SEEKING_MAX: usize = 256;

/// Counters and gauges for status.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DhtStats {
    pub lookups_started: u64,
    pub lookups_done: u64,
    pub lookups_succeeded: u64,
    pub contacts: u64,
    pub contacts_failed: u64,
    pub transient_dials: u64,
    pub probes: u64,
    pub answered: u64,
    pub records_published: u64,
    pub records_stored: u64,
    pub subnet_refused: u64,
    pub forged_records: u64,
}

/// The `dht` section of status.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DhtStatus {
    pub table_size: u32,
    pub replacements: u32,
    pub buckets: u32,
    pub network_size_estimate: u64,
    pub lookups_running: u32,
    pub transient_connections: u32,
    pub provider_records: u32,
    pub provider_keys: u32,
    pub provided_items: u32,
    pub stats: DhtStats,
}

/// The DHT module's state.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Dht {
    table: Table,
    lookups: BTreeMap<u64, Lookup>,
    queue: VecDeque<(u64, Lookup)>,
    next_lookup: u64,
    /// Nodes being dialled or asked for lookups, and the lookups waiting on them.
    waiting: BTreeMap<NodeId, BTreeSet<u64>>,
    /// Transient connections we opened, and when each was last used.
    transient: BTreeMap<ConnId, Mono>,
    /// Inbound peers to dial back (address check before they enter the table).
    probes: VecDeque<PeerRecord>,
    providers: ProviderStore,
    /// Items we hold, to publish.
    provided: BTreeSet<[u8; 32]>,
    /// Items to publish in the next batches.
    to_publish: BTreeSet<[u8; 32]>,
    publish_at: Option<Mono>,
    /// Keys a region lookup will publish once it ends.
    regions: BTreeMap<u64, Vec<[u8; 32]>>,
    /// Items searched for providers: at most one search each per discovery round.
    #[serde(with = "crate::id::map_as_pairs")]
    seeking: BTreeMap<[u8; 32], Mono>,
    /// Providers dialled for an item: when the link comes up, content hears of it.
    provider_dials: BTreeMap<NodeId, [u8; 32]>,
    next_round: Option<Mono>,
    next_probe: Option<Mono>,
    next_republish: Option<Mono>,
    /// Alternates own-id and stale-bucket rounds.
    rounds: u64,
    stats: DhtStats,
}

fn wrap(request: Request) -> wire::Request {
    wire::Request::Dht(request)
}

/// The deadline of one contact with a peer whose round trip is `rtt_ms`.
pub fn contact_ms(rtt_ms: u32) -> u64 {
    (2 * CONTACT_RTTS * u64::from(rtt_ms)).clamp(CONTACT_MIN_MS, CONTACT_MAX_MS)
}

impl Dht {
    /// An empty DHT around our id.
    pub fn new(local: NodeId) -> Dht {
        Dht {
            table: Table::new(local),
            lookups: BTreeMap::new(),
            queue: VecDeque::new(),
            next_lookup: 0,
            waiting: BTreeMap::new(),
            transient: BTreeMap::new(),
            probes: VecDeque::new(),
            providers: ProviderStore::default(),
            provided: BTreeSet::new(),
            to_publish: BTreeSet::new(),
            publish_at: None,
            regions: BTreeMap::new(),
            seeking: BTreeMap::new(),
            provider_dials: BTreeMap::new(),
            next_round: None,
            next_probe: None,
            next_republish: None,
            rounds: 0,
            stats: DhtStats::default(),
        }
    }

    /// The routing table.
    pub fn table(&self) -> &Table {
        &self.table
    }

    /// Provider records stored here.
    pub fn provider_store(&self) -> &ProviderStore {
        &self.providers
    }

    /// Status.
    pub fn status(&self) -> DhtStatus {
        DhtStatus {
            table_size: self.table.len() as u32,
            replacements: self.table.replacements() as u32,
            buckets: self.table.bucket_sizes().len() as u32,
            network_size_estimate: self.table.network_size_estimate(),
            lookups_running: self.lookups.len() as u32,
            transient_connections: self.transient.len() as u32,
            provider_records: self.providers.len() as u32,
            provider_keys: self.providers.keys() as u32,
            provided_items: self.provided.len() as u32,
            stats: self.stats.clone(),
        }
    }

    /// Checks the table (tests, fuzzing, the simulator).
    pub fn check(&self) -> Result<(), String> {
        self.table.check()
    }

    /// The earliest instant something is due.
    pub fn poll_timeout(&self) -> Option<Mono> {
        let deadlines = self.lookups.values().filter_map(Lookup::next_deadline).min();
        let idle = self.transient.iter().map(|(c, used)| used.plus_ms(idle_ms(c))).min();
        [
            self.next_round,
            self.next_probe,
            self.next_republish,
            self.publish_at,
            deadlines,
            idle,
            self.providers.next_expiry(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Start-up passed the bootstrap phase: find our neighbourhood now, then periodically.
    pub fn start(&mut self, cx: &mut Cx<'_>) {
        if !cx.config.dht {
            return;
        }
        self.rounds = 0;
        self.next_round = Some(cx.now.mono.plus_ms(cx.config.discovery_interval_ms.min(EARLY_ROUND_MS)));
        self.next_republish.get_or_insert(cx.now.mono.plus_ms(cx.config.provider_republish_ms));
        if !self.to_publish.is_empty() {
            self.publish_at.get_or_insert(cx.now.mono.plus_ms(PUBLISH_DELAY_MS));
        }
        let target = cx.node_id.0;
        self.start_lookup(cx, target, Purpose::Discover, 1);
    }

    /// Looks up `target` for the operator (or the simulator): `Event::LookupDone` tells how it went.
    pub fn find_node(&mut self, cx: &mut Cx<'_>, target: NodeId) {
        self.start_lookup(cx, target.0, Purpose::Node, 1);
    }

    fn start_lookup(&mut self, cx: &mut Cx<'_>, target: [u8; 32], purpose: Purpose, paths: usize) {
        let (now, penalties) = (cx.now.mono, cx.penalties);
        let seeds: Vec<PeerRecord> = self
            .table
            .closest(&target, K, |e| !penalties.is_banned(&Offender::Node(e.id), now))
            .into_iter()
            .map(|e| e.record())
            .collect();
        let mut lookup = Lookup::new(target, purpose, paths, &seeds, now);
        // Connected peers that are not in the table (inbound ones, bootstrap links) are
        // candidates too.
        let extra: Vec<PeerRecord> = cx
            .conns
            .established()
            .filter(|(_, _, e)| self.table.get(&e.node_id).is_none())
            .filter_map(|(_, c, e)| {
                let addr = if c.direction == Direction::Outbound { Some(c.addr) } else { e.listen_addr };
                addr.map(|a| PeerRecord { node_id: e.node_id, address: a, public_key: e.public_key })
            })
            .collect();
        lookup.seed_more(&extra);
        // Bootstrap nodes are in no table: one looked up by id is known from the config.
        let configured: Vec<PeerRecord> = cx
            .config
            .bootstrap_nodes
            .iter()
            .filter(|b| b.node_id.0 == target)
            .map(|b| PeerRecord { node_id: b.node_id, address: b.address, public_key: b.public_key })
            .collect();
        lookup.seed_more(&configured);
        let id = self.next_lookup;
        self.next_lookup += 1;
        self.stats.lookups_started += 1;
        if self.lookups.len() >= LOOKUPS_MAX {
            if self.queue.len() >= LOOKUP_QUEUE_MAX {
                // The oldest queued lookup is dropped, reported as failed.
                if let Some((_, dropped)) = self.queue.pop_front() {
                    self.report(cx, &dropped);
                }
            }
            self.queue.push_back((id, lookup));
            return;
        }
        self.lookups.insert(id, lookup);
        self.pump(cx, id);
    }

    /// Sends what lookup `id` can send now; ends it if nothing is left.
    fn pump(&mut self, cx: &mut Cx<'_>, id: u64) {
        let now = cx.now.mono;
        let Some(lookup) = self.lookups.get_mut(&id) else { return };
        let table = &self.table;
        let fallback = table.median_rtt();
        let next = lookup.next(now, |r| now.plus_ms(contact_ms(table.get(&r.node_id).map_or(fallback, |e| e.rtt_ms))));
        for record in next {
            self.contact(cx, id, record);
        }
        if self.lookups.get(&id).is_some_and(Lookup::done) {
            self.finish(cx, id);
        }
    }

    fn request_for(lookup: &Lookup) -> Request {
        match lookup.purpose {
            Purpose::Providers => Request::GetProviders { key: lookup.target },
            _ => Request::FindNode { target: NodeId(lookup.target) },
        }
    }

    fn contact(&mut self, cx: &mut Cx<'_>, id: u64, record: PeerRecord) {
        self.stats.contacts += 1;
        let now = cx.now.mono;
        let node = record.node_id;
        if cx.penalties.is_banned(&Offender::Node(node), now) {
            return self.contact_failed(cx, id, &node, false);
        }
        let established = cx.conns.established_to(&node).map(|(c, _, _)| c);
        if let Some(conn) = established {
            return self.ask(cx, id, conn, &node);
        }
        self.waiting.entry(node).or_default().insert(id);
        if cx.conns.has_conn_to(&node) {
            return; // Already being dialled: its link (or its failure) will come.
        }
        if self.dialled_contacts() >= TRANSIENT_MAX && !self.close_least_used(cx) {
            // Every transient connection is busy: try again when one frees.
            self.unwait(id, &node);
            if let Some(lookup) = self.lookups.get_mut(&id) {
                lookup.requeue(&node);
            }
            return;
        }
        match cx.dial_transient(record.address, node) {
            Ok(conn) => {
                self.stats.transient_dials += 1;
                self.transient.insert(conn, now);
            }
            Err(_) => self.contact_failed(cx, id, &node, false),
        }
    }

    /// DHT contacts we dialled and still hold open.
    fn dialled_contacts(&self) -> usize {
        self.transient.keys().filter(|c| !c.is_inbound()).count()
    }

    /// Closes the least recently used transient connection we dialled with nothing in flight,
    /// to make room for a new contact; false if every one is busy.
    fn close_least_used(&mut self, cx: &mut Cx<'_>) -> bool {
        let idle = self
            .transient
            .iter()
            .filter(|(c, _)| {
                !c.is_inbound()
                    && cx.conns.get(**c).is_some_and(|conn| conn.established().is_some())
                    && cx.requests.live_on(**c, wire::Protocol::Dht) == 0
            })
            .min_by_key(|(c, used)| (**used, **c))
            .map(|(c, _)| *c);
        let Some(conn) = idle else { return false };
        self.transient.remove(&conn);
        cx.close(conn, CloseReason::NoLongerNeeded);
        true
    }

    fn unwait(&mut self, id: u64, node: &NodeId) {
        if let Some(ids) = self.waiting.get_mut(node) {
            ids.remove(&id);
            if ids.is_empty() {
                self.waiting.remove(node);
            }
        }
    }

    /// Pumps every running lookup (a transient slot may have freed).
    fn pump_all(&mut self, cx: &mut Cx<'_>) {
        let ids: Vec<u64> = self.lookups.keys().copied().collect();
        for id in ids {
            self.pump(cx, id);
        }
    }

    fn ask(&mut self, cx: &mut Cx<'_>, id: u64, conn: ConnId, node: &NodeId) {
        let Some(lookup) = self.lookups.get(&id) else { return };
        let request = Self::request_for(lookup);
        let now = cx.now.mono;
        let until = lookup.deadline_of(node).unwrap_or(now.plus_ms(CONTACT_MIN_MS));
        let timeout = until.ms_since(now).max(CONTACT_MIN_MS / 2);
        if let Some(used) = self.transient.get_mut(&conn) {
            *used = now;
        }
        if cx.request_within(conn, wrap(request), Origin::Dht, id, timeout).is_err() {
            self.contact_failed(cx, id, node, false);
        }
    }

    /// A contact failed: the lookup moves on; `blame` marks the table entry (a dead or silent
    /// peer, not one we could not reach for our own limits).
    fn contact_failed(&mut self, cx: &mut Cx<'_>, id: u64, node: &NodeId, blame: bool) {
        self.unwait(id, node);
        let Some(lookup) = self.lookups.get_mut(&id) else { return };
        if lookup.failed(node) {
            self.stats.contacts_failed += 1;
            if blame {
                self.table.failed(node);
            }
        }
        self.pump(cx, id);
    }

    fn finish(&mut self, cx: &mut Cx<'_>, id: u64) {
        let Some(lookup) = self.lookups.remove(&id) else { return };
        // Contacts still pending belong to no lookup now.
        for ids in self.waiting.values_mut() {
            ids.remove(&id);
        }
        self.waiting.retain(|_, ids| !ids.is_empty());
        // Every bucket the lookup reached an answering node in is fresh.
        self.table.touch(&lookup.target, cx.now.mono);
        for r in lookup.closest_answered(usize::MAX) {
            self.table.touch(&r.node_id.0, cx.now.mono);
        }
        self.report(cx, &lookup);
        match lookup.purpose {
            Purpose::Discover => {
                let found = lookup.closest_answered(K);
                if !found.is_empty() {
                    cx.defer(Deferred::Discovered(found, crate::peers::Found::Dht));
                }
            }
            Purpose::Providers => self.dial_providers(cx, &lookup),
            Purpose::Region => {
                let keys = self.regions.remove(&id).unwrap_or_default();
                self.publish_region(cx, &lookup, &keys);
            }
            Purpose::Node => {}
        }
        if let Some((next, queued)) = self.queue.pop_front() {
            self.lookups.insert(next, queued);
            self.pump(cx, next);
        }
    }

    fn report(&mut self, cx: &mut Cx<'_>, lookup: &Lookup) {
        self.stats.lookups_done += 1;
        let found = lookup.succeeded();
        if found {
            self.stats.lookups_succeeded += 1;
        }
        let end = lookup.reached_at.unwrap_or(cx.now.mono);
        cx.event(Event::LookupDone {
            target: lookup.target,
            purpose: lookup.purpose,
            found,
            hops: lookup.named_at_hop.map_or(0, u32::from),
            ms: end.ms_since(lookup.started),
            queried: lookup.queried,
            failed: lookup.failed,
        });
    }

    /// Runs what is due: contact deadlines, idle transient connections, the periodic round,
    /// publishing, record expiry.
    pub fn handle_timeout(&mut self, cx: &mut Cx<'_>) {
        let now = cx.now.mono;
        let overdue: Vec<(u64, NodeId)> =
            self.lookups.iter().flat_map(|(id, l)| l.overdue(now).into_iter().map(|n| (*id, n))).collect();
        for (id, node) in overdue {
            self.contact_failed(cx, id, &node, true);
            // A dial nobody waits for any more is given up: its slot goes to the next contact.
            if !self.waiting.contains_key(&node) {
                let dialling = cx
                    .conns
                    .iter()
                    .find(|(c, conn)| {
                        conn.established().is_none() && conn.expect == Some(node) && self.transient.contains_key(c)
                    })
                    .map(|(c, _)| c);
                if let Some(conn) = dialling {
                    cx.close(conn, CloseReason::NoLongerNeeded);
                }
            }
        }
        let idle: Vec<ConnId> =
            self.transient.iter().filter(|(c, used)| used.plus_ms(idle_ms(c)) <= now).map(|(c, _)| *c).collect();
        for conn in idle {
            self.transient.remove(&conn);
            let still = cx.conns.get(conn).is_some_and(|c| c.transient);
            let busy = cx.requests.live_on(conn, wire::Protocol::Dht) > 0;
            if still && !busy {
                cx.close(conn, CloseReason::NoLongerNeeded);
            } else if still {
                self.transient.insert(conn, now);
            }
        }
        if self.next_round.is_some_and(|at| at <= now) {
            self.next_round = Some(now.plus_ms(cx.config.discovery_interval_ms));
            self.round(cx);
        }
        if self.next_probe.is_some_and(|at| at <= now) {
            self.next_probe = None;
            self.dial_probes(cx);
        }
        if self.next_republish.is_some_and(|at| at <= now) {
            self.next_republish = Some(now.plus_ms(cx.config.provider_republish_ms));
            self.to_publish.extend(self.provided.iter().copied());
            self.publish_at = Some(now);
        }
        if self.publish_at.is_some_and(|at| at <= now) {
            self.publish_at = None;
            self.publish_next_region(cx);
        }
        self.providers.expire(now);
        self.pump_all(cx);
    }

    /// The periodic round (SPEC R5.4): a lookup of our own id or of a random id in the
    /// stalest bucket, and dial-backs of inbound peers.
    fn round(&mut self, cx: &mut Cx<'_>) {
        self.rounds += 1;
        if self.lookups.values().any(|l| l.purpose == Purpose::Discover) {
            return;
        }
        // Our own neighbourhood while the table fills (the early rounds, or a table short of
        // `K`); afterwards only a bucket no lookup went through for `REFRESH_ROUNDS` rounds.
        let interval = cx.config.discovery_interval_ms;
        let stale_before = Mono(cx.now.mono.0.saturating_sub(interval * REFRESH_ROUNDS * 1000));
        let target = if self.rounds <= 1 || self.table.len() < K {
            Some(cx.node_id.0)
        } else {
            self.table.stale_bucket(stale_before).map(|b| self.table.random_in_bucket(b, cx.rng))
        };
        if let Some(target) = target {
            self.start_lookup(cx, target, Purpose::Discover, 1);
        }
    }

    /// Dials back inbound peers whose bucket has room. A peer still connected is dialled too:
    /// its handshake on the new connection proves the address even when the duplicate rule
    /// then keeps the old connection.
    fn dial_probes(&mut self, cx: &mut Cx<'_>) {
        let mut dialled = 0;
        for _ in 0..self.probes.len() {
            if dialled >= PROBES_PER_ROUND || self.dialled_contacts() >= TRANSIENT_MAX {
                break;
            }
            let Some(probe) = self.probes.pop_front() else { break };
            if !self.table.has_room_for(&probe)
                || !self.table.is_near(&probe.node_id)
                || cx.penalties.is_banned(&Offender::Node(probe.node_id), cx.now.mono)
            {
                continue;
            }
            let dialling = cx.conns.iter().any(|(_, c)| c.established().is_none() && c.expect == Some(probe.node_id));
            if dialling {
                continue;
            }
            if let Ok(conn) = cx.dial_transient(probe.address, probe.node_id) {
                self.stats.probes += 1;
                dialled += 1;
                self.transient.insert(conn, cx.now.mono);
            }
        }
        if !self.probes.is_empty() {
            self.next_probe = Some(cx.now.mono.plus_ms(PROBE_INTERVAL_MS));
        }
    }

    /// A handshake completed.
    pub fn on_established(&mut self, cx: &mut Cx<'_>, link: &Link) {
        let now = cx.now.mono;
        let record = PeerRecord { node_id: link.node_id, address: link.addr, public_key: link.public_key };
        if link.direction == Direction::Outbound {
            // We dialled `link.addr` and the peer proved its identity there.
            let opened = cx
                .conns
                .get(link.conn)
                .map(|c| c.handshake_deadline.0.saturating_sub(cx.config.handshake_timeout_ms * 1000));
            let rtt = opened.map(|o| (now.0.saturating_sub(o) / 1000 / 3) as u32);
            self.admit(cx, &record, rtt);
        } else if let Some(listen) = link.listen_addr
            && cx.config.dht
            && !is_bootstrap(cx, &link.node_id)
            && self.table.has_room_for(&PeerRecord { address: listen, ..record })
            && self.table.is_near(&link.node_id)
            && !self.probes.iter().any(|p| p.node_id == link.node_id)
        {
            if self.probes.len() >= PROBES_MAX {
                self.probes.pop_front();
            }
            self.probes.push_back(PeerRecord { address: listen, ..record });
            self.next_probe.get_or_insert(now.plus_ms(PROBE_INTERVAL_MS));
        }
        if link.transient && link.direction == Direction::Inbound {
            // Someone's DHT contact: closed here too if it stays unused (its dialler may
            // have vanished).
            self.transient.insert(link.conn, now);
        }
        if let Some(id) = self.provider_dials.remove(&link.node_id)
            && !link.transient
        {
            cx.defer(Deferred::Holder { conn: link.conn, id });
        }
        if let Some(ids) = self.waiting.remove(&link.node_id) {
            for id in ids {
                self.ask(cx, id, link.conn, &link.node_id);
            }
        }
    }

    fn admit(&mut self, cx: &Cx<'_>, record: &PeerRecord, rtt: Option<u32>) {
        if !cx.config.dht || is_bootstrap(cx, &record.node_id) {
            return;
        }
        if self.table.verified(record, rtt, cx.now.mono) == table::Admission::SubnetCap {
            self.stats.subnet_refused += 1;
        }
    }

    /// A connection ended.
    pub fn on_closed(&mut self, cx: &mut Cx<'_>, closed: &Closed) {
        if closed.reason.process_ending() {
            return;
        }
        if self.transient.remove(&closed.conn).is_some() {
            self.pump_all(cx);
        }
        let Some(peer) = closed.peer else { return };
        if closed.established {
            // Lookups waiting for its answers fail now rather than at their deadline.
            let ids: Vec<u64> = self.lookups.iter().filter(|(_, l)| l.waiting_for(&peer)).map(|(id, _)| *id).collect();
            for id in ids {
                self.unwait(id, &peer);
                if self.lookups.get_mut(&id).is_some_and(|l| l.retry(&peer)) {
                    self.pump(cx, id);
                } else {
                    self.contact_failed(cx, id, &peer, false);
                }
            }
            return;
        }
        self.provider_dials.remove(&peer);
        if matches!(closed.reason, CloseReason::NoLongerNeeded) {
            return;
        }
        if matches!(closed.reason, CloseReason::Duplicate) {
            // The peer proved its identity on the address we dialled (its signed answer came
            // before the duplicate rule kept the older connection): it may enter the table.
            let key = cx.conns.established_to(&peer).map(|(_, _, e)| e.public_key);
            if let Some(public_key) = key
                && closed.expect == Some(peer)
            {
                self.admit(cx, &PeerRecord { node_id: peer, address: closed.addr, public_key }, None);
            }
            if let Some(ids) = self.waiting.remove(&peer) {
                let conn = cx.conns.established_to(&peer).map(|(c, _, _)| c);
                for id in ids {
                    match conn {
                        Some(conn) => self.ask(cx, id, conn, &peer),
                        None => self.contact_failed(cx, id, &peer, false),
                    }
                }
            }
            return;
        }
        // A dial that failed: the entry is marked (dead, or moved away).
        self.table.failed(&peer);
        if let Some(ids) = self.waiting.remove(&peer) {
            for id in ids {
                self.contact_failed(cx, id, &peer, false);
            }
        }
    }

    /// A peer banned: it leaves the table.
    pub fn on_banned(&mut self, node: &NodeId) {
        self.table.remove(node);
        self.probes.retain(|p| p.node_id != *node);
    }

    /// The process restarted: lookups and transient connections died with it.
    pub fn on_restart(&mut self) {
        self.lookups.clear();
        self.queue.clear();
        self.waiting.clear();
        self.transient.clear();
        self.regions.clear();
        self.provider_dials.clear();
        self.next_round = None;
        // Everything held is published again once start-up is through.
        self.to_publish.extend(self.provided.iter().copied());
        self.publish_at = None;
    }

    /// The process is ending.
    pub fn on_shutdown(&mut self) {
        self.next_round = None;
        self.next_republish = None;
        self.publish_at = None;
        self.lookups.clear();
        self.queue.clear();
        self.waiting.clear();
    }
}

/// How long a DHT contact may stay unused. The dialler closes it; the other end waits longer
/// (its dialler may be asking as it closes) and closes only what a vanished dialler left.
fn idle_ms(conn: &ConnId) -> u64 {
    if conn.is_inbound() { 3 * IDLE_MS } else { IDLE_MS }
}

fn is_bootstrap(cx: &Cx<'_>, node: &NodeId) -> bool {
    cx.config.bootstrap_nodes.iter().any(|b| b.node_id == *node)
}

fn valid_addr(addr: &SocketAddr) -> bool {
    addr.port() != 0 && !addr.ip().is_unspecified() && !addr.ip().is_multicast()
}

#[cfg(test)]
mod tests;
