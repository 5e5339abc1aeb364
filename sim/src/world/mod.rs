//! The simulation engine: nodes, links, faults, the event queue, invariants and the trace hash.
//!
//! `mod.rs` holds the run configuration, the event queue and the main loop; `nodes.rs` the
//! honest nodes (start, inputs, safety checks, crashes and restarts); `network.rs` the links
//! and the misbehaving peers; `report.rs` liveness, observation and the summary; `timeline.rs`
//! the samples over simulated time that `--report` plots.

mod content;
mod dht;
mod lan;
mod network;
mod nodes;
mod reconcile;
mod report;
mod states;
mod sybil;
mod timeline;

pub use content::{ContentFault, ContentSummary, SimItem};
pub use lan::LanSummary;
pub use reconcile::ReconcileSummary;
pub use report::RefusalSummary;

use report::EVENT_KINDS;
pub use report::{TraceEvent, first_divergence, is_connected};
pub use timeline::{SAMPLES_MAX, Sample, Timeline, sample_interval_us};

use core::net::SocketAddr;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};
use std::time::Instant;

use mynet_core::config::BootstrapNode;
use mynet_core::handshake::Binding;
use mynet_core::wire::{self, FrameBuffer, Message};
use mynet_core::{Config, ConnId, Direction, Event, Identity, Input, Mono, NodeId, Output, Phase};
use mynet_storage::log::{EventLog, MemLog};
use mynet_storage::{Journaled, verify_against_log};
use rand_chacha::ChaCha8Rng;
use rand_core::{Rng, SeedableRng};
use serde::Serialize;
use thiserror::Error;

use crate::adversary::{Adversary, Attack};
use crate::clock::NodeClock;
use crate::faults::{self, FaultCounts, FaultProfile, USER_TIMEOUT_US, chance, next_after, upto};
use crate::invariant::{LivenessFailure, Violation};
use crate::log::SimLog;
use crate::net::{self, Place};
use crate::stats::{Durations, Percentiles};

/// Wall clock (Unix ms) at simulated time zero.
pub const WALL_EPOCH_MS: u64 = 1_750_000_000_000;
/// Most events one run may process; a run that needs more is stuck in a loop.
pub const EVENTS_MAX: u64 = 20_000_000_000;
/// The progress callback of [`World::run_with_progress`] is called every this many events.
pub const PROGRESS_EVENTS: u64 = 1024;
/// How often a simulated node makes its log durable.
pub const SYNC_INTERVAL_US: u64 = 200_000;
/// A node whose start-up failed is restarted after this long (as a service manager would).
pub const FAILED_RESTART_US: u64 = 5_000_000;

/// What to simulate.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Seed of everything random in the run.
    pub seed: u64,
    /// How many honest nodes.
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
    /// Faults to inject.
    pub faults: FaultProfile,
    /// Faults stop at this fraction of the run; the rest is the liveness budget.
    pub heal_fraction: f64,
    /// Record a per-event digest so two runs can be compared event by event.
    pub record_trace: bool,
    /// Sample the run over simulated time for a report (`--report`); reads state only, so the
    /// run and its trace hash are the same without it.
    pub timeline: bool,
    /// Items added at random nodes during the run (`--content N`).
    pub content: usize,
    /// Sizes of the first items, instead of random ones (tests of large, multi-page items).
    pub content_sizes: Vec<u64>,
    /// Pairs of concurrent conflicting metadata edits by two publishers (`--updates N`).
    pub updates: usize,
    /// Nodes `0..P` are the network's `publishers` (`--publishers P`; 0: anyone may publish).
    pub publishers: usize,
    /// Metadata-only items node 0 publishes at 1 s (`--catalogue N`); nodes then replicate
    /// `none`, so the run measures reconciliation of a large, unchanging catalogue.
    pub catalogue: usize,
    /// Random node lookups once the network settled (`--lookups N`).
    pub lookups: usize,
    /// Percent of honest nodes that vanish silently before the lookups (`--dead PCT`).
    pub dead_pct: u32,
    /// Operator `get`s of added items at nodes not connected to the item's only holder
    /// (`--wants N`, with `--content`; nodes replicate `none`): provider records must find it.
    pub wants: usize,
    /// Instead of `lookups` random ones, every honest node looks up every other once, after
    /// faults heal (`--all-pairs`; n(n-1) lookups).
    pub all_pairs: bool,
    /// Percent of the nodes that are Sybils lying in every DHT answer (`--sybils PCT`).
    pub sybils_pct: u32,
    /// Broadcast domains of this many nodes, with no bootstrap list: LAN discovery only
    /// (`--lan SIZE`; 0: none, and LAN discovery is off).
    pub lan: usize,
}

