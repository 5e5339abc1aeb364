//! The node: a thin facade over protocol modules, in the style of str0m's `Rtc`. One door in
//! ([`Node::handle`]), drains out ([`Node::poll_output`], [`Node::poll_timeout`]).
//!
//! Contract with drivers: after every `handle`, drain `poll_output` until `None`, then ask
//! `poll_timeout` and call `handle(now, Input::Tick)` no later than the instant it names.
//! The node never panics on anything a peer or the driver's transport can produce.
//!
//! The facade owns the connection table (`conns`), the request layer (`requests`) and the
//! penalties, and routes everything else: handshake messages to `handshake`, requests and
//! answers by protocol to their module, timers to the module that set them, closed connections,
//! restarts and shutdowns to every module in a fixed order. Modules see the node only through a
//! [`Cx`]; what they do to each other (close, penalise, start-up steps) is deferred and applied
//! here after they return.

use core::net::{IpAddr, SocketAddr};
use std::collections::BTreeMap;
use std::fmt;

use rand_chacha::ChaCha8Rng;
use rand_core::SeedableRng;
use serde::{Deserialize, Serialize};

use crate::bootstrap::Bootstrap;
use crate::config::Config;
use crate::conns::Conns;
use crate::content::proto::PieceHeader;
use crate::content::{Content, ContentId, ContentStatus, ItemStatus, PieceData, PieceRef, SyncStatus};
use crate::context::{Counters, Cx, Deferred, Outbox, Output, Startup};
use crate::discovery::Discovery;
use crate::event::{CloseReason, Direction, Event, Phase, Violation};
use crate::handshake::{self, Binding, Link};
use crate::id::{ConnId, NodeId, PublicKey};
use crate::identity::Identity;
use crate::penalties::{Offender, POINTS_HANDSHAKE, POINTS_VIOLATION, Penalties};
use crate::reconcile::Reconcile;
use crate::refusal::Refusals;
use crate::request::{Answer, Expiry, Origin, Pending, RequestCounters, RequestId, Requests};
use crate::time::{Mono, Time};
use crate::wire::{self, Message, Request, Response};

mod types;

pub use types::*;

/// The node's state: the facade's tables and every module's own state.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct State {
    config: Config,
    node_id: NodeId,
    rng: ChaCha8Rng,
    started: Time,
    now: Time,
    phase: Phase,
    conns: Conns,
    requests: Requests,
    penalties: Penalties,
    /// Connections being refused, the explanation rate, and hints from nodes that refused us.
    refusals: Refusals,
    counters: Counters,
    // Protocol modules, in the order they are told of shared happenings.
    bootstrap: Bootstrap,
    discovery: Discovery,
    content: Content,
    reconcile: Reconcile,
    states: crate::states::States,
    dht: crate::dht::Dht,
    lan: crate::lan::Lan,
    netstatus: crate::netstatus::NetStatus,
}

/// Format byte of node snapshots.
pub const SNAPSHOT_FORMAT: u8 = 10;

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
    out: Outbox,
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

/// A [`Cx`] over the node's fields, leaving the module fields free to borrow beside it.
macro_rules! cx {
    ($node:expr) => {
        Cx {
            now: $node.state.now,
            node_id: $node.state.node_id,
            public_key: $node.identity.public_key(),
            config: &$node.state.config,
            phase: $node.state.phase,
            started: $node.state.started,
            rng: &mut $node.state.rng,
            conns: &mut $node.state.conns,
            requests: &mut $node.state.requests,
            penalties: &$node.state.penalties,
            refusals: &$node.state.refusals,
            counters: &mut $node.state.counters,
            out: &mut $node.out,
        }
    };
}

// After `cx!`, which they use.
mod refuse;
mod route;
mod states;

