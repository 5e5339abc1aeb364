//! Liveness, observation and the run summary.

use super::*;

/// How long a node may be short of its peer target (having lost a peer) before that is a
/// liveness failure: time to notice, pick a candidate and dial it, with backoff.
pub const PEER_RECOVERY_US: u64 = 60_000_000;

// ---- liveness, observation, summary ----
impl World {
    /// After faults heal, every honest node must be up and ready, hold its target number of
    /// peers (or every other honest node in small networks), and the honest graph must be
    /// connected.
    pub fn check_liveness(&self) -> Result<(), SimError> {
        let budget_s =
            (self.config.duration_ms * 1000 - self.config.heal_at_us().min(self.config.duration_ms * 1000)) / 1_000_000;
        let fail = |failure: LivenessFailure, node: Option<usize>| {
            Err(SimError::Liveness { failure, node, budget_s, command: self.config.command() })
        };
        let graph = self.peer_graph();
        for (n, peers) in graph.iter().enumerate().take(self.honest) {
            // A node that served bad content is banned by its peers (it may not even get
            // through bootstrap again): that is the defence working, not a liveness failure.
            if self.honest(n).is_some_and(|h| h.content_fault.is_some()) || self.vanished(n) {
                continue;
            }
            let Some(node) = self.node(n) else {
                return fail(LivenessFailure::NotRunning { node: n }, Some(n));
            };
            if node.phase() != Phase::Ready {
                return fail(LivenessFailure::NotReady { node: n, phase: node.phase() }, Some(n));
            }
            // Peers that completed a handshake and answer requests count, honest or not; the
            // honest graph must still be connected.
            // A node may have just lost a peer (a reset, a peer's crash) and be dialling a
            // replacement: it fails only if it has been short for longer than the recovery
            // budget.
            let (all_peers, target) = (node.peer_ids().len(), self.target_of(n));
            let short_us = self.honest(n).and_then(|h| h.below_target_since).map_or(0, |s| self.now_us - s);
            if all_peers < target && short_us > PEER_RECOVERY_US {
                let failure = LivenessFailure::TooFewPeers {
                    node: n,
                    peers: all_peers,
                    honest: peers.len(),
                    target,
                    short_s: short_us / 1_000_000,
                };
                return fail(failure, Some(n));
            }
        }
        let servers: Vec<usize> = (0..self.honest).filter(|n| self.replicates(*n) && !self.vanished(*n)).collect();
        let keep: BTreeMap<usize, usize> = servers.iter().enumerate().map(|(i, n)| (*n, i)).collect();
        let well_behaved: Vec<Vec<usize>> =
            servers.iter().map(|n| graph[*n].iter().filter_map(|p| keep.get(p).copied()).collect()).collect();
        let connected =
            if self.config.lan > 0 { self.domains_connected(&servers, &graph) } else { is_connected(&well_behaved) };
        if !connected {
            return fail(LivenessFailure::Disconnected, None);
        }
        Ok(())
    }

    /// Simulated time now, in microseconds.
    pub fn now_us(&self) -> u64 {
        self.now_us
    }

    /// What the run simulates.
    pub fn config(&self) -> &SimConfig {
        &self.config
    }

    /// How many honest nodes.
    pub fn len(&self) -> usize {
        self.honest
    }

    /// Whether the world has no honest nodes.
    pub fn is_empty(&self) -> bool {
        self.honest == 0
    }

    /// Node `n`'s id.
    pub fn node_id(&self, n: usize) -> NodeId {
        self.nodes[n].identity.node_id()
    }

    /// Node `n`'s identity (to replay its log).
    pub fn identity(&self, n: usize) -> &Identity {
        &self.nodes[n].identity
    }

    /// Honest node `n`'s state machine, while it runs.
    pub fn node(&self, n: usize) -> Option<&mynet_core::Node> {
        self.honest(n)?.journaled.as_ref().map(Journaled::node)
    }

    /// Node `n`'s kept event log (running or down), if it was kept.
    pub fn memory_log(&self, n: usize) -> Option<&MemLog> {
        let h = self.honest(n)?;
        h.journaled.as_ref().map(Journaled::log).or(h.down_log.as_ref()).and_then(SimLog::memory)
    }

    /// Per-event digests, when `record_trace` is on.
    pub fn trace_events(&self) -> &[TraceEvent] {
        &self.trace_events
    }

    /// Honest peers of every honest node, as indices (adversaries excluded).
    pub fn peer_graph(&self) -> Vec<Vec<usize>> {
        let index: BTreeMap<NodeId, usize> = (0..self.honest).map(|i| (self.nodes[i].identity.node_id(), i)).collect();
        (0..self.honest)
            .map(|n| {
                self.node(n)
                    .map(|node| node.peer_ids().iter().filter_map(|id| index.get(id).copied()).collect())
                    .unwrap_or_default()
            })
            .collect()
    }

