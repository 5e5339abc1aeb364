//! What a protocol module sees of the node while it handles something: `now`, the node's RNG,
//! the config, the connection table (to dial and to read), the request layer, and a bounded
//! outbox. Effects that reach other modules (closing a connection, penalising a peer, a
//! start-up step) are deferred: the node applies them after the module returns, in order, so no
//! module ever runs inside another.

use core::net::SocketAddr;
use std::collections::VecDeque;

use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::conns::{Conn, ConnState, Conns};
use crate::content::{ContentId, PieceData, PieceRef, Serve};
use crate::event::{CloseReason, Direction, Event, Phase, StartupFailure};
use crate::id::{ConnId, NodeId};
use crate::penalties::{Offender, Penalties};
use crate::refusal::Refusals;
use crate::request::{Origin, Refused, RequestId, Requests};
use crate::time::Time;
use crate::wire::{self, FrameBuffer, Message, Request, Response};

/// Most outputs queued before the driver drains them; past it the node is being misdriven.
pub const OUTPUTS_QUEUED_MAX: usize = 1 << 20;

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
    /// Close `conn` (after sending what is queued); the node has forgotten it and ignores later
    /// inputs about it.
    Close { conn: ConnId },
    /// Something worth a log line or a test assertion.
    Event(Event),
    /// Store a verified piece durably, then report `Input::Stored` (or `Input::StoreFailed`).
    StorePiece { piece: PieceRef, data: PieceData },
    /// Keep an item's verified head (size and piece chaining values or page list).
    StoreHead { id: ContentId, size: u64, cvs: Vec<[u8; 32]> },
    /// Keep a verified page of piece chaining values.
    StorePage { id: ContentId, page: u64, cvs: Vec<[u8; 32]> },
    /// Answer the peer's request from the store (re-verifying pieces as they are read; a
    /// damaged one is answered `NotHeld` and reported as `Input::Damaged`).
    Serve { conn: ConnId, request: RequestId, what: Serve },
    /// Delete the item's data and metadata from the store.
    DeleteItem { id: ContentId },
    /// The peer cancelled its request: drop the answer from `Serve` if it is not sent yet.
    CancelServe { conn: ConnId, request: RequestId },
    /// Multicast this signed announcement on the LAN (`lan`): each real interface, IPv4 and
    /// IPv6 groups.
    LanAnnounce {
        #[serde(with = "crate::id::byte_vec")]
        bytes: Vec<u8>,
    },
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
    /// Messages received, by kind (decoded frames).
    pub messages_in: std::collections::BTreeMap<wire::Kind, u64>,
    /// Messages sent, by kind.
    pub messages_out: std::collections::BTreeMap<wire::Kind, u64>,
    /// Round trips of answered requests: bucket `i` counts those of at most `2^i` ms (the last
    /// bucket, everything longer). Pieces stream outside requests and are not counted.
    pub rtt_ms: [u64; RTT_BUCKETS],
    /// Refusals we explained to the peer (signed `Refused` sent before closing).
    pub refusals_explained: u64,
    /// Refusals we closed without a word (over the explanation budget or rate).
    pub refusals_silent: u64,
    /// Signed refusals peers sent us.
    pub refusals_heard: u64,
}

/// Buckets of [`Counters::rtt_ms`]: 1 ms, 2 ms, ... 16,384 ms, and longer.
pub const RTT_BUCKETS: usize = 16;

impl Counters {
    /// Counts one answered request that took `ms`.
    pub fn record_rtt(&mut self, ms: u64) {
        let bucket = (u64::BITS - ms.saturating_sub(1).leading_zeros()) as usize;
        self.rtt_ms[bucket.min(RTT_BUCKETS - 1)] += 1;
    }
}

/// A start-up milestone a module reached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Startup {
    /// Bootstrap is over: at least one bootstrap node (or none configured) answered.
    BootstrapDone,
    /// The initial discovery round has its answers (or gave up waiting).
    DiscoveryDone,
    /// The initial sync drained its first queue (or its time ran out).
    InitialSyncDone,
    /// Start-up cannot go on.
    Failed(Phase, StartupFailure),
}

/// An effect applied by the node after the current module returns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Deferred {
    /// Close the connection (if still open) for `reason`.
    Close(ConnId, CloseReason),
    /// Close the connection and penalise whoever it proved to be (or its address).
    Misbehaved(ConnId, CloseReason),
    /// Add misbehaviour points.
    Penalise(Offender, u32),
    /// Move start-up along.
    Startup(Startup),
    /// Popular items a bootstrap node named (SPEC R4.3), for the content module to queue first.
    Popular(Vec<[u8; 32]>),
    /// Items new to the catalogue (or in a new version), for the content module's policy.
    Catalogued(Vec<crate::states::Named>),
    /// The first reconciliation rounds are over (start-up phase 7 may end).
    CatalogueSettled,
    /// Peers a DHT lookup reached (verified identities at addresses that answered) or a LAN
    /// announcement named, for discovery to remember and dial towards its target.
    Discovered(Vec<crate::discovery::PeerRecord>, crate::peers::Found),
    /// The peer on `conn` holds item `id` (a provider record found it): content may fetch.
    Holder { conn: ConnId, id: [u8; 32] },
    /// We hold item `id` (imported, fetched): the DHT publishes a provider record.
    Provide([u8; 32]),
    /// No connected peer holds item `id`: the DHT searches for providers.
    FindProviders([u8; 32]),
    /// Tell the peer on `conn` (a refused Hello; the close follows) why, with this retry hint,
    /// if the explanation rate allows.
    Explain(ConnId, crate::refusal::RefusalReason, u32),
}

