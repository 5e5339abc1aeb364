//! The DHT workload: `--lookups N` random node lookups once the network settled, `--dead PCT`
//! nodes vanishing silently before them (no reset, no refusal: their peers' packets go
//! nowhere), the routing-table invariants and the `dht` summary.

use super::*;
use mynet_core::dht::lookup::Purpose;

/// Lookups run in `[LOOKUPS_FROM, LOOKUPS_TO]` of the run (after faults heal, if later).
const LOOKUPS_FROM: f64 = 0.6;
const LOOKUPS_TO: f64 = 0.85;
/// Dead nodes vanish at this point of the run.
const VANISH_AT: f64 = 0.5;

/// The DHT workload's state and figures.
#[derive(Default)]
pub(super) struct Lookups {
    /// Honest nodes that vanished (`--dead`).
    pub(super) dead: Vec<bool>,
    asked: u64,
    done: u64,
    found: u64,
    hops: Vec<u32>,
    times: Durations,
    time_max_ms: u64,
    /// Lookups slower than three contact deadlines per failed contact (plus three for the
    /// lookup itself).
    over_bound: u64,
    /// A lookup that failed with no node dead: (from, target).
    pub(super) first_failure: Option<(usize, NodeId)>,
    targets: BTreeMap<(usize, NodeId), u64>,
    /// `--wants`: (node, item) asked at, and when it completed.
    wants: BTreeMap<(usize, mynet_core::content::ContentId), (u64, Option<u64>)>,
    wants_skipped: u64,
    /// `--all-pairs`: every (from, to) of the honest nodes, and those skipped (a node down).
    pairs: Vec<(usize, usize)>,
    skipped: u64,
    failed_examples: Vec<String>,
}

/// The `dht` section of the summary.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct DhtSummary {
    pub lookups: u64,
    pub success_rate: f64,
    pub hops_p50: u32,
    pub hops_p90: u32,
    pub hops_p99: u32,
    pub time_p50_ms: f64,
    pub time_p99_ms: f64,
    pub time_max_ms: u64,
    /// Lookups slower than three contact deadlines per dead peer met (plus three).
    pub over_bound: u64,
    pub dead: usize,
    /// Routing-table entries per running honest node.
    pub table_avg: f64,
    /// Candidates refused by the IP-diversity caps, over all nodes.
    pub subnet_refused: u64,
    /// Provider records stored, over all nodes.
    pub provider_records: u64,
    /// Over all running nodes: lookups they ran (their own: discovery, refresh, providers),
    /// contacts those made, DHT contacts dialled, dial-back probes.
    pub node_lookups: u64,
    pub contacts: u64,
    pub contact_dials: u64,
    pub probes: u64,
    /// `--wants`: operator gets of items no peer held, how many arrived, and how long they
    /// took (provider search, dial, transfer).
    pub wants: u64,
    pub wants_served: u64,
    pub want_time_p50_ms: f64,
    pub want_time_max_ms: f64,
    /// `--all-pairs`: lookups not made because a node was down at its turn.
    pub lookups_skipped: u64,
    /// The first few lookups that did not find their target (from, target, time, failures).
    pub failed_lookups: Vec<String>,
    /// `--sybils`: how many, the DHT answers they falsified, and the share of the honest
    /// nodes' routing-table entries they hold.
    pub sybils: usize,
    pub sybil_lies: u64,
    pub table_sybil_share: f64,
}

fn percentile(sorted: &[u32], q: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1]
}

impl World {
    pub(super) fn schedule_lookups(&mut self) {
        let duration_us = self.config.duration_ms * 1000;
        if self.config.dead_pct > 0 {
            self.schedule((duration_us as f64 * VANISH_AT) as u64, Ev::Vanish);
        }
        let from = ((duration_us as f64 * LOOKUPS_FROM) as u64).max(self.config.heal_at_us());
        let to = ((duration_us as f64 * LOOKUPS_TO) as u64).max(from);
        if self.config.all_pairs {
            let honest = self.sybils.first;
            self.lookups.pairs =
                (0..honest).flat_map(|a| (0..honest).filter(move |b| *b != a).map(move |b| (a, b))).collect();
        }
        let n = if self.config.all_pairs { self.lookups.pairs.len() } else { self.config.lookups } as u64;
        for k in 0..n {
            self.schedule(from + (to - from) * k / n.max(1), Ev::Lookup(k as usize));
        }
        let wants = self.config.wants as u64;
        for k in 0..wants {
            self.schedule(from + (to - from) * k / wants.max(1), Ev::Want(k as usize));
        }
    }

