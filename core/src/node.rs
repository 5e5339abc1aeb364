//! The node: one door in ([`Node::handle`]), drains out ([`Node::poll_output`],
//! [`Node::poll_timeout`]).
//!
//! Contract with drivers: after every `handle`, drain `poll_output` until `None`, then ask
//! `poll_timeout` and call `handle(now, Input::Tick)` no later than the instant it names.
//! The node never panics on anything a peer or the driver's transport can produce.

use core::net::{IpAddr, SocketAddr};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;

use rand_chacha::ChaCha8Rng;
use rand_core::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::handshake::{self, Binding, Expect, HandshakeError, Role};
use crate::id::{ConnId, NodeId, PublicKey};
use crate::identity::Identity;
use crate::peers::{KnownPeers, Offender, Penalties, partial_shuffle};
use crate::time::{Mono, Time};
use crate::wire::{self, FrameBuffer, Message, NetworkInfo, NetworkStats, PEERS_PER_ANSWER_MAX, PeerRecord, WireError};

/// Most outputs queued before the driver drains them; past it the node is being misdriven.
pub const OUTPUTS_QUEUED_MAX: usize = 1 << 20;
/// Misbehaviour points for a protocol violation by a proven identity.
const POINTS_VIOLATION: u32 = 50;
/// Misbehaviour points for a failed handshake or a bad frame before one.
const POINTS_HANDSHAKE: u32 = 20;
/// Requests one peer may owe us at once; answers nobody asked for are violations.
const REQUESTS_PENDING_MAX: u8 = 2;
/// Requests a peer may make per `REQUEST_WINDOW_MS` before it counts as a flood. Honest
/// peers ask about twice per discovery interval.
const REQUESTS_PER_WINDOW_MAX: u16 = 10;
const REQUEST_WINDOW_MS: u64 = 60_000;
/// Peers asked per discovery round.
const DISCOVERY_FANOUT: usize = 2;

/// Which end opened a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Direction {
    /// The peer dialled us.
    Inbound,
    /// We dialled the peer.
    Outbound,
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        })
    }
}

/// Start-up phases in order (SPEC R1.1), then the running and failed states.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Phase {
    CoreCheck,
    Configuration,
    Cryptography,
    NetworkServices,
    Bootstrap,
    PeerDiscovery,
    InitialSync,
    BackgroundServices,
    /// Start-up finished: "node initialized".
    Ready,
    /// A phase failed; the node does nothing more.
    Failed,
}

impl Phase {
    /// The phase's name in logs and status.
    pub fn name(self) -> &'static str {
        match self {
            Phase::CoreCheck => "core check",
            Phase::Configuration => "configuration",
            Phase::Cryptography => "cryptography",
            Phase::NetworkServices => "network services",
            Phase::Bootstrap => "bootstrap",
            Phase::PeerDiscovery => "peer discovery",
            Phase::InitialSync => "initial sync",
            Phase::BackgroundServices => "background services",
            Phase::Ready => "ready",
            Phase::Failed => "failed",
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Everything that can happen to a node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Input {
    /// A peer connected to our listener; the node answers `Accept` or `Close`.
    Incoming { conn: ConnId, addr: SocketAddr },
    /// The secure channel of `conn` is up; `binding` is what both ends share (Noise hash).
    Secured { conn: ConnId, binding: Binding },
    /// Decrypted bytes from the peer on `conn`.
    Received {
        conn: ConnId,
        #[serde(with = "crate::id::byte_vec")]
        bytes: Vec<u8>,
    },
    /// The transport of `conn` failed or the peer closed it (or the dial failed).
    Closed { conn: ConnId, reason: String },
    /// A deadline from `poll_timeout` passed.
    Tick,
    /// The process restarted: every connection is gone; new seed, possibly new config.
    Restart { config: Box<Config>, rng_seed: u64 },
    /// Orderly shutdown: close every connection.
    Shutdown,
}

impl Input {
    /// A short name for filtering and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Input::Incoming { .. } => "incoming",
            Input::Secured { .. } => "secured",
            Input::Received { .. } => "received",
            Input::Closed { .. } => "closed",
            Input::Tick => "tick",
            Input::Restart { .. } => "restart",
            Input::Shutdown => "shutdown",
        }
    }
}

/// Why the node ended a connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CloseReason {
    HandshakeTimeout,
    Handshake(HandshakeError),
    Wire(WireError),
    BeforeHandshake(String),
    Protocol(String),
    UnexpectedIdentity { expected: NodeId, got: NodeId },
    Duplicate,
    Unresponsive,
    InboundLimit { max: u32 },
    OutboundLimit { max: u32 },
    PerIpLimit { ip: IpAddr, max: u32 },
    Banned,
    BootstrapReleased,
    Shutdown,
    Restarted,
    Transport(String),
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseReason::HandshakeTimeout => f.write_str("handshake not completed in time"),
            CloseReason::Handshake(err) => write!(f, "handshake refused: {err}"),
            CloseReason::Wire(err) => write!(f, "bad frame: {err}"),
            CloseReason::BeforeHandshake(what) => write!(f, "{what} sent before the handshake completed"),
            CloseReason::Protocol(what) => write!(f, "protocol violation: {what}"),
            CloseReason::UnexpectedIdentity { expected, got } => {
                write!(f, "expected node {expected} but {got} answered")
            }
            CloseReason::Duplicate => f.write_str("duplicate connection to a peer we already have"),
            CloseReason::Unresponsive => f.write_str("peer did not answer a request in time"),
            CloseReason::InboundLimit { max } => write!(f, "inbound connection limit {max} reached"),
            CloseReason::OutboundLimit { max } => write!(f, "outbound connection limit {max} reached"),
            CloseReason::PerIpLimit { ip, max } => write!(f, "per-IP connection limit {max} reached for {ip}"),
            CloseReason::Banned => f.write_str("peer is blacklisted"),
            CloseReason::BootstrapReleased => f.write_str("enough peers; releasing bootstrap connection"),
            CloseReason::Shutdown => f.write_str("node shutting down"),
            CloseReason::Restarted => f.write_str("node restarted"),
            CloseReason::Transport(why) => write!(f, "transport: {why}"),
        }
    }
}

/// What the node wants its driver to do.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Output {
    /// Open a connection to `addr`; report `Secured` or `Closed` for `conn`.
    Dial { conn: ConnId, addr: SocketAddr },
    /// Proceed with the inbound connection `conn` (run the secure handshake).
    Accept { conn: ConnId },
    /// Send bytes (whole frames) on `conn`.
    Send {
        conn: ConnId,
        #[serde(with = "crate::id::byte_vec")]
        bytes: Vec<u8>,
    },
    /// Close `conn`; the node has forgotten it and ignores later inputs about it.
    Close { conn: ConnId },
    /// Something worth a log line or a test assertion.
    Event(Event),
}

