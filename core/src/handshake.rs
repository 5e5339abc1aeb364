//! The application handshake (SPEC R6.2), signed and bound to the secure channel, and the
//! per-connection machine that runs it (secured → Hello → handshake_response → established).
//!
//! Each side signs its [`Hello`] together with its role and the channel binding (the Noise
//! handshake hash in production, a seeded random value in the simulator). A captured Hello is
//! useless on another connection, and a responder's answer cannot be reflected as an initiator's.

use core::net::SocketAddr;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::config::{parse_version, versions_compatible};
use crate::conns::{ConnState, Established};
use crate::context::Cx;
use crate::event::{CloseReason, Direction, Event};
use crate::id::{ConnId, NodeId, PublicKey, bytes64};
use crate::identity::{self, Identity};
use crate::penalties::Offender;
use crate::refusal::{Refusal, RefusalReason};
use crate::wire::{Message, SHORT_STRING_MAX, WireError};

/// Capabilities this build announces (SPEC R6.2 `supported_features`).
pub const FEATURES: [&str; 3] = ["content_sync", "consensus", "dht"];
const DOMAIN: &str = "mynet/handshake/v1";
/// Most feature names in a handshake.
pub const FEATURES_MAX: usize = 16;

/// The signed body of both handshake messages.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The sender's id; must be BLAKE3 of `public_key`.
    pub node_id: NodeId,
    /// The sender's ed25519 key.
    pub public_key: PublicKey,
    /// Network the sender belongs to.
    pub network_id: String,
    /// Protocol version the sender speaks.
    pub network_version: String,
    /// Capabilities, e.g. `content_sync`, `consensus`, `dht`.
    pub features: Vec<String>,
    /// Sender's wall clock, Unix milliseconds.
    pub timestamp_ms: u64,
    /// Where the sender accepts connections, if anywhere.
    pub listen_addr: Option<SocketAddr>,
    /// ed25519 over the canonical body, the role and the channel binding.
    #[serde(with = "bytes64")]
    pub signature: [u8; 64],
}

/// Decode bounds of a Hello: short strings, few features.
pub fn check_bounds(hello: &Hello) -> Result<(), WireError> {
    if hello.network_id.len() > SHORT_STRING_MAX || hello.network_version.len() > SHORT_STRING_MAX {
        return Err(WireError::OutOfBounds("handshake string field too long".into()));
    }
    if hello.features.len() > FEATURES_MAX || hello.features.iter().any(|f| f.len() > SHORT_STRING_MAX) {
        return Err(WireError::OutOfBounds(format!(
            "{} features; at most {FEATURES_MAX} of {SHORT_STRING_MAX} bytes",
            hello.features.len()
        )));
    }
    Ok(())
}

/// Which end of the connection signed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    /// The dialer, sending `Hello`.
    Initiator,
    /// The listener, answering with `HelloAck`.
    Responder,
}

/// Channel binding: a value both ends of one secure channel share and nobody else can choose.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Binding(pub [u8; 32]);

/// Why a peer's handshake was refused.
#[derive(Debug, Error, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HandshakeError {
    #[error("bad handshake signature")]
    BadSignature,
    #[error("node id {claimed} does not match its public key")]
    NodeIdMismatch { claimed: NodeId },
    #[error("wrong network {theirs:?} (ours is {ours:?})")]
    WrongNetwork { ours: String, theirs: String },
    #[error("incompatible protocol version {theirs:?} (ours is {ours})")]
    IncompatibleVersion { ours: String, theirs: String },
    #[error("handshake timestamp is {skew_ms} ms away from our clock (limit {limit_ms} ms)")]
    ClockSkew { skew_ms: u64, limit_ms: u64 },
    #[error("connection to ourselves")]
    SelfConnection,
}

/// What our side needs to judge a peer's Hello.
#[derive(Clone, Copy, Debug)]
pub struct Expect<'a> {
    /// Our id, to catch connections to ourselves.
    pub our_id: NodeId,
    /// Our network id.
    pub network_id: &'a str,
    /// Our protocol version.
    pub version: &'a str,
    /// Our wall clock now.
    pub now_wall_ms: u64,
    /// Largest accepted clock difference.
    pub max_skew_ms: u64,
}

