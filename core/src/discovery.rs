//! Peer exchange (SPEC R4.3, R5.1, R5.4, R5.5): asking peers for peers, answering them,
//! remembering what we heard (`KnownPeers`), and dialling towards `target_peers`.
//!
//! The module owns its wire messages ([`Request`], [`Response`]) and their decode bounds, its
//! timer (the periodic round), the known-peer table, and the initial discovery phase of
//! start-up. It is the template for every protocol module; see ARCHITECTURE.md.

use core::net::SocketAddr;
use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::context::{Cx, Deferred, Startup};
use crate::event::{CloseReason, Direction, Event, Phase, Violation};
use crate::handshake::Link;
use crate::id::{ConnId, NodeId, PublicKey};
use crate::node::Closed;
use crate::peers::{Found, KnownPeers, partial_shuffle};
use crate::penalties::{Offender, POINTS_HANDSHAKE};
use crate::request::{Origin, Pending, RequestId};
use crate::time::Mono;
use crate::wire::{self, Kind, RateLimit, WireError};

/// Most peers in one `Peers` or `NetworkInfo` answer (SPEC R5.1: `max_peers` 50).
pub const PEERS_PER_ANSWER_MAX: usize = 50;
/// Most ids in a `DiscoverPeers` exclude list.
pub const EXCLUDE_MAX: usize = 256;
/// Most content hashes in a popular-content list.
pub const POPULAR_CONTENT_MAX: usize = 100;
/// Discovery requests a peer may make of us: honest peers ask about twice per discovery
/// interval (60 s by default).
pub const RATE_LIMIT: RateLimit = RateLimit { max: 10, window_ms: 60_000 };
/// Discovery requests we keep in flight to one peer.
pub const IN_FLIGHT_MAX: usize = 2;
/// Peers asked per discovery round.
pub const FANOUT: usize = 2;

/// A peer as passed around by discovery.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerRecord {
    /// Its id.
    pub node_id: NodeId,
    /// Where it listens.
    pub address: SocketAddr,
    /// Its key; the dialer checks the handshake proves it.
    pub public_key: PublicKey,
}

/// Network statistics a bootstrap node shares (SPEC R4.3).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkStats {
    /// Peers the answering node is connected to.
    pub connected_peers: u32,
    /// Peers it knows of.
    pub known_peers: u32,
    /// Its uptime in seconds.
    pub uptime_s: u64,
}

/// The answer to [`Request::GetNetworkInfo`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkInfo {
    /// Active peers.
    pub peers: Vec<PeerRecord>,
    /// Statistics.
    pub stats: NetworkStats,
    /// The most requested items the answering node holds (SPEC R4.3).
    pub popular_content: Vec<[u8; 32]>,
}

/// Discovery's requests.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Ask for active peers, network statistics and popular content (SPEC R4.3).
    GetNetworkInfo,
    /// SPEC R5.1 `discover_peers(node_id, max_peers, exclude)`.
    DiscoverPeers {
        /// The requester; must be the identity proven on this connection.
        node_id: NodeId,
        /// How many peers the requester wants, at most [`PEERS_PER_ANSWER_MAX`].
        max_peers: u16,
        /// Ids the requester already has.
        exclude: Vec<NodeId>,
    },
}

/// Discovery's answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// The answer to [`Request::GetNetworkInfo`].
    NetworkInfo(NetworkInfo),
    /// The answer to [`Request::DiscoverPeers`].
    Peers(Vec<PeerRecord>),
}

impl Request {
    /// Its kind.
    pub fn kind(&self) -> Kind {
        match self {
            Request::GetNetworkInfo => Kind::GetNetworkInfo,
            Request::DiscoverPeers { .. } => Kind::DiscoverPeers,
        }
    }

    /// The kind of answer it expects.
    pub fn expects(&self) -> Kind {
        match self {
            Request::GetNetworkInfo => Kind::NetworkInfo,
            Request::DiscoverPeers { .. } => Kind::Peers,
        }
    }

