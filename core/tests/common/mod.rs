//! Helpers shared by the tests that drive a node through its one door with hand-made peers.
#![allow(dead_code)]

use core::net::SocketAddr;

use mynet_core::discovery;
use mynet_core::handshake::{Binding, Role, build_hello};
use mynet_core::wire::{self, Kind, Message, Request, Response};
use mynet_core::{CloseReason, Config, ConnId, Event, Identity, Input, Node, Output, RequestId, Time};

pub const WALL: u64 = 1_800_000_000_000;

pub fn at(ms: u64) -> Time {
    Time::new(ms * 1000, WALL + ms)
}

pub fn drain(node: &mut Node) -> Vec<Output> {
    std::iter::from_fn(|| node.poll_output()).collect()
}

pub fn first_node(config: Config) -> Node {
    let mut node = Node::new(config, Identity::from_secret_bytes(&[1; 32]), 7, at(0));
    let outputs = drain(&mut node);
    assert!(outputs.contains(&Output::Event(Event::Initialized { peers: 0 })), "{outputs:?}");
    node
}

pub fn peer_addr(i: u8) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, i], 40000))
}

/// Accepts an inbound connection from `addr` and secures it; returns the outputs.
pub fn open(node: &mut Node, conn: ConnId, addr: SocketAddr, binding: Binding) -> Vec<Output> {
    node.handle(at(1), Input::Incoming { conn, addr });
    let mut out = drain(node);
    node.handle(at(1), Input::Secured { conn, binding });
    out.extend(drain(node));
    out
}

pub fn closed_reason(outputs: &[Output], conn: ConnId) -> Option<CloseReason> {
    assert!(
        outputs.contains(&Output::Close { conn })
            || !outputs
                .iter()
                .any(|o| matches!(o, Output::Event(Event::ConnectionClosed { conn: c, .. }) if *c == conn))
    );
    outputs.iter().find_map(|o| match o {
        Output::Event(Event::ConnectionClosed { conn: c, reason, by_us: true, .. }) if *c == conn => {
            Some(reason.clone())
        }
        _ => None,
    })
}

pub fn frame(message: &Message) -> Vec<u8> {
    wire::encode_frame(message).expect("fits a frame")
}

pub fn hello_from(peer: &Identity, binding: Binding, network: &str, version: &str, ts: u64) -> Vec<u8> {
    frame(&Message::Hello(build_hello(peer, Role::Initiator, binding, network, version, ts, None)))
}

pub fn get_network_info(id: u32) -> Vec<u8> {
    frame(&Message::Request { id: RequestId(id), body: Request::Discovery(discovery::Request::GetNetworkInfo) })
}

pub fn peers_answer(id: RequestId, records: Vec<wire::PeerRecord>) -> Vec<u8> {
    frame(&Message::Response { id, body: Response::Discovery(discovery::Response::Peers(records)) })
}

/// The requests the node sent on `conn`, with their ids and kinds.
pub fn requests_sent(outputs: &[Output], conn: ConnId) -> Vec<(RequestId, Kind)> {
    requests_on(outputs, conn).into_iter().map(|(id, body)| (id, body.kind())).collect()
}

/// The requests the node sent on `conn`, with their ids and bodies.
pub fn requests_on(outputs: &[Output], conn: ConnId) -> Vec<(RequestId, Request)> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::Send { conn: c, bytes } if *c == conn => wire::decode_body(&bytes[wire::FRAME_HEADER_LEN..]).ok(),
            _ => None,
        })
        .filter_map(|m| match m {
            Message::Request { id, body } => Some((id, body)),
            _ => None,
        })
        .collect()
}

/// Runs one inbound connection that sends `bytes` after securing, and returns why it closed.
pub fn inbound_sends(bytes: Vec<u8>) -> Option<CloseReason> {
    let mut node = first_node(Config::default());
    let conn = ConnId::inbound(1);
    open(&mut node, conn, peer_addr(2), Binding([5; 32]));
    node.handle(at(2), Input::Received { conn, bytes });
    let outputs = drain(&mut node);
    assert!(node.peer_ids().is_empty());
    closed_reason(&outputs, conn)
}

/// Establishes an inbound peer on a first node (binding [5; 32]); returns the node, the conn,
/// the peer and the outputs of the step that completed the handshake.
pub fn established_peer() -> (Node, ConnId, Identity, Vec<Output>) {
    established_peer_with(Config::default())
}

/// [`established_peer`] on a first node with `config`.
pub fn established_peer_with(config: Config) -> (Node, ConnId, Identity, Vec<Output>) {
    let mut node = first_node(config);
    let peer = Identity::from_secret_bytes(&[2; 32]);
    let conn = ConnId::inbound(1);
    let binding = Binding([5; 32]);
    open(&mut node, conn, peer_addr(2), binding);
    node.handle(at(2), Input::Received { conn, bytes: hello_from(&peer, binding, "mynet-dev", "1.0.0", WALL) });
    let mut outputs = drain(&mut node);
    assert_eq!(node.peer_ids(), vec![peer.node_id()]);
    // Reconciliation starts a round with every new peer; this peer's catalogue is as empty.
    for (id, kind) in requests_sent(&outputs, conn) {
        if kind == Kind::Reconcile {
            let bytes = frame(&Message::Response { id, body: Response::Reconcile(equal()) });
            node.handle(at(3), Input::Received { conn, bytes });
            outputs.extend(drain(&mut node));
        }
    }
    (node, conn, peer, outputs)
}

pub fn equal() -> mynet_core::reconcile::proto::Response {
    mynet_core::reconcile::proto::Response::Equal
}
