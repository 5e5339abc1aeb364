//! What the node reports: events, phases, and the reasons connections and start-up end.
//!
//! Every reason a test or a driver compares is an enum; strings appear only where they carry
//! text from outside the core (a transport error, a decoder's message).

use core::net::{IpAddr, SocketAddr};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::content::{ContentId, TransferFailure};
use crate::handshake::HandshakeError;
use crate::id::{ConnId, NodeId};
use crate::penalties::Offender;
use crate::refusal::{RefusalReason, RetryHint};
use crate::request::RequestId;
use crate::wire::{Kind, WireError};

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

    /// Whether start-up got past bootstrap (the node may look for and dial peers).
    pub fn past_bootstrap(self) -> bool {
        matches!(self, Phase::PeerDiscovery | Phase::InitialSync | Phase::BackgroundServices | Phase::Ready)
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why start-up failed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StartupFailure {
    /// SPEC R4.2: every bootstrap round ended without one connection.
    NoBootstrapReachable,
    /// Bootstrap ended without one connection, and these bootstrap nodes refused us (their last
    /// word); `others` more could not be reached at all.
    BootstrapRefused { refused: Vec<BootstrapRefusal>, others: u32 },
}

/// A bootstrap node that refused us during start-up, and what it said.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootstrapRefusal {
    pub node_id: NodeId,
    pub addr: SocketAddr,
    pub reason: RefusalReason,
    pub retry_after_ms: u32,
}

/// Refusals named in a start-up failure at most; the rest are counted.
pub const REFUSALS_NAMED_MAX: usize = 4;

impl fmt::Display for StartupFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartupFailure::NoBootstrapReachable => f.write_str("failed to connect to any bootstrap node"),
            StartupFailure::BootstrapRefused { refused, others } => {
                f.write_str("failed to connect to any bootstrap node: ")?;
                for (i, r) in refused.iter().take(REFUSALS_NAMED_MAX).enumerate() {
                    let sep = if i == 0 { "" } else { "; " };
                    write!(
                        f,
                        "{sep}bootstrap node {} at {} refused: {} ({})",
                        r.node_id,
                        r.addr,
                        r.reason,
                        RetryHint(r.retry_after_ms)
                    )?;
                }
                let unnamed = refused.len().saturating_sub(REFUSALS_NAMED_MAX);
                if unnamed > 0 {
                    write!(f, "; {unnamed} more refused")?;
                }
                if *others > 0 {
                    write!(f, "; {others} more not reachable")?;
                }
                Ok(())
            }
        }
    }
}

/// A peer broke the protocol after its handshake.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Violation {
    /// An answer whose request id we never used or already settled.
    UnknownRequestId { id: RequestId, kind: Kind },
    /// An answer of another kind than the request it names expects.
    WrongAnswerKind { id: RequestId, expected: Kind, got: Kind },
    /// More requests of one protocol than its per-peer rate allows.
    RequestFlood { kind: Kind },
    /// A request made on behalf of another node id than the one proven on the connection.
    ForeignNodeId { kind: Kind },
    /// A second handshake message on an established connection.
    SecondHandshake,
    /// A piece that does not match its verified chaining value (or its request).
    BadPiece { index: u64 },
    /// Item metadata that does not verify against the content id.
    BadMetadata,
    /// Signed item metadata that is malformed or whose signature does not verify.
    ItemMeta(crate::reconcile::meta::Invalid),
    /// A reconciliation answer that breaks the protocol.
    Reconcile(String),
    /// A status report whose signature does not verify against the peer's key.
    BadStatusReport,
    /// A refusal on a connection whose handshake had completed (refusals replace the
    /// handshake answer).
    RefusalAfterHandshake,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Violation::UnknownRequestId { id, kind } => write!(f, "unsolicited {kind} answer (request id {id})"),
            Violation::WrongAnswerKind { id, expected, got } => {
                write!(f, "{got} answer to request {id}, which expects {expected}")
            }
            Violation::RequestFlood { kind } => write!(f, "request flood ({kind})"),
            Violation::ForeignNodeId { kind } => write!(f, "{kind} for another node id"),
            Violation::SecondHandshake => f.write_str("second handshake"),
            Violation::BadPiece { index } => write!(f, "piece {index} failed verification"),
            Violation::BadMetadata => f.write_str("item metadata failed verification"),
            Violation::ItemMeta(invalid) => write!(f, "signed item metadata refused: {}", invalid.as_str()),
            Violation::Reconcile(what) => write!(f, "reconciliation: {what}"),
            Violation::BadStatusReport => f.write_str("status report with a bad signature"),
            Violation::RefusalAfterHandshake => f.write_str("refusal after the handshake completed"),
        }
    }
}

