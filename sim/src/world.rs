//! The simulation engine: nodes, links, the event queue and the trace hash.

use core::net::SocketAddr;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::time::Instant;

use mynet_core::config::BootstrapNode;
use mynet_core::handshake::Binding;
use mynet_core::{Config, ConnId, Identity, Input, Mono, NodeId, Output, Phase, Time};
use mynet_storage::Journaled;
use mynet_storage::log::MemLog;
use rand_chacha::ChaCha8Rng;
use rand_core::{Rng, SeedableRng};
use serde::Serialize;
use thiserror::Error;

use crate::log::SimLog;
use crate::net::{self, Place};

/// Wall clock (Unix ms) at simulated time zero.
pub const WALL_EPOCH_MS: u64 = 1_750_000_000_000;
/// Most events one run may process; a run that needs more is stuck in a loop.
pub const EVENTS_MAX: u64 = 2_000_000_000;

/// What to simulate.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Seed of everything random in the run.
    pub seed: u64,
    /// How many nodes.
    pub nodes: usize,
    /// Simulated time to run for.
    pub duration_ms: u64,
    /// Nodes join at random times in `[0, join_spread_ms]`; node 0 starts at 0. Default: 100 ms
    /// per node, at most a quarter of the run.
    pub join_spread_ms: Option<u64>,
    /// Template for every node's config (listen address and bootstrap list are set per node).
    pub node_config: Config,
    /// Nodes whose event log is kept in memory (for `--dump-log`).
    pub keep_logs: Vec<usize>,
}

impl SimConfig {
    /// A run of `nodes` nodes for `duration_ms` with default node settings.
    pub fn new(seed: u64, nodes: usize, duration_ms: u64) -> SimConfig {
        SimConfig {
            seed,
            nodes,
            duration_ms,
            join_spread_ms: None,
            node_config: Config::default(),
            keep_logs: Vec::new(),
        }
    }

    /// The command line that reproduces this run.
    pub fn command(&self) -> String {
        format!("mynet sim --seed {} --nodes {} --duration {}ms", self.seed, self.nodes, self.duration_ms)
    }

    fn join_spread_ms(&self) -> u64 {
        self.join_spread_ms.unwrap_or_else(|| (self.nodes as u64 * 100).min(self.duration_ms / 4))
    }
}

/// A failed run: what broke, where and when, and how to see it again.
#[derive(Debug, Error)]
pub enum SimError {
    #[error(
        "invariant violated: {message}\n  node {node} ({node_id}) at sim time {time_ms} ms\n  reproduce: {command}"
    )]
    Invariant { message: String, node: usize, node_id: NodeId, time_ms: u64, command: String },
    #[error("simulation exceeded {EVENTS_MAX} events; reproduce: {command}")]
    Runaway { command: String },
    #[error("node {node}: storage failed: {message}")]
    Storage { node: usize, message: String },
}

/// The summary printed as the last line of `mynet sim`.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Summary {
    pub seed: u64,
    pub nodes: usize,
    pub sim_time_s: f64,
    pub wall_time_s: f64,
    pub events: u64,
    pub trace_hash: String,
    pub ready_nodes: usize,
    pub failed_nodes: usize,
    pub peers_min: usize,
    pub peers_avg: f64,
    pub peers_max: usize,
    pub connected: bool,
    pub messages: u64,
    pub bytes: u64,
}

#[derive(Clone, Debug)]
enum Ev {
    Start(usize),
    Timer(usize),
    Connect { from: usize, conn: ConnId, addr: SocketAddr },
    Secured { node: usize, conn: ConnId, binding: Binding },
    Deliver { node: usize, conn: ConnId, bytes: Vec<u8> },
    Closed { node: usize, conn: ConnId, reason: &'static str },
}

impl Ev {
    fn tag(&self) -> (u8, usize, u64) {
        match self {
            Ev::Start(n) => (0, *n, 0),
            Ev::Timer(n) => (1, *n, 0),
            Ev::Connect { from, conn, .. } => (2, *from, conn.0),
            Ev::Secured { node, conn, .. } => (3, *node, conn.0),
            Ev::Deliver { node, conn, .. } => (4, *node, conn.0),
            Ev::Closed { node, conn, .. } => (5, *node, conn.0),
        }
    }
}

struct Scheduled {
    at_us: u64,
    seq: u64,
    ev: Ev,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at_us, self.seq) == (other.at_us, other.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at_us, self.seq).cmp(&(other.at_us, other.seq))
    }
}