impl SimConfig {
    /// A fault-free run of `nodes` nodes for `duration_ms`.
    pub fn new(seed: u64, nodes: usize, duration_ms: u64) -> SimConfig {
        SimConfig {
            seed,
            nodes,
            duration_ms,
            join_spread_ms: None,
            node_config: sim_node_config(),
            keep_logs: Vec::new(),
            faults: FaultProfile::named("none", seed).unwrap_or_default(),
            heal_fraction: 0.6,
            record_trace: false,
            timeline: false,
            content: 0,
            content_sizes: Vec::new(),
            updates: 0,
            publishers: 0,
            catalogue: 0,
            lookups: 0,
            dead_pct: 0,
            lan: 0,
            wants: 0,
            sybils_pct: 0,
            all_pairs: false,
        }
    }

    /// The same run with the named fault profile (`none`, `swarm`, ...).
    pub fn with_faults(mut self, name: &str) -> Option<SimConfig> {
        self.faults = FaultProfile::named(name, self.seed)?;
        Some(self)
    }

    /// The command line that reproduces this run.
    pub fn command(&self) -> String {
        let mut content = if self.content > 0 { format!(" --content {}", self.content) } else { String::new() };
        let flags = [
            ("updates", self.updates),
            ("publishers", self.publishers),
            ("catalogue", self.catalogue),
            ("lookups", self.lookups),
            ("dead", self.dead_pct as usize),
            ("lan", self.lan),
            ("wants", self.wants),
            ("sybils", self.sybils_pct as usize),
        ];
        if self.all_pairs {
            content.push_str(" --all-pairs");
        }
        for (flag, n) in flags {
            if n > 0 {
                content.push_str(&format!(" --{flag} {n}"));
            }
        }
        if let Some(size) = self.content_sizes.first().filter(|s| self.content_sizes.iter().all(|x| x == *s)) {
            content.push_str(&format!(" --content-size {size}"));
        }
        format!(
            "mynet sim --seed {} --nodes {} --duration {}ms --faults {}{content}",
            self.seed, self.nodes, self.duration_ms, self.faults.name
        )
    }

    /// Nodes join within this long of the start.
    pub(crate) fn join_spread_ms(&self) -> u64 {
        self.join_spread_ms.unwrap_or_else(|| (self.nodes as u64 * 100).min(self.duration_ms / 4))
    }

    /// Faults stop at this simulated time.
    pub(crate) fn heal_at_us(&self) -> u64 {
        (self.duration_ms as f64 * 1000.0 * self.heal_fraction) as u64
    }
}

/// Node settings for simulated nodes: production defaults with a small log retention, so
/// crash-restarts replay a bounded tail.
pub fn sim_node_config() -> Config {
    Config { snapshot_interval_events: 2_000, log_retain_bytes: 256 * 1024, ..Config::default() }
}

/// A failed run: what broke, where and when, and how to see it again.
#[derive(Debug, Error)]
pub enum SimError {
    #[error(
        "invariant violated: {violation}\n  node {node} ({node_id}) at sim time {time_ms} ms\n  reproduce: {command}"
    )]
    Invariant { violation: Violation, node: usize, node_id: NodeId, time_ms: u64, command: String },
    #[error("liveness violated {budget_s} s after faults healed: {failure}\n  reproduce: {command}")]
    Liveness { failure: LivenessFailure, node: Option<usize>, budget_s: u64, command: String },
    #[error("simulation exceeded {EVENTS_MAX} events; reproduce: {command}")]
    Runaway { command: String },
}

