//! One iterative lookup: candidates ordered by distance to the target, at most [`ALPHA`]
//! contacts in flight per path, each with its own deadline; done when the `K` closest live
//! candidates of every path have answered.
//!
//! Security-relevant lookups run over several disjoint paths (S/Kademlia): each path has its
//! own candidates and no node is asked by two paths, so one path through Sybils does not
//! capture the others.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::discovery::PeerRecord;
use crate::id::NodeId;
use crate::time::Mono;

use super::table::{K, distance};

/// Contacts in flight per path.
pub const ALPHA: usize = 3;
/// Candidates kept per path (the farthest new ones are dropped past it).
pub const CANDIDATES_MAX: usize = 3 * K;

/// A provider lookup stops once it has this many providers.
pub const PROVIDERS_ENOUGH: usize = 3;

/// Why a lookup runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Purpose {
    /// The operator (or the simulator) looks for a node.
    Node,
    /// Periodic discovery: our own id or a stale bucket's random id (R5.2, R5.4).
    Discover,
    /// Providers of an item (`find_peers_with_content`).
    Providers,
    /// The nodes of a keyspace region, to republish the provider records that fall in it.
    Region,
}

/// Where a candidate is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum State {
    New,
    /// Asked (or being dialled to be asked) until the deadline.
    Waiting {
        until: Mono,
        since: Mono,
    },
    Answered,
    Failed,
}

/// One candidate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Candidate {
    pub record: PeerRecord,
    /// 1 for candidates from our table; one more than the answer that named it otherwise.
    pub hop: u8,
    pub state: State,
    /// Whether its contact was started again after its connection closed under it.
    #[serde(default)]
    pub retried: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Path {
    /// By distance to the target.
    #[serde(with = "crate::id::map_as_pairs")]
    candidates: BTreeMap<[u8; 32], Candidate>,
}

/// A lookup in progress.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lookup {
    pub target: [u8; 32],
    pub purpose: Purpose,
    pub started: Mono,
    paths: Vec<Path>,
    /// Every node any path holds, so paths stay disjoint.
    claimed: BTreeSet<NodeId>,
    /// Contacts made and failed.
    pub queried: u32,
    pub failed: u32,
    /// For a `Node` lookup: the hop of the answer that named the target (0: it was in our
    /// table) and when the target itself answered.
    pub named_at_hop: Option<u8>,
    pub reached_at: Option<Mono>,
    /// Providers found (`Providers` lookups), at most `K`.
    pub providers: Vec<PeerRecord>,
}

impl Lookup {
    /// A lookup seeded with `seeds` (closest first), over `paths` disjoint paths.
    pub fn new(target: [u8; 32], purpose: Purpose, paths: usize, seeds: &[PeerRecord], now: Mono) -> Lookup {
        let mut lookup = Lookup {
            target,
            purpose,
            started: now,
            paths: vec![Path::default(); paths.max(1)],
            claimed: BTreeSet::new(),
            queried: 0,
            failed: 0,
            named_at_hop: None,
            reached_at: None,
            providers: Vec::new(),
        };
        let n = lookup.paths.len();
        for (i, seed) in seeds.iter().enumerate() {
            if seed.node_id.0 == target && purpose == Purpose::Node {
                lookup.named_at_hop = Some(0);
            }
            lookup.add(i % n, *seed, 1);
        }
        lookup
    }

    /// More first-hop candidates (connected peers that are not in the table).
    pub fn seed_more(&mut self, seeds: &[PeerRecord]) {
        let n = self.paths.len();
        for (i, seed) in seeds.iter().enumerate() {
            if seed.node_id.0 == self.target && self.purpose == Purpose::Node {
                self.named_at_hop.get_or_insert(0);
            }
            self.add(i % n, *seed, 1);
        }
    }

    /// The path that holds `node`.
    pub fn path_of(&self, node: &NodeId) -> Option<u8> {
        let d = distance(&node.0, &self.target);
        self.paths.iter().position(|p| p.candidates.contains_key(&d)).map(|i| i as u8)
    }

    /// The deadline of the contact with `node`, if it is being waited for.
    pub fn deadline_of(&self, node: &NodeId) -> Option<Mono> {
        let d = distance(&node.0, &self.target);
        self.paths.iter().find_map(|p| match p.candidates.get(&d)?.state {
            State::Waiting { until, .. } => Some(until),
            _ => None,
        })
    }

    fn add(&mut self, path: usize, record: PeerRecord, hop: u8) {
        if !self.claimed.insert(record.node_id) {
            return;
        }
        let candidates = &mut self.paths[path].candidates;
        candidates.insert(
            distance(&record.node_id.0, &self.target),
            Candidate { record, hop, state: State::New, retried: false },
        );
        if candidates.len() > CANDIDATES_MAX {
            let drop = candidates.iter().rev().find(|(_, c)| c.state == State::New).map(|(d, _)| *d);
            if let Some(d) = drop
                && let Some(c) = candidates.remove(&d)
            {
                self.claimed.remove(&c.record.node_id);
            }
        }
    }

    fn find(&mut self, node: &NodeId) -> Option<(usize, &mut Candidate)> {
        let d = distance(&node.0, &self.target);
        self.paths.iter_mut().enumerate().find_map(|(i, p)| p.candidates.get_mut(&d).map(|c| (i, c)))
    }