/// The node's queue of outputs, plus the running counters they feed.
#[derive(Debug, Default)]
pub struct Outbox {
    pub(crate) outputs: VecDeque<Output>,
    pub(crate) deferred: VecDeque<Deferred>,
}

impl Outbox {
    fn push(&mut self, output: Output) {
        assert!(self.outputs.len() < OUTPUTS_QUEUED_MAX, "driver stopped draining poll_output");
        self.outputs.push_back(output);
    }
}

/// The context handed to a module.
pub struct Cx<'a> {
    /// The time of the input being handled.
    pub now: Time,
    /// Our id.
    pub node_id: NodeId,
    /// Our key.
    pub public_key: crate::id::PublicKey,
    /// The config in force.
    pub config: &'a Config,
    /// The phase start-up is in.
    pub phase: Phase,
    /// When this process started (for uptime).
    pub started: Time,
    /// The node's seeded generator.
    pub rng: &'a mut ChaCha8Rng,
    /// Every connection.
    pub conns: &'a mut Conns,
    /// The request layer.
    pub requests: &'a mut Requests,
    /// Misbehaviour scores (read-only; add points with [`Cx::penalise`]).
    pub penalties: &'a Penalties,
    /// Refusals (read-only here): which nodes asked us to wait before dialling them again.
    pub refusals: &'a Refusals,
    /// Counters.
    pub counters: &'a mut Counters,
    pub(crate) out: &'a mut Outbox,
}