    /// The summary of the run so far.
    pub fn summary(&self) -> Summary {
        let graph = self.peer_graph();
        let degrees: Vec<usize> = graph.iter().map(Vec::len).collect();
        let phases: Vec<Phase> = (0..self.honest).filter_map(|n| self.node(n).map(|node| node.phase())).collect();
        let mut trace = self.trace.clone();
        let mut requests = mynet_core::request::RequestCounters::default();
        let mut refusals = RefusalSummary { startup_failures_naming_them: self.refused_startups, ..Default::default() };
        for n in 0..self.honest {
            if let Some(node) = self.node(n) {
                trace.update(&node.output_hash());
                trace.update(&node.state_hash());
                let status = node.status(node.now());
                let c = status.requests;
                requests.sent += c.sent;
                requests.answered += c.answered;
                requests.timed_out += c.timed_out;
                requests.late += c.late;
                requests.served += c.served;
                refusals.explained += status.counters.refusals_explained;
                refusals.silent += status.counters.refusals_silent;
                refusals.heard += status.counters.refusals_heard;
            }
        }
        Summary {
            seed: self.config.seed,
            nodes: self.honest,
            adversaries: self.nodes.len() - self.honest,
            sim_time_s: self.now_us as f64 / 1e6,
            wall_time_s: (self.wall_started.elapsed().as_secs_f64() * 1000.0).round() / 1000.0,
            events: self.events,
            trace_hash: mynet_core::hex::encode(trace.finalize().as_bytes()),
            ready_nodes: phases.iter().filter(|p| **p == Phase::Ready).count(),
            failed_nodes: phases.iter().filter(|p| **p == Phase::Failed).count(),
            peers_min: degrees.iter().copied().min().unwrap_or(0),
            peers_avg: if degrees.is_empty() {
                0.0
            } else {
                (degrees.iter().sum::<usize>() as f64 / degrees.len() as f64 * 100.0).round() / 100.0
            },
            peers_max: degrees.iter().copied().max().unwrap_or(0),
            connected: if self.config.lan > 0 {
                self.domains_connected(&(0..self.honest).collect::<Vec<_>>(), &graph)
            } else {
                is_connected(&graph)
            },
            messages: self.messages,
            bytes: self.bytes,
            handshake_latency: self.handshakes.percentiles(),
            time_to_target_peers: self.to_target.percentiles(),
            faults: self.config.faults.clone(),
            faults_injected: self.counts.clone(),
            requests,
            content: self.content_summary(),
            groups: self.groups_summary(),
            reconcile: self.reconcile_summary(),
            dht: self.dht_summary(),
            lan: self.lan_summary(),
            refusals,
        }
    }
}

/// The `refusals` section of the summary: over the honest nodes running at the end, refusals
/// explained and closed silently, signed refusals heard; start-ups that failed naming one.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct RefusalSummary {
    pub explained: u64,
    pub silent: u64,
    pub heard: u64,
    pub startup_failures_naming_them: u64,
}

/// Whether the undirected graph is one component.
pub fn is_connected(graph: &[Vec<usize>]) -> bool {
    if graph.is_empty() {
        return true;
    }
    let mut seen = vec![false; graph.len()];
    let mut queue = VecDeque::from([0usize]);
    seen[0] = true;
    let mut reached = 1;
    while let Some(n) = queue.pop_front() {
        for &m in &graph[n] {
            if m < graph.len() && !seen[m] {
                seen[m] = true;
                reached += 1;
                queue.push_back(m);
            }
        }
    }
    reached == graph.len()
}

/// One processed event, as recorded for determinism checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceEvent {
    pub at_us: u64,
    pub kind: &'static str,
    pub node: usize,
    pub conn: ConnId,
    /// Digest of this event and every event before it.
    pub digest: u64,
}

impl std::fmt::Display for TraceEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} at {} us, node {}, {} (digest {:016x})", self.kind, self.at_us, self.node, self.conn, self.digest)
    }
}

/// Names of the simulator's events, indexed by `Ev::tag`'s first element.
pub(super) const EVENT_KINDS: [&str; 26] = [
    "start",
    "timer",
    "connect",
    "secured",
    "deliver",
    "closed",
    "crash",
    "restart",
    "partition",
    "heal",
    "clock_jump",
    "attack",
    "heal_clocks",
    "add_item",
    "store_done",
    "piece",
    "edit",
    "catalogue",
    "piece_sent",
    "group",
    "decrypt_check",
    "decrypt_sweep",
    "vanish",
    "lookup",
    "lan",
    "want",
];

/// The first event index at which two recorded traces differ.
pub fn first_divergence(a: &[TraceEvent], b: &[TraceEvent]) -> Option<usize> {
    a.iter().zip(b).position(|(x, y)| x != y).or(if a.len() == b.len() { None } else { Some(a.len().min(b.len())) })
}
