//! The node's public types: its inputs, timers, what modules hear of a closed connection, the
//! safety invariants it checks, and its status.

use super::*;

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
    /// The transport of `conn` failed or the peer closed it (or the dial failed); the text is
    /// the driver's description.
    Closed { conn: ConnId, reason: String },
    /// A deadline from `poll_timeout` passed.
    Tick,
    /// The process restarted: every connection is gone; new seed, possibly new config.
    Restart { config: Box<Config>, rng_seed: u64 },
    /// Orderly shutdown: close every connection.
    Shutdown,
    /// A piece the peer on `conn` sent in answer to our request `request`, split out of the
    /// stream by the driver, which computed `hash` over its bytes (`content::stream`). The
    /// bytes ride along for the store but are never logged.
    Piece { conn: ConnId, request: RequestId, header: PieceHeader, hash: [u8; 32], data: PieceData },
    /// Pieces from `Output::StorePiece` are durable.
    Stored { pieces: Vec<PieceRef> },
    /// Storing pieces failed; the text is the store's error (a full disk, an I/O error).
    StoreFailed { pieces: Vec<PieceRef>, error: String },
    /// The operator imported an item into the store (`mynet add`); all of it is durable.
    Added { id: ContentId, size: u64 },
    /// The operator wants an item (`mynet get`).
    Want { id: ContentId },
    /// The operator dropped an item (`mynet rm`).
    Remove { id: ContentId },
    /// A publisher's edit: a new version of the item's metadata with these tags, signed by
    /// this node (`size` is used when the catalogue does not know the item yet).
    Describe { id: ContentId, size: u64, tags: Vec<String> },
    /// A held piece read back damaged (serving, `mynet verify`); the store dropped it.
    Damaged { piece: PieceRef },
    /// A publisher's description of an item's state, key and group (`mynet add` with
    /// `--encrypt`, `--tag`, `--group`): signed by this node.
    Edit(crate::states::ItemEdit),
    /// A key record to publish (`mynet key add`, `mynet key rm --revoke`); never the key.
    KeyEdit(crate::states::KeyEdit),
    /// The runtime decrypted `parent` (key from the registry) and compared it with `child`.
    RelationChecked { parent: ContentId, child: ContentId, ok: bool },
    /// Look `target` up in the DHT (`Event::LookupDone` tells how it went).
    Lookup { target: NodeId },
    /// The operator changed the configuration (`mynet config set`): the node takes the live
    /// fields (`config::LIVE_FIELDS`) and its modules react; the others wait for a restart.
    Configure { config: Box<Config> },
    /// A datagram heard on a LAN discovery group, from `from` (`lan`).
    LanHeard {
        from: SocketAddr,
        #[serde(with = "crate::id::byte_vec")]
        bytes: Vec<u8>,
    },
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
            Input::Piece { .. } => "piece",
            Input::Stored { .. } => "stored",
            Input::StoreFailed { .. } => "store_failed",
            Input::Added { .. } => "added",
            Input::Want { .. } => "want",
            Input::Remove { .. } => "remove",
            Input::Describe { .. } => "describe",
            Input::Damaged { .. } => "damaged",
            Input::Edit(_) => "edit",
            Input::KeyEdit(_) => "key_edit",
            Input::RelationChecked { .. } => "relation_checked",
            Input::Lookup { .. } => "lookup",
            Input::LanHeard { .. } => "lan_heard",
            Input::Configure { .. } => "configure",
        }
    }
}

/// Why the node wants a `Tick`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TimerKind {
    Handshake(ConnId),
    /// A connection being refused did not get its secure channel up in time.
    Refusal(ConnId),
    Request(ConnId),
    BootstrapRetry,
    Discovery,
    Content,
    Reconcile,
    Dht,
    Lan,
    Status,
}

/// A connection that just ended, as every module hears of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Closed {
    /// The connection.
    pub conn: ConnId,
    /// Its remote address.
    pub addr: SocketAddr,
    /// The peer it proved, or the one we dialled.
    pub peer: Option<NodeId>,
    /// The identity we dialled, if any.
    pub expect: Option<NodeId>,
    /// Whether its handshake had completed.
    pub established: bool,
    /// Whether it was a bootstrap link.
    pub bootstrap: bool,
    /// Why it ended.
    pub reason: CloseReason,
}

/// A broken safety invariant (the simulator checks them after every step).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InvariantViolation {
    #[error("connection limits exceeded: {inbound} in / {outbound} out")]
    ConnectionLimits { inbound: u32, outbound: u32 },
    #[error("{count} connections to {ip}, limit {max}")]
    PerIpLimit { ip: IpAddr, count: u32, max: u32 },
    #[error("{conn} is a connection to {peer}, which is blacklisted")]
    BannedPeer { conn: ConnId, peer: NodeId },
    #[error("{conn} is a connection to ourselves")]
    SelfConnection { conn: ConnId },
    #[error("{conn} holds an identity whose id does not match its key")]
    IdentityMismatch { conn: ConnId },
    #[error("{what} index out of step with its table")]
    IndexOutOfStep { what: &'static str },
}

/// A peer as shown in status.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerStatus {
    pub node_id: NodeId,
    pub address: SocketAddr,
    pub direction: Direction,
    pub connected_s: u64,
    pub bootstrap: bool,
    /// How we first heard of it (bootstrap, exchange, dht, lan, inbound).
    #[serde(default)]
    pub found_by: Option<crate::peers::Found>,
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
    /// Blacklisted peers and addresses, with the time left.
    #[serde(default)]
    pub blacklist: Vec<crate::penalties::Banned>,
    pub counters: Counters,
    pub requests: RequestCounters,
    pub content: ContentStatus,
    pub sync: SyncStatus,
    pub reconcile: crate::reconcile::ReconcileStatus,
    /// Items by state and by integrity flag (SPEC R9).
    pub states: crate::states::StatesStatus,
    /// The DHT: routing table, lookups, provider records.
    #[serde(default)]
    pub dht: crate::dht::DhtStatus,
    /// LAN discovery: announcements sent, heard, accepted, refused.
    #[serde(default)]
    pub lan: crate::lan::LanStatus,
    /// The status broadcast: what peers reported, and the module's counters.
    #[serde(default)]
    pub network: Vec<crate::netstatus::ReportStatus>,
    #[serde(default)]
    pub broadcast: crate::netstatus::NetStatusStats,
    /// Connections being refused now, and nodes that refused us whose retry hint runs.
    #[serde(default)]
    pub refusals: crate::refusal::RefusalStatus,
}