    /// `--wants`: a random running node asks for an added item whose holders are none of its
    /// peers, so only the DHT's provider records can lead it there.
    pub(super) fn want(&mut self) -> Result<(), SimError> {
        let items: Vec<(mynet_core::content::ContentId, usize)> =
            self.content.items.iter().filter(|i| self.added(i)).map(|i| (i.id, i.origin)).collect();
        if items.is_empty() {
            self.lookups.wants_skipped += 1;
            return Ok(());
        }
        let (id, _) = items[(self.rng.next_u64() % items.len() as u64) as usize];
        let holders: BTreeSet<NodeId> = (0..self.honest)
            .filter(|m| self.node(*m).is_some_and(|node| node.content().holds(&id)))
            .map(|m| self.nodes[m].identity.node_id())
            .collect();
        let candidates: Vec<usize> = (0..self.honest)
            .filter(|m| !self.dead(*m) && !holders.contains(&self.nodes[*m].identity.node_id()))
            .filter(|m| self.lookups.wants.keys().all(|(w, i)| (*w, *i) != (*m, id)))
            .filter(|m| self.node(*m).is_some_and(|node| node.peer_ids().iter().all(|p| !holders.contains(p))))
            .collect();
        if candidates.is_empty() {
            self.lookups.wants_skipped += 1;
            return Ok(());
        }
        let n = candidates[(self.rng.next_u64() % candidates.len() as u64) as usize];
        self.lookups.wants.insert((n, id), (self.now_us, None));
        self.node_input(n, Input::Want { id })
    }

    /// Node `n` completed item `id`: a want served, if it was one.
    pub(super) fn want_served(&mut self, n: usize, id: mynet_core::content::ContentId) {
        let now = self.now_us;
        if let Some((_, done)) = self.lookups.wants.get_mut(&(n, id)) {
            done.get_or_insert(now);
        }
    }

    pub(super) fn dead(&self, n: usize) -> bool {
        self.lookups.dead.get(n).copied().unwrap_or(false)
    }

    /// Whether packets to node `n` go nowhere (it vanished).
    pub(super) fn vanished(&self, n: usize) -> bool {
        self.dead(n)
    }

    /// `--dead`: that share of the honest nodes (never node 0, the bootstrap node) stops at
    /// once, silently.
    pub(super) fn vanish(&mut self) {
        let count = (self.honest as u64 * u64::from(self.config.dead_pct) / 100) as usize;
        let mut candidates: Vec<usize> = (1..self.sybils.first).collect();
        let count = count.min(candidates.len());
        mynet_core::peers::partial_shuffle(&mut self.rng, &mut candidates, count);
        self.lookups.dead = vec![false; self.honest];
        for n in candidates.into_iter().take(count) {
            self.lookups.dead[n] = true;
            self.nodes[n].epoch += 1;
            if let Some(h) = self.honest_mut(n) {
                h.journaled = None;
                h.down_log = None;
                h.restart_pending = false;
            }
            self.count("vanish");
        }
    }

    /// A lookup from a random running node to another.
    pub(super) fn lookup(&mut self, k: usize) -> Result<(), SimError> {
        let up = |w: &World, n: usize| w.node(n).is_some() && !w.dead(n);
        let (from, to) = if let Some(&(from, to)) = self.lookups.pairs.get(k) {
            // `--all-pairs`: a node down at its turn (a crash) is not looked up or from.
            if !up(self, from) || !up(self, to) {
                self.lookups.skipped += 1;
                return Ok(());
            }
            (from, to)
        } else {
            let running: Vec<usize> = (0..self.sybils.first).filter(|n| up(self, *n)).collect();
            if running.len() < 2 {
                return Ok(());
            }
            let from = running[(self.rng.next_u64() % running.len() as u64) as usize];
            let mut to = from;
            while to == from {
                to = running[(self.rng.next_u64() % running.len() as u64) as usize];
            }
            (from, to)
        };
        let target = self.nodes[to].identity.node_id();
        self.lookups.asked += 1;
        self.lookups.targets.insert((from, target), self.now_us);
        self.node_input(from, Input::Lookup { target })
    }

    /// A node reported a lookup's end.
    pub(super) fn observe_lookup(&mut self, n: usize, event: &Event) {
        let Event::LookupDone { target, purpose: Purpose::Node, found, hops, ms, failed, .. } = event else { return };
        if self.lookups.targets.remove(&(n, NodeId(*target))).is_none() {
            return;
        }
        let l = &mut self.lookups;
        l.done += 1;
        if *found {
            l.found += 1;
            l.hops.push(*hops);
            l.times.record(ms * 1000);
        } else {
            if l.failed_examples.len() < 5 {
                l.failed_examples
                    .push(format!("node {n} -> {}: {ms} ms, {failed} contacts failed", NodeId(*target).short()));
            }
            if l.first_failure.is_none() && !l.dead.iter().any(|d| *d) {
                l.first_failure = Some((n, NodeId(*target)));
            }
        }
        l.time_max_ms = l.time_max_ms.max(*ms);
        let bound = 3 * mynet_core::dht::CONTACT_MAX_MS * (u64::from(*failed) + 1);
        if *ms > bound {
            l.over_bound += 1;
        }
    }