struct SimNode {
    identity: Identity,
    addr: SocketAddr,
    place: Place,
    rng_seed: u64,
    journaled: Option<Journaled<SimLog>>,
    timer: Option<Mono>,
    next_inbound: u64,
}

/// One end of a simulated connection: the node and its conn id.
type End = (usize, ConnId);

/// A seeded world of simulated nodes.
pub struct World {
    config: SimConfig,
    rng: ChaCha8Rng,
    nodes: Vec<SimNode>,
    by_addr: BTreeMap<SocketAddr, usize>,
    queue: BinaryHeap<Reverse<Scheduled>>,
    next_seq: u64,
    now_us: u64,
    /// Each end's peer end.
    links: BTreeMap<End, End>,
    /// Last delivery time scheduled from each sending end (FIFO per direction).
    fifo: BTreeMap<End, u64>,
    trace: blake3::Hasher,
    events: u64,
    messages: u64,
    bytes: u64,
    wall_started: Instant,
    outputs: Vec<Output>,
}

impl World {
    /// Builds the world: identities, places and join times all come from the seed.
    pub fn new(config: SimConfig) -> World {
        let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
        let mut nodes = Vec::with_capacity(config.nodes);
        let mut by_addr = BTreeMap::new();
        for index in 0..config.nodes {
            let mut secret = [0u8; 32];
            rng.fill_bytes(&mut secret);
            let addr = net::node_addr(index);
            by_addr.insert(addr, index);
            nodes.push(SimNode {
                identity: Identity::from_secret_bytes(&secret),
                addr,
                place: Place::random(&mut rng),
                rng_seed: rng.next_u64(),
                journaled: None,
                timer: None,
                next_inbound: 0,
            });
        }
        let mut world = World {
            config,
            rng,
            nodes,
            by_addr,
            queue: BinaryHeap::new(),
            next_seq: 0,
            now_us: 0,
            links: BTreeMap::new(),
            fifo: BTreeMap::new(),
            trace: blake3::Hasher::new(),
            events: 0,
            messages: 0,
            bytes: 0,
            wall_started: Instant::now(),
            outputs: Vec::new(),
        };
        let spread_us = world.config.join_spread_ms() * 1000;
        for index in 0..world.config.nodes {
            let at = if index == 0 || spread_us == 0 { 0 } else { 1 + world.rng.next_u64() % spread_us };
            world.schedule(at, Ev::Start(index));
        }
        world
    }

    /// Runs until the configured duration.
    pub fn run(&mut self) -> Result<(), SimError> {
        self.run_until(self.config.duration_ms * 1000)
    }

    /// Processes every event up to simulated time `until_us`.
    pub fn run_until(&mut self, until_us: u64) -> Result<(), SimError> {
        while let Some(Reverse(next)) = self.queue.peek() {
            if next.at_us > until_us {
                break;
            }
            let Some(Reverse(Scheduled { at_us, ev, .. })) = self.queue.pop() else { break };
            self.now_us = at_us;
            self.events += 1;
            if self.events > EVENTS_MAX {
                return Err(SimError::Runaway { command: self.config.command() });
            }
            let (tag, node, conn) = ev.tag();
            self.trace.update(&at_us.to_le_bytes());
            self.trace.update(&[tag]);
            self.trace.update(&(node as u64).to_le_bytes());
            self.trace.update(&conn.to_le_bytes());
            self.step(ev)?;
        }
        self.now_us = self.now_us.max(until_us);
        Ok(())
    }

    fn step(&mut self, ev: Ev) -> Result<(), SimError> {
        match ev {
            Ev::Start(n) => self.start(n),
            Ev::Timer(n) => {
                let due = self.nodes[n].timer.is_some_and(|t| t.0 <= self.now_us);
                if due {
                    self.nodes[n].timer = None;
                    self.input(n, Input::Tick)?;
                }
                Ok(())
            }
            Ev::Connect { from, conn, addr } => self.connect(from, conn, addr),
            Ev::Secured { node, conn, binding } => self.input(node, Input::Secured { conn, binding }),
            Ev::Deliver { node, conn, bytes } => self.input(node, Input::Received { conn, bytes }),
            Ev::Closed { node, conn, reason } => self.input(node, Input::Closed { conn, reason: reason.to_string() }),
        }
    }