    /// Decode bounds.
    pub fn check_bounds(&self) -> Result<(), WireError> {
        match self {
            Request::DiscoverPeers { exclude, .. } if exclude.len() > EXCLUDE_MAX => {
                Err(WireError::OutOfBounds(format!("exclude list of {}; at most {EXCLUDE_MAX}", exclude.len())))
            }
            _ => Ok(()),
        }
    }
}

impl Response {
    /// Its kind.
    pub fn kind(&self) -> Kind {
        match self {
            Response::NetworkInfo(_) => Kind::NetworkInfo,
            Response::Peers(_) => Kind::Peers,
        }
    }

    /// Decode bounds.
    pub fn check_bounds(&self) -> Result<(), WireError> {
        match self {
            Response::NetworkInfo(info)
                if info.peers.len() > PEERS_PER_ANSWER_MAX || info.popular_content.len() > POPULAR_CONTENT_MAX =>
            {
                Err(WireError::OutOfBounds(format!(
                    "network info with {} peers, {} content",
                    info.peers.len(),
                    info.popular_content.len()
                )))
            }
            Response::Peers(peers) if peers.len() > PEERS_PER_ANSWER_MAX => Err(WireError::OutOfBounds(format!(
                "{} peers in one answer; at most {PEERS_PER_ANSWER_MAX}",
                peers.len()
            ))),
            _ => Ok(()),
        }
    }
}

fn wrap(request: Request) -> wire::Request {
    wire::Request::Discovery(request)
}

/// The discovery module's state.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Discovery {
    known: KnownPeers,
    /// During the start-up discovery phase: connections whose answers we wait for.
    awaiting: BTreeSet<ConnId>,
    /// When the next periodic round runs (set once start-up is through).
    next_round: Option<Mono>,
    /// Whether this process already asked a bootstrap node for network info (SPEC R4.3 asks
    /// the first one that answers).
    info_requested: bool,
}

/// After a failed dial while short of peers, the next round is at most this far away.
pub const REFILL_AFTER_FAILED_DIAL_MS: u64 = 5_000;

impl Discovery {
    /// A module whose table holds at most `max_known_peers`.
    pub fn new(max_known_peers: usize) -> Discovery {
        Discovery { known: KnownPeers::new(max_known_peers), ..Discovery::default() }
    }

    /// The known-peer table.
    pub fn known(&self) -> &KnownPeers {
        &self.known
    }

    /// When the next round is due.
    pub fn poll_timeout(&self) -> Option<Mono> {
        self.next_round
    }

    /// Runs the periodic round if it is due.
    pub fn handle_timeout(&mut self, cx: &mut Cx<'_>) {
        if self.next_round.is_some_and(|at| at <= cx.now.mono) {
            self.next_round = Some(cx.now.mono.plus_ms(cx.config.discovery_interval_ms));
            self.round(cx);
        }
    }

    /// Start-up reached the discovery phase: wait for the answers to the requests sent as the
    /// bootstrap links came up.
    pub fn enter_startup_phase(&mut self, cx: &mut Cx<'_>) {
        self.awaiting = cx
            .conns
            .established()
            .filter(|(id, c, _)| {
                c.direction == Direction::Outbound && cx.requests.live_on(*id, wire::Protocol::Discovery) > 0
            })
            .map(|(id, _, _)| id)
            .collect();
        if self.awaiting.is_empty() {
            self.finish_startup_phase(cx);
        }
    }

    fn finish_startup_phase(&mut self, cx: &mut Cx<'_>) {
        if cx.phase != Phase::PeerDiscovery || self.next_round.is_some() {
            return;
        }
        self.awaiting.clear();
        self.fill_peers(cx);
        self.next_round = Some(cx.now.mono.plus_ms(cx.config.discovery_interval_ms));
        cx.startup(Startup::DiscoveryDone);
    }