/// Builds and signs our Hello for `role` on the channel with `binding`.
pub fn build_hello(
    identity: &Identity,
    role: Role,
    binding: Binding,
    network_id: &str,
    version: &str,
    timestamp_ms: u64,
    listen_addr: Option<SocketAddr>,
) -> Hello {
    let params = HelloParams { network_id, version, timestamp_ms, listen_addr, contact: false };
    build_hello_with(identity, role, binding, &params)
}

/// The feature an initiator names when the connection is a DHT contact (a lookup's question
/// or an address check), not a regular peer: the responder then runs no other protocol on it.
pub const CONTACT_FEATURE: &str = "dht_contact";

/// What a Hello says beside the signer's identity and the channel it is bound to.
#[derive(Clone, Copy, Debug)]
pub struct HelloParams<'a> {
    pub network_id: &'a str,
    pub version: &'a str,
    /// Our wall clock, Unix milliseconds.
    pub timestamp_ms: u64,
    pub listen_addr: Option<SocketAddr>,
    /// Name [`CONTACT_FEATURE`]: this connection is a DHT contact.
    pub contact: bool,
}

/// [`build_hello`] with every field given.
pub fn build_hello_with(identity: &Identity, role: Role, binding: Binding, params: &HelloParams<'_>) -> Hello {
    let mut features: Vec<String> = FEATURES.iter().map(|f| f.to_string()).collect();
    if params.contact {
        features.push(CONTACT_FEATURE.to_string());
    }
    let mut hello = Hello {
        node_id: identity.node_id(),
        public_key: identity.public_key(),
        network_id: params.network_id.to_string(),
        network_version: params.version.to_string(),
        features,
        timestamp_ms: params.timestamp_ms,
        listen_addr: params.listen_addr,
        signature: [0; 64],
    };
    hello.signature = identity.sign(&signed_bytes(&hello, role, binding));
    hello
}

/// Checks a peer's Hello sent in `role` on the channel with `binding`.
pub fn verify_hello(hello: &Hello, role: Role, binding: Binding, expect: &Expect<'_>) -> Result<(), HandshakeError> {
    if NodeId::from_public_key(&hello.public_key) != hello.node_id {
        return Err(HandshakeError::NodeIdMismatch { claimed: hello.node_id });
    }
    identity::verify(&hello.public_key, &signed_bytes(hello, role, binding), &hello.signature)
        .map_err(|_| HandshakeError::BadSignature)?;
    if hello.network_id != expect.network_id {
        return Err(HandshakeError::WrongNetwork {
            ours: expect.network_id.to_string(),
            theirs: hello.network_id.clone(),
        });
    }
    let compatible = match (parse_version(&hello.network_version), parse_version(expect.version)) {
        (Some(theirs), Some(ours)) => versions_compatible(theirs, ours),
        _ => false,
    };
    if !compatible {
        return Err(HandshakeError::IncompatibleVersion {
            ours: expect.version.to_string(),
            theirs: hello.network_version.clone(),
        });
    }
    let skew_ms = hello.timestamp_ms.abs_diff(expect.now_wall_ms);
    if skew_ms > expect.max_skew_ms {
        return Err(HandshakeError::ClockSkew { skew_ms, limit_ms: expect.max_skew_ms });
    }
    if hello.node_id == expect.our_id {
        return Err(HandshakeError::SelfConnection);
    }
    Ok(())
}

fn signed_bytes(hello: &Hello, role: Role, binding: Binding) -> Vec<u8> {
    #[derive(Serialize)]
    struct Signed<'a> {
        domain: &'a str,
        role: Role,
        binding: [u8; 32],
        node_id: NodeId,
        public_key: PublicKey,
        network_id: &'a str,
        network_version: &'a str,
        features: &'a [String],
        timestamp_ms: u64,
        listen_addr: Option<SocketAddr>,
    }
    let signed = Signed {
        domain: DOMAIN,
        role,
        binding: binding.0,
        node_id: hello.node_id,
        public_key: hello.public_key,
        network_id: &hello.network_id,
        network_version: &hello.network_version,
        features: &hello.features,
        timestamp_ms: hello.timestamp_ms,
        listen_addr: hello.listen_addr,
    };
    postcard::to_allocvec(&signed).expect("postcard encoding into a Vec cannot fail")
}