    /// The candidates to contact now, at most `ALPHA` in flight per path, among the `K`
    /// closest that have not failed. Each is marked waiting until `deadline(record)`.
    pub fn next(&mut self, now: Mono, mut deadline: impl FnMut(&PeerRecord) -> Mono) -> Vec<PeerRecord> {
        let mut out = Vec::new();
        for path in &mut self.paths {
            let live = path.candidates.values_mut().filter(|c| c.state != State::Failed).take(K);
            let mut in_flight = 0;
            let mut fresh = Vec::new();
            for c in live {
                match c.state {
                    State::Waiting { .. } => in_flight += 1,
                    State::New => fresh.push(c),
                    _ => {}
                }
            }
            for c in fresh.into_iter().take(ALPHA.saturating_sub(in_flight)) {
                c.state = State::Waiting { until: deadline(&c.record), since: now };
                out.push(c.record);
            }
        }
        self.queried += out.len() as u32;
        out
    }

    /// The candidate answered with `records`: they join its path one hop further.
    pub fn answered(&mut self, node: &NodeId, records: &[PeerRecord], now: Mono) -> Option<u32> {
        let (path, c) = self.find(node)?;
        let State::Waiting { since, .. } = c.state else { return None };
        c.state = State::Answered;
        let hop = c.hop;
        let rtt = now.ms_since(since) as u32;
        if self.purpose == Purpose::Node && node.0 == self.target && self.reached_at.is_none() {
            self.reached_at = Some(now);
        }
        for record in records {
            if self.purpose == Purpose::Node && record.node_id.0 == self.target && self.named_at_hop.is_none() {
                self.named_at_hop = Some(hop);
            }
            self.add(path, *record, hop.saturating_add(1));
        }
        Some(rtt)
    }

    /// The contact with `node` cannot start now (our own limits): it goes back to new, to be
    /// tried when a slot frees.
    pub fn requeue(&mut self, node: &NodeId) {
        if let Some((_, c)) = self.find(node)
            && matches!(c.state, State::Waiting { .. })
        {
            c.state = State::New;
            self.queried = self.queried.saturating_sub(1);
        }
    }

    /// The connection to `node` closed while we waited for its answer (the peer closed an
    /// idle contact as our question crossed it): contact it once more.
    pub fn retry(&mut self, node: &NodeId) -> bool {
        match self.find(node) {
            Some((_, c)) if !c.retried && matches!(c.state, State::Waiting { .. }) => {
                c.retried = true;
                c.state = State::New;
                self.queried = self.queried.saturating_sub(1);
                true
            }
            _ => false,
        }
    }

    /// The candidate's contact failed (deadline, dial refused or failed).
    pub fn failed(&mut self, node: &NodeId) -> bool {
        let Some((_, c)) = self.find(node) else { return false };
        if !matches!(c.state, State::Waiting { .. } | State::New) {
            return false;
        }
        c.state = State::Failed;
        self.failed += 1;
        true
    }

    /// Whether `node` is being waited for.
    pub fn waiting_for(&self, node: &NodeId) -> bool {
        self.deadline_of(node).is_some()
    }

    /// Candidates whose deadline passed.
    pub fn overdue(&self, now: Mono) -> Vec<NodeId> {
        let all = self.paths.iter().flat_map(|p| p.candidates.values());
        all.filter(|c| matches!(c.state, State::Waiting { until, .. } if until <= now))
            .map(|c| c.record.node_id)
            .collect()
    }

    /// The earliest deadline of a waiting candidate.
    pub fn next_deadline(&self) -> Option<Mono> {
        let all = self.paths.iter().flat_map(|p| p.candidates.values());
        all.filter_map(|c| match c.state {
            State::Waiting { until, .. } => Some(until),
            _ => None,
        })
        .min()
    }

    /// Whether every path's `K` closest live candidates answered (nothing left to ask).
    pub fn done(&self) -> bool {
        match self.purpose {
            Purpose::Node if self.reached_at.is_some() => return true,
            Purpose::Providers if self.providers.len() >= PROVIDERS_ENOUGH => return true,
            _ => {}
        }
        self.paths.iter().all(|p| {
            p.candidates.values().filter(|c| c.state != State::Failed).take(K).all(|c| c.state == State::Answered)
        })
    }

    /// The nodes that answered, closest first, over all paths, at most `n`.
    pub fn closest_answered(&self, n: usize) -> Vec<PeerRecord> {
        let mut all: Vec<(&[u8; 32], &Candidate)> =
            self.paths.iter().flat_map(|p| p.candidates.iter()).filter(|(_, c)| c.state == State::Answered).collect();
        all.sort_by(|a, b| a.0.cmp(b.0));
        all.into_iter().take(n).map(|(_, c)| c.record).collect()
    }

    /// Whether the lookup found what it was for.
    pub fn succeeded(&self) -> bool {
        match self.purpose {
            Purpose::Node => self.reached_at.is_some(),
            Purpose::Providers => !self.providers.is_empty(),
            Purpose::Discover | Purpose::Region => {
                self.paths.iter().any(|p| p.candidates.values().any(|c| c.state == State::Answered))
            }
        }
    }
}