    /// A handshake completed: remember the peer; ask outbound peers for more.
    pub fn on_established(&mut self, cx: &mut Cx<'_>, link: &Link) {
        let transient = link.transient;
        let found = match (link.bootstrap, link.direction, transient) {
            (true, _, _) => Found::Bootstrap,
            (_, _, true) => Found::Dht,
            (_, Direction::Inbound, _) => Found::Inbound,
            _ => Found::Exchange,
        };
        self.known.verified(link.node_id, link.public_key, link.listen_addr, cx.now.mono, found);
        // A DHT contact is not a regular peer: it is asked nothing here.
        if link.direction == Direction::Outbound && !transient {
            if link.bootstrap && !self.info_requested {
                self.info_requested = true;
                self.ask(cx, link.conn, Request::GetNetworkInfo);
            }
            let discover = self.discover_request(cx);
            self.ask(cx, link.conn, discover);
        }
        if !link.bootstrap {
            self.release_bootstrap_links(cx);
        }
    }

    /// Peers a DHT lookup reached (identities verified at addresses that answered) or a LAN
    /// announcement named (a signed key, an address not yet dialled). SPEC R5.2, R5.3; R5.5:
    /// ourselves, banned peers and peers over the limits are skipped by `fill_peers` as for
    /// any candidate.
    pub fn discovered(&mut self, cx: &mut Cx<'_>, records: &[PeerRecord], found: Found) {
        let now = cx.now.mono;
        for r in records.iter().filter(|r| r.node_id != cx.node_id) {
            if found == Found::Dht {
                self.known.verified(r.node_id, r.public_key, Some(r.address), now, found);
            } else {
                self.known.learn_from(r, now, found);
            }
        }
        self.fill_peers(cx);
    }

    /// A connection ended.
    pub fn on_closed(&mut self, cx: &mut Cx<'_>, closed: &Closed) {
        if closed.reason.process_ending() {
            return;
        }
        if let CloseReason::UnexpectedIdentity { expected, .. } = closed.reason {
            self.known.forget(&expected);
        } else if !closed.established
            && let Some(expected) = closed.expect
        {
            match closed.reason {
                // Another network or protocol version: it will never be a peer of ours.
                CloseReason::RefusedByPeer { retry_after_ms: 0, .. } => self.known.forget(&expected),
                CloseReason::RefusedByPeer { retry_after_ms, .. } => {
                    let wait_ms = u64::from(retry_after_ms).min(crate::refusal::RETRY_HINT_MS_MAX);
                    self.known.dial_failed_wait(&expected, cx.now.mono, wait_ms)
                }
                _ => self.known.dial_failed(&expected, cx.now.mono),
            }
            // Short of peers (a dial made during a partition, a dead candidate): the next
            // round, which dials other candidates, comes soon rather than a whole interval on.
            let soon = cx.now.mono.plus_ms(REFILL_AFTER_FAILED_DIAL_MS);
            if cx.conns.established().count() < cx.config.target_peers as usize
                && let Some(next) = self.next_round.as_mut()
            {
                *next = (*next).min(soon);
            }
        }
        self.settled(cx, closed.conn);
        if closed.established {
            self.fill_peers(cx);
        }
    }

    /// A peer asked us something (already admitted by its rate limit).
    /// Answers a peer's request; `popular` is the content module's most requested items (SPEC
    /// R4.3), handed in by the node for `GetNetworkInfo`.
    pub fn handle_request(
        &mut self,
        cx: &mut Cx<'_>,
        conn: ConnId,
        peer: NodeId,
        id: RequestId,
        request: Request,
        popular: impl FnOnce() -> Vec<[u8; 32]>,
    ) {
        let answer = match request {
            Request::GetNetworkInfo => {
                let peers = self.sample_for(cx, peer, PEERS_PER_ANSWER_MAX, &[]);
                let stats = NetworkStats {
                    connected_peers: cx.conns.established().count() as u32,
                    known_peers: self.known.len() as u32,
                    uptime_s: cx.now.mono.ms_since(cx.started.mono) / 1000,
                };
                let mut popular_content = popular();
                popular_content.truncate(POPULAR_CONTENT_MAX);
                Response::NetworkInfo(NetworkInfo { peers, stats, popular_content })
            }
            Request::DiscoverPeers { node_id, max_peers, exclude } => {
                if node_id != peer {
                    let violation = Violation::ForeignNodeId { kind: Kind::DiscoverPeers };
                    return cx.misbehaved(conn, CloseReason::Protocol(violation));
                }
                let max = usize::from(max_peers).min(PEERS_PER_ANSWER_MAX);
                Response::Peers(self.sample_for(cx, peer, max, &exclude))
            }
        };
        cx.respond(conn, id, wire::Response::Discovery(answer));
    }