/// A connection whose handshake just completed, as the other modules learn of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    /// The connection.
    pub conn: ConnId,
    /// The proven peer.
    pub node_id: NodeId,
    /// Its key.
    pub public_key: PublicKey,
    /// Where it listens, if it said.
    pub listen_addr: Option<SocketAddr>,
    /// The remote address of the connection.
    pub addr: SocketAddr,
    /// Who dialled.
    pub direction: Direction,
    /// Whether it is a link to a bootstrap node.
    pub bootstrap: bool,
    /// Whether it is a DHT contact (no other protocol runs on it).
    pub transient: bool,
}

/// The secure channel of `conn` is up: the initiator sends its Hello, the responder waits.
pub(crate) fn handle_secured(cx: &mut Cx<'_>, identity: &Identity, conn_id: ConnId, binding: Binding) {
    let Some(conn) = cx.conns.get_mut(conn_id) else { return };
    if !matches!(conn.state, ConnState::Opening) {
        return;
    }
    match conn.direction {
        Direction::Inbound => conn.state = ConnState::AwaitHello { binding },
        Direction::Outbound => {
            conn.state = ConnState::AwaitAck { binding };
            let contact = conn.transient;
            let hello = own_hello(cx, identity, Role::Initiator, binding, contact);
            let _ = cx.send(conn_id, &Message::Hello(hello));
        }
    }
}

/// A message on a connection whose handshake has not completed. Returns the link if it
/// completed it.
pub(crate) fn handle_message(cx: &mut Cx<'_>, identity: &Identity, conn_id: ConnId, message: Message) -> Option<Link> {
    let state = cx.conns.get(conn_id).map(|c| c.state.clone())?;
    match (state, message) {
        (ConnState::AwaitHello { binding }, Message::Hello(hello)) => {
            handle_hello(cx, identity, conn_id, hello, Role::Initiator, binding)
        }
        (ConnState::AwaitAck { binding }, Message::HelloAck(hello)) => {
            handle_hello(cx, identity, conn_id, hello, Role::Responder, binding)
        }
        (ConnState::AwaitAck { binding }, Message::Refused(refusal)) => {
            handle_refusal(cx, conn_id, &refusal, binding);
            None
        }
        (_, message) => {
            cx.misbehaved(conn_id, CloseReason::BeforeHandshake(message.kind()));
            None
        }
    }
}

fn own_hello(cx: &Cx<'_>, identity: &Identity, role: Role, binding: Binding, contact: bool) -> Hello {
    let params = HelloParams {
        network_id: &cx.config.network_id,
        version: &cx.config.protocol_version,
        timestamp_ms: cx.now.wall_ms,
        listen_addr: cx.advertised_addr(),
        contact,
    };
    build_hello_with(identity, role, binding, &params)
}

