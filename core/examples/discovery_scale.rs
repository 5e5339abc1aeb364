//! How the cost of handling one discovery answer grows with the known-peer table.
//!
//! A first node with one established peer fills its table through real discovery rounds (each
//! answer 50 new peers, the table's bound `max_known_peers`), then handles more answers with the
//! table full, so every new peer evicts one and every answer runs `fill_peers`. Prints one JSON
//! line per table size and the ratio of the largest to the smallest.
//!
//! `cargo run --release -p mynet-core --example discovery_scale -- 1000 100000`

use core::net::SocketAddr;
use std::time::Instant;

use mynet_core::discovery::{self, PEERS_PER_ANSWER_MAX};
use mynet_core::handshake::{Binding, Role, build_hello};
use mynet_core::wire::{self, Message, PeerRecord, Response};
use mynet_core::{Config, ConnId, Identity, Input, Node, NodeId, Output, PublicKey, RequestId, Time};

const WALL: u64 = 1_800_000_000_000;
/// Answers timed once the table is full.
const MEASURED: u64 = 400;

struct Bench {
    node: Node,
    conn: ConnId,
    now_us: u64,
    next_peer: u64,
}

impl Bench {
    fn new(max_known: u32) -> Bench {
        let config = Config {
            max_known_peers: max_known,
            discovery_interval_ms: 1,
            handshake_timeout_ms: 3_600_000,
            max_outbound: 1000,
            max_per_ip: 1000,
            ..Config::default()
        };
        let mut node = Node::new(config, Identity::from_secret_bytes(&[1; 32]), 7, Time::new(0, WALL));
        while node.poll_output().is_some() {}
        let peer = Identity::from_secret_bytes(&[2; 32]);
        let (conn, binding) = (ConnId::inbound(0), Binding([9; 32]));
        let t = Time::new(1000, WALL);
        node.handle(t, Input::Incoming { conn, addr: SocketAddr::from(([10, 0, 0, 2], 4000)) });
        node.handle(t, Input::Secured { conn, binding });
        let hello = build_hello(&peer, Role::Initiator, binding, "mynet-dev", "1.0.0", WALL, None);
        let bytes = wire::encode_frame(&Message::Hello(hello)).expect("fits");
        node.handle(t, Input::Received { conn, bytes });
        while node.poll_output().is_some() {}
        assert_eq!(node.peer_ids().len(), 1);
        Bench { node, conn, now_us: 1000, next_peer: 0 }
    }

    /// Runs one discovery round and returns the id of the request it sent us.
    fn round(&mut self) -> RequestId {
        self.now_us += 2000;
        self.node.handle(Time::new(self.now_us, WALL), Input::Tick);
        let mut asked = None;
        while let Some(output) = self.node.poll_output() {
            if let Output::Send { conn, bytes } = output
                && conn == self.conn
                && let Ok(Message::Request { id, .. }) = wire::decode_body(&bytes[wire::FRAME_HEADER_LEN..])
            {
                asked = Some(id);
            }
        }
        asked.expect("each round asks the one peer")
    }

    /// An answer of 50 peers nobody has heard of.
    fn answer(&mut self, id: RequestId) -> Vec<u8> {
        let records = (0..PEERS_PER_ANSWER_MAX)
            .map(|_| {
                let i = self.next_peer;
                self.next_peer += 1;
                let mut key = [0u8; 32];
                key[..8].copy_from_slice(&i.to_le_bytes());
                let public_key = PublicKey(key);
                let b = i.to_be_bytes();
                PeerRecord {
                    node_id: NodeId::from_public_key(&public_key),
                    address: SocketAddr::from(([10, b[5], b[6], b[7]], 7401)),
                    public_key,
                }
            })
            .collect();
        let body = Response::Discovery(discovery::Response::Peers(records));
        wire::encode_frame(&Message::Response { id, body }).expect("fits")
    }

    /// Handles one answer; returns the nanoseconds `handle` and draining took.
    fn handle_answer(&mut self) -> u128 {
        let id = self.round();
        let bytes = self.answer(id);
        let start = Instant::now();
        self.node.handle(Time::new(self.now_us, WALL), Input::Received { conn: self.conn, bytes });
        while self.node.poll_output().is_some() {}
        start.elapsed().as_nanos()
    }
}

fn main() {
    let sizes: Vec<u32> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let sizes = if sizes.is_empty() { vec![1_000, 100_000] } else { sizes };
    let mut per_answer = Vec::new();
    for &max_known in &sizes {
        let mut bench = Bench::new(max_known);
        let fill_start = Instant::now();
        while bench.node.known_peers() < max_known as usize {
            bench.handle_answer();
        }
        let fill_s = fill_start.elapsed().as_secs_f64();
        let total: u128 = (0..MEASURED).map(|_| bench.handle_answer()).sum();
        let us = total as f64 / MEASURED as f64 / 1000.0;
        per_answer.push(us);
        assert!(bench.node.check_tables().is_ok(), "table indexes in step");
        println!(
            "{{\"known_peers\":{},\"us_per_answer\":{us:.1},\"answers_timed\":{MEASURED},\"fill_s\":{fill_s:.2}}}",
            bench.node.known_peers()
        );
    }
    if let (Some(first), Some(last)) = (per_answer.first(), per_answer.last()) {
        println!(
            "{{\"ratio_largest_to_smallest\":{:.2},\"smallest\":{},\"largest\":{}}}",
            last / first,
            sizes[0],
            sizes[sizes.len() - 1]
        );
    }
}