impl SimError {
    /// The node the failure is about, if any.
    pub fn node(&self) -> Option<usize> {
        match self {
            SimError::Invariant { node, .. } => Some(*node),
            SimError::Liveness { node, .. } => *node,
            SimError::Runaway { .. } => None,
        }
    }
}

/// The summary printed as the last line of `mynet sim`.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Summary {
    pub seed: u64,
    pub nodes: usize,
    pub adversaries: usize,
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
    pub handshake_latency: Percentiles,
    pub time_to_target_peers: Percentiles,
    pub faults: FaultProfile,
    pub faults_injected: FaultCounts,
    /// The request layer, summed over the honest nodes running at the end.
    pub requests: mynet_core::request::RequestCounters,
    /// The content workload (`--content`).
    pub content: ContentSummary,
    /// Groups of the content workload (SPEC R9).
    pub groups: states::GroupsSummary,
    /// Reconciliation of the catalogue.
    pub reconcile: ReconcileSummary,
    /// DHT lookups (`--lookups`, `--dead`) and routing tables.
    pub dht: dht::DhtSummary,
    /// LAN discovery (`--lan`).
    pub lan: LanSummary,
    /// Refused connections: explained, closed silently, refusals heard by diallers.
    pub refusals: RefusalSummary,
}

#[derive(Clone, Debug)]
enum Ev {
    Start(usize),
    Timer {
        node: usize,
        epoch: u32,
    },
    Connect {
        from: End,
        addr: SocketAddr,
    },
    Secured {
        to: End,
        binding: Binding,
    },
    Deliver {
        to: End,
        bytes: Vec<u8>,
    },
    Closed {
        to: End,
        reason: &'static str,
    },
    Crash(usize),
    Restart(usize),
    Partition,
    Heal,
    HealClocks,
    ClockJump(usize),
    Attack(usize),
    AddItem(usize),
    StoreDone {
        node: usize,
        epoch: u32,
        piece: mynet_core::content::PieceRef,
    },
    Piece {
        to: End,
        request: mynet_core::RequestId,
        header: mynet_core::content::proto::PieceHeader,
        hash: [u8; 32],
    },
    /// A piece served from `from` finished leaving its uplink: the next waiting one may go.
    PieceSent {
        from: End,
    },
    /// A group's publisher describes it (`states`).
    Group {
        group: usize,
    },
    /// Nodes given the keys look for pairs to check (every 30 s).
    DecryptSweep,
    /// A node given the keys reports a decrypt check.
    DecryptCheck {
        node: usize,
        epoch: u32,
        parent: mynet_core::content::ContentId,
        child: mynet_core::content::ContentId,
    },
    Edit {
        node: usize,
        item: usize,
        tag: u64,
    },
    Catalogue,
    /// `--dead`: the chosen nodes vanish.
    Vanish,
    /// A LAN announcement reaches honest node `to` (in its epoch `epoch`).
    /// `--wants`: the k-th operator `get`.
    Want(usize),
    LanDeliver {
        to: usize,
        epoch: u32,
        from: SocketAddr,
        bytes: Vec<u8>,
    },
    /// `--lookups`: the k-th lookup.
    Lookup(usize),
}