fn handle_hello(
    cx: &mut Cx<'_>,
    identity: &Identity,
    conn_id: ConnId,
    hello: Hello,
    role: Role,
    binding: Binding,
) -> Option<Link> {
    let cfg = cx.config;
    let expect = Expect {
        our_id: cx.node_id,
        network_id: &cfg.network_id,
        version: &cfg.protocol_version,
        now_wall_ms: cx.now.wall_ms,
        max_skew_ms: cfg.max_clock_skew_ms,
    };
    if let Err(err) = verify_hello(&hello, role, binding, &expect) {
        cx.counters.handshakes_failed += 1;
        // A dialler on another network, version or clock hears why (a forger learns nothing).
        if let Some(reason) = RefusalReason::of_handshake(&err).filter(|_| role == Role::Initiator) {
            cx.explain(conn_id, reason, None);
        }
        let offensive = !matches!(err, HandshakeError::SelfConnection | HandshakeError::ClockSkew { .. });
        if offensive {
            cx.misbehaved(conn_id, CloseReason::Handshake(err));
        } else {
            cx.close(conn_id, CloseReason::Handshake(err));
        }
        return None;
    }
    let conn = cx.conns.get(conn_id)?;
    if let Some(expected) = conn.expect.filter(|e| *e != hello.node_id) {
        cx.close(conn_id, CloseReason::UnexpectedIdentity { expected, got: hello.node_id });
        return None;
    }
    if cx.penalties.is_banned(&Offender::Node(hello.node_id), cx.now.mono) {
        if role == Role::Initiator {
            cx.explain(conn_id, RefusalReason::Banned, Some(Offender::Node(hello.node_id)));
        }
        cx.close(conn_id, CloseReason::Banned);
        return None;
    }
    // The responder answers even a duplicate before closing it: the dialler then holds proof
    // that we are reachable at the address it dialled (the DHT's address check), and reaches
    // the same verdict on its side.
    if role == Role::Initiator {
        // The initiator says whether this is a DHT contact; both ends then treat it alike.
        if hello.features.iter().any(|f| f == CONTACT_FEATURE)
            && let Some(c) = cx.conns.get_mut(conn_id)
        {
            c.transient = true;
        }
        let ack = own_hello(cx, identity, Role::Responder, binding, false);
        let _ = cx.send(conn_id, &Message::HelloAck(ack));
    }
    if keep_existing(cx, conn_id, hello.node_id) {
        cx.close(conn_id, CloseReason::Duplicate);
        return None;
    }
    establish(cx, conn_id, &hello)
}

/// The node we dialled refused us and said why: checked like a handshake answer (the key
/// proves the id, the signature covers this channel, the id is the one we dialled), then the
/// connection closes with the refusal as its reason, which carries the retry hint to every
/// module.
fn handle_refusal(cx: &mut Cx<'_>, conn_id: ConnId, refusal: &Refusal, binding: Binding) {
    if let Err(err) = refusal.verify(binding) {
        cx.counters.handshakes_failed += 1;
        return cx.misbehaved(conn_id, CloseReason::Handshake(err));
    }
    let Some(conn) = cx.conns.get(conn_id) else { return };
    if let Some(expected) = conn.expect.filter(|e| *e != refusal.node_id) {
        return cx.close(conn_id, CloseReason::UnexpectedIdentity { expected, got: refusal.node_id });
    }
    cx.counters.refusals_heard += 1;
    let reason = CloseReason::RefusedByPeer { reason: refusal.reason.clone(), retry_after_ms: refusal.retry_after_ms };
    cx.close(conn_id, reason);
}

/// If `conn_id` duplicates an established connection to `peer`, whether the existing one is
/// kept (and if not, it is closed). Both ends apply the same rule (a regular connection over a
/// DHT contact, else the one dialled by the lower id), so a simultaneous dial leaves exactly
/// one connection.
fn keep_existing(cx: &mut Cx<'_>, conn_id: ConnId, peer: NodeId) -> bool {
    let Some((existing_id, existing_dir)) = cx
        .conns
        .established()
        .find(|(id, _, e)| *id != conn_id && e.node_id == peer)
        .map(|(id, c, _)| (id, c.direction))
    else {
        return false;
    };
    let Some((new_dir, new_transient)) = cx.conns.get(conn_id).map(|c| (c.direction, c.transient)) else {
        return true;
    };
    let existing_transient = cx.conns.get(existing_id).is_some_and(|c| c.transient);
    let keep = if existing_transient != new_transient {
        new_transient
    } else if existing_dir == new_dir {
        true
    } else {
        let us = cx.node_id;
        let initiator_of = |dir: Direction| if dir == Direction::Outbound { us } else { peer };
        initiator_of(existing_dir) < initiator_of(new_dir)
    };
    if !keep {
        cx.close(existing_id, CloseReason::Duplicate);
    }
    keep
}