/// Why the node ended a connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CloseReason {
    HandshakeTimeout,
    Handshake(HandshakeError),
    Wire(WireError),
    /// A message other than the handshake arrived before the handshake completed.
    BeforeHandshake(Kind),
    Protocol(Violation),
    UnexpectedIdentity {
        expected: NodeId,
        got: NodeId,
    },
    Duplicate,
    /// The peer left a request unanswered past its deadline and the grace after it.
    Unresponsive,
    InboundLimit {
        max: u32,
    },
    OutboundLimit {
        max: u32,
    },
    PerIpLimit {
        ip: IpAddr,
        max: u32,
    },
    Banned,
    BootstrapReleased,
    /// A transient (DHT) connection or dial its lookups no longer need.
    NoLongerNeeded,
    Shutdown,
    Restarted,
    /// The driver reported the transport gone; the text is the driver's.
    Transport(String),
    /// The peer refused us and said why (a signed refusal, see `refusal`).
    RefusedByPeer {
        reason: RefusalReason,
        retry_after_ms: u32,
    },
    /// Not dialled: the peer refused us earlier and its retry hint has `ms_left` to run.
    AskedToWait {
        ms_left: u64,
    },
}

impl CloseReason {
    /// Whether the process itself is ending (restart, shutdown): a closed connection is then
    /// not news, and modules neither retry nor judge the peer.
    pub fn process_ending(&self) -> bool {
        matches!(self, CloseReason::Restarted | CloseReason::Shutdown)
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseReason::HandshakeTimeout => f.write_str("handshake not completed in time"),
            CloseReason::Handshake(err) => write!(f, "handshake refused: {err}"),
            CloseReason::Wire(err) => write!(f, "bad frame: {err}"),
            CloseReason::BeforeHandshake(kind) => write!(f, "{kind} message sent before the handshake completed"),
            CloseReason::Protocol(violation) => write!(f, "protocol violation: {violation}"),
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
            CloseReason::NoLongerNeeded => f.write_str("DHT contact no longer needed"),
            CloseReason::Shutdown => f.write_str("node shutting down"),
            CloseReason::Restarted => f.write_str("node restarted"),
            CloseReason::Transport(why) => write!(f, "transport: {why}"),
            CloseReason::RefusedByPeer { reason, retry_after_ms } => {
                write!(f, "refused by the peer: {reason} ({})", RetryHint(*retry_after_ms))
            }
            CloseReason::AskedToWait { ms_left } => {
                write!(f, "the peer refused us and asked us to wait {} s more", ms_left.div_ceil(1000))
            }
        }
    }
}

