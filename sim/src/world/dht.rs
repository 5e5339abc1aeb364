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
        let n = self.config.lookups as u64;
        for k in 0..n {
            self.schedule(from + (to - from) * k / n.max(1), Ev::Lookup(k as usize));
        }
    }

    fn dead(&self, n: usize) -> bool {
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
        let mut candidates: Vec<usize> = (1..self.honest).collect();
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
    pub(super) fn lookup(&mut self) -> Result<(), SimError> {
        let running: Vec<usize> = (0..self.honest).filter(|n| self.node(*n).is_some() && !self.dead(*n)).collect();
        if running.len() < 2 {
            return Ok(());
        }
        let from = running[(self.rng.next_u64() % running.len() as u64) as usize];
        let mut to = from;
        while to == from {
            to = running[(self.rng.next_u64() % running.len() as u64) as usize];
        }
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
        } else if l.first_failure.is_none() && !l.dead.iter().any(|d| *d) {
            l.first_failure = Some((n, NodeId(*target)));
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
        let unfinished = self.lookups.asked - self.lookups.done;
        if unfinished > 0 && self.lookups.dead.iter().all(|d| !d) {
            let failure = LivenessFailure::LookupFailed { node: 0, target: format!("{unfinished} lookups unfinished") };
            return Err(SimError::Liveness { failure, node: None, budget_s: 0, command: self.config.command() });
        }
        Ok(())
    }
}