/// Notable things that happened, for logs, status and tests.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    PhaseEntered { phase: Phase },
    FirstNode,
    BootstrapConnected { node_id: NodeId, addr: SocketAddr },
    BootstrapFailed { node_id: NodeId, addr: SocketAddr, reason: String },
    BootstrapRetry { round: u32, of: u32 },
    StartupFailed { phase: Phase, reason: String },
    PeerConnected { conn: ConnId, node_id: NodeId, addr: SocketAddr, direction: Direction },
    ConnectionClosed { conn: ConnId, addr: SocketAddr, peer: Option<NodeId>, reason: CloseReason, by_us: bool },
    NetworkInfoReceived { from: NodeId, peers: u32, stats: NetworkStats, popular_content: u32 },
    PeersLearned { from: NodeId, received: u32, new: u32 },
    Penalised { offender: Offender, points: u32, score: u32, banned: bool },
    Initialized { peers: u32 },
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::PhaseEntered { phase } => write!(f, "phase: {phase}"),
            Event::FirstNode => f.write_str("bootstrap list is empty: this is the network's first node"),
            Event::BootstrapConnected { node_id, addr } => write!(f, "bootstrap node {node_id} at {addr}: connected"),
            Event::BootstrapFailed { node_id, addr, reason } => {
                write!(f, "bootstrap node {node_id} at {addr}: failed: {reason}")
            }
            Event::BootstrapRetry { round, of } => {
                write!(f, "no bootstrap node reachable; retrying (round {round} of {of})")
            }
            Event::StartupFailed { phase, reason } => write!(f, "start-up failed in phase {phase}: {reason}"),
            Event::PeerConnected { node_id, addr, direction, .. } => {
                write!(f, "peer {node_id} connected ({direction}, {addr})")
            }
            Event::ConnectionClosed { conn, addr, peer, reason, by_us } => {
                let who = peer.map(|p| format!(" peer {p}")).unwrap_or_default();
                let side = if *by_us { "closing" } else { "closed" };
                write!(f, "{side} connection {conn} {addr}{who}: {reason}")
            }
            Event::NetworkInfoReceived { from, peers, stats, popular_content } => write!(
                f,
                "network info from {from}: {peers} active peers, {} connected / {} known there, {popular_content} popular items",
                stats.connected_peers, stats.known_peers
            ),
            Event::PeersLearned { from, received, new } => {
                write!(f, "discovery: {received} peers from {from}, {new} new")
            }
            Event::Penalised { offender, points, score, banned } => {
                write!(
                    f,
                    "penalised {offender:?} by {points} (score {score}){}",
                    if *banned { ", blacklisted" } else { "" }
                )
            }
            Event::Initialized { peers } => write!(f, "node initialized ({peers} peers)"),
        }
    }
}

/// Why the node wants a `Tick`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TimerKind {
    Handshake(ConnId),
    Request(ConnId),
    BootstrapRetry,
    DiscoveryDeadline,
    Discovery,
}

/// A peer as shown in status.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerStatus {
    pub node_id: NodeId,
    pub address: SocketAddr,
    pub direction: Direction,
    pub connected_s: u64,
    pub bootstrap: bool,
}

/// Counters that only grow.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    pub inputs: u64,
    pub frames_in: u64,
    pub frames_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub dials: u64,
    pub handshakes_ok: u64,
    pub handshakes_failed: u64,
    pub inbound_refused: u64,
    pub restarts: u64,
}