impl Node {
    /// A node at the start of its bootstrap phase. Its first outputs (dials) are queued.
    pub fn new(config: Config, identity: Identity, rng_seed: u64, now: Time) -> Node {
        let state = State {
            node_id: identity.node_id(),
            discovery: Discovery::new(config.max_known_peers as usize),
            config,
            rng: ChaCha8Rng::seed_from_u64(rng_seed),
            started: now,
            now,
            phase: Phase::Bootstrap,
            conns: Conns::default(),
            requests: Requests::default(),
            penalties: Penalties::default(),
            refusals: Refusals::default(),
            counters: Counters::default(),
            bootstrap: Bootstrap::default(),
            content: Content::default(),
            reconcile: Reconcile::default(),
            states: crate::states::States::default(),
            dht: crate::dht::Dht::new(identity.node_id()),
            lan: crate::lan::Lan::default(),
            netstatus: crate::netstatus::NetStatus::default(),
        };
        let mut node = Node {
            identity,
            state,
            out: Outbox::default(),
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

    /// Established peers' ids, in id order (transient DHT contacts are not peers).
    pub fn peer_ids(&self) -> Vec<NodeId> {
        let mut ids: Vec<NodeId> =
            self.state.conns.established().filter(|(_, c, _)| !c.transient).map(|(_, _, e)| e.node_id).collect();
        ids.sort();
        ids
    }

    /// How many peers the node knows of (its discovery table).
    pub fn known_peers(&self) -> usize {
        self.state.discovery.known().len()
    }

    /// The content module (catalogue, transfers), read-only.
    pub fn content(&self) -> &Content {
        &self.state.content
    }

    /// The reconciliation module (catalogue of signed metadata), read-only.
    pub fn reconcile(&self) -> &Reconcile {
        &self.state.reconcile
    }

    /// The DHT module (routing table, provider records), read-only.
    pub fn dht(&self) -> &crate::dht::Dht {
        &self.state.dht
    }

    /// Every item, for `mynet ls`.
    pub fn items(&self) -> Vec<ItemStatus> {
        self.state.content.list()
    }

    /// Connections per direction (handshaking ones included) and per IP address.
    pub fn connection_counts(&self) -> (u32, u32, BTreeMap<IpAddr, u32>) {
        let (inbound, outbound) = self.state.conns.direction_counts();
        let mut per_ip = BTreeMap::new();
        for (_, conn) in self.state.conns.iter() {
            *per_ip.entry(conn.addr.ip()).or_insert(0) += 1;
        }
        (inbound, outbound, per_ip)
    }

    /// Checks the safety invariants: connection limits (handshaking connections included),
    /// the tables' indexes, and that every established peer is a proven identity other than
    /// ours and not blacklisted.
    pub fn check_invariants(&self) -> Result<(), InvariantViolation> {
        self.state.conns.check(&self.state.config)?;
        self.state.refusals.check_bounds()?;
        if !self.state.requests.counts_agree() {
            return Err(InvariantViolation::IndexOutOfStep { what: "request deadlines" });
        }
        let now = self.state.now.mono;
        for (id, _, e) in self.state.conns.established() {
            if e.node_id == self.state.node_id {
                return Err(InvariantViolation::SelfConnection { conn: id });
            }
            // A ban closes the peer's connections and the handshake refuses it (R5.5).
            if self.state.penalties.is_banned(&Offender::Node(e.node_id), now) {
                return Err(InvariantViolation::BannedPeer { conn: id, peer: e.node_id });
            }
            // Identities are proven when a connection is established; re-derive the id of
            // every connection established in this step (older ones were checked then).
            if e.since == now && NodeId::from_public_key(&e.public_key) != e.node_id {
                return Err(InvariantViolation::IdentityMismatch { conn: id });
            }
        }
        Ok(())
    }

    /// Checks every table's indexes entry by entry (O(n); tests and fuzzing): the known-peer
    /// table, content, the DHT, refusals and the request layer.
    pub fn check_tables(&self) -> Result<(), String> {
        self.state.discovery.known().check()?;
        self.state.content.check()?;
        self.state.dht.check()?;
        self.state.refusals.check()?;
        self.state.requests.check()
    }

    /// The status snapshot at `now`.
    pub fn status(&self, now: Time) -> NodeStatus {
        let mut peers: Vec<PeerStatus> = self
            .state
            .conns
            .established()
            .filter(|(_, c, _)| !c.transient)
            .map(|(_, c, e)| PeerStatus {
                node_id: e.node_id,
                address: e.listen_addr.unwrap_or(c.addr),
                direction: c.direction,
                connected_s: now.mono.ms_since(e.since) / 1000,
                bootstrap: c.bootstrap,
                found_by: self.state.discovery.known().get(&e.node_id).map(|k| k.found_by),
            })
            .collect();
        peers.sort_by_key(|p| p.node_id);
        let (content, sync) = self.state.content.status();
        NodeStatus {
            node_id: self.state.node_id,
            public_key: self.identity.public_key(),
            phase: self.state.phase,
            uptime_s: now.mono.ms_since(self.state.started.mono) / 1000,
            peer_count: peers.len() as u32,
            connections_handshaking: self.state.conns.iter().filter(|(_, c)| c.established().is_none()).count() as u32,
            blacklist: self.state.penalties.banned(now.mono),
            peers,
            known_peers: self.state.discovery.known().len() as u32,
            counters: self.state.counters.clone(),
            requests: self.state.requests.counters().clone(),
            content,
            sync,
            reconcile: self.state.reconcile.status(),
            states: self.state.states.status(self.state.reconcile.catalogue(), now.wall_ms),
            dht: self.state.dht.status(),
            lan: self.state.lan.status(),
            network: self.state.netstatus.reports(now.mono),
            broadcast: self.state.netstatus.stats().clone(),
            refusals: self.state.refusals.status(now.mono),
        }
    }

    /// BLAKE3 of the canonical encoding of the whole state (checkpoints, replay).
    pub fn state_hash(&self) -> [u8; 32] {
        let bytes = postcard::to_allocvec(&self.state).unwrap_or_default();
        *blake3::hash(&bytes).as_bytes()
    }

    /// The state as JSON, for `mynet replay --state`.
    pub fn state_json(&self) -> serde_json::Value {
        serde_json::to_value(&self.state)
            .unwrap_or_else(|e| serde_json::json!({ "error": format!("state not representable as JSON: {e}") }))
    }

    /// The whole node (state, RNG, output hash) as bytes, for a snapshot. Call with the output
    /// queue drained, as drivers always leave it between inputs.
    pub fn snapshot(&self) -> Vec<u8> {
        assert!(self.out.outputs.is_empty(), "snapshot taken with undrained outputs");
        let snapshot = SnapshotRef {
            format: SNAPSHOT_FORMAT,
            state: &self.state,
            output_chain: self.output_chain,
            output_pending: &self.output_pending,
            outputs_total: self.outputs_total,
        };
        postcard::to_allocvec(&snapshot).unwrap_or_default()
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
            out: Outbox::default(),
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
                self.out.outputs.push_back(Output::Close { conn });
            }
            return;
        }
        match input {
            Input::Incoming { conn, addr } => {
                // A driver reusing a live id is a driver bug; never let it clobber a connection.
                if !self.state.conns.contains(conn) && !self.state.refusals.is_refusing(conn) {
                    self.handle_incoming(conn, addr);
                }
            }
            Input::Secured { conn, binding } => match self.state.refusals.take(conn) {
                Some(refusing) => self.explain_refusal(conn, binding, refusing),
                None => handshake::handle_secured(&mut cx!(self), &self.identity, conn, binding),
            },
            Input::Received { conn, bytes } => self.handle_received(conn, &bytes),
            Input::Closed { conn, reason } => match self.state.refusals.take(conn) {
                Some(refusing) => self.refusing_closed(conn, refusing, reason),
                None => self.remove_conn(conn, CloseReason::Transport(reason), false),
            },
            Input::Tick => self.handle_tick(),
            Input::Restart { config, rng_seed } => self.handle_restart(*config, rng_seed),
            Input::Shutdown => self.handle_shutdown(),
            Input::Piece { conn, request, header, hash, data } => self.handle_piece(conn, request, header, hash, data),
            Input::Stored { pieces } => self.state.content.stored(&mut cx!(self), &pieces),
            Input::StoreFailed { pieces, error } => self.state.content.store_failed(&mut cx!(self), &pieces, &error),
            Input::Added { id, size } => {
                self.state.content.added(&mut cx!(self), id, size);
                self.run_deferred();
                self.state.reconcile.publish(&mut cx!(self), &self.identity, id, size);
            }
            Input::Describe { id, size, tags } => {
                self.state.reconcile.describe(&mut cx!(self), &self.identity, id, size, tags)
            }
            Input::Edit(edit) => self.state.reconcile.edit(&mut cx!(self), &self.identity, edit),
            Input::KeyEdit(edit) => self.state.reconcile.key_edit(&mut cx!(self), &self.identity, edit),
            Input::RelationChecked { parent, child, ok } => self.relation_checked(parent, child, ok),
            Input::Want { id } => self.state.content.want(&mut cx!(self), id),
            Input::Remove { id } => {
                self.state.dht.unprovide(&id.0);
                self.state.content.remove(&mut cx!(self), id)
            }
            Input::Damaged { piece } => self.state.content.damaged(&mut cx!(self), piece),
            Input::Lookup { target } => self.state.dht.find_node(&mut cx!(self), target),
            Input::LanHeard { from, bytes } => self.state.lan.heard(&mut cx!(self), from, &bytes),
            Input::Configure { config } => self.configure(*config),
        }
        self.run_deferred();
    }