impl Ev {
    fn tag(&self) -> (u8, usize, u64) {
        match self {
            Ev::Start(n) => (0, *n, 0),
            Ev::Timer { node, .. } => (1, *node, 0),
            Ev::Connect { from, .. } => (2, from.0, from.2.0),
            Ev::Secured { to, .. } => (3, to.0, to.2.0),
            Ev::Deliver { to, .. } => (4, to.0, to.2.0),
            Ev::Closed { to, .. } => (5, to.0, to.2.0),
            Ev::Crash(n) => (6, *n, 0),
            Ev::Restart(n) => (7, *n, 0),
            Ev::Partition => (8, 0, 0),
            Ev::Heal => (9, 0, 0),
            Ev::HealClocks => (12, 0, 0),
            Ev::ClockJump(n) => (10, *n, 0),
            Ev::Attack(n) => (11, *n, 0),
            Ev::AddItem(i) => (13, *i, 0),
            Ev::StoreDone { node, piece, .. } => (14, *node, piece.index),
            Ev::Piece { to, .. } => (15, to.0, to.2.0),
            Ev::Edit { node, tag, .. } => (16, *node, *tag),
            Ev::Catalogue => (17, 0, 0),
            Ev::PieceSent { from } => (18, from.0, from.2.0),
            Ev::Group { group } => (19, *group, 0),
            Ev::DecryptCheck { node, .. } => (20, *node, 0),
            Ev::DecryptSweep => (21, 0, 0),
            Ev::Vanish => (22, 0, 0),
            Ev::Lookup(k) => (23, *k, 0),
            Ev::LanDeliver { to, .. } => (24, *to, 0),
            Ev::Want(k) => (25, *k, 0),
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

/// What runs at a simulated address.
enum Actor {
    Honest(Box<Honest>),
    Adversary(Box<Adversary>),
}

struct Honest {
    journaled: Option<Journaled<SimLog>>,
    /// The log of a node that is down, waiting for its restart.
    down_log: Option<SimLog>,
    timer: Option<Mono>,
    last_sync_us: u64,
    started_us: Option<u64>,
    target_reached: bool,
    /// Since when (simulated µs) the node has had fewer peers than its target; `None` while it
    /// has enough.
    below_target_since: Option<u64>,
    /// Connections whose handshake completed, for the no-traffic-before-handshake invariant.
    established: BTreeSet<ConnId>,
    dialled_at: BTreeMap<ConnId, u64>,
    restart_pending: bool,
    /// The node's content store (durable: survives crashes).
    store: content::SimStore,
    /// A misbehaving content server (`--faults` with adversaries).
    content_fault: Option<ContentFault>,
    /// The piece being delivered in this step and whether it is genuine.
    last_piece: Option<(mynet_core::content::PieceRef, bool)>,
}

struct SimNode {
    identity: Identity,
    addr: SocketAddr,
    place: Place,
    clock: NodeClock,
    uplink_bps: u64,
    uplink_free_us: u64,
    /// When the node's downlink (`DOWNLINK_FACTOR` times its uplink) is next free.
    downlink_free_us: u64,
    /// The clock's wall skew before any jump.
    base_skew_ms: i64,
    /// Incremented on every crash and restart: events for an older epoch are dropped.
    epoch: u32,
    next_inbound: u64,
    actor: Actor,
}

/// One end of a simulated connection: node, its epoch, conn id.
type End = (usize, u32, ConnId);

struct Link {
    peer: End,
    /// Last delivery time of a control frame scheduled from this end (FIFO per direction).
    last_us: u64,
    /// Last delivery time of a piece from this end (pieces are FIFO among themselves; control
    /// frames overtake them, as the production writer sends them first).
    last_piece_us: u64,
    stalled_until_us: u64,
    /// Pieces handed to the uplink and not yet serialized onto it (at most
    /// [`content::PIECES_IN_UPLINK_MAX`]); a cancel cannot recall them.
    committed: usize,
    /// Pieces served from this end waiting for the uplink, oldest first: a cancel removes one
    /// (as the production driver aborts a serve that has not reached the socket).
    waiting: VecDeque<(mynet_core::RequestId, mynet_core::content::proto::PieceHeader, [u8; 32])>,
}

impl Link {
    fn new(peer: End) -> Link {
        Link { peer, last_us: 0, last_piece_us: 0, stalled_until_us: 0, committed: 0, waiting: VecDeque::new() }
    }
}

struct Partition {
    side: Vec<bool>,
    one_way: bool,
    until_us: u64,
}

/// A seeded world of simulated nodes.
pub struct World {
    config: SimConfig,
    rng: ChaCha8Rng,
    nodes: Vec<SimNode>,
    honest: usize,
    by_addr: BTreeMap<SocketAddr, usize>,
    queue: BinaryHeap<Reverse<Scheduled>>,
    next_seq: u64,
    now_us: u64,
    links: BTreeMap<End, Link>,
    partition: Option<Partition>,
    trace: blake3::Hasher,
    trace_events: Vec<TraceEvent>,
    trace_fold: u64,
    events: u64,
    /// Node steps whose safety checks ran (see [`Sample::safety_checks`]).
    safety_checks: u64,
    timeline: Option<Timeline>,
    messages: u64,
    bytes: u64,
    counts: FaultCounts,
    handshakes: Durations,
    to_target: Durations,
    wall_started: Instant,
    outputs: Vec<Output>,
    content: content::Workload,
    edits: reconcile::Edits,
    groups: states::Groups,
    lookups: dht::Lookups,
    lan: lan::LanCounts,
    sybils: sybil::Sybils,
    /// Start-ups that failed naming a bootstrap node's refusal.
    refused_startups: u64,
}

impl World {
    /// Builds the world: identities, places, clocks, addresses and the fault schedule all come
    /// from the seed.
    pub fn new(config: SimConfig) -> World {
        let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
        let profile = config.faults.clone();
        let mut nodes = Vec::with_capacity(config.nodes);
        let mut by_addr = BTreeMap::new();
        let mut ip_users: BTreeMap<core::net::IpAddr, u16> = BTreeMap::new();
        let sybils = (config.nodes * config.sybils_pct as usize / 100).min(config.nodes.saturating_sub(1));
        let first_sybil = config.nodes - sybils;
        for index in 0..config.nodes {
            let identity = random_identity(&mut rng);
            let mut addr =
                if index >= first_sybil { sybil::sybil_addr(index - first_sybil) } else { net::node_addr(index) };
            if index > 0 && index < first_sybil && chance(&mut rng, profile.shared_ip) {
                let other = net::node_addr((rng.next_u64() % index as u64) as usize).ip();
                let users = ip_users.entry(other).or_insert(1);
                if *users < 3 {
                    addr = SocketAddr::new(other, net::LISTEN_PORT + *users);
                    *users += 1;
                }
            }
            by_addr.insert(addr, index);
            let honest = Honest {
                journaled: None,
                down_log: None,
                timer: None,
                last_sync_us: 0,
                started_us: None,
                target_reached: false,
                below_target_since: None,
                established: BTreeSet::new(),
                dialled_at: BTreeMap::new(),
                restart_pending: false,
                store: content::SimStore::default(),
                content_fault: None,
                last_piece: None,
            };
            let node = World::sim_node(&mut rng, &profile, identity, addr, Actor::Honest(Box::new(honest)));
            nodes.push(node);
        }
        let adversaries = if profile.adversaries > 0.0 {
            ((config.nodes as f64 * profile.adversaries).ceil() as usize).max(1)
        } else {
            0
        };
        for i in 0..adversaries {
            let identity = random_identity(&mut rng);
            let addr = SocketAddr::from(([10, 255, (i >> 8) as u8, i as u8], net::LISTEN_PORT));
            let node = World::sim_node(
                &mut rng,
                &profile,
                identity.clone(),
                addr,
                Actor::Adversary(Box::new(Adversary::new(identity))),
            );
            nodes.push(node);
        }
        let timeline = config.timeline.then(|| Timeline::new(config.duration_ms * 1000));
        let mut world = World {
            honest: config.nodes,
            config,
            rng,
            nodes,
            by_addr,
            queue: BinaryHeap::new(),
            next_seq: 0,
            now_us: 0,
            links: BTreeMap::new(),
            partition: None,
            trace: blake3::Hasher::new(),
            trace_events: Vec::new(),
            trace_fold: 0,
            events: 0,
            safety_checks: 0,
            timeline,
            messages: 0,
            bytes: 0,
            counts: FaultCounts::new(),
            handshakes: Durations::default(),
            to_target: Durations::default(),
            wall_started: Instant::now(),
            outputs: Vec::new(),
            content: content::Workload::default(),
            edits: reconcile::Edits::default(),
            groups: states::Groups::default(),
            lookups: dht::Lookups::default(),
            lan: lan::LanCounts::default(),
            sybils: sybil::Sybils { first: first_sybil, ..sybil::Sybils::default() },
            refused_startups: 0,
        };
        world.schedule_faults();
        world
    }

    fn sim_node(
        rng: &mut ChaCha8Rng,
        profile: &FaultProfile,
        identity: Identity,
        addr: SocketAddr,
        actor: Actor,
    ) -> SimNode {
        let skew = upto(rng, 2 * profile.clock_skew_ms_max) as i64 - profile.clock_skew_ms_max as i64;
        let drift = upto(rng, 2 * profile.drift_ppm_max) as i64 - profile.drift_ppm_max as i64;
        let clock = NodeClock { offset_us: rng.next_u64() % 1_000_000_000, drift_ppm: drift, wall_skew_ms: skew };
        let uplink_bps = if profile.bandwidth_max == 0 {
            0
        } else {
            profile.bandwidth_min + upto(rng, profile.bandwidth_max - profile.bandwidth_min)
        };
        SimNode {
            identity,
            addr,
            place: Place::random(rng),
            clock,
            uplink_bps,
            uplink_free_us: 0,
            downlink_free_us: 0,
            base_skew_ms: skew,
            epoch: 0,
            next_inbound: 0,
            actor,
        }
    }

    fn schedule_faults(&mut self) {
        let spread_us = self.config.join_spread_ms() * 1000;
        for index in 0..self.config.nodes {
            let at = if index == 0 || spread_us == 0 { 0 } else { 1 + self.rng.next_u64() % spread_us };
            self.schedule(at, Ev::Start(index));
        }
        let profile = self.config.faults.clone();
        for index in 0..self.nodes.len() {
            if index < self.honest {
                if let Some(at) = next_after(&mut self.rng, profile.crash_every_ms) {
                    self.schedule(at, Ev::Crash(index));
                }
                if let Some(at) = next_after(&mut self.rng, profile.clock_jump_every_ms) {
                    self.schedule(at, Ev::ClockJump(index));
                }
            } else if let Some(at) = next_after(&mut self.rng, profile.attack_every_ms) {
                self.schedule(at, Ev::Attack(index));
            }
        }
        if let Some(at) = next_after(&mut self.rng, profile.partition_every_ms) {
            self.schedule(at, Ev::Partition);
        }
        if profile.clock_jump_every_ms > 0 {
            self.schedule(self.config.heal_at_us(), Ev::HealClocks);
        }
        self.schedule_content();
        self.schedule_groups();
        self.schedule_reconcile();
        self.schedule_lookups();
    }

    /// Runs until the configured duration, then checks liveness.
    pub fn run(&mut self) -> Result<(), SimError> {
        self.run_with_progress(|_| {})
    }

    /// [`World::run`], calling `progress` with the simulated time (µs) every
    /// [`PROGRESS_EVENTS`] events; it only observes.
    pub fn run_with_progress(&mut self, mut progress: impl FnMut(u64)) -> Result<(), SimError> {
        self.run_steps(self.config.duration_ms * 1000, &mut progress)?;
        self.sample_now();
        self.check_liveness()?;
        self.check_content()?;
        self.check_reconcile()?;
        self.check_groups()?;
        self.check_dht()
    }

    /// Processes every event up to simulated time `until_us`.
    pub fn run_until(&mut self, until_us: u64) -> Result<(), SimError> {
        self.run_steps(until_us, &mut |_| {})
    }

    fn run_steps(&mut self, until_us: u64, progress: &mut dyn FnMut(u64)) -> Result<(), SimError> {
        while let Some(Reverse(next)) = self.queue.peek() {
            if next.at_us > until_us {
                break;
            }
            let at_us = next.at_us;
            self.sample_before(at_us);
            let Some(Reverse(Scheduled { at_us, ev, .. })) = self.queue.pop() else { break };
            self.now_us = at_us;
            self.events += 1;
            if self.events > EVENTS_MAX {
                return Err(SimError::Runaway { command: self.config.command() });
            }
            self.trace_event(at_us, &ev);
            if let Err(err) = self.step(ev) {
                // The report shows the state at the step that failed.
                self.sample_now();
                return Err(err);
            }
            if self.events.is_multiple_of(PROGRESS_EVENTS) {
                progress(self.now_us);
            }
        }
        self.now_us = self.now_us.max(until_us);
        self.sample_through(until_us);
        Ok(())
    }

    fn trace_event(&mut self, at_us: u64, ev: &Ev) {
        let (tag, node, conn) = ev.tag();
        self.trace.update(&at_us.to_le_bytes());
        self.trace.update(&[tag]);
        self.trace.update(&(node as u64).to_le_bytes());
        self.trace.update(&conn.to_le_bytes());
        if self.config.record_trace {
            self.trace_fold = mix(mix(mix(self.trace_fold ^ at_us) ^ u64::from(tag)) ^ node as u64) ^ conn;
            self.trace_events.push(TraceEvent {
                at_us,
                kind: EVENT_KINDS[usize::from(tag)],
                node,
                conn: ConnId(conn),
                digest: self.trace_fold,
            });
        }
    }

    fn step(&mut self, ev: Ev) -> Result<(), SimError> {
        match ev {
            Ev::Start(n) => self.start(n),
            Ev::Timer { node, epoch } => self.timer(node, epoch),
            Ev::Connect { from, addr } => self.connect(from, addr),
            Ev::Secured { to, binding } => self.deliver_input(to, Input::Secured { conn: to.2, binding }),
            Ev::Deliver { to, bytes } => {
                if self.is_sybil(to.0) {
                    self.sybil_heard(to, &bytes);
                }
                self.deliver_input(to, Input::Received { conn: to.2, bytes })
            }
            Ev::Closed { to, reason } => {
                self.deliver_input(to, Input::Closed { conn: to.2, reason: reason.to_string() })
            }
            Ev::Crash(n) => self.crash(n),
            Ev::Restart(n) => self.restart(n),
            Ev::Partition => {
                self.start_partition();
                Ok(())
            }
            Ev::Heal => {
                self.partition = None;
                Ok(())
            }
            Ev::HealClocks => {
                // Time synchronisation corrects jumped clocks once faults stop.
                for node in &mut self.nodes {
                    node.clock.wall_skew_ms = node.base_skew_ms;
                }
                Ok(())
            }
            Ev::ClockJump(n) => {
                self.clock_jump(n);
                Ok(())
            }
            Ev::Attack(n) => {
                self.attack(n);
                Ok(())
            }
            Ev::AddItem(i) => self.add_item(i),
            Ev::StoreDone { node, epoch, piece } => self.store_done(node, epoch, piece),
            Ev::Piece { to, request, header, hash } => self.piece_arrives(to, request, header, hash),
            Ev::Edit { node, item, tag } => self.edit(node, item, tag),
            Ev::Catalogue => self.publish_catalogue(),
            Ev::PieceSent { from } => {
                self.piece_sent(from);
                Ok(())
            }
            Ev::Group { group } => self.describe_group(group),
            Ev::DecryptCheck { node, epoch, parent, child } => self.decrypt_check(node, epoch, parent, child),
            Ev::DecryptSweep => {
                self.decrypt_sweep();
                Ok(())
            }
            Ev::Vanish => {
                self.vanish();
                Ok(())
            }
            Ev::Lookup(k) => self.lookup(k),
            Ev::LanDeliver { to, epoch, from, bytes } => self.lan_deliver(to, epoch, from, bytes),
            Ev::Want(_) => self.want(),
        }
    }

    fn faults_active(&self) -> bool {
        self.now_us < self.config.heal_at_us()
    }

    fn count(&mut self, fault: &'static str) {
        *self.counts.entry(fault).or_insert(0) += 1;
    }
}

fn random_identity(rng: &mut ChaCha8Rng) -> Identity {
    let mut secret = [0u8; 32];
    rng.fill_bytes(&mut secret);
    Identity::from_secret_bytes(&secret)
}

/// splitmix64 finaliser: a cheap, well-mixed fold for per-event digests.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}