/// A snapshot for `mynet status` (SPEC R10.1, first part).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub node_id: NodeId,
    pub public_key: PublicKey,
    pub phase: Phase,
    pub uptime_s: u64,
    pub peer_count: u32,
    pub peers: Vec<PeerStatus>,
    pub known_peers: u32,
    pub connections_handshaking: u32,
    pub counters: Counters,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Established {
    node_id: NodeId,
    public_key: PublicKey,
    listen_addr: Option<SocketAddr>,
    since: Mono,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
enum ConnState {
    /// Dialling, or accepted and running the secure handshake.
    Opening,
    /// Inbound, secure: waiting for the peer's Hello.
    AwaitHello {
        binding: Binding,
    },
    /// Outbound, secure, Hello sent: waiting for the answer.
    AwaitAck {
        binding: Binding,
    },
    Established(Established),
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Conn {
    direction: Direction,
    addr: SocketAddr,
    state: ConnState,
    /// When the handshake must have completed; once established, when the oldest
    /// outstanding request must be answered.
    deadline: Mono,
    /// Requests sent on this connection and not answered yet (at most `REQUESTS_PENDING_MAX`).
    requests_pending: u8,
    /// Requests the peer made in the current window, and when the window began.
    served_in_window: u16,
    window_start: Mono,
    /// The identity we dialled, if we dialled a known node.
    expect: Option<NodeId>,
    bootstrap: bool,
    frames: FrameBuffer,
}

impl Conn {
    fn established(&self) -> Option<&Established> {
        match &self.state {
            ConnState::Established(e) => Some(e),
            _ => None,
        }
    }

    /// The peer id proven, or the one we dialled.
    fn peer_hint(&self) -> Option<NodeId> {
        self.established().map(|e| e.node_id).or(self.expect)
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Bootstrap {
    round: u32,
    /// Bootstrap nodes dialled this round and not concluded.
    pending: BTreeSet<NodeId>,
    connected_this_round: u32,
    retry_at: Option<Mono>,
    info_requested: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct State {
    config: Config,
    node_id: NodeId,
    rng: ChaCha8Rng,
    started: Time,
    now: Time,
    phase: Phase,
    next_conn: u64,
    conns: BTreeMap<ConnId, Conn>,
    known: KnownPeers,
    penalties: Penalties,
    bootstrap: Bootstrap,
    /// Discovery requests awaiting an answer during the discovery phase.
    awaiting: BTreeSet<ConnId>,
    discovery_deadline: Option<Mono>,
    next_discovery: Option<Mono>,
    counters: Counters,
}

/// Format byte of node snapshots.
pub const SNAPSHOT_FORMAT: u8 = 1;

/// Encoded outputs are hashed in blocks of this size (BLAKE3 is several times faster on long
/// inputs than on many short ones).
const OUTPUT_HASH_BLOCK: usize = 64 * 1024;

#[derive(Serialize)]
struct SnapshotRef<'a> {
    format: u8,
    state: &'a State,
    output_chain: [u8; 32],
    #[serde(with = "crate::id::byte_vec")]
    output_pending: &'a [u8],
    outputs_total: u64,
}

#[derive(Deserialize)]
struct Snapshot {
    format: u8,
    state: State,
    output_chain: [u8; 32],
    #[serde(with = "crate::id::byte_vec")]
    output_pending: Vec<u8>,
    outputs_total: u64,
}

/// A snapshot that cannot be restored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot does not decode: {0}")]
    Undecodable(String),
    #[error("unknown snapshot format {0}")]
    Format(u8),
    #[error("snapshot belongs to node {snapshot}, the key is node {key}")]
    WrongIdentity { snapshot: NodeId, key: NodeId },
}

/// A mynet node: a pure state machine.
pub struct Node {
    identity: Identity,
    state: State,
    outputs: VecDeque<Output>,
    /// The output hash covers every output's postcard encoding (self-delimiting), in order:
    /// encodings accumulate in `output_pending`; each full block is folded into
    /// `output_chain = BLAKE3(output_chain || block)`; the hash is BLAKE3(chain || pending).
    output_chain: [u8; 32],
    output_pending: Vec<u8>,
    outputs_total: u64,
}

impl fmt::Debug for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Node({}, {})", self.state.node_id.short(), self.state.phase)
    }
}

impl Node {
    /// A node at the start of its bootstrap phase. Its first outputs (dials) are queued.
    pub fn new(config: Config, identity: Identity, rng_seed: u64, now: Time) -> Node {
        let known = KnownPeers::new(config.max_known_peers as usize);
        let state = State {
            node_id: identity.node_id(),
            config,
            rng: ChaCha8Rng::seed_from_u64(rng_seed),
            started: now,
            now,
            phase: Phase::Bootstrap,
            next_conn: 0,
            conns: BTreeMap::new(),
            known,
            penalties: Penalties::default(),
            bootstrap: Bootstrap::default(),
            awaiting: BTreeSet::new(),
            discovery_deadline: None,
            next_discovery: None,
            counters: Counters::default(),
        };
        let mut node = Node {
            identity,
            state,
            outputs: VecDeque::new(),
            output_chain: [0; 32],
            output_pending: Vec::new(),
            outputs_total: 0,
        };
        node.start(now);
        node
    }

    // ---- getters ----

    /// Our identity.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// Our id.
    pub fn node_id(&self) -> NodeId {
        self.state.node_id
    }

    /// The config in force.
    pub fn config(&self) -> &Config {
        &self.state.config
    }

    /// The last time the node was handed (monotonic part clamped to never go back).
    pub fn now(&self) -> Time {
        self.state.now
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        self.state.phase
    }

    /// Established peers' ids, in id order.
    pub fn peer_ids(&self) -> Vec<NodeId> {
        let mut ids: Vec<NodeId> =
            self.state.conns.values().filter_map(|c| c.established().map(|e| e.node_id)).collect();
        ids.sort();
        ids
    }

    /// Ids a discovery request excludes: our peers, at most `EXCLUDE_MAX` of them (a longer
    /// list would be refused by the receiver).
    fn exclude_list(&self) -> Vec<NodeId> {
        let mut ids = self.peer_ids();
        ids.truncate(wire::EXCLUDE_MAX);
        ids
    }

    /// Connections per direction (handshaking ones included) and per IP address.
    pub fn connection_counts(&self) -> (u32, u32, BTreeMap<IpAddr, u32>) {
        let (mut inbound, mut outbound, mut per_ip) = (0, 0, BTreeMap::new());
        for conn in self.state.conns.values() {
            match conn.direction {
                Direction::Inbound => inbound += 1,
                Direction::Outbound => outbound += 1,
            }
            *per_ip.entry(conn.addr.ip()).or_insert(0) += 1;
        }
        (inbound, outbound, per_ip)
    }

    /// Whether every open connection that carries traffic has a verified handshake, and every
    /// established peer is a proven identity other than ours (simulator safety invariant).
    pub fn check_invariants(&self) -> Result<(), String> {
        let cfg = &self.state.config;
        let (mut inbound, mut outbound) = (0u32, 0u32);
        for conn in self.state.conns.values() {
            match conn.direction {
                Direction::Inbound => inbound += 1,
                Direction::Outbound => outbound += 1,
            }
        }
        if inbound > cfg.max_inbound || outbound > cfg.max_outbound {
            return Err(format!("connection limits exceeded: {inbound} in / {outbound} out"));
        }
        if self.state.conns.len() as u32 > cfg.max_per_ip {
            let mut ips: Vec<IpAddr> = self.state.conns.values().map(|c| c.addr.ip()).collect();
            ips.sort_unstable();
            for run in ips.chunk_by(|a, b| a == b) {
                if run.len() as u32 > cfg.max_per_ip {
                    return Err(format!("{} connections to {}, limit {}", run.len(), run[0], cfg.max_per_ip));
                }
            }
        }
        let now = self.state.now.mono;
        for (id, conn) in &self.state.conns {
            let Some(e) = conn.established() else { continue };
            if e.node_id == self.state.node_id {
                return Err(format!("{id} is a connection to ourselves"));
            }
            // Identities are proven when a connection is established; re-derive the id of
            // every connection established in this step (older ones were checked then).
            if e.since == now && NodeId::from_public_key(&e.public_key) != e.node_id {
                return Err(format!("{id} holds an identity whose id does not match its key"));
            }
        }
        Ok(())
    }

    /// The status snapshot at `now`.
    pub fn status(&self, now: Time) -> NodeStatus {
        let mut peers: Vec<PeerStatus> = self
            .state
            .conns
            .values()
            .filter_map(|c| {
                c.established().map(|e| PeerStatus {
                    node_id: e.node_id,
                    address: e.listen_addr.unwrap_or(c.addr),
                    direction: c.direction,
                    connected_s: now.mono.ms_since(e.since) / 1000,
                    bootstrap: c.bootstrap,
                })
            })
            .collect();
        peers.sort_by_key(|p| p.node_id);
        NodeStatus {
            node_id: self.state.node_id,
            public_key: self.identity.public_key(),
            phase: self.state.phase,
            uptime_s: now.mono.ms_since(self.state.started.mono) / 1000,
            peer_count: peers.len() as u32,
            connections_handshaking: (self.state.conns.len() - peers.len()) as u32,
            peers,
            known_peers: self.state.known.len() as u32,
            counters: self.state.counters.clone(),
        }
    }

    /// BLAKE3 of the canonical encoding of the whole state (checkpoints, replay).
    pub fn state_hash(&self) -> [u8; 32] {
        let bytes = postcard::to_allocvec(&self.state).expect("postcard encoding of state cannot fail");
        *blake3::hash(&bytes).as_bytes()
    }

    /// The state as JSON, for `mynet replay --state`.
    pub fn state_json(&self) -> serde_json::Value {
        serde_json::to_value(&self.state).unwrap_or(serde_json::Value::Null)
    }

    /// The whole node (state, RNG, output hash) as bytes, for a snapshot. Call with the output
    /// queue drained, as drivers always leave it between inputs.
    pub fn snapshot(&self) -> Vec<u8> {
        assert!(self.outputs.is_empty(), "snapshot taken with undrained outputs");
        let snapshot = SnapshotRef {
            format: SNAPSHOT_FORMAT,
            state: &self.state,
            output_chain: self.output_chain,
            output_pending: &self.output_pending,
            outputs_total: self.outputs_total,
        };
        postcard::to_allocvec(&snapshot).expect("postcard encoding of state cannot fail")
    }

    /// A node restored from [`Node::snapshot`] bytes; the identity must be the snapshot's.
    pub fn restore(identity: Identity, bytes: &[u8]) -> Result<Node, SnapshotError> {
        let (snapshot, rest): (Snapshot, &[u8]) =
            postcard::take_from_bytes(bytes).map_err(|e| SnapshotError::Undecodable(e.to_string()))?;
        if !rest.is_empty() {
            return Err(SnapshotError::Undecodable(format!("{} trailing bytes", rest.len())));
        }
        if snapshot.format != SNAPSHOT_FORMAT {
            return Err(SnapshotError::Format(snapshot.format));
        }
        if snapshot.state.node_id != identity.node_id() {
            return Err(SnapshotError::WrongIdentity { snapshot: snapshot.state.node_id, key: identity.node_id() });
        }
        Ok(Node {
            identity,
            state: snapshot.state,
            outputs: VecDeque::new(),
            output_chain: snapshot.output_chain,
            output_pending: snapshot.output_pending,
            outputs_total: snapshot.outputs_total,
        })
    }

    /// Running hash of every output emitted so far.
    pub fn output_hash(&self) -> [u8; 32] {
        let mut hasher = blake3::Hasher::new();
        hasher.update(&self.output_chain);
        hasher.update(&self.output_pending);
        *hasher.finalize().as_bytes()
    }

    /// How many outputs were emitted so far.
    pub fn outputs_total(&self) -> u64 {
        self.outputs_total
    }

    // ---- the door in ----

    /// Feeds one input. Bad peer data closes or penalises the peer; nothing here panics on it.
    pub fn handle(&mut self, now: Time, input: Input) {
        // Monotonic time never goes backwards, whatever the driver passes.
        let mono = now.mono.max(self.state.now.mono);
        self.state.now = Time { mono, wall_ms: now.wall_ms };
        self.state.counters.inputs += 1;
        if self.state.phase == Phase::Failed && !matches!(input, Input::Restart { .. }) {
            if let Input::Incoming { conn, .. } | Input::Secured { conn, .. } = input {
                self.push(Output::Close { conn });
            }
            return;
        }
        match input {
            Input::Incoming { conn, addr } => self.handle_incoming(conn, addr),
            Input::Secured { conn, binding } => self.handle_secured(conn, binding),
            Input::Received { conn, bytes } => self.handle_received(conn, &bytes),
            Input::Closed { conn, reason } => self.handle_closed(conn, reason),
            Input::Tick => self.handle_tick(),
            Input::Restart { config, rng_seed } => self.handle_restart(*config, rng_seed),
            Input::Shutdown => self.handle_shutdown(),
        }
    }

    // ---- the doors out ----

    /// The next thing to do, until `None`.
    pub fn poll_output(&mut self) -> Option<Output> {
        let output = self.outputs.pop_front()?;
        let pending = std::mem::take(&mut self.output_pending);
        self.output_pending =
            postcard::to_extend(&output, pending).expect("postcard encoding of an output cannot fail");
        if self.output_pending.len() >= OUTPUT_HASH_BLOCK {
            let mut hasher = blake3::Hasher::new();
            hasher.update(&self.output_chain);
            hasher.update(&self.output_pending);
            self.output_chain = *hasher.finalize().as_bytes();
            self.output_pending.clear();
        }
        self.outputs_total += 1;
        Some(output)
    }

    /// When the next `Tick` is due, and why.
    pub fn poll_timeout(&self) -> Option<(Mono, TimerKind)> {
        if self.state.phase == Phase::Failed {
            return None;
        }
        let mut best: Option<(Mono, TimerKind)> = None;
        let mut consider = |at: Option<Mono>, kind: TimerKind| {
            if let Some(at) = at
                && best.is_none_or(|(b, _)| at < b)
            {
                best = Some((at, kind));
            }
        };
        for (id, conn) in &self.state.conns {
            if conn.established().is_none() {
                consider(Some(conn.deadline), TimerKind::Handshake(*id));
            } else if conn.requests_pending > 0 {
                consider(Some(conn.deadline), TimerKind::Request(*id));
            }
        }
        consider(self.state.bootstrap.retry_at, TimerKind::BootstrapRetry);
        consider(self.state.discovery_deadline, TimerKind::DiscoveryDeadline);
        consider(self.state.next_discovery, TimerKind::Discovery);
        best
    }

    // ---- input handlers ----

    fn handle_incoming(&mut self, conn: ConnId, addr: SocketAddr) {
        if self.state.conns.contains_key(&conn) {
            return; // a driver bug; never let it clobber a live connection
        }
        let refusal = self.admission_refusal(Direction::Inbound, addr.ip());
        if let Some(reason) = refusal {
            self.state.counters.inbound_refused += 1;
            self.event(Event::ConnectionClosed { conn, addr, peer: None, reason, by_us: true });
            self.push(Output::Close { conn });
            return;
        }
        self.insert_conn(conn, Direction::Inbound, addr, None, false);
        self.push(Output::Accept { conn });
    }

    fn handle_secured(&mut self, conn_id: ConnId, binding: Binding) {
        let now = self.state.now;
        let listen = self.advertised_addr();
        let Some(conn) = self.state.conns.get_mut(&conn_id) else { return };
        if !matches!(conn.state, ConnState::Opening) {
            return;
        }
        match conn.direction {
            Direction::Inbound => conn.state = ConnState::AwaitHello { binding },
            Direction::Outbound => {
                conn.state = ConnState::AwaitAck { binding };
                let cfg = &self.state.config;
                let hello = handshake::build_hello(
                    &self.identity,
                    Role::Initiator,
                    binding,
                    &cfg.network_id,
                    &cfg.protocol_version,
                    now.wall_ms,
                    listen,
                );
                self.send(conn_id, &Message::Hello(hello));
            }
        }
    }

    fn handle_received(&mut self, conn_id: ConnId, bytes: &[u8]) {
        let Some(conn) = self.state.conns.get_mut(&conn_id) else { return };
        if bytes.is_empty() {
            return;
        }
        self.state.counters.bytes_in += bytes.len() as u64;
        // The buffer leaves the connection while its frames are handled (they may close it).
        let mut buffer = std::mem::take(&mut conn.frames);
        let mut bad_frame = None;
        let drained = buffer.drain(bytes, |body| {
            self.state.counters.frames_in += 1;
            match wire::decode_body(body) {
                Ok(message) => self.handle_message(conn_id, message),
                Err(err) => bad_frame = Some(err),
            }
            bad_frame.is_none() && self.state.conns.contains_key(&conn_id)
        });
        if let Some(err) = bad_frame.or(drained.err()) {
            return self.misbehaved(conn_id, CloseReason::Wire(err));
        }
        if let Some(conn) = self.state.conns.get_mut(&conn_id) {
            conn.frames = buffer;
        }
    }

    fn handle_closed(&mut self, conn_id: ConnId, reason: String) {
        if self.state.conns.contains_key(&conn_id) {
            self.remove_conn(conn_id, CloseReason::Transport(reason), false);
        }
    }

    fn handle_tick(&mut self) {
        let now = self.state.now.mono;
        let expired: Vec<ConnId> = self
            .state
            .conns
            .iter()
            .filter(|(_, c)| c.established().is_none() && c.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for conn in expired {
            self.close(conn, CloseReason::HandshakeTimeout);
        }
        let unanswered: Vec<ConnId> = self
            .state
            .conns
            .iter()
            .filter(|(_, c)| c.established().is_some() && c.requests_pending > 0 && c.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for conn in unanswered {
            self.close(conn, CloseReason::Unresponsive);
        }
        if self.state.bootstrap.retry_at.is_some_and(|at| at <= now) {
            self.state.bootstrap.retry_at = None;
            self.bootstrap_round();
        }
        if self.state.discovery_deadline.is_some_and(|at| at <= now) {
            self.state.discovery_deadline = None;
            self.state.awaiting.clear();
            self.finish_discovery_phase();
        }
        if self.state.next_discovery.is_some_and(|at| at <= now) {
            self.state.next_discovery = Some(now.plus_ms(self.state.config.discovery_interval_ms));
            self.discovery_round();
        }
    }

    fn handle_restart(&mut self, config: Config, rng_seed: u64) {
        let ids: Vec<ConnId> = self.state.conns.keys().copied().collect();
        for id in ids {
            // The transport died with the old process: forget, do not emit Close.
            self.remove_conn(id, CloseReason::Restarted, false);
        }
        self.state.known.set_max(config.max_known_peers as usize);
        self.state.config = config;
        self.state.rng = ChaCha8Rng::seed_from_u64(rng_seed);
        self.state.started = self.state.now;
        self.state.bootstrap = Bootstrap::default();
        self.state.awaiting.clear();
        self.state.discovery_deadline = None;
        self.state.next_discovery = None;
        self.state.counters.restarts += 1;
        let now = self.state.now;
        self.start(now);
    }

    fn handle_shutdown(&mut self) {
        let ids: Vec<ConnId> = self.state.conns.keys().copied().collect();
        for id in ids {
            self.close(id, CloseReason::Shutdown);
        }
        self.state.next_discovery = None;
        self.state.bootstrap.retry_at = None;
        self.state.discovery_deadline = None;
    }

    // ---- messages ----

    fn handle_message(&mut self, conn_id: ConnId, message: Message) {
        let Some(conn) = self.state.conns.get(&conn_id) else { return };
        match (&conn.state, message) {
            (ConnState::AwaitHello { binding }, Message::Hello(hello)) => {
                let binding = *binding;
                self.handle_hello(conn_id, hello, Role::Initiator, binding);
            }
            (ConnState::AwaitAck { binding }, Message::HelloAck(hello)) => {
                let binding = *binding;
                self.handle_hello(conn_id, hello, Role::Responder, binding);
            }
            (ConnState::Established(e), message) => {
                let peer = e.node_id;
                self.handle_peer_message(conn_id, peer, message);
            }
            (_, message) => {
                let what = format!("{} message", message_name(&message));
                self.misbehaved(conn_id, CloseReason::BeforeHandshake(what));
            }
        }
    }

    fn handle_hello(&mut self, conn_id: ConnId, hello: wire::Hello, role: Role, binding: Binding) {
        let now = self.state.now;
        let cfg = &self.state.config;
        let expect = Expect {
            our_id: self.state.node_id,
            network_id: &cfg.network_id,
            version: &cfg.protocol_version,
            now_wall_ms: now.wall_ms,
            max_skew_ms: cfg.max_clock_skew_ms,
        };
        if let Err(err) = handshake::verify_hello(&hello, role, binding, &expect) {
            self.state.counters.handshakes_failed += 1;
            let offensive = !matches!(err, HandshakeError::SelfConnection | HandshakeError::ClockSkew { .. });
            return if offensive {
                self.misbehaved(conn_id, CloseReason::Handshake(err))
            } else {
                self.close(conn_id, CloseReason::Handshake(err))
            };
        }
        let Some(conn) = self.state.conns.get(&conn_id) else { return };
        if let Some(expected) = conn.expect.filter(|e| *e != hello.node_id) {
            self.close(conn_id, CloseReason::UnexpectedIdentity { expected, got: hello.node_id });
            return self.state.known.forget(&expected);
        }
        if self.state.penalties.is_banned(&Offender::Node(hello.node_id), now.mono) {
            return self.close(conn_id, CloseReason::Banned);
        }
        if let Some(keep_existing) = self.duplicate_of(conn_id, hello.node_id)
            && keep_existing
        {
            return self.close(conn_id, CloseReason::Duplicate);
        }
        if role == Role::Initiator {
            let listen = self.advertised_addr();
            let cfg = &self.state.config;
            let ack = handshake::build_hello(
                &self.identity,
                Role::Responder,
                binding,
                &cfg.network_id,
                &cfg.protocol_version,
                now.wall_ms,
                listen,
            );
            self.send(conn_id, &Message::HelloAck(ack));
        }
        self.establish(conn_id, &hello);
    }

    /// If `conn_id` would duplicate an established connection to `peer`, whether the existing
    /// one is kept. Both ends apply the same rule (keep the one dialled by the lower id), so
    /// a simultaneous dial leaves exactly one connection.
    fn duplicate_of(&mut self, conn_id: ConnId, peer: NodeId) -> Option<bool> {
        let (&existing_id, existing) = self
            .state
            .conns
            .iter()
            .find(|(id, c)| **id != conn_id && c.established().is_some_and(|e| e.node_id == peer))?;
        let new_dir = self.state.conns.get(&conn_id)?.direction;
        if existing.direction == new_dir {
            return Some(true);
        }
        let initiator_of = |dir: Direction| if dir == Direction::Outbound { self.state.node_id } else { peer };
        let keep_existing = initiator_of(existing.direction) < initiator_of(new_dir);
        if !keep_existing {
            self.close(existing_id, CloseReason::Duplicate);
        }
        Some(keep_existing)
    }

    fn establish(&mut self, conn_id: ConnId, hello: &wire::Hello) {
        let now = self.state.now.mono;
        let Some(conn) = self.state.conns.get_mut(&conn_id) else { return };
        // A listen address with an unspecified IP means "the address you see me at".
        let listen_addr = hello
            .listen_addr
            .map(|a| if a.ip().is_unspecified() { SocketAddr::new(conn.addr.ip(), a.port()) } else { a });
        conn.state = ConnState::Established(Established {
            node_id: hello.node_id,
            public_key: hello.public_key,
            listen_addr,
            since: now,
        });
        let (direction, addr, bootstrap) = (conn.direction, conn.addr, conn.bootstrap);
        self.state.counters.handshakes_ok += 1;
        self.state.known.verified(hello.node_id, hello.public_key, listen_addr, now);
        self.event(Event::PeerConnected { conn: conn_id, node_id: hello.node_id, addr, direction });
        if direction == Direction::Outbound {
            let max_peers = PEERS_PER_ANSWER_MAX as u16;
            let exclude = self.exclude_list();
            if bootstrap {
                self.bootstrap_concluded(hello.node_id, addr, true, String::new());
            }
            if bootstrap && !self.state.bootstrap.info_requested {
                self.state.bootstrap.info_requested = true;
                self.request(conn_id, Message::GetNetworkInfo);
            }
            self.request(conn_id, Message::DiscoverPeers { node_id: self.state.node_id, max_peers, exclude });
        }
        if !bootstrap {
            self.release_bootstrap_links();
        }
    }

    fn handle_peer_message(&mut self, conn_id: ConnId, peer: NodeId, message: Message) {
        if matches!(message, Message::GetNetworkInfo | Message::DiscoverPeers { .. }) && !self.may_ask(conn_id) {
            return self.misbehaved(conn_id, CloseReason::Protocol("request flood".into()));
        }
        match message {
            Message::GetNetworkInfo => {
                let peers = self.sample_for(peer, PEERS_PER_ANSWER_MAX, &[]);
                let stats = NetworkStats {
                    connected_peers: self.peer_ids().len() as u32,
                    known_peers: self.state.known.len() as u32,
                    uptime_s: self.state.now.mono.ms_since(self.state.started.mono) / 1000,
                };
                self.send(conn_id, &Message::NetworkInfo(NetworkInfo { peers, stats, popular_content: Vec::new() }));
            }
            Message::DiscoverPeers { node_id, max_peers, exclude } => {
                if node_id != peer {
                    return self
                        .misbehaved(conn_id, CloseReason::Protocol("discover_peers for another node id".into()));
                }
                let peers = self.sample_for(peer, usize::from(max_peers).min(PEERS_PER_ANSWER_MAX), &exclude);
                self.send(conn_id, &Message::Peers(peers));
            }
            Message::NetworkInfo(_) | Message::Peers(_) if !self.answer_expected(conn_id) => self
                .misbehaved(conn_id, CloseReason::Protocol(format!("unsolicited {} message", message_name(&message)))),
            Message::NetworkInfo(info) => {
                let event = Event::NetworkInfoReceived {
                    from: peer,
                    peers: info.peers.len() as u32,
                    stats: info.stats.clone(),
                    popular_content: info.popular_content.len() as u32,
                };
                self.event(event);
                self.learn_peers(conn_id, peer, &info.peers);
            }
            Message::Peers(records) => self.learn_peers(conn_id, peer, &records),
            Message::Hello(_) | Message::HelloAck(_) => {
                self.misbehaved(conn_id, CloseReason::Protocol("second handshake".into()))
            }
        }
    }

    fn sample_for(&mut self, requester: NodeId, max: usize, exclude: &[NodeId]) -> Vec<PeerRecord> {
        let mut excluded = exclude.to_vec();
        excluded.sort_unstable();
        let self_id = self.state.node_id;
        self.state.known.sample_verified(&mut self.state.rng, max, |id| {
            *id == requester || *id == self_id || excluded.binary_search(id).is_ok()
        })
    }

    fn learn_peers(&mut self, conn_id: ConnId, from: NodeId, records: &[PeerRecord]) {
        let now = self.state.now.mono;
        let mut new = 0;
        let mut forged = false;
        for record in records {
            // A key we already hold for this id was checked when it was stored.
            let known_key = self.state.known.get(&record.node_id).is_some_and(|k| k.public_key == record.public_key);
            if !known_key && NodeId::from_public_key(&record.public_key) != record.node_id {
                forged = true;
                continue;
            }
            if record.node_id == self.state.node_id
                || record.address.port() == 0
                || record.address.ip().is_unspecified()
            {
                continue;
            }
            if self.state.known.learn(record, now) {
                new += 1;
            }
        }
        self.event(Event::PeersLearned { from, received: records.len() as u32, new });
        if forged {
            self.penalise(Offender::Node(from), POINTS_HANDSHAKE);
        }
        if self.state.awaiting.remove(&conn_id) && self.state.awaiting.is_empty() {
            self.finish_discovery_phase();
        }
        self.fill_peers();
    }

    // ---- start-up ----

    fn start(&mut self, now: Time) {
        self.state.phase = Phase::Bootstrap;
        self.state.started = now;
        self.event(Event::PhaseEntered { phase: Phase::Bootstrap });
        if self.state.config.bootstrap_nodes.is_empty() {
            self.event(Event::FirstNode);
            self.enter_discovery_phase();
        } else {
            self.bootstrap_round();
        }
    }

    fn bootstrap_round(&mut self) {
        self.state.bootstrap.round += 1;
        self.state.bootstrap.connected_this_round = 0;
        let nodes = self.state.config.bootstrap_nodes.clone();
        for node in nodes {
            if self.has_conn_to(&node.node_id) {
                continue;
            }
            if self.dial(node.address, Some(node.node_id), true) {
                self.state.bootstrap.pending.insert(node.node_id);
            } else {
                self.event(Event::BootstrapFailed {
                    node_id: node.node_id,
                    addr: node.address,
                    reason: "connection limits reached".into(),
                });
            }
        }
        if self.state.bootstrap.pending.is_empty() {
            self.bootstrap_round_over();
        }
    }

    fn bootstrap_concluded(&mut self, node_id: NodeId, addr: SocketAddr, ok: bool, reason: String) {
        if !self.state.bootstrap.pending.remove(&node_id) {
            return;
        }
        if ok {
            self.state.bootstrap.connected_this_round += 1;
            self.event(Event::BootstrapConnected { node_id, addr });
        } else {
            self.event(Event::BootstrapFailed { node_id, addr, reason });
        }
        if self.state.bootstrap.pending.is_empty() {
            self.bootstrap_round_over();
        }
    }

    fn bootstrap_round_over(&mut self) {
        if self.state.phase != Phase::Bootstrap {
            return;
        }
        if self.state.bootstrap.connected_this_round > 0 || !self.peer_ids().is_empty() {
            return self.enter_discovery_phase();
        }
        let (round, of) = (self.state.bootstrap.round, self.state.config.bootstrap_attempts);
        if round < of {
            self.event(Event::BootstrapRetry { round: round + 1, of });
            // Exponential back-off: a busy bootstrap node gets time to release slots.
            let backoff_ms = self.state.config.bootstrap_retry_ms.saturating_mul(1 << (round - 1).min(16));
            self.state.bootstrap.retry_at = Some(self.state.now.mono.plus_ms(backoff_ms));
        } else {
            self.fail(Phase::Bootstrap, "failed to connect to any bootstrap node".into());
        }
    }

    fn enter_discovery_phase(&mut self) {
        self.set_phase(Phase::PeerDiscovery);
        // Requests were sent as bootstrap connections completed; wait for their answers.
        self.state.awaiting = self
            .state
            .conns
            .iter()
            .filter(|(_, c)| c.established().is_some() && c.direction == Direction::Outbound)
            .map(|(id, _)| *id)
            .collect();
        if self.state.awaiting.is_empty() {
            self.finish_discovery_phase();
        } else {
            self.state.discovery_deadline = Some(self.state.now.mono.plus_ms(self.state.config.handshake_timeout_ms));
        }
    }

    fn finish_discovery_phase(&mut self) {
        if self.state.phase != Phase::PeerDiscovery {
            return;
        }
        self.state.discovery_deadline = None;
        self.fill_peers();
        // Content sync does not exist yet: the initial sync has nothing to queue.
        self.set_phase(Phase::InitialSync);
        self.set_phase(Phase::BackgroundServices);
        self.state.next_discovery = Some(self.state.now.mono.plus_ms(self.state.config.discovery_interval_ms));
        self.set_phase(Phase::Ready);
        let peers = self.peer_ids().len() as u32;
        self.event(Event::Initialized { peers });
    }

    fn fail(&mut self, phase: Phase, reason: String) {
        self.event(Event::StartupFailed { phase, reason });
        self.set_phase(Phase::Failed);
        let ids: Vec<ConnId> = self.state.conns.keys().copied().collect();
        for id in ids {
            self.close(id, CloseReason::Shutdown);
        }
    }

    fn set_phase(&mut self, phase: Phase) {
        self.state.phase = phase;
        self.event(Event::PhaseEntered { phase });
    }

    // ---- discovery ----

    fn discovery_round(&mut self) {
        let mut peers: Vec<ConnId> =
            self.state.conns.iter().filter(|(_, c)| c.established().is_some()).map(|(id, _)| *id).collect();
        if peers.is_empty() {
            // Isolated: go back to the bootstrap nodes, if there are any.
            let nodes = self.state.config.bootstrap_nodes.clone();
            for node in nodes {
                if !self.has_conn_to(&node.node_id) {
                    self.dial(node.address, Some(node.node_id), true);
                }
            }
        }
        self.release_bootstrap_links();
        partial_shuffle(&mut self.state.rng, &mut peers, DISCOVERY_FANOUT);
        peers.truncate(DISCOVERY_FANOUT);
        let exclude = self.exclude_list();
        for conn in peers {
            let message = Message::DiscoverPeers {
                node_id: self.state.node_id,
                max_peers: PEERS_PER_ANSWER_MAX as u16,
                exclude: exclude.clone(),
            };
            self.request(conn, message);
        }
        self.fill_peers();
    }

    /// Once we have enough other peers, bootstrap nodes' slots are better left to newcomers.
    fn release_bootstrap_links(&mut self) {
        let target = self.state.config.target_peers as usize;
        let others = self.state.conns.values().filter(|c| c.established().is_some() && !c.bootstrap).count();
        if others < target {
            return;
        }
        let links: Vec<ConnId> = self
            .state
            .conns
            .iter()
            .filter(|(_, c)| c.bootstrap && c.established().is_some())
            .map(|(id, _)| *id)
            .collect();
        for id in links {
            self.close(id, CloseReason::BootstrapReleased);
        }
    }

    /// Dials known peers until the target is met or no candidate is left.
    fn fill_peers(&mut self) {
        if !matches!(
            self.state.phase,
            Phase::PeerDiscovery | Phase::InitialSync | Phase::BackgroundServices | Phase::Ready
        ) {
            return;
        }
        let target = self.state.config.target_peers as usize;
        let active = self
            .state
            .conns
            .values()
            .filter(|c| !c.bootstrap && (c.established().is_some() || c.direction == Direction::Outbound))
            .count();
        // Bootstrap links do not count: the target is met by other peers, and meeting it
        // releases the bootstrap links (`release_bootstrap_links`).
        if active >= target {
            return;
        }
        let now = self.state.now.mono;
        // Bootstrap nodes are for joining, not regular peers: their inbound slots must stay
        // free for newcomers (they are dialled by bootstrap rounds and when isolated).
        let mut connected: BTreeSet<NodeId> = self.state.conns.values().filter_map(Conn::peer_hint).collect();
        connected.extend(self.state.config.bootstrap_nodes.iter().map(|b| b.node_id));
        let self_id = self.state.node_id;
        let penalties = &self.state.penalties;
        let mut candidates = self.state.known.candidates(now, |id, _| {
            *id == self_id || connected.contains(id) || penalties.is_banned(&Offender::Node(*id), now)
        });
        let want = target - active;
        let all = candidates.len();
        partial_shuffle(&mut self.state.rng, &mut candidates, all);
        let mut dialled = 0;
        for (id, addr) in candidates {
            if dialled >= want {
                break;
            }
            if self.dial(addr, Some(id), false) {
                dialled += 1;
            }
        }
    }

    // ---- connections ----

    fn admission_refusal(&self, direction: Direction, ip: IpAddr) -> Option<CloseReason> {
        let (mut inbound, mut outbound, mut same_ip) = (0, 0, 0);
        for conn in self.state.conns.values() {
            match conn.direction {
                Direction::Inbound => inbound += 1,
                Direction::Outbound => outbound += 1,
            }
            same_ip += u32::from(conn.addr.ip() == ip);
        }
        let cfg = &self.state.config;
        if self.state.penalties.is_banned(&Offender::Ip(ip), self.state.now.mono) {
            return Some(CloseReason::Banned);
        }
        match direction {
            Direction::Inbound if inbound >= cfg.max_inbound => {
                return Some(CloseReason::InboundLimit { max: cfg.max_inbound });
            }
            Direction::Outbound if outbound >= cfg.max_outbound => {
                return Some(CloseReason::OutboundLimit { max: cfg.max_outbound });
            }
            _ => {}
        }
        if same_ip >= cfg.max_per_ip {
            return Some(CloseReason::PerIpLimit { ip, max: cfg.max_per_ip });
        }
        None
    }

    /// Dials `addr` if the limits allow; returns whether a dial was issued.
    fn dial(&mut self, addr: SocketAddr, expect: Option<NodeId>, bootstrap: bool) -> bool {
        if self.admission_refusal(Direction::Outbound, addr.ip()).is_some() {
            return false;
        }
        let conn = ConnId(self.state.next_conn);
        self.state.next_conn += 1;
        self.state.counters.dials += 1;
        self.insert_conn(conn, Direction::Outbound, addr, expect, bootstrap);
        self.push(Output::Dial { conn, addr });
        true
    }

    fn insert_conn(
        &mut self,
        id: ConnId,
        direction: Direction,
        addr: SocketAddr,
        expect: Option<NodeId>,
        bootstrap: bool,
    ) {
        let deadline = self.state.now.mono.plus_ms(self.state.config.handshake_timeout_ms);
        self.state.conns.insert(
            id,
            Conn {
                direction,
                addr,
                state: ConnState::Opening,
                deadline,
                requests_pending: 0,
                served_in_window: 0,
                window_start: self.state.now.mono,
                expect,
                bootstrap,
                frames: FrameBuffer::default(),
            },
        );
    }

    fn has_conn_to(&self, id: &NodeId) -> bool {
        self.state.conns.values().any(|c| c.peer_hint() == Some(*id))
    }

    /// Closes `conn` because the peer misbehaved, and penalises whoever it proved to be.
    fn misbehaved(&mut self, conn_id: ConnId, reason: CloseReason) {
        let Some(conn) = self.state.conns.get(&conn_id) else { return };
        let (offender, points) = match conn.established() {
            Some(e) => (Offender::Node(e.node_id), POINTS_VIOLATION),
            None => (Offender::Ip(conn.addr.ip()), POINTS_HANDSHAKE),
        };
        self.close(conn_id, reason);
        self.penalise(offender, points);
    }

    fn penalise(&mut self, offender: Offender, points: u32) {
        let now = self.state.now.mono;
        let (score, banned) = self.state.penalties.add(offender, points, now, self.state.config.ban_duration_ms);
        self.event(Event::Penalised { offender, points, score, banned });
        if banned {
            let victims: Vec<ConnId> = self
                .state
                .conns
                .iter()
                .filter(|(_, c)| match offender {
                    Offender::Node(id) => c.established().is_some_and(|e| e.node_id == id),
                    Offender::Ip(ip) => c.addr.ip() == ip && c.established().is_none(),
                })
                .map(|(id, _)| *id)
                .collect();
            for id in victims {
                self.close(id, CloseReason::Banned);
            }
        }
    }

    fn close(&mut self, conn: ConnId, reason: CloseReason) {
        if self.state.conns.contains_key(&conn) {
            self.push(Output::Close { conn });
            self.remove_conn(conn, reason, true);
        }
    }

    fn remove_conn(&mut self, conn_id: ConnId, reason: CloseReason, by_us: bool) {
        let Some(conn) = self.state.conns.remove(&conn_id) else { return };
        self.state.awaiting.remove(&conn_id);
        let peer = conn.peer_hint();
        let was_established = conn.established().is_some();
        // When the process itself ends (restart, shutdown) a closed connection is not news:
        // no bootstrap verdict, no back-off, no phase change, no replacement dial.
        let process_ending = matches!(reason, CloseReason::Restarted | CloseReason::Shutdown);
        self.event(Event::ConnectionClosed { conn: conn_id, addr: conn.addr, peer, reason: reason.clone(), by_us });
        if process_ending {
            return;
        }
        if !was_established && let Some(expected) = conn.expect {
            if conn.bootstrap {
                self.bootstrap_concluded(expected, conn.addr, false, reason.to_string());
            }
            self.state.known.dial_failed(&expected, self.state.now.mono);
        }
        if self.state.phase == Phase::PeerDiscovery
            && self.state.awaiting.is_empty()
            && self.state.discovery_deadline.is_some()
        {
            self.finish_discovery_phase();
        }
        if was_established {
            self.fill_peers();
        }
    }

    fn advertised_addr(&self) -> Option<SocketAddr> {
        let addr = self.state.config.listen_addr;
        (addr.port() != 0).then_some(addr)
    }

    /// Sends a request that the peer must answer within `handshake_timeout_ms`; skipped if
    /// the peer already owes `REQUESTS_PENDING_MAX` answers.
    fn request(&mut self, conn_id: ConnId, message: Message) {
        let deadline = self.state.now.mono.plus_ms(self.state.config.handshake_timeout_ms);
        let Some(conn) = self.state.conns.get_mut(&conn_id) else { return };
        if conn.requests_pending >= REQUESTS_PENDING_MAX {
            return;
        }
        if conn.requests_pending == 0 {
            conn.deadline = deadline;
        }
        conn.requests_pending += 1;
        if self.state.phase == Phase::PeerDiscovery {
            self.state.awaiting.insert(conn_id);
        }
        self.send(conn_id, &message);
    }

    /// Counts a request from the peer on `conn_id`; false once it exceeds its allowance.
    fn may_ask(&mut self, conn_id: ConnId) -> bool {
        let now = self.state.now.mono;
        let Some(conn) = self.state.conns.get_mut(&conn_id) else { return false };
        if now.ms_since(conn.window_start) >= REQUEST_WINDOW_MS {
            conn.window_start = now;
            conn.served_in_window = 0;
        }
        conn.served_in_window = conn.served_in_window.saturating_add(1);
        conn.served_in_window <= REQUESTS_PER_WINDOW_MAX
    }

    /// Accounts for an answer on `conn_id`; false if none was owed.
    fn answer_expected(&mut self, conn_id: ConnId) -> bool {
        let deadline = self.state.now.mono.plus_ms(self.state.config.handshake_timeout_ms);
        let Some(conn) = self.state.conns.get_mut(&conn_id) else { return false };
        if conn.requests_pending == 0 {
            return false;
        }
        conn.requests_pending -= 1;
        // The next answer, if one is owed, gets a fresh allowance.
        conn.deadline = deadline;
        true
    }

    fn send(&mut self, conn: ConnId, message: &Message) {
        let bytes = wire::encode_frame(message);
        self.state.counters.frames_out += 1;
        self.state.counters.bytes_out += bytes.len() as u64;
        self.push(Output::Send { conn, bytes });
    }

    fn event(&mut self, event: Event) {
        self.push(Output::Event(event));
    }

    fn push(&mut self, output: Output) {
        assert!(self.outputs.len() < OUTPUTS_QUEUED_MAX, "driver stopped draining poll_output");
        self.outputs.push_back(output);
    }

    /// A random value from the node's seeded generator (drivers use it for jitter).
    pub fn random_u64(&mut self) -> u64 {
        self.state.rng.next_u64()
    }
}

fn message_name(message: &Message) -> &'static str {
    match message {
        Message::Hello(_) => "hello",
        Message::HelloAck(_) => "handshake_response",
        Message::GetNetworkInfo => "get_network_info",
        Message::NetworkInfo(_) => "network_info",
        Message::DiscoverPeers { .. } => "discover_peers",
        Message::Peers(_) => "peers",
    }
}