    fn start(&mut self, n: usize) -> Result<(), SimError> {
        let mut config = self.config.node_config.clone();
        config.listen_addr = self.nodes[n].addr;
        if n > 0 {
            let first = &self.nodes[0];
            config.bootstrap_nodes = vec![BootstrapNode {
                node_id: first.identity.node_id(),
                address: first.addr,
                public_key: first.identity.public_key(),
            }];
        }
        let log = if self.config.keep_logs.contains(&n) {
            SimLog::Memory(MemLog::new())
        } else {
            SimLog::Discard { next: 0 }
        };
        let node = &self.nodes[n];
        let now = self.time();
        let mut outputs = std::mem::take(&mut self.outputs);
        let journaled = Journaled::create(log, config, node.identity.clone(), node.rng_seed, now, &mut outputs)
            .map_err(|e| SimError::Storage { node: n, message: e.to_string() })?;
        self.nodes[n].journaled = Some(journaled);
        self.after_step(n, outputs)
    }

    /// What every node's clock reads now.
    fn time(&self) -> Time {
        Time::new(self.now_us, WALL_EPOCH_MS + self.now_us / 1000)
    }

    fn input(&mut self, n: usize, input: Input) -> Result<(), SimError> {
        let now = self.time();
        let mut outputs = std::mem::take(&mut self.outputs);
        let Some(journaled) = self.nodes[n].journaled.as_mut() else {
            self.outputs = outputs;
            return Ok(());
        };
        journaled
            .handle(now, input, &mut outputs)
            .map_err(|e| SimError::Storage { node: n, message: e.to_string() })?;
        self.after_step(n, outputs)
    }

    fn after_step(&mut self, n: usize, mut outputs: Vec<Output>) -> Result<(), SimError> {
        if let Some(journaled) = self.nodes[n].journaled.as_ref()
            && let Err(message) = journaled.node().check_invariants()
        {
            return Err(SimError::Invariant {
                message,
                node: n,
                node_id: self.nodes[n].identity.node_id(),
                time_ms: self.now_us / 1000,
                command: self.config.command(),
            });
        }
        for output in outputs.drain(..) {
            self.apply(n, output);
        }
        self.outputs = outputs;
        self.reschedule_timer(n);
        Ok(())
    }

    fn reschedule_timer(&mut self, n: usize) {
        let Some(journaled) = self.nodes[n].journaled.as_ref() else { return };
        let next = journaled.node().poll_timeout().map(|(at, _)| at);
        if next != self.nodes[n].timer {
            self.nodes[n].timer = next;
            if let Some(at) = next {
                self.schedule(at.0.max(self.now_us), Ev::Timer(n));
            }
        }
    }

    fn apply(&mut self, n: usize, output: Output) {
        match output {
            Output::Dial { conn, addr } => {
                let delay = self.one_way(n, self.by_addr.get(&addr).copied());
                self.schedule(self.now_us + delay, Ev::Connect { from: n, conn, addr });
            }
            Output::Accept { conn } => self.accept(n, conn),
            Output::Send { conn, bytes } => self.send(n, conn, bytes),
            Output::Close { conn } => {
                self.fifo.remove(&(n, conn));
                if let Some(peer) = self.links.remove(&(n, conn)) {
                    self.links.remove(&peer);
                    let at = self.delivery_time(n, conn, peer.0);
                    self.fifo.remove(&peer);
                    self.schedule(at, Ev::Closed { node: peer.0, conn: peer.1, reason: "connection closed by peer" });
                }
            }
            Output::Event(_) => {}
        }
    }

    fn connect(&mut self, from: usize, conn: ConnId, addr: SocketAddr) -> Result<(), SimError> {
        let target = self.by_addr.get(&addr).copied().filter(|t| self.nodes[*t].journaled.is_some());
        let Some(to) = target else {
            let delay = self.one_way(from, None);
            self.schedule(self.now_us + delay, Ev::Closed { node: from, conn, reason: "connection refused" });
            return Ok(());
        };
        let inbound = ConnId::inbound(self.nodes[to].next_inbound);
        self.nodes[to].next_inbound += 1;
        self.links.insert((from, conn), (to, inbound));
        self.links.insert((to, inbound), (from, conn));
        // The dialler's source port is ephemeral, as on a real host.
        let source = SocketAddr::new(self.nodes[from].addr.ip(), 40_000 + (conn.0 % 20_000) as u16);
        self.input(to, Input::Incoming { conn: inbound, addr: source })
    }

