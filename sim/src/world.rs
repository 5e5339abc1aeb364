//! The simulation engine: nodes, links, faults, the event queue, invariants and the trace hash.

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
        }
    }

    /// The same run with the named fault profile (`none`, `swarm`, ...).
    pub fn with_faults(mut self, name: &str) -> Option<SimConfig> {
        self.faults = FaultProfile::named(name, self.seed)?;
        Some(self)
    }

    /// The command line that reproduces this run.
    pub fn command(&self) -> String {
        format!(
            "mynet sim --seed {} --nodes {} --duration {}ms --faults {}",
            self.seed, self.nodes, self.duration_ms, self.faults.name
        )
    }

    fn join_spread_ms(&self) -> u64 {
        self.join_spread_ms.unwrap_or_else(|| (self.nodes as u64 * 100).min(self.duration_ms / 4))
    }

    fn heal_at_us(&self) -> u64 {
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
}

#[derive(Clone, Debug)]
enum Ev {
    Start(usize),
    Timer { node: usize, epoch: u32 },
    Connect { from: End, addr: SocketAddr },
    Secured { to: End, binding: Binding },
    Deliver { to: End, bytes: Vec<u8> },
    Closed { to: End, reason: &'static str },
    Crash(usize),
    Restart(usize),
    Partition,
    Heal,
    HealClocks,
    ClockJump(usize),
    Attack(usize),
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
    /// Connections whose handshake completed, for the no-traffic-before-handshake invariant.
    established: BTreeSet<ConnId>,
    dialled_at: BTreeMap<ConnId, u64>,
    restart_pending: bool,
}

struct SimNode {
    identity: Identity,
    addr: SocketAddr,
    place: Place,
    clock: NodeClock,
    uplink_bps: u64,
    uplink_free_us: u64,
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
    /// Last delivery time scheduled from this end (FIFO per direction).
    last_us: u64,
    stalled_until_us: u64,
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
    messages: u64,
    bytes: u64,
    counts: FaultCounts,
    handshakes: Durations,
    to_target: Durations,
    wall_started: Instant,
    outputs: Vec<Output>,
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
        for index in 0..config.nodes {
            let identity = random_identity(&mut rng);
            let mut addr = net::node_addr(index);
            if index > 0 && chance(&mut rng, profile.shared_ip) {
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
                established: BTreeSet::new(),
                dialled_at: BTreeMap::new(),
                restart_pending: false,
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
            messages: 0,
            bytes: 0,
            counts: FaultCounts::new(),
            handshakes: Durations::default(),
            to_target: Durations::default(),
            wall_started: Instant::now(),
            outputs: Vec::new(),
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
    }

    /// Runs until the configured duration, then checks liveness.
    pub fn run(&mut self) -> Result<(), SimError> {
        self.run_until(self.config.duration_ms * 1000)?;
        self.check_liveness()
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
            self.trace_event(at_us, &ev);
            self.step(ev)?;
        }
        self.now_us = self.now_us.max(until_us);
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
            Ev::Deliver { to, bytes } => self.deliver_input(to, Input::Received { conn: to.2, bytes }),
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

// ---- honest nodes ----
impl World {
    fn honest_mut(&mut self, n: usize) -> Option<&mut Honest> {
        match &mut self.nodes[n].actor {
            Actor::Honest(h) => Some(h),
            Actor::Adversary(_) => None,
        }
    }

    fn honest(&self, n: usize) -> Option<&Honest> {
        match &self.nodes[n].actor {
            Actor::Honest(h) => Some(h),
            Actor::Adversary(_) => None,
        }
    }

    fn node_config(&self, n: usize) -> Config {
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
        config
    }

    fn start(&mut self, n: usize) -> Result<(), SimError> {
        let keep = self.config.keep_logs.contains(&n) || self.config.faults.crash_every_ms > 0;
        let log = if keep { SimLog::Memory(MemLog::new()) } else { SimLog::Discard { next: 0 } };
        let (config, seed, time) = (self.node_config(n), self.rng.next_u64(), self.nodes[n].clock.read(self.now_us));
        let identity = self.nodes[n].identity.clone();
        let mut outputs = std::mem::take(&mut self.outputs);
        let journaled = Journaled::create(log, config, identity, seed, time, &mut outputs)
            .map_err(|e| self.invariant(n, Violation::Storage(e.to_string())))?;
        let now = self.now_us;
        if let Some(h) = self.honest_mut(n) {
            h.journaled = Some(journaled);
            h.started_us = Some(now);
            h.last_sync_us = now;
        }
        self.after_step(n, outputs)
    }

    fn deliver_input(&mut self, to: End, input: Input) -> Result<(), SimError> {
        let (n, epoch, _) = to;
        if self.nodes[n].epoch != epoch {
            return Ok(());
        }
        match &self.nodes[n].actor {
            Actor::Honest(_) => self.node_input(n, input),
            Actor::Adversary(_) => {
                self.adversary_input(n, input);
                Ok(())
            }
        }
    }

    fn node_input(&mut self, n: usize, input: Input) -> Result<(), SimError> {
        let (time, now) = (self.nodes[n].clock.read(self.now_us), self.now_us);
        let mut outputs = std::mem::take(&mut self.outputs);
        let Some(h) = self.honest_mut(n) else { return Ok(()) };
        let Some(journaled) = h.journaled.as_mut() else { return Ok(()) };
        let mut result = journaled.handle(time, input, &mut outputs);
        if result.is_ok() && now.saturating_sub(h.last_sync_us) >= SYNC_INTERVAL_US {
            h.last_sync_us = now;
            result = journaled.log_mut().sync();
        }
        result.map_err(|e| self.invariant(n, Violation::Storage(e.to_string())))?;
        self.after_step(n, outputs)
    }

    fn after_step(&mut self, n: usize, mut outputs: Vec<Output>) -> Result<(), SimError> {
        let check = self.honest(n).and_then(|h| h.journaled.as_ref()).map(|j| j.node().check_invariants());
        if let Some(Err(violation)) = check {
            return Err(self.invariant(n, Violation::Node(violation)));
        }
        for output in outputs.drain(..) {
            self.observe(n, &output)?;
            self.apply(n, output);
        }
        self.outputs = outputs;
        self.after_outputs(n);
        self.reschedule_timer(n);
        Ok(())
    }

    /// Per-output safety checks and statistics.
    fn observe(&mut self, n: usize, output: &Output) -> Result<(), SimError> {
        let now = self.now_us;
        let Some(h) = self.honest_mut(n) else { return Ok(()) };
        match output {
            Output::Dial { conn, .. } => {
                h.dialled_at.insert(*conn, now);
            }
            Output::Event(Event::PeerConnected { conn, direction, .. }) => {
                h.established.insert(*conn);
                if let (Direction::Outbound, Some(at)) = (direction, h.dialled_at.remove(conn)) {
                    self.handshakes.record(now - at);
                }
            }
            Output::Event(Event::ConnectionClosed { conn, .. }) => {
                h.established.remove(conn);
                h.dialled_at.remove(conn);
            }
            Output::Send { conn, bytes } if !h.established.contains(conn) => {
                if let Some(what) = non_handshake_message(bytes) {
                    return Err(self.invariant(n, Violation::TrafficBeforeHandshake { conn: *conn, what }));
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Failed start-ups are restarted; the first time a node meets its peer target is recorded.
    fn after_outputs(&mut self, n: usize) {
        let (target, now) = ((self.config.node_config.target_peers as usize).min(self.honest - 1), self.now_us);
        let Some(h) = self.honest_mut(n) else { return };
        let Some(node) = h.journaled.as_ref().map(Journaled::node) else { return };
        let (failed, peers) = (node.phase() == Phase::Failed, node.peer_ids().len());
        let mut reached = None;
        if !h.target_reached && peers >= target {
            h.target_reached = true;
            reached = h.started_us.map(|s| now - s);
        }
        let restart = failed && !h.restart_pending;
        if restart {
            h.restart_pending = true;
        }
        if let Some(us) = reached {
            self.to_target.record(us);
        }
        if restart {
            self.count("startup_failed_restart");
            self.schedule(now + FAILED_RESTART_US, Ev::Restart(n));
        }
    }

    fn timer(&mut self, n: usize, epoch: u32) -> Result<(), SimError> {
        if self.nodes[n].epoch != epoch {
            return Ok(());
        }
        let clock = self.nodes[n].clock;
        let now = self.now_us;
        let Some(h) = self.honest_mut(n) else { return Ok(()) };
        let due = h.timer.is_some_and(|t| clock.sim_time_of(t) <= now);
        if !due {
            return Ok(());
        }
        h.timer = None;
        self.node_input(n, Input::Tick)
    }

    fn reschedule_timer(&mut self, n: usize) {
        let (clock, epoch, now) = (self.nodes[n].clock, self.nodes[n].epoch, self.now_us);
        let Some(h) = self.honest_mut(n) else { return };
        let next = h.journaled.as_ref().and_then(|j| j.node().poll_timeout()).map(|(at, _)| at);
        if next != h.timer {
            h.timer = next;
            if let Some(at) = next {
                self.schedule(clock.sim_time_of(at).max(now), Ev::Timer { node: n, epoch });
            }
        }
    }

    fn crash(&mut self, n: usize) -> Result<(), SimError> {
        let alive = self.honest(n).is_some_and(|h| h.journaled.is_some() && !h.restart_pending);
        let mean = self.config.faults.crash_every_ms;
        if !self.faults_active() || !alive {
            if let Some(after) = next_after(&mut self.rng, mean) {
                self.schedule(self.now_us + after, Ev::Crash(n));
            }
            return Ok(());
        }
        self.count("crash");
        self.stop_node(n, true);
        let down = 1_000_000 + upto(&mut self.rng, self.config.faults.down_ms_max * 1000);
        if let Some(h) = self.honest_mut(n) {
            h.restart_pending = true;
        }
        self.schedule(self.now_us + down, Ev::Restart(n));
        if let Some(after) = next_after(&mut self.rng, mean) {
            self.schedule(self.now_us + down + after, Ev::Crash(n));
        }
        Ok(())
    }

    /// Ends a node's process: its connections reset, its log keeps what was durable (a crash
    /// loses unsynced records and may tear the last one; a clean exit syncs).
    fn stop_node(&mut self, n: usize, crash: bool) {
        self.nodes[n].epoch += 1;
        self.reset_all_links(n, "connection reset by peer");
        let keep = self.rng.next_u64();
        let tear = chance(&mut self.rng, 0.5);
        let Some(h) = self.honest_mut(n) else { return };
        let Some(journaled) = h.journaled.take() else { return };
        let mut log = journaled.into_log();
        match (&mut log, crash) {
            (SimLog::Memory(mem), true) => {
                let kept = (keep % (mem.unsynced() as u64 + 1)) as usize;
                mem.crash(kept, tear);
            }
            _ => {
                let _ = log.sync();
            }
        }
        h.down_log = Some(log);
        h.timer = None;
        h.established.clear();
        h.dialled_at.clear();
    }

    fn restart(&mut self, n: usize) -> Result<(), SimError> {
        if self.honest(n).is_some_and(|h| h.journaled.is_some()) {
            self.stop_node(n, false);
        }
        let (config, seed, time) = (self.node_config(n), self.rng.next_u64(), self.nodes[n].clock.read(self.now_us));
        let identity = self.nodes[n].identity.clone();
        let now = self.now_us;
        let Some(h) = self.honest_mut(n) else { return Ok(()) };
        h.restart_pending = false;
        let Some(log) = h.down_log.take() else { return Ok(()) };
        let mut outputs = std::mem::take(&mut self.outputs);
        let journaled = match log {
            SimLog::Discard { .. } => {
                Journaled::create(SimLog::Discard { next: 0 }, config, identity, seed, time, &mut outputs)
                    .map_err(|e| e.to_string())
            }
            memory => Journaled::open(memory, config, identity, seed, |_| time, &mut outputs)
                .map(|(j, _)| j)
                .map_err(|e| e.to_string()),
        };
        let journaled = journaled.map_err(|e| self.invariant(n, Violation::RestartFailed(e)))?;
        if matches!(journaled.log(), SimLog::Memory(_)) {
            verify_against_log(journaled.log(), journaled.node())
                .map_err(|e| self.invariant(n, Violation::LogDisagrees(e)))?;
        }
        self.count("restart");
        if let Some(h) = self.honest_mut(n) {
            h.journaled = Some(journaled);
            h.last_sync_us = now;
        }
        self.after_step(n, outputs)
    }

    fn invariant(&self, n: usize, violation: Violation) -> SimError {
        SimError::Invariant {
            violation,
            node: n,
            node_id: self.nodes[n].identity.node_id(),
            time_ms: self.now_us / 1000,
            command: self.config.command(),
        }
    }
}

/// The first frame in `bytes` that is not part of a handshake, by name.
fn non_handshake_message(bytes: &[u8]) -> Option<&'static str> {
    let mut buffer = FrameBuffer::default();
    let mut frames = Vec::new();
    if buffer.push(bytes, &mut frames).is_err() {
        return Some("an oversized frame");
    }
    frames.iter().find_map(|f| match wire::decode_body(f) {
        Ok(Message::Hello(_) | Message::HelloAck(_)) => None,
        Ok(_) => Some("a protocol message"),
        Err(_) => Some("an undecodable frame"),
    })
}

// ---- the network ----
impl World {
    fn end(&self, n: usize, conn: ConnId) -> End {
        (n, self.nodes[n].epoch, conn)
    }

    fn apply(&mut self, n: usize, output: Output) {
        match output {
            Output::Dial { conn, addr } => self.dial(self.end(n, conn), addr),
            Output::Accept { conn } => self.accept(self.end(n, conn)),
            Output::Send { conn, bytes } => self.send(self.end(n, conn), bytes),
            Output::Close { conn } => self.close(self.end(n, conn)),
            Output::Event(_) => {}
        }
    }

    fn dial(&mut self, from: End, addr: SocketAddr) {
        let target = self.by_addr.get(&addr).copied();
        if target.is_some_and(|t| self.blocked(from.0, t) || self.blocked(t, from.0)) {
            // The SYN is lost in the partition; the dialler's handshake deadline ends it.
            self.count("dial_partitioned");
            return;
        }
        let delay = self.one_way(from.0, target);
        self.schedule(self.now_us + delay, Ev::Connect { from, addr });
    }

    fn connect(&mut self, from: End, addr: SocketAddr) -> Result<(), SimError> {
        let target =
            self.by_addr.get(&addr).copied().filter(|t| self.honest(*t).is_some_and(|h| h.journaled.is_some()));
        let Some(to) = target else {
            let delay = self.one_way(from.0, None);
            self.schedule(self.now_us + delay, Ev::Closed { to: from, reason: "connection refused" });
            return Ok(());
        };
        let inbound = ConnId::inbound(self.nodes[to].next_inbound);
        self.nodes[to].next_inbound += 1;
        let to_end = self.end(to, inbound);
        self.links.insert(from, Link { peer: to_end, last_us: 0, stalled_until_us: 0 });
        self.links.insert(to_end, Link { peer: from, last_us: 0, stalled_until_us: 0 });
        // The dialler's source port is ephemeral, as on a real host.
        let source = SocketAddr::new(self.nodes[from.0].addr.ip(), 40_000 + (from.2.0 % 20_000) as u16);
        self.node_input(to, Input::Incoming { conn: inbound, addr: source })
    }

    /// The responder accepted: the Noise handshake takes one more round trip. The initiator
    /// finishes first; the responder when the initiator's last handshake message arrives.
    fn accept(&mut self, end: End) {
        let Some(peer) = self.links.get(&end).map(|l| l.peer) else { return };
        if self.blocked(end.0, peer.0) || self.blocked(peer.0, end.0) {
            return;
        }
        let mut binding = [0u8; 32];
        self.rng.fill_bytes(&mut binding);
        let binding = Binding(binding);
        let one_way = self.nodes[end.0].place.latency_us(&self.nodes[peer.0].place);
        self.schedule(self.now_us + one_way, Ev::Secured { to: peer, binding });
        self.schedule(self.now_us + 2 * one_way, Ev::Secured { to: end, binding });
        if let Some(link) = self.links.get_mut(&peer) {
            link.last_us = self.now_us + 2 * one_way;
        }
    }

    fn send(&mut self, end: End, bytes: Vec<u8>) {
        let Some(peer) = self.links.get(&end).map(|l| l.peer) else { return };
        self.messages += 1;
        self.bytes += bytes.len() as u64;
        let active = self.faults_active();
        let profile = &self.config.faults;
        let (reset, duplicate) = (profile.reset, profile.duplicate);
        if active && chance(&mut self.rng, reset) {
            self.count("reset");
            return self.reset_link(end, self.now_us, "connection reset by peer");
        }
        if active && chance(&mut self.rng, duplicate) {
            // Bytes replayed into the stream fail Noise's authentication.
            self.count("duplicate");
            return self.reset_link(end, self.now_us, "noise: message authentication failed");
        }
        let at = self.delivery_time(end, peer, bytes.len(), active);
        if at - self.now_us > USER_TIMEOUT_US {
            self.count("user_timeout_reset");
            return self.reset_link(end, self.now_us + USER_TIMEOUT_US, "connection timed out");
        }
        if let Some(link) = self.links.get_mut(&end) {
            link.last_us = at;
        }
        self.schedule(at, Ev::Deliver { to: peer, bytes });
    }

    /// When bytes sent now from `end` arrive: latency, jitter, uplink serialization, loss and
    /// reordering delays, stalls, partitions; never before earlier bytes on the same link.
    fn delivery_time(&mut self, end: End, peer: End, len: usize, active: bool) -> u64 {
        let now = self.now_us;
        let profile = self.config.faults.clone();
        let mut delay =
            self.nodes[end.0].place.latency_us(&self.nodes[peer.0].place) + upto(&mut self.rng, profile.jitter_us_max);
        let node = &mut self.nodes[end.0];
        if let Some(serialize_us) = (len as u64 * 1_000_000).checked_div(node.uplink_bps) {
            let done = node.uplink_free_us.max(now) + serialize_us;
            node.uplink_free_us = done;
            delay += done - now;
        }
        if active && chance(&mut self.rng, profile.loss) {
            self.count("loss");
            delay += faults::RTO_US << (self.rng.next_u64() % 4);
        }
        if active && chance(&mut self.rng, profile.reorder) {
            self.count("reorder");
            delay += upto(&mut self.rng, 50_000 + 10 * profile.jitter_us_max);
        }
        if active && chance(&mut self.rng, profile.stall) {
            self.count("stall");
            let until = now + upto(&mut self.rng, profile.stall_ms_max * 1000);
            if let Some(link) = self.links.get_mut(&end) {
                link.stalled_until_us = link.stalled_until_us.max(until);
            }
        }
        let link = self.links.get(&end);
        let mut at = (now + delay).max(link.map_or(0, |l| l.last_us)).max(link.map_or(0, |l| l.stalled_until_us));
        if self.blocked(end.0, peer.0) {
            let heal = self.partition.as_ref().map_or(now, |p| p.until_us);
            at = at.max(heal + delay);
        }
        at
    }

    /// Closes the link from `end`'s side: the peer learns after the bytes already in flight.
    fn close(&mut self, end: End) {
        let Some(link) = self.links.remove(&end) else { return };
        self.links.remove(&link.peer);
        let at = (self.now_us + self.one_way(end.0, Some(link.peer.0))).max(link.last_us);
        self.schedule(at, Ev::Closed { to: link.peer, reason: "connection closed by peer" });
    }

    /// Resets a link: both ends learn at `at` (the peer one latency later).
    fn reset_link(&mut self, end: End, at: u64, reason: &'static str) {
        let Some(link) = self.links.remove(&end) else { return };
        self.links.remove(&link.peer);
        let latency = self.one_way(end.0, Some(link.peer.0));
        self.schedule(at, Ev::Closed { to: end, reason });
        self.schedule(at + latency, Ev::Closed { to: link.peer, reason });
    }

    fn reset_all_links(&mut self, n: usize, reason: &'static str) {
        let ends: Vec<End> =
            self.links.range((n, 0, ConnId(0))..=(n, u32::MAX, ConnId(u64::MAX))).map(|(end, _)| *end).collect();
        for end in ends {
            if let Some(link) = self.links.remove(&end) {
                self.links.remove(&link.peer);
                let latency = self.one_way(n, Some(link.peer.0));
                self.schedule(self.now_us + latency, Ev::Closed { to: link.peer, reason });
            }
        }
    }

    fn one_way(&mut self, n: usize, to: Option<usize>) -> u64 {
        let base = match to {
            Some(to) => self.nodes[n].place.latency_us(&self.nodes[to].place),
            None => net::LATENCY_US_MIN + net::LATENCY_US_SPAN,
        };
        base + upto(&mut self.rng, self.config.faults.jitter_us_max)
    }

    fn blocked(&self, from: usize, to: usize) -> bool {
        self.partition.as_ref().is_some_and(|p| p.side[from] != p.side[to] && (!p.one_way || p.side[from]))
    }

    fn start_partition(&mut self) {
        let profile = self.config.faults.clone();
        if self.faults_active() && self.partition.is_none() {
            let fraction = 0.2 + 0.3 * net::unit(&mut self.rng);
            let side = (0..self.nodes.len()).map(|_| chance(&mut self.rng, fraction)).collect();
            let one_way = chance(&mut self.rng, profile.one_way);
            let until_us = self.now_us + 1_000_000 + upto(&mut self.rng, profile.partition_ms_max * 1000);
            self.count(if one_way { "partition_one_way" } else { "partition" });
            self.partition = Some(Partition { side, one_way, until_us });
            self.schedule(until_us, Ev::Heal);
        }
        if let Some(after) = next_after(&mut self.rng, profile.partition_every_ms) {
            let from = self.partition.as_ref().map_or(self.now_us, |p| p.until_us);
            self.schedule(from + after, Ev::Partition);
        }
    }

    fn clock_jump(&mut self, n: usize) {
        let profile = self.config.faults.clone();
        if self.faults_active() {
            let max = profile.clock_jump_ms_max;
            let jump = upto(&mut self.rng, 2 * max) as i64 - max as i64;
            self.nodes[n].clock.wall_skew_ms += jump;
            self.count("clock_jump");
        }
        if let Some(after) = next_after(&mut self.rng, profile.clock_jump_every_ms) {
            self.schedule(self.now_us + after, Ev::ClockJump(n));
        }
    }

    fn schedule(&mut self, at_us: u64, ev: Ev) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.queue.push(Reverse(Scheduled { at_us, seq, ev }));
    }
}

// ---- misbehaving peers ----
impl World {
    fn attack(&mut self, n: usize) {
        let profile = self.config.faults.clone();
        let target = (self.rng.next_u64() % self.honest.max(1) as u64) as usize;
        let alive = self.honest(target).is_some_and(|h| h.journaled.is_some());
        if self.faults_active() && alive {
            let attack = Attack::ALL[(self.rng.next_u64() % Attack::ALL.len() as u64) as usize];
            self.count(attack.name());
            let dials = if attack == Attack::ConnFlood { 8 } else { 1 };
            let addr = self.nodes[target].addr;
            for _ in 0..dials {
                let Actor::Adversary(adversary) = &mut self.nodes[n].actor else { return };
                let conn = adversary.open(attack);
                self.dial((n, 0, conn), addr);
            }
        }
        if let Some(after) = next_after(&mut self.rng, profile.attack_every_ms) {
            self.schedule(self.now_us + after, Ev::Attack(n));
        }
    }

    fn adversary_input(&mut self, n: usize, input: Input) {
        let wall = self.nodes[n].clock.read(self.now_us).wall_ms;
        let network = self.config.node_config.network_id.clone();
        let (conn, frames) = {
            let World { nodes, rng, links, .. } = self;
            let Actor::Adversary(adversary) = &mut nodes[n].actor else { return };
            match input {
                Input::Secured { conn, binding } => (conn, adversary.on_secured(conn, binding, &network, wall, rng)),
                Input::Received { conn, .. } => {
                    let target = links.get(&(n, 0, conn)).map(|l| l.peer.0);
                    let Some(target) = target else { return };
                    let target_id = nodes[target].identity.node_id();
                    let Actor::Adversary(adversary) = &mut nodes[n].actor else { return };
                    (conn, adversary.on_received(conn, target_id, rng))
                }
                Input::Closed { conn, .. } => {
                    adversary.on_closed(conn);
                    return;
                }
                _ => return,
            }
        };
        for bytes in frames {
            self.send((n, 0, conn), bytes);
        }
    }
}

// ---- liveness, observation, summary ----
impl World {
    /// After faults heal, every honest node must be up and ready, hold its target number of
    /// peers (or every other honest node in small networks), and the honest graph must be
    /// connected.
    pub fn check_liveness(&self) -> Result<(), SimError> {
        let target = (self.config.node_config.target_peers as usize).min(self.honest.saturating_sub(1));
        let budget_s =
            (self.config.duration_ms * 1000 - self.config.heal_at_us().min(self.config.duration_ms * 1000)) / 1_000_000;
        let fail = |failure: LivenessFailure, node: Option<usize>| {
            Err(SimError::Liveness { failure, node, budget_s, command: self.config.command() })
        };
        let graph = self.peer_graph();
        for (n, peers) in graph.iter().enumerate().take(self.honest) {
            let Some(node) = self.node(n) else {
                return fail(LivenessFailure::NotRunning { node: n }, Some(n));
            };
            if node.phase() != Phase::Ready {
                return fail(LivenessFailure::NotReady { node: n, phase: node.phase() }, Some(n));
            }
            // Peers that completed a handshake and answer requests count, honest or not; the
            // honest graph must still be connected.
            let all_peers = node.peer_ids().len();
            if all_peers < target {
                let failure = LivenessFailure::TooFewPeers { node: n, peers: all_peers, honest: peers.len(), target };
                return fail(failure, Some(n));
            }
        }
        if !is_connected(&graph[..self.honest]) {
            return fail(LivenessFailure::Disconnected, None);
        }
        Ok(())
    }

    /// Simulated time now, in microseconds.
    pub fn now_us(&self) -> u64 {
        self.now_us
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
        for n in 0..self.honest {
            if let Some(node) = self.node(n) {
                trace.update(&node.output_hash());
                trace.update(&node.state_hash());
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
            connected: is_connected(&graph),
            messages: self.messages,
            bytes: self.bytes,
            handshake_latency: self.handshakes.percentiles(),
            time_to_target_peers: self.to_target.percentiles(),
            faults: self.config.faults.clone(),
            faults_injected: self.counts.clone(),
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

const EVENT_KINDS: [&str; 13] = [
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
];

/// The first event index at which two recorded traces differ.
pub fn first_divergence(a: &[TraceEvent], b: &[TraceEvent]) -> Option<usize> {
    a.iter().zip(b).position(|(x, y)| x != y).or(if a.len() == b.len() { None } else { Some(a.len().min(b.len())) })
}