fn establish(cx: &mut Cx<'_>, conn_id: ConnId, hello: &Hello) -> Option<Link> {
    let now = cx.now.mono;
    let conn = cx.conns.get(conn_id)?;
    // A listen address with an unspecified IP means "the address you see me at".
    let listen_addr =
        hello.listen_addr.map(|a| if a.ip().is_unspecified() { SocketAddr::new(conn.addr.ip(), a.port()) } else { a });
    let link = Link {
        conn: conn_id,
        node_id: hello.node_id,
        public_key: hello.public_key,
        listen_addr,
        addr: conn.addr,
        direction: conn.direction,
        bootstrap: conn.bootstrap,
        transient: conn.transient,
    };
    let established = Established { node_id: hello.node_id, public_key: hello.public_key, listen_addr, since: now };
    cx.conns.establish(conn_id, established);
    cx.requests.open(conn_id, now);
    cx.counters.handshakes_ok += 1;
    cx.event(Event::PeerConnected {
        conn: conn_id,
        node_id: hello.node_id,
        addr: link.addr,
        direction: link.direction,
    });
    Some(link)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000_000;

    fn expect(our: &Identity) -> Expect<'_> {
        Expect { our_id: our.node_id(), network_id: "net", version: "1.0.0", now_wall_ms: NOW, max_skew_ms: 60_000 }
    }

    fn hello(id: &Identity, role: Role, binding: Binding) -> Hello {
        build_hello(id, role, binding, "net", "1.0.0", NOW, None)
    }

    #[test]
    fn every_refusal_path() {
        let (a, b) = (Identity::from_secret_bytes(&[1; 32]), Identity::from_secret_bytes(&[2; 32]));
        let bind = Binding([9; 32]);
        let ok = hello(&a, Role::Initiator, bind);
        assert_eq!(verify_hello(&ok, Role::Initiator, bind, &expect(&b)), Ok(()));
        // Replayed on another channel, or reflected in the other role.
        assert_eq!(
            verify_hello(&ok, Role::Initiator, Binding([8; 32]), &expect(&b)),
            Err(HandshakeError::BadSignature)
        );
        assert_eq!(verify_hello(&ok, Role::Responder, bind, &expect(&b)), Err(HandshakeError::BadSignature));
        let mut tampered = ok.clone();
        tampered.timestamp_ms += 1;
        assert_eq!(verify_hello(&tampered, Role::Initiator, bind, &expect(&b)), Err(HandshakeError::BadSignature));
        let mut wrong_id = ok.clone();
        wrong_id.node_id = b.node_id();
        assert!(matches!(
            verify_hello(&wrong_id, Role::Initiator, bind, &expect(&b)),
            Err(HandshakeError::NodeIdMismatch { .. })
        ));
        let other_net = build_hello(&a, Role::Initiator, bind, "other", "1.0.0", NOW, None);
        assert!(matches!(
            verify_hello(&other_net, Role::Initiator, bind, &expect(&b)),
            Err(HandshakeError::WrongNetwork { .. })
        ));
        let v2 = build_hello(&a, Role::Initiator, bind, "net", "2.0.0", NOW, None);
        assert!(matches!(
            verify_hello(&v2, Role::Initiator, bind, &expect(&b)),
            Err(HandshakeError::IncompatibleVersion { .. })
        ));
        let v11 = build_hello(&a, Role::Initiator, bind, "net", "1.1.0", NOW, None);
        assert_eq!(verify_hello(&v11, Role::Initiator, bind, &expect(&b)), Ok(()));
        let stale = build_hello(&a, Role::Initiator, bind, "net", "1.0.0", NOW - 60_001, None);
        assert!(matches!(
            verify_hello(&stale, Role::Initiator, bind, &expect(&b)),
            Err(HandshakeError::ClockSkew { skew_ms: 60_001, .. })
        ));
        let future = build_hello(&a, Role::Initiator, bind, "net", "1.0.0", NOW + 61_000, None);
        assert!(matches!(
            verify_hello(&future, Role::Initiator, bind, &expect(&b)),
            Err(HandshakeError::ClockSkew { .. })
        ));
        assert_eq!(verify_hello(&ok, Role::Initiator, bind, &expect(&a)), Err(HandshakeError::SelfConnection));
    }
}