    /// The responder accepted: the secure handshake takes one more round trip. The initiator
    /// finishes first; the responder after the initiator's last handshake message arrives.
    fn accept(&mut self, n: usize, conn: ConnId) {
        let Some(&(peer, peer_conn)) = self.links.get(&(n, conn)) else { return };
        let mut binding = [0u8; 32];
        self.rng.fill_bytes(&mut binding);
        let binding = Binding(binding);
        let one_way = self.nodes[n].place.latency_us(&self.nodes[peer].place);
        self.schedule(self.now_us + one_way, Ev::Secured { node: peer, conn: peer_conn, binding });
        self.schedule(self.now_us + 2 * one_way, Ev::Secured { node: n, conn, binding });
        self.fifo.insert((peer, peer_conn), self.now_us + 2 * one_way);
    }

    fn send(&mut self, n: usize, conn: ConnId, bytes: Vec<u8>) {
        let Some(&(peer, peer_conn)) = self.links.get(&(n, conn)) else { return };
        self.messages += 1;
        self.bytes += bytes.len() as u64;
        let at = self.delivery_time(n, conn, peer);
        self.schedule(at, Ev::Deliver { node: peer, conn: peer_conn, bytes });
    }

    /// When something sent now on `(n, conn)` arrives, keeping the direction FIFO.
    fn delivery_time(&mut self, n: usize, conn: ConnId, peer: usize) -> u64 {
        let delay = self.nodes[n].place.latency_us(&self.nodes[peer].place) + net::jitter_us(&mut self.rng);
        let last = self.fifo.get(&(n, conn)).copied().unwrap_or(0);
        let at = (self.now_us + delay).max(last);
        self.fifo.insert((n, conn), at);
        at
    }

    fn one_way(&mut self, n: usize, to: Option<usize>) -> u64 {
        let base = match to {
            Some(to) => self.nodes[n].place.latency_us(&self.nodes[to].place),
            None => net::LATENCY_US_MIN + net::LATENCY_US_SPAN,
        };
        base + net::jitter_us(&mut self.rng)
    }

    fn schedule(&mut self, at_us: u64, ev: Ev) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.queue.push(Reverse(Scheduled { at_us, seq, ev }));
    }

    // ---- observation ----

    /// Simulated time now, in microseconds.
    pub fn now_us(&self) -> u64 {
        self.now_us
    }

    /// How many nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the world has no nodes.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Node `n`'s id.
    pub fn node_id(&self, n: usize) -> NodeId {
        self.nodes[n].identity.node_id()
    }

    /// Node `n`'s identity (to replay its log).
    pub fn identity(&self, n: usize) -> &Identity {
        &self.nodes[n].identity
    }

    /// Node `n`'s state machine, once it has started.
    pub fn node(&self, n: usize) -> Option<&mynet_core::Node> {
        self.nodes[n].journaled.as_ref().map(Journaled::node)
    }

    /// Node `n`'s kept event log, if it was asked for.
    pub fn memory_log(&self, n: usize) -> Option<&MemLog> {
        match self.nodes[n].journaled.as_ref().map(Journaled::log) {
            Some(SimLog::Memory(log)) => Some(log),
            _ => None,
        }
    }

    /// Established peers of every node, as indices.
    pub fn peer_graph(&self) -> Vec<Vec<usize>> {
        let index: BTreeMap<NodeId, usize> =
            self.nodes.iter().enumerate().map(|(i, n)| (n.identity.node_id(), i)).collect();
        (0..self.nodes.len())
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
        let phases: Vec<Phase> = (0..self.nodes.len()).filter_map(|n| self.node(n).map(|node| node.phase())).collect();
        let mut trace = self.trace.clone();
        for n in 0..self.nodes.len() {
            if let Some(node) = self.node(n) {
                trace.update(&node.output_hash());
                trace.update(&node.state_hash());
            }
        }
        Summary {
            seed: self.config.seed,
            nodes: self.nodes.len(),
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
            connected: is_connected(&graph),
            messages: self.messages,
            bytes: self.bytes,
        }
    }
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
            if !seen[m] {
                seen[m] = true;
                reached += 1;
                queue.push_back(m);
            }
        }
    }
    reached == graph.len()
}
