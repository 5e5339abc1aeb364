//! What the simulator judges: safety violations (checked after every step) and liveness
//! failures (checked once faults have healed), as values a test can match.

use std::fmt;

use mynet_core::{ConnId, InvariantViolation, Phase};

/// A safety invariant broken at one step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Violation {
    /// The node's own invariants (limits, identities, table indexes).
    Node(InvariantViolation),
    /// A non-handshake frame was sent on a connection before its handshake completed.
    TrafficBeforeHandshake { conn: ConnId, what: &'static str },
    /// The node's event log failed.
    Storage(String),
    /// A crashed node could not be reopened from its log.
    RestartFailed(String),
    /// A restarted node's state differs from what its durable log implies.
    LogDisagrees(String),
    /// A node stored (or counts as held) a piece that was not verified or is not durable.
    UnverifiedPiece(String),
    /// Key bytes in a frame or a log record (keys stay in the registry).
    KeyMaterial(String),
    /// A routing table holds an unverified identity or an address that is not the node's.
    RoutingTable(String),
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Violation::Node(v) => write!(f, "{v}"),
            Violation::TrafficBeforeHandshake { conn, what } => {
                write!(f, "sent {what} on {conn} before its handshake completed")
            }
            Violation::Storage(e) => write!(f, "storage: {e}"),
            Violation::RestartFailed(e) => write!(f, "restart failed: {e}"),
            Violation::LogDisagrees(e) => write!(f, "restarted node disagrees with its durable log: {e}"),
            Violation::UnverifiedPiece(e) => write!(f, "unverified or non-durable piece: {e}"),
            Violation::KeyMaterial(e) => write!(f, "key bytes found in {e}"),
            Violation::RoutingTable(e) => write!(f, "routing table: {e}"),
        }
    }
}

/// Why the network did not converge after faults healed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LivenessFailure {
    NotRunning {
        node: usize,
    },
    NotReady {
        node: usize,
        phase: Phase,
    },
    TooFewPeers {
        node: usize,
        peers: usize,
        honest: usize,
        target: usize,
        /// How long it has been short of the target, seconds.
        short_s: u64,
    },
    /// The honest nodes' peer graph is not connected.
    Disconnected,
    /// A replicating node does not hold an item that was added.
    ContentMissing {
        node: usize,
        item: String,
        held: u64,
        pieces: u64,
    },
    /// Replicas do not hold the same catalogue, or agree on a version the conflict rule
    /// does not pick.
    MetadataDiverged {
        node: usize,
        detail: String,
    },
    /// Replicas report different members or flags for a group.
    GroupsDiffer {
        node: usize,
        detail: String,
    },
    /// A lookup from `node` did not find a running honest node (no node was dead).
    LookupFailed {
        node: usize,
        target: String,
    },
    /// An operator's `get` at `node` of an item no peer of it held was never served (the DHT's
    /// provider records should have led it to a holder).
    WantNotServed {
        node: usize,
        item: String,
    },
}

impl fmt::Display for LivenessFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LivenessFailure::NotRunning { node } => write!(f, "node {node} is not running"),
            LivenessFailure::NotReady { node, phase } => write!(f, "node {node} is in phase {phase}"),
            LivenessFailure::TooFewPeers { node, peers, honest, target, short_s } => {
                write!(f, "node {node} has {peers} peers ({honest} honest), target {target}, for {short_s} s")
            }
            LivenessFailure::Disconnected => f.write_str("the honest nodes' peer graph is not connected"),
            LivenessFailure::ContentMissing { node, item, held, pieces } => {
                write!(f, "node {node} holds {held} of {pieces} pieces of item {item}")
            }
            LivenessFailure::MetadataDiverged { node, detail } => write!(f, "node {node}: metadata diverged: {detail}"),
            LivenessFailure::GroupsDiffer { node, detail } => write!(f, "node {node}: groups differ: {detail}"),
            LivenessFailure::LookupFailed { node, target } => write!(f, "node {node}: lookup of {target} failed"),
            LivenessFailure::WantNotServed { node, item } => {
                write!(f, "node {node}: wanted item {item}, held only by nodes it was not connected to, never arrived")
            }
        }
    }
}