    /// The answer to one of our requests, in time and of the kind it expects.
    pub fn handle_response(&mut self, cx: &mut Cx<'_>, conn: ConnId, peer: NodeId, response: Response) {
        match response {
            Response::NetworkInfo(info) => {
                cx.event(Event::NetworkInfoReceived {
                    from: peer,
                    peers: info.peers.len() as u32,
                    stats: info.stats.clone(),
                    popular_content: info.popular_content.len() as u32,
                });
                self.learn(cx, peer, &info.peers);
                if !info.popular_content.is_empty() {
                    // A joining node may fetch what the network asks for most, first.
                    cx.defer(Deferred::Popular(info.popular_content));
                }
            }
            Response::Peers(records) => self.learn(cx, peer, &records),
        }
        self.settled(cx, conn);
        self.fill_peers(cx);
    }

    /// One of our requests failed (timed out).
    pub fn on_request_failed(&mut self, cx: &mut Cx<'_>, conn: ConnId, _request: &Pending) {
        self.settled(cx, conn);
    }

    /// The process restarted: the config may have changed; start-up runs again.
    pub fn on_restart(&mut self, cx: &Cx<'_>) {
        self.known.set_max(cx.config.max_known_peers as usize);
        self.awaiting.clear();
        self.next_round = None;
        self.info_requested = false;
    }

    /// The operator changed the config: the known-peer bound, the round period (a shorter one
    /// applies now), and the peer target (dial towards a higher one, release bootstrap links
    /// once a lower one is met).
    pub fn on_config(&mut self, cx: &mut Cx<'_>) {
        self.known.set_max(cx.config.max_known_peers as usize);
        let soonest = cx.now.mono.plus_ms(cx.config.discovery_interval_ms);
        if let Some(next) = self.next_round.as_mut() {
            *next = (*next).min(soonest);
        }
        if cx.phase.past_bootstrap() {
            self.release_bootstrap_links(cx);
            self.fill_peers(cx);
        }
    }

    /// The process is ending: no more rounds.
    pub fn on_shutdown(&mut self) {
        self.next_round = None;
        self.awaiting.clear();
    }

    /// During start-up, an awaited connection answered, failed or closed: it is settled once
    /// nothing it owes us is still within its deadline.
    fn settled(&mut self, cx: &mut Cx<'_>, conn: ConnId) {
        if cx.requests.live_on(conn, wire::Protocol::Discovery) > 0 {
            return;
        }
        if self.awaiting.remove(&conn) && self.awaiting.is_empty() {
            self.finish_startup_phase(cx);
        }
    }

    fn ask(&mut self, cx: &mut Cx<'_>, conn: ConnId, request: Request) {
        // A refusal means the peer already owes us answers; the next round asks again.
        if cx.request(conn, wrap(request), Origin::Discovery, 0).is_ok() && cx.phase == Phase::PeerDiscovery {
            self.awaiting.insert(conn);
        }
    }

    fn discover_request(&self, cx: &Cx<'_>) -> Request {
        // Our peers, at most `EXCLUDE_MAX` of them (a longer list would be refused).
        let mut exclude = cx.conns.peer_ids();
        exclude.truncate(EXCLUDE_MAX);
        Request::DiscoverPeers { node_id: cx.node_id, max_peers: PEERS_PER_ANSWER_MAX as u16, exclude }
    }