    pub(super) fn dht_summary(&self) -> DhtSummary {
        let l = &self.lookups;
        let mut hops = l.hops.clone();
        hops.sort_unstable();
        let times = l.times.percentiles();
        let (mut tables, mut running, mut refused, mut records) = (0u64, 0u64, 0u64, 0u64);
        let (mut node_lookups, mut contacts, mut contact_dials, mut probes) = (0u64, 0u64, 0u64, 0u64);
        for n in 0..self.honest {
            if let Some(node) = self.node(n) {
                let status = node.dht().status();
                tables += u64::from(status.table_size);
                refused += status.stats.subnet_refused;
                records += u64::from(status.provider_records);
                node_lookups += status.stats.lookups_started;
                contacts += status.stats.contacts;
                contact_dials += status.stats.transient_dials;
                probes += status.stats.probes;
                running += 1;
            }
        }
        DhtSummary {
            lookups: l.done,
            success_rate: if l.done == 0 {
                0.0
            } else {
                (l.found as f64 / l.done as f64 * 10_000.0).round() / 10_000.0
            },
            hops_p50: percentile(&hops, 0.5),
            hops_p90: percentile(&hops, 0.9),
            hops_p99: percentile(&hops, 0.99),
            time_p50_ms: times.p50_ms,
            time_p99_ms: times.p99_ms,
            time_max_ms: l.time_max_ms,
            over_bound: l.over_bound,
            dead: l.dead.iter().filter(|d| **d).count(),
            table_avg: if running == 0 { 0.0 } else { (tables as f64 / running as f64 * 10.0).round() / 10.0 },
            subnet_refused: refused,
            provider_records: records,
            node_lookups,
            contacts,
            contact_dials,
            probes,
            wants: l.wants.len() as u64,
            wants_served: l.wants.values().filter(|(_, d)| d.is_some()).count() as u64,
            want_time_p50_ms: {
                let mut t = Durations::default();
                for (at, done) in l.wants.values() {
                    if let Some(done) = done {
                        t.record(done - at);
                    }
                }
                t.percentiles().p50_ms
            },
            want_time_max_ms: l
                .wants
                .values()
                .filter_map(|(at, done)| done.map(|d| (d - at) as f64 / 1000.0))
                .fold(0.0, f64::max),
            lookups_skipped: l.skipped,
            failed_lookups: l.failed_examples.clone(),
            sybils: self.honest - self.sybils.first,
            sybil_lies: self.sybils.lies,
            table_sybil_share: self.table_sybil_share(),
        }
    }

    /// Routing tables hold only verified identities at the addresses they really listen on,
    /// and with no node dead every lookup found its target.
    pub(super) fn check_dht(&self) -> Result<(), SimError> {
        for n in 0..self.honest {
            let Some(node) = self.node(n) else { continue };
            let table = node.dht().table();
            if let Err(e) = node.dht().check() {
                return Err(self.invariant(n, Violation::RoutingTable(e)));
            }
            for entry in table.entries() {
                let real = self.by_addr.get(&entry.addr).map(|m| self.nodes[*m].identity.node_id());
                if real != Some(entry.id) {
                    let e = format!("entry {} at {} is not that node's address", entry.id.short(), entry.addr);
                    return Err(self.invariant(n, Violation::RoutingTable(e)));
                }
            }
        }
        if let Some((from, target)) = self.lookups.first_failure {
            let failure = LivenessFailure::LookupFailed { node: from, target: target.short() };
            return Err(SimError::Liveness { failure, node: Some(from), budget_s: 0, command: self.config.command() });
        }
        let unserved = self.lookups.wants.iter().find(|((n, _), (_, done))| done.is_none() && self.node(*n).is_some());
        if let Some(((n, id), _)) = unserved {
            let failure = LivenessFailure::WantNotServed { node: *n, item: id.to_string() };
            return Err(SimError::Liveness { failure, node: Some(*n), budget_s: 0, command: self.config.command() });
        }
        let unfinished = self.lookups.asked - self.lookups.done;
        if unfinished > 0 && self.lookups.dead.iter().all(|d| !d) {
            let failure = LivenessFailure::LookupFailed { node: 0, target: format!("{unfinished} lookups unfinished") };
            return Err(SimError::Liveness { failure, node: None, budget_s: 0, command: self.config.command() });
        }
        Ok(())
    }
}