    // ---- the doors out ----

    /// The next thing to do, until `None`.
    pub fn poll_output(&mut self) -> Option<Output> {
        let output = self.out.outputs.pop_front()?;
        let pending = std::mem::take(&mut self.output_pending);
        // Encoding into a Vec cannot fail for these types; an empty hash input would show in
        // replay as a divergence rather than a panic.
        self.output_pending = postcard::to_extend(&output, pending).unwrap_or_default();
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
        let s = &self.state;
        [
            s.conns.next_handshake_deadline().map(|(at, conn)| (at, TimerKind::Handshake(conn))),
            s.refusals.next_deadline().map(|(at, conn)| (at, TimerKind::Refusal(conn))),
            s.requests.poll_timeout().map(|(at, conn)| (at, TimerKind::Request(conn))),
            s.bootstrap.poll_timeout().map(|at| (at, TimerKind::BootstrapRetry)),
            s.discovery.poll_timeout().map(|at| (at, TimerKind::Discovery)),
            s.content.poll_timeout().map(|at| (at, TimerKind::Content)),
            s.reconcile.poll_timeout().map(|at| (at, TimerKind::Reconcile)),
            s.dht.poll_timeout().map(|at| (at, TimerKind::Dht)),
            s.lan.poll_timeout().map(|at| (at, TimerKind::Lan)),
            s.netstatus.poll_timeout().map(|at| (at, TimerKind::Status)),
        ]
        .into_iter()
        .flatten()
        .min_by_key(|(at, _)| *at)
    }

