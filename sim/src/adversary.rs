//! Misbehaving peers: scripted attackers that dial honest nodes and send what no honest node
//! would. They run no `Node`; they exist to prove the honest nodes cut them off and carry on.

use core::net::SocketAddr;
use std::collections::BTreeMap;

use mynet_core::discovery;
use mynet_core::handshake::{Binding, Role, build_hello};
use mynet_core::wire::{self, Message, PeerRecord, Request, Response};
use mynet_core::{ConnId, Identity, NodeId, PublicKey, RequestId};
use rand_chacha::ChaCha8Rng;
use rand_core::Rng;

/// What an attacker does on one connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attack {
    /// Random bytes instead of frames.
    Garbage,
    /// A Hello whose signature does not verify.
    BadSignature,
    /// A valid Hello for another network.
    WrongNetwork,
    /// A Hello captured from an earlier connection (another channel binding).
    ReplayedHello,
    /// Many connections at once to one node.
    ConnFlood,
    /// A valid handshake, then forged and unsolicited discovery answers and a request flood.
    DiscoveryFlood,
}

impl Attack {
    /// Every attack, for random choice.
    pub const ALL: [Attack; 6] = [
        Attack::Garbage,
        Attack::BadSignature,
        Attack::WrongNetwork,
        Attack::ReplayedHello,
        Attack::ConnFlood,
        Attack::DiscoveryFlood,
    ];

    /// The fault counter this attack increments.
    pub fn name(self) -> &'static str {
        match self {
            Attack::Garbage => "attack_garbage",
            Attack::BadSignature => "attack_bad_signature",
            Attack::WrongNetwork => "attack_wrong_network",
            Attack::ReplayedHello => "attack_replayed_hello",
            Attack::ConnFlood => "attack_conn_flood",
            Attack::DiscoveryFlood => "attack_discovery_flood",
        }
    }
}

/// An attacker's state.
#[derive(Debug)]
pub struct Adversary {
    pub identity: Identity,
    next_conn: u64,
    conns: BTreeMap<ConnId, Attack>,
    last_binding: Option<Binding>,
}

impl Adversary {
    /// A new attacker.
    pub fn new(identity: Identity) -> Adversary {
        Adversary { identity, next_conn: 0, conns: BTreeMap::new(), last_binding: None }
    }

    /// Opens a connection for `attack`; returns its id.
    pub fn open(&mut self, attack: Attack) -> ConnId {
        let conn = ConnId(self.next_conn);
        self.next_conn += 1;
        self.conns.insert(conn, attack);
        conn
    }

    /// The secure channel is up: what to send first.
    pub fn on_secured(
        &mut self,
        conn: ConnId,
        binding: Binding,
        network_id: &str,
        wall_ms: u64,
        rng: &mut ChaCha8Rng,
    ) -> Vec<Vec<u8>> {
        let Some(&attack) = self.conns.get(&conn) else { return Vec::new() };
        let hello = |binding: Binding, network: &str| {
            Message::Hello(build_hello(
                &self.identity,
                Role::Initiator,
                binding,
                network,
                mynet_core::PROTOCOL_VERSION,
                wall_ms,
                None,
            ))
        };
        let replayed = self.last_binding.unwrap_or(Binding([0xee; 32]));
        self.last_binding = Some(binding);
        let frame = match attack {
            Attack::Garbage => {
                let mut bytes = vec![0u8; 64];
                rng.fill_bytes(&mut bytes);
                return vec![bytes];
            }
            Attack::BadSignature => {
                let Message::Hello(mut h) = hello(binding, network_id) else { return Vec::new() };
                h.signature[7] ^= 0x10;
                Message::Hello(h)
            }
            Attack::WrongNetwork => hello(binding, "evil-net"),
            Attack::ReplayedHello => hello(replayed, network_id),
            Attack::ConnFlood | Attack::DiscoveryFlood => hello(binding, network_id),
        };
        frames(&[frame])
    }

    /// Bytes arrived from the honest node: after a completed handshake, a discovery flood.
    pub fn on_received(&mut self, conn: ConnId, target: NodeId, rng: &mut ChaCha8Rng) -> Vec<Vec<u8>> {
        if self.conns.get(&conn) != Some(&Attack::DiscoveryFlood) {
            return Vec::new();
        }
        // Answer once: the first bytes are the handshake response.
        self.conns.insert(conn, Attack::ConnFlood);
        // Either answers nobody asked for (forged records, unknown request ids) or more
        // requests than the rate limit allows, then a request for another node id.
        let mut messages = Vec::new();
        let forged_first = rng.next_u64().is_multiple_of(2);
        let forged = (0..10u8).map(|round| {
            let peers = (0..wire::PEERS_PER_ANSWER_MAX).map(|i| forged_record(rng, round, i)).collect();
            Message::Response {
                id: RequestId(u32::from(round) + 1000),
                body: Response::Discovery(discovery::Response::Peers(peers)),
            }
        });
        let forged: Vec<Message> = forged.collect();
        let flood = (0..=discovery::RATE_LIMIT.max as u32).map(|i| Message::Request {
            id: RequestId(i),
            body: Request::Discovery(discovery::Request::GetNetworkInfo),
        });
        if forged_first {
            messages.extend(forged);
            messages.extend(flood);
        } else {
            messages.extend(flood);
            messages.extend(forged);
        }
        messages.push(Message::Request {
            id: RequestId(u32::MAX),
            body: Request::Discovery(discovery::Request::DiscoverPeers {
                node_id: target,
                max_peers: 50,
                exclude: Vec::new(),
            }),
        });
        frames(&messages)
    }

    /// The connection ended.
    pub fn on_closed(&mut self, conn: ConnId) {
        self.conns.remove(&conn);
    }
}

/// Each message as one frame (all of them fit; none is built from peer data).
fn frames(messages: &[Message]) -> Vec<Vec<u8>> {
    messages.iter().filter_map(|m| wire::encode_frame(m).ok()).collect()
}

/// A discovery record for a node that does not exist; every other one has a key that does not
/// match its id.
fn forged_record(rng: &mut ChaCha8Rng, round: u8, i: usize) -> PeerRecord {
    let mut key = [0u8; 32];
    rng.fill_bytes(&mut key);
    let public_key = PublicKey(key);
    let node_id = if i.is_multiple_of(2) { NodeId::from_public_key(&public_key) } else { NodeId([round; 32]) };
    PeerRecord { node_id, address: SocketAddr::from(([10, 254, round, i as u8], 7401)), public_key }
}