impl Cx<'_> {
    /// Reports an event.
    pub fn event(&mut self, event: Event) {
        self.out.push(Output::Event(event));
    }

    /// Encodes and sends `message` on `conn`. A message that does not fit a frame is not sent;
    /// the refusal is reported as an event and returned (modules bound or page what they send,
    /// so this means a bug, never a peer's doing).
    pub fn send(&mut self, conn: ConnId, message: &Message) -> Result<(), wire::WireError> {
        match wire::encode_frame(message) {
            Ok(bytes) => {
                self.counters.frames_out += 1;
                *self.counters.messages_out.entry(message.kind()).or_default() += 1;
                self.counters.bytes_out += bytes.len() as u64;
                self.out.push(Output::Send { conn, bytes });
                Ok(())
            }
            Err(error) => {
                self.event(Event::SendRefused { conn, kind: message.kind(), error: error.clone() });
                Err(error)
            }
        }
    }

    /// Sends a request on an established connection; its answer (or failure) comes back to
    /// `origin` with `tag`. Deadline: `handshake_timeout_ms`.
    pub fn request(&mut self, conn: ConnId, body: Request, origin: Origin, tag: u64) -> Result<RequestId, Refused> {
        let timeout_ms = self.config.handshake_timeout_ms;
        self.request_within(conn, body, origin, tag, timeout_ms)
    }

    /// Like [`Cx::request`] with a deadline of the module's choosing (e.g. scaled to the peer's
    /// measured round trip, so a dead peer costs one short deadline).
    pub fn request_within(
        &mut self,
        conn: ConnId,
        body: Request,
        origin: Origin,
        tag: u64,
        timeout_ms: u64,
    ) -> Result<RequestId, Refused> {
        let id = self.requests.start(self.now.mono, conn, &body, origin, tag, timeout_ms)?;
        // An encoding refusal was reported as an event; the request then times out like any.
        let _ = self.send(conn, &Message::Request { id, body });
        Ok(id)
    }

    /// Cancels our request `id` on `conn`: its answer is dropped without blame when it comes,
    /// and the peer is told so it can skip sending it. Returns the request if it was pending.
    pub fn cancel(&mut self, conn: ConnId, id: RequestId) -> Option<crate::request::Pending> {
        let pending = self.requests.cancel(conn, id)?;
        let _ = self.send(conn, &Message::Cancel { id });
        Some(pending)
    }

    /// Answers the peer's request `id`.
    pub fn respond(&mut self, conn: ConnId, id: RequestId, body: Response) {
        let _ = self.send(conn, &Message::Response { id, body });
    }

    /// Dials `addr` if the limits allow and `expect` did not ask us to wait (a refusal's retry
    /// hint); returns the new connection or why not.
    pub fn dial(&mut self, addr: SocketAddr, expect: Option<NodeId>, bootstrap: bool) -> Result<ConnId, CloseReason> {
        if self.penalties.is_banned(&Offender::Ip(addr.ip()), self.now.mono) {
            return Err(CloseReason::Banned);
        }
        if let Some(ms_left) = expect.and_then(|node| self.refusals.wait_left_ms(&node, self.now.mono)) {
            return Err(CloseReason::AskedToWait { ms_left });
        }
        if let Some(reason) = self.conns.admission_refusal(self.config, Direction::Outbound, addr.ip()) {
            return Err(reason);
        }
        let conn = self.conns.next_outbound_id();
        self.counters.dials += 1;
        self.open(conn, Direction::Outbound, addr, expect, bootstrap);
        self.out.push(Output::Dial { conn, addr });
        Ok(conn)
    }

    /// Dials `node` at `addr` as a transient DHT contact (see `dht`), if the limits allow.
    pub fn dial_transient(&mut self, addr: SocketAddr, node: NodeId) -> Result<ConnId, CloseReason> {
        let conn = self.dial(addr, Some(node), false)?;
        if let Some(c) = self.conns.get_mut(conn) {
            c.transient = true;
        }
        Ok(conn)
    }

    /// Why an inbound connection from `addr` would be refused (a blacklisted address, a full
    /// limit), if it would.
    pub(crate) fn inbound_refusal(&self, addr: SocketAddr) -> Option<CloseReason> {
        if self.penalties.is_banned(&Offender::Ip(addr.ip()), self.now.mono) {
            return Some(CloseReason::Banned);
        }
        self.conns.admission_refusal(self.config, Direction::Inbound, addr.ip())
    }

    /// Accepts an inbound connection that passed admission ([`Cx::inbound_refusal`]).
    pub(crate) fn accept(&mut self, conn: ConnId, addr: SocketAddr) {
        self.open(conn, Direction::Inbound, addr, None, false);
        self.out.push(Output::Accept { conn });
    }

    fn open(&mut self, conn: ConnId, direction: Direction, addr: SocketAddr, expect: Option<NodeId>, bootstrap: bool) {
        let handshake_deadline = self.now.mono.plus_ms(self.config.handshake_timeout_ms);
        let state = ConnState::Opening;
        let frames = FrameBuffer::default();
        let conn_state =
            Conn { direction, addr, state, handshake_deadline, expect, bootstrap, transient: false, frames };
        self.conns.insert(conn, conn_state);
    }

    /// Closes `conn` once the current module returns.
    pub fn close(&mut self, conn: ConnId, reason: CloseReason) {
        self.out.deferred.push_back(Deferred::Close(conn, reason));
    }

    /// Closes `conn` and penalises the peer once the current module returns.
    pub fn misbehaved(&mut self, conn: ConnId, reason: CloseReason) {
        self.out.deferred.push_back(Deferred::Misbehaved(conn, reason));
    }

    /// Adds misbehaviour points once the current module returns.
    pub fn penalise(&mut self, offender: Offender, points: u32) {
        self.out.deferred.push_back(Deferred::Penalise(offender, points));
    }

    /// Queues an output for the driver.
    pub fn output(&mut self, output: Output) {
        self.out.push(output);
    }

    /// Defers an effect on other modules until the current module returns.
    pub fn defer(&mut self, effect: Deferred) {
        self.out.deferred.push_back(effect);
    }

    /// Reports a start-up milestone.
    pub fn startup(&mut self, step: Startup) {
        self.out.deferred.push_back(Deferred::Startup(step));
    }

    /// Tells the peer on `conn` why its Hello is refused (the close follows), with the hint for
    /// `reason` (`banned`: whose ban it is), once the current module returns.
    pub fn explain(&mut self, conn: ConnId, reason: crate::refusal::RefusalReason, banned: Option<Offender>) {
        let retry_after_ms = self.retry_hint(&reason, banned);
        self.out.deferred.push_back(Deferred::Explain(conn, reason, retry_after_ms));
    }

    /// The retry hint to give with `reason` (`banned`: whose ban it is, for the time it has
    /// left); limits get jitter from the node's generator.
    pub fn retry_hint(&mut self, reason: &crate::refusal::RefusalReason, banned: Option<Offender>) -> u32 {
        use crate::refusal::RefusalReason;
        use rand_core::Rng;
        let jitter = match reason {
            RefusalReason::InboundLimit { .. } | RefusalReason::PerIpLimit { .. } => self.rng.next_u64(),
            _ => 0,
        };
        let ban_left_ms = banned.and_then(|who| self.penalties.ban_left_ms(&who, self.now.mono));
        crate::refusal::retry_hint(reason, jitter, ban_left_ms)
    }

    /// The address we tell peers to dial, if we listen on a fixed port.
    pub fn advertised_addr(&self) -> Option<SocketAddr> {
        let addr = self.config.listen_addr;
        (addr.port() != 0).then_some(addr)
    }
}