    // ---- input handlers ----

    fn handle_received(&mut self, conn_id: ConnId, bytes: &[u8]) {
        let Some(conn) = self.state.conns.get_mut(conn_id) else { return };
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
                Ok(message) => {
                    *self.state.counters.messages_in.entry(message.kind()).or_default() += 1;
                    self.handle_message(conn_id, message)
                }
                Err(err) => bad_frame = Some(err),
            }
            self.run_deferred();
            bad_frame.is_none() && self.state.conns.contains(conn_id)
        });
        if let Some(err) = bad_frame.or(drained.err()) {
            return self.misbehaved(conn_id, CloseReason::Wire(err));
        }
        if let Some(conn) = self.state.conns.get_mut(conn_id) {
            conn.frames = buffer;
        }
    }

    fn handle_tick(&mut self) {
        let now = self.state.now.mono;
        for conn in self.state.conns.handshakes_expired(now) {
            self.close(conn, CloseReason::HandshakeTimeout);
        }
        self.refusals_expired(now);
        for expiry in self.state.requests.expire(now) {
            match expiry {
                Expiry::TimedOut { conn, request } => {
                    cx!(self).event(Event::RequestTimedOut { conn, id: request.id, kind: request.kind });
                    self.route_failure(conn, &request);
                }
                Expiry::Unresponsive { conn } => self.close(conn, CloseReason::Unresponsive),
            }
            self.run_deferred();
        }
        self.state.bootstrap.handle_timeout(&mut cx!(self));
        self.run_deferred();
        self.state.discovery.handle_timeout(&mut cx!(self));
        self.run_deferred();
        self.state.content.handle_timeout(&mut cx!(self));
        self.run_deferred();
        self.state.reconcile.handle_timeout(&mut cx!(self));
        self.run_deferred();
        self.state.dht.handle_timeout(&mut cx!(self));
        self.run_deferred();
        self.state.lan.handle_timeout(&mut cx!(self), &self.identity);
        self.run_deferred();
        let figures = self.report_figures();
        self.state.netstatus.handle_timeout(&mut cx!(self), &self.identity, || figures);
    }

    /// What our status report says of us.
    fn report_figures(&self) -> crate::netstatus::Figures {
        let (content, _) = self.state.content.status();
        crate::netstatus::Figures {
            uptime_s: self.state.now.mono.ms_since(self.state.started.mono) / 1000,
            peers: self.state.conns.established().filter(|(_, c, _)| !c.transient).count() as u32,
            items: content.items,
            bytes_stored: content.bytes_stored,
            catalogue_items: self.state.reconcile.catalogue().len() as u64,
        }
    }

    fn handle_piece(&mut self, conn: ConnId, request: RequestId, header: PieceHeader, hash: [u8; 32], data: PieceData) {
        let Some(peer) = self.state.conns.get(conn).and_then(|c| c.established()).map(|e| e.node_id) else { return };
        let len = header.piece_len().unwrap_or(0);
        self.state.counters.bytes_in += len;
        self.state.requests.heard(conn, self.state.now.mono);
        match self.state.requests.answer(conn, request, crate::wire::Kind::Piece) {
            Answer::Expected(pending) => {
                self.state.content.on_piece(&mut cx!(self), conn, peer, &pending, header, hash, data)
            }
            late @ (Answer::Late(_) | Answer::Cancelled) => {
                cx!(self).event(Event::LateAnswer { conn, id: request, kind: crate::wire::Kind::Piece });
                let sent = if let Answer::Late(pending) = &late { Some(pending.sent) } else { None };
                self.state.content.on_late_piece(&mut cx!(self), conn, request, sent, header, hash, data);
            }
            Answer::UnknownId => {
                let violation = Violation::UnknownRequestId { id: request, kind: crate::wire::Kind::Piece };
                self.misbehaved(conn, CloseReason::Protocol(violation))
            }
            Answer::WrongKind { expected } => {
                let violation = Violation::WrongAnswerKind { id: request, expected, got: crate::wire::Kind::Piece };
                self.misbehaved(conn, CloseReason::Protocol(violation))
            }
        }
    }

    fn handle_restart(&mut self, config: Config, rng_seed: u64) {
        for id in self.state.conns.ids() {
            // The transport died with the old process: forget, do not emit Close.
            self.remove_conn(id, CloseReason::Restarted, false);
        }
        self.state.refusals.on_restart();
        self.state.config = config;
        self.state.rng = ChaCha8Rng::seed_from_u64(rng_seed);
        self.state.counters.restarts += 1;
        self.state.discovery.on_restart(&cx!(self));
        self.state.content.on_restart();
        self.state.reconcile.on_restart();
        self.state.dht.on_restart();
        self.state.netstatus.on_restart();
        let now = self.state.now;
        self.start(now);
    }

    /// A live configuration change: the live fields are taken (validated as a whole first),
    /// the rest kept until a restart, and each module reacts to what changed.
    fn configure(&mut self, new: Config) {
        let next = self.state.config.with_live_fields_of(&new);
        if let Err(err) = next.validate(&crate::config::Sources::new()) {
            cx!(self).event(Event::ConfigRefused { reason: err.message_for_operator() });
            return;
        }
        let changed = self.state.config.live_changes(&next);
        if changed.is_empty() {
            return;
        }
        self.state.config = next;
        cx!(self).event(Event::ConfigChanged { fields: changed.iter().map(|f| (*f).to_string()).collect() });
        // Limits that shrank: the connections past them close, newest first.
        for (id, reason) in self.state.conns.over_limits(&self.state.config) {
            self.close(id, reason);
        }
        self.state.discovery.on_config(&mut cx!(self));
        self.state.content.on_config(&mut cx!(self));
        self.state.reconcile.on_config(&cx!(self));
        self.run_deferred();
    }

    fn handle_shutdown(&mut self) {
        for id in self.state.conns.ids() {
            self.close(id, CloseReason::Shutdown);
        }
        self.stop_refusing(CloseReason::Shutdown);
        self.state.bootstrap.on_shutdown();
        self.state.discovery.on_shutdown();
        self.state.content.on_shutdown();
        self.state.reconcile.on_shutdown();
        self.state.dht.on_shutdown();
        self.state.lan.on_shutdown();
        self.state.netstatus.on_shutdown();
    }

    // ---- start-up ----

    fn start(&mut self, now: Time) {
        self.state.started = now;
        self.set_phase(Phase::Bootstrap);
        self.state.lan.start(&mut cx!(self), &self.identity);
        self.state.bootstrap.start(&mut cx!(self));
        self.run_deferred();
    }

    fn startup_step(&mut self, step: Startup) {
        match step {
            Startup::BootstrapDone if self.state.phase == Phase::Bootstrap => {
                self.set_phase(Phase::PeerDiscovery);
                self.state.discovery.enter_startup_phase(&mut cx!(self));
                self.run_deferred();
                self.state.dht.start(&mut cx!(self));
            }
            Startup::DiscoveryDone if self.state.phase == Phase::PeerDiscovery => {
                self.set_phase(Phase::InitialSync);
                if !self.state.reconcile.busy() {
                    self.state.content.catalogue_settled();
                }
                self.state.content.enter_initial_sync(&mut cx!(self));
            }
            Startup::InitialSyncDone if self.state.phase == Phase::InitialSync => {
                self.set_phase(Phase::BackgroundServices);
                self.state.netstatus.start(&cx!(self));
                self.set_phase(Phase::Ready);
                let peers = self.state.conns.established().count() as u32;
                cx!(self).event(Event::Initialized { peers });
            }
            Startup::Failed(phase, reason) if self.state.phase != Phase::Failed => {
                cx!(self).event(Event::StartupFailed { phase, reason });
                self.set_phase(Phase::Failed);
                for id in self.state.conns.ids() {
                    self.close(id, CloseReason::Shutdown);
                }
                self.stop_refusing(CloseReason::Shutdown);
            }
            _ => {}
        }
    }

    fn set_phase(&mut self, phase: Phase) {
        self.state.phase = phase;
        cx!(self).event(Event::PhaseEntered { phase });
    }
}