/// Notable things that happened, for logs, status and tests.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    PhaseEntered {
        phase: Phase,
    },
    FirstNode,
    BootstrapConnected {
        node_id: NodeId,
        addr: SocketAddr,
    },
    BootstrapFailed {
        node_id: NodeId,
        addr: SocketAddr,
        reason: CloseReason,
    },
    BootstrapRetry {
        round: u32,
        of: u32,
    },
    StartupFailed {
        phase: Phase,
        reason: StartupFailure,
    },
    PeerConnected {
        conn: ConnId,
        node_id: NodeId,
        addr: SocketAddr,
        direction: Direction,
    },
    ConnectionClosed {
        conn: ConnId,
        addr: SocketAddr,
        peer: Option<NodeId>,
        reason: CloseReason,
        by_us: bool,
    },
    NetworkInfoReceived {
        from: NodeId,
        peers: u32,
        stats: crate::discovery::NetworkStats,
        popular_content: u32,
    },
    PeersLearned {
        from: NodeId,
        received: u32,
        new: u32,
    },
    Penalised {
        offender: Offender,
        points: u32,
        score: u32,
        banned: bool,
    },
    /// A request we sent passed its deadline; a later answer is dropped and counted.
    RequestTimedOut {
        conn: ConnId,
        id: RequestId,
        kind: Kind,
    },
    /// An answer arrived after its request's deadline and was dropped.
    LateAnswer {
        conn: ConnId,
        id: RequestId,
        kind: Kind,
    },
    /// A message we meant to send could not be encoded within the frame limit; it was not sent.
    SendRefused {
        conn: ConnId,
        kind: Kind,
        error: WireError,
    },
    Initialized {
        peers: u32,
    },
    /// A DHT lookup ended. `hops`: for a node lookup, the hop of the answer that named the
    /// target (0: it was in our table); `ms` until the target answered (or the end).
    LookupDone {
        target: [u8; 32],
        purpose: crate::dht::lookup::Purpose,
        found: bool,
        hops: u32,
        ms: u64,
        queried: u32,
        failed: u32,
    },
    /// The operator changed live configuration fields (`mynet config set`).
    ConfigChanged {
        fields: Vec<String>,
    },
    /// A configuration change was refused; the node runs on the old one.
    ConfigRefused {
        reason: String,
    },
    /// A LAN announcement named a node we had not heard on the LAN before.
    LanPeer {
        node: NodeId,
        addr: SocketAddr,
    },
    /// An item was imported on this node.
    ItemAdded {
        id: ContentId,
        size: u64,
    },
    ItemRemoved {
        id: ContentId,
    },
    TransferStarted {
        id: ContentId,
        sources: u32,
    },
    /// Every piece of a fetched item is durable.
    ItemComplete {
        id: ContentId,
        size: u64,
        sources: u32,
        ms: u64,
    },
    TransferFailed {
        id: ContentId,
        reason: TransferFailure,
    },
    /// A peer sent a piece that failed verification (it is banned; the piece is fetched
    /// elsewhere).
    BadPiece {
        conn: ConnId,
        peer: NodeId,
        id: ContentId,
        index: u64,
    },
    /// A held piece read back damaged from disk: dropped and fetched again.
    PieceDamaged {
        id: ContentId,
        index: u64,
    },
    StoreFailed {
        id: ContentId,
        error: String,
    },
    /// Item metadata refused (from a peer, or our own edit when malformed).
    MetaRefused {
        conn: Option<ConnId>,
        reason: crate::reconcile::meta::Invalid,
    },
    /// An item added here was not published: the network's `publishers` does not name us.
    NotPublisher {
        id: ContentId,
    },
    /// An operator's edit of an item's state or group was refused.
    EditRefused {
        id: ContentId,
        reason: String,
    },
    /// A decrypt check of a group's encrypted original against its decrypted form failed:
    /// the relation is flagged and the form's publisher penalised.
    RelationMismatch {
        parent: ContentId,
        child: ContentId,
    },
    /// Start-up phase 7 is over.
    InitialSyncDone {
        synced: u64,
        pending: u64,
    },
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
                "network info from {from}: {peers} active {}, {} connected / {} known there, {popular_content} popular {}",
                plural(*peers, "peer", "peers"),
                stats.connected_peers,
                stats.known_peers,
                plural(*popular_content, "item", "items"),
            ),
            Event::PeersLearned { from, received, new } => {
                write!(f, "discovery: {received} {} from {from}, {new} new", plural(*received, "peer", "peers"))
            }
            Event::Penalised { offender, points, score, banned } => {
                write!(
                    f,
                    "penalised {offender:?} by {points} (score {score}){}",
                    if *banned { ", blacklisted" } else { "" }
                )
            }
            Event::RequestTimedOut { conn, id, kind } => write!(f, "{kind} request {id} on {conn} timed out"),
            Event::LateAnswer { conn, id, kind } => write!(f, "late {kind} answer to request {id} on {conn} dropped"),
            Event::SendRefused { conn, kind, error } => write!(f, "{kind} message to {conn} not sent: {error}"),
            Event::LookupDone { target, purpose, found, hops, ms, queried, failed } => write!(
                f,
                "DHT {purpose:?} lookup of {}: {} after {ms} ms, {hops} hops, {queried} asked, {failed} failed",
                crate::hex::encode(&target[..4]),
                if *found { "found" } else { "not found" }
            ),
            Event::LanPeer { node, addr } => write!(f, "LAN announcement from {} at {addr}", node.short()),
            Event::ConfigChanged { fields } => write!(f, "configuration changed: {}", fields.join(", ")),
            Event::ConfigRefused { reason } => write!(f, "configuration change refused: {reason}"),
            Event::Initialized { peers } => write!(f, "node initialized ({peers} {})", plural(*peers, "peer", "peers")),
            Event::ItemAdded { id, size } => write!(f, "item {id} added ({size} bytes)"),
            Event::ItemRemoved { id } => write!(f, "item {id} removed"),
            Event::TransferStarted { id, sources } => {
                write!(f, "fetching {id} from {sources} {}", plural(*sources, "peer", "peers"))
            }
            Event::ItemComplete { id, size, sources, ms } => write!(
                f,
                "item {id} complete ({size} bytes from {sources} {} in {ms} ms)",
                plural(*sources, "peer", "peers")
            ),
            Event::TransferFailed { id, reason } => write!(f, "fetching {id} failed: {reason}"),
            Event::BadPiece { conn, peer, id, index } => {
                write!(f, "bad piece {index} of {id} from {peer} on {conn}: banned")
            }
            Event::PieceDamaged { id, index } => write!(f, "piece {index} of {id} damaged on disk: dropped"),
            Event::StoreFailed { id, error } => write!(f, "storing {id} failed: {error}"),
            Event::MetaRefused { conn: Some(conn), reason } => {
                write!(f, "item metadata from {conn} refused: {}", reason.as_str())
            }
            Event::MetaRefused { conn: None, reason } => write!(f, "item metadata refused: {}", reason.as_str()),
            Event::EditRefused { id, reason } => write!(f, "edit of {id} refused: {reason}"),
            Event::RelationMismatch { parent, child } => {
                write!(f, "decrypting {parent} does not give its decrypted form {child}: flagged")
            }
            Event::NotPublisher { id } => {
                write!(f, "item {id} kept here but not published: this node is not in the network's publishers")
            }
            Event::InitialSyncDone { synced, pending } => {
                write!(f, "initial sync done ({synced} synced, {pending} still pending)")
            }
        }
    }
}

fn plural(n: u32, one: &'static str, many: &'static str) -> &'static str {
    if n == 1 { one } else { many }
}