    fn round(&mut self, cx: &mut Cx<'_>) {
        let mut peers: Vec<ConnId> = cx.conns.established().map(|(id, _, _)| id).collect();
        if peers.is_empty() {
            // Isolated: go back to the bootstrap nodes, if there are any.
            for node in &cx.config.bootstrap_nodes.clone() {
                if !cx.conns.has_conn_to(&node.node_id) {
                    let _ = cx.dial(node.address, Some(node.node_id), true);
                }
            }
        }
        self.release_bootstrap_links(cx);
        partial_shuffle(cx.rng, &mut peers, FANOUT);
        peers.truncate(FANOUT);
        let request = self.discover_request(cx);
        for conn in peers {
            self.ask(cx, conn, request.clone());
        }
        self.fill_peers(cx);
    }

    /// Once we have enough other peers, bootstrap nodes' slots are better left to newcomers.
    fn release_bootstrap_links(&self, cx: &mut Cx<'_>) {
        let target = cx.config.target_peers as usize;
        if cx.conns.established().filter(|(_, c, _)| !c.bootstrap).count() < target {
            return;
        }
        let links: Vec<ConnId> = cx.conns.established().filter(|(_, c, _)| c.bootstrap).map(|(id, _, _)| id).collect();
        for id in links {
            cx.close(id, CloseReason::BootstrapReleased);
        }
    }

    /// Dials known peers until the target is met or no candidate is left.
    fn fill_peers(&mut self, cx: &mut Cx<'_>) {
        if !cx.phase.past_bootstrap() {
            return;
        }
        let target = cx.config.target_peers as usize;
        // Bootstrap links do not count: the target is met by other peers, and meeting it
        // releases the bootstrap links.
        let active = cx
            .conns
            .iter()
            .filter(|(_, c)| {
                !c.bootstrap && !c.transient && (c.established().is_some() || c.direction == Direction::Outbound)
            })
            .count();
        if active >= target {
            return;
        }

        // Bootstrap nodes are for joining, not regular peers: their inbound slots must stay
        // free for newcomers (they are dialled by bootstrap rounds and when isolated).
        // A DHT contact does not count: dialling that peer makes a regular connection, which
        // the duplicate rule keeps over the contact.
        let mut connected: BTreeSet<NodeId> =
            cx.conns.iter().filter(|(_, c)| !c.transient).filter_map(|(_, c)| c.peer_hint()).collect();
        connected.extend(cx.config.bootstrap_nodes.iter().map(|b| b.node_id));
        let (self_id, now, penalties) = (cx.node_id, cx.now.mono, cx.penalties);
        let want = target - active;
        // A few spare candidates, as a dial may be refused by the per-IP limit.
        let candidates = self.known.candidates(cx.rng, now, want * 2 + 4, |id| {
            *id == self_id || connected.contains(id) || penalties.is_banned(&Offender::Node(*id), now)
        });
        let mut dialled = 0;
        for (id, addr) in candidates {
            if dialled >= want {
                break;
            }
            if cx.dial(addr, Some(id), false).is_ok() {
                dialled += 1;
            }
        }
    }

    fn sample_for(&mut self, cx: &mut Cx<'_>, requester: NodeId, max: usize, exclude: &[NodeId]) -> Vec<PeerRecord> {
        let mut excluded = exclude.to_vec();
        excluded.sort_unstable();
        let self_id = cx.node_id;
        self.known
            .sample_verified(cx.rng, max, |id| *id == requester || *id == self_id || excluded.binary_search(id).is_ok())
    }

    fn learn(&mut self, cx: &mut Cx<'_>, from: NodeId, records: &[PeerRecord]) {
        let now = cx.now.mono;
        let (mut new, mut forged) = (0, false);
        for record in records {
            // A key we already hold for this id was checked when it was stored.
            let known_key = self.known.get(&record.node_id).is_some_and(|k| k.public_key == record.public_key);
            if !known_key && NodeId::from_public_key(&record.public_key) != record.node_id {
                forged = true;
                continue;
            }
            if record.node_id == cx.node_id || record.address.port() == 0 || record.address.ip().is_unspecified() {
                continue;
            }
            if self.known.learn(record, now) {
                new += 1;
            }
        }
        cx.event(Event::PeersLearned { from, received: records.len() as u32, new });
        if forged {
            cx.penalise(Offender::Node(from), POINTS_HANDSHAKE);
        }
    }
}
