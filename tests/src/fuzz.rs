//! Bodies of the fuzz targets. `fuzz/` calls these under libFuzzer; the tests in
//! `tests/fuzz_corpus.rs` run every file of the corpora through them on stable Rust.

use core::net::SocketAddr;
use std::sync::OnceLock;

use mynet_core::config::BootstrapNode;
use mynet_core::content::PIECE_LEN;
use mynet_core::content::stream::{Part, Splitter};
use mynet_core::discovery;
use mynet_core::handshake::{Binding, Hello, Role, build_hello};
use mynet_core::refusal::{Refusal, RefusalReason};
use mynet_core::wire::{self, FrameBuffer, Message, PeerRecord, Request, Response};
use mynet_core::{Config, ConnId, Identity, Input, Node, NodeId, Output, PublicKey, RequestId, Time};
use mynet_storage::log::{decode_record, encode_record};

/// Frame reassembly and decoding: never panics, buffers boundedly, and whatever decodes
/// re-encodes to a frame that decodes to the same message.
pub fn frames(data: &[u8]) {
    let cut = usize::from(data.first().copied().unwrap_or(1)).max(1);
    let mut buffer = FrameBuffer::default();
    let mut bodies = Vec::new();
    for chunk in data.chunks(cut) {
        if buffer.push(chunk, &mut bodies).is_err() {
            break;
        }
        assert!(buffer.buffered_len() <= wire::FRAME_HEADER_LEN + wire::FRAME_LEN_MAX);
    }
    for body in bodies.iter().chain(std::iter::once(&data.to_vec())) {
        if let Ok(message) = wire::decode_body(body) {
            let again = wire::encode_frame(&message).expect("a decoded message fits a frame again");
            assert_eq!(wire::decode_body(&again[wire::FRAME_HEADER_LEN..]).as_ref(), Ok(&message));
        }
    }
    // The drivers' stream splitter over the same bytes: never panics, every piece is exactly
    // as long as its header says (at most one piece length), and the control frames it passes
    // on reassemble as whole frames.
    let mut splitter = Splitter::default();
    let mut parts = Vec::new();
    for chunk in data.chunks(cut) {
        if splitter.push(chunk, &mut parts).is_err() {
            break;
        }
    }
    for part in parts {
        match part {
            Part::Piece { header, data, .. } => {
                let len = header.piece_len().expect("the splitter checked the header");
                assert_eq!(data.len() as u64, len);
                assert!(len <= PIECE_LEN);
            }
            Part::Frames(bytes) => {
                let mut buffer = FrameBuffer::default();
                let mut whole = Vec::new();
                buffer.push(&bytes, &mut whole).expect("whole frames");
                assert_eq!(buffer.buffered_len(), 0, "only whole frames are passed on");
            }
        }
    }
}

const WALL_MS: u64 = 1_800_000_000_000;

/// A first node receiving `data` on a fresh inbound connection (after an optional valid
/// Hello): never panics and keeps its invariants.
pub fn handshake(data: &[u8]) {
    let mut node = Node::new(Config::default(), fixtures().node.clone(), 1, Time::new(0, WALL_MS));
    drain(&mut node);
    let conn = ConnId::inbound(0);
    let binding = binding_of(0);
    let now = Time::new(1_000, WALL_MS);
    node.handle(now, Input::Incoming { conn, addr: SocketAddr::from(([10, 0, 0, 2], 4000)) });
    node.handle(now, Input::Secured { conn, binding });
    if data.first().is_some_and(|b| b & 1 == 1) {
        node.handle(now, Input::Received { conn, bytes: fixtures().hello(0, 0, Role::Initiator) });
    }
    for chunk in data.get(1..).unwrap_or_default().chunks(97) {
        node.handle(now, Input::Received { conn, bytes: chunk.to_vec() });
        drain(&mut node);
        if let Err(err) = node.check_invariants() {
            panic!("invariant broken: {err}");
        }
    }
    node.handle(Time::new(60_000_000, WALL_MS + 60_000), Input::Tick);
    drain(&mut node);
}

/// Event-log record decoding: never panics, and what decodes re-encodes identically.
pub fn log_record(data: &[u8]) {
    if let Ok(record) = decode_record(0, data) {
        assert_eq!(decode_record(0, &encode_record(&record)), Ok(record));
    }
}

/// Peers the `node_inputs` target plays, bindings it uses, and their signed hellos.
struct Fixtures {
    node: Identity,
    peers: Vec<Identity>,
    /// `hellos[peer][binding][role]`, signed once per process (signing is the slow part).
    hellos: Vec<Vec<[Vec<u8>; 2]>>,
}

const PEERS: usize = 4;
const BINDINGS: usize = 16;

fn binding_of(i: usize) -> Binding {
    Binding([i as u8 + 1; 32])
}

impl Fixtures {
    fn hello(&self, peer: usize, binding: usize, role: Role) -> Vec<u8> {
        self.hellos[peer % PEERS][binding % BINDINGS][usize::from(role == Role::Responder)].clone()
    }
}

fn fixtures() -> &'static Fixtures {
    static FIXTURES: OnceLock<Fixtures> = OnceLock::new();
    FIXTURES.get_or_init(|| {
        let peers: Vec<Identity> = (0..PEERS).map(|i| Identity::from_secret_bytes(&[i as u8 + 2; 32])).collect();
        let hellos = peers
            .iter()
            .map(|peer| {
                (0..BINDINGS)
                    .map(|b| {
                        [Role::Initiator, Role::Responder].map(|role| {
                            let hello = build_hello(peer, role, binding_of(b), "mynet-dev", "1.0.0", WALL_MS, None);
                            let message =
                                if role == Role::Initiator { Message::Hello(hello) } else { Message::HelloAck(hello) };
                            wire::encode_frame(&message).expect("a hello fits a frame")
                        })
                    })
                    .collect()
            })
            .collect();
        Fixtures { node: Identity::from_secret_bytes(&[1; 32]), peers, hellos }
    })
}

/// Reads the fuzz input a byte at a time; zeros once it runs out.
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn byte(&mut self) -> u8 {
        let (first, rest) = self.0.split_first().map_or((0, &[][..]), |(b, r)| (*b, r));
        self.0 = rest;
        first
    }

    fn take(&mut self, n: usize) -> Vec<u8> {
        let n = n.min(self.0.len());
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        head.to_vec()
    }
}

/// The harness around one node: its connections as the fuzzer sees them, the requests it sent
/// (so answers can carry real ids), and the clock.
struct Harness {
    node: Node,
    conns: Vec<ConnId>,
    /// Requests the node sent: connection, id, kind.
    asked: Vec<(ConnId, RequestId, wire::Kind)>,
    mono_us: u64,
    wall_ms: u64,
    next_inbound: u64,
}

impl Harness {
    fn now(&self) -> Time {
        Time::new(self.mono_us, self.wall_ms)
    }

    fn step(&mut self, input: Input) {
        self.node.handle(self.now(), input);
        while let Some(output) = self.node.poll_output() {
            match output {
                Output::Dial { conn, .. } => self.conns.push(conn),
                Output::Send { conn, bytes } => self.note_requests(conn, &bytes),
                _ => {}
            }
        }
        if let Err(err) = self.node.check_invariants() {
            panic!("invariant broken: {err}");
        }
        if let Err(err) = self.node.check_tables() {
            panic!("table index broken: {err}");
        }
        if self.conns.len() > 64 {
            self.conns.drain(..32);
        }
    }

    fn note_requests(&mut self, conn: ConnId, bytes: &[u8]) {
        let mut buffer = FrameBuffer::default();
        let mut bodies = Vec::new();
        if buffer.push(bytes, &mut bodies).is_err() {
            panic!("the node sent a malformed frame");
        }
        for body in bodies {
            match wire::decode_body(&body) {
                Ok(Message::Request { id, body }) => self.asked.push((conn, id, body.kind())),
                Ok(_) => {}
                Err(err) => panic!("the node sent a frame that does not decode: {err}"),
            }
        }
        if self.asked.len() > 64 {
            self.asked.drain(..32);
        }
    }

    fn pick(&self, b: u8) -> ConnId {
        match self.conns.len() {
            0 => ConnId::inbound(u64::from(b)),
            n => self.conns[usize::from(b) % n],
        }
    }

    /// The index that names `conn`'s binding: the same conn always gets the same one.
    fn binding_index(conn: ConnId) -> usize {
        (conn.0 % BINDINGS as u64) as usize
    }
}

fn records(bytes: &mut Bytes<'_>, n: usize) -> Vec<PeerRecord> {
    (0..n)
        .map(|i| {
            let pick = bytes.byte();
            let (node_id, public_key) = match pick % 3 {
                0 => {
                    let p = &fixtures().peers[usize::from(pick) % PEERS];
                    (p.node_id(), p.public_key())
                }
                1 => {
                    let key = PublicKey([pick; 32]);
                    (NodeId::from_public_key(&key), key)
                }
                _ => (NodeId([pick; 32]), PublicKey([pick; 32])),
            };
            let address = SocketAddr::from(([10, 9, pick, i as u8], u16::from(bytes.byte()) * 7));
            PeerRecord { node_id, address, public_key }
        })
        .collect()
}

fn message(bytes: &mut Bytes<'_>, h: &Harness) -> Message {
    let (op, arg) = (bytes.byte(), bytes.byte());
    let answer_to = h.asked.get(usize::from(arg) % h.asked.len().max(1)).map(|(_, id, _)| *id);
    let id = if op & 0x80 != 0 { answer_to.unwrap_or(RequestId(u32::from(arg))) } else { RequestId(u32::from(arg)) };
    let n = usize::from(bytes.byte()) % (discovery::PEERS_PER_ANSWER_MAX + 2);
    match op % 5 {
        0 => Message::Request { id, body: Request::Discovery(discovery::Request::GetNetworkInfo) },
        1 => {
            let who =
                if arg % 2 == 0 { fixtures().peers[usize::from(arg) % PEERS].node_id() } else { NodeId([arg; 32]) };
            let exclude = records(bytes, n.min(8)).into_iter().map(|r| r.node_id).collect();
            let body = discovery::Request::DiscoverPeers { node_id: who, max_peers: u16::from(arg), exclude };
            Message::Request { id, body: Request::Discovery(body) }
        }
        2 => Message::Response { id, body: Response::Discovery(discovery::Response::Peers(records(bytes, n))) },
        3 => {
            let info = discovery::NetworkInfo { peers: records(bytes, n), ..Default::default() };
            Message::Response { id, body: Response::Discovery(discovery::Response::NetworkInfo(info)) }
        }
        _ if arg % 2 == 1 => {
            // A refusal signed by a fixture peer for one of the bindings (this channel's or
            // not); some name a network longer than the decoder accepts.
            let peer = &fixtures().peers[usize::from(arg / 32) % PEERS];
            let reason = match arg % 6 {
                1 => RefusalReason::PerIpLimit { max: u32::from(arg) },
                3 => RefusalReason::WrongNetwork { ours: "x".repeat(usize::from(arg) % 70) },
                _ => RefusalReason::Banned,
            };
            let binding = binding_of(usize::from(arg / 2) % BINDINGS);
            Message::Refused(Refusal::sign(peer, binding, reason, u32::from(arg) * 997))
        }
        _ => {
            let hello: Hello = build_hello(&fixtures().node, Role::Initiator, binding_of(0), "x", "1.0.0", 0, None);
            Message::Hello(hello)
        }
    }
}

/// An arbitrary sequence of inputs into a `Node` (connections, handshakes, messages, raw
/// bytes, closes, time, restarts, shutdown), with every invariant checked after every step.
pub fn node_inputs(data: &[u8]) {
    let mut bytes = Bytes(data);
    let f = fixtures();
    let mut config = Config { max_inbound: 6, max_outbound: 6, max_per_ip: 2, target_peers: 3, ..Config::default() };
    config.max_known_peers = 8 + u32::from(bytes.byte() % 64);
    if bytes.byte() % 2 == 1 {
        let p = &f.peers[0];
        let address = SocketAddr::from(([10, 0, 0, 1], 7401));
        config.bootstrap_nodes = vec![BootstrapNode { node_id: p.node_id(), address, public_key: p.public_key() }];
    }
    let mut h = Harness {
        node: Node::new(config.clone(), f.node.clone(), 1, Time::new(0, WALL_MS)),
        conns: Vec::new(),
        asked: Vec::new(),
        mono_us: 0,
        wall_ms: WALL_MS,
        next_inbound: 0,
    };
    h.step(Input::Tick);
    for _ in 0..256 {
        if bytes.0.is_empty() {
            break;
        }
        let (op, a, b) = (bytes.byte(), bytes.byte(), bytes.byte());
        let input = match op % 10 {
            0 => {
                let conn = ConnId::inbound(h.next_inbound);
                h.next_inbound += 1;
                h.conns.push(conn);
                Input::Incoming { conn, addr: SocketAddr::from(([10, 0, 0, a % 4], 4000 + u16::from(b))) }
            }
            1 => {
                let conn = h.pick(a);
                Input::Secured { conn, binding: binding_of(Harness::binding_index(conn)) }
            }
            2 => {
                let conn = h.pick(a);
                let role = if conn.is_inbound() { Role::Initiator } else { Role::Responder };
                Input::Received { conn, bytes: f.hello(usize::from(b), Harness::binding_index(conn), role) }
            }
            3 => {
                let conn = h.pick(a);
                let message = message(&mut bytes, &h);
                Input::Received { conn, bytes: wire::encode_frame(&message).unwrap_or_default() }
            }
            4 => Input::Received { conn: h.pick(a), bytes: bytes.take(usize::from(b) % 96) },
            5 => Input::Closed { conn: h.pick(a), reason: "fuzz".into() },
            6 | 7 => {
                let step_us = match h.node.poll_timeout() {
                    Some((at, _)) if a % 2 == 0 => at.0.saturating_sub(h.mono_us),
                    _ => u64::from(a) * u64::from(b) * 1000,
                };
                h.mono_us += step_us;
                h.wall_ms += step_us / 1000;
                Input::Tick
            }
            8 => Input::Restart { config: Box::new(config.clone()), rng_seed: u64::from(a) },
            _ => Input::Shutdown,
        };
        h.step(input);
    }
}

fn drain(node: &mut Node) {
    while node.poll_output().is_some() {}
}

/// Seed inputs for each target, by target name; `fuzz/corpus/NAME/` holds them as files.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    use mynet_storage::log::LogRecord;
    let peer = &fixtures().peers[0];
    let hello = build_hello(peer, Role::Initiator, binding_of(0), "mynet-dev", "1.0.0", WALL_MS, None);
    let record = PeerRecord {
        node_id: peer.node_id(),
        address: SocketAddr::from(([10, 0, 0, 3], 7401)),
        public_key: peer.public_key(),
    };
    let frame = |m: &Message| wire::encode_frame(m).expect("fits");
    let request = |id: u32, r: discovery::Request| Message::Request { id: RequestId(id), body: Request::Discovery(r) };
    let discover = discovery::Request::DiscoverPeers { node_id: peer.node_id(), max_peers: 50, exclude: vec![] };
    let peers_answer =
        Message::Response { id: RequestId(0), body: Response::Discovery(discovery::Response::Peers(vec![record])) };
    let mut frames_seed = vec![5u8];
    frames_seed.extend(frame(&Message::Hello(hello)));
    frames_seed.extend(frame(&peers_answer));
    // A piece of a 10-byte item between two control frames (what the stream splitter sees).
    let header =
        mynet_core::content::proto::PieceHeader { id: mynet_core::content::ContentId([7; 32]), index: 0, size: 10 };
    frames_seed.extend(mynet_core::content::stream::encode_piece(RequestId(3), header, &[1; 10]).expect("fits"));
    frames_seed.extend(frame(&request(2, discovery::Request::GetNetworkInfo)));
    let mut after_hello = vec![1u8];
    after_hello.extend(frame(&request(0, discover)));
    after_hello.extend(frame(&request(1, discovery::Request::GetNetworkInfo)));
    let mut before_hello = vec![0u8];
    before_hello.extend(frame(&request(0, discovery::Request::GetNetworkInfo)));
    // node_inputs: incoming, secured, hello, then requests and an answer to what the node asked.
    let inbound_session = vec![
        10, 0, //
        0, 1, 0, // incoming
        1, 0, 0, // secured
        2, 0, 0, // hello from peer 0
        3, 0, 0, 0, 1, 3, // get_network_info
        3, 0, 0, 1, 0, 0, // discover_peers
        6, 0, 0, // tick to the next deadline
        3, 0, 0, 0x82, 0, 2, 1, 1, 2, 2, // answer the node's request with peers
        7, 200, 200, // time passes
        8, 3, 0, // restart
        9, 0, 0, // shutdown
    ];
    let joining = vec![
        20, 1, //
        1, 0, 0, // secure the dial to the bootstrap node
        2, 0, 0, // its handshake_response
        3, 0, 0, 0x83, 0, 4, 1, 2, 3, 4, 5, 6, 7, 8, // an answer to what the node asked
        6, 0, 0, 6, 0, 0, 6, 0, 0, // deadlines pass
        5, 0, 0, // the transport closes
    ];
    // The bootstrap node refuses the joining node (per-IP limit, signed for the dial's channel),
    // then time passes: the next rounds wait for the hint.
    let refused = vec![
        20, 1, //
        1, 0, 0, // secure the dial to the bootstrap node
        3, 0, 0, 4, 1, 0, // its refusal
        6, 0, 0, 6, 0, 0, 6, 0, 0, // deadlines pass
    ];
    vec![
        ("frames", frames_seed),
        ("frames", vec![1, 0, 4, 0, 0, 0xff, 0xff, 0xff]),
        ("frames", vec![3, 0, 0, 0, 0]),
        ("handshake", after_hello),
        ("handshake", before_hello),
        ("handshake", vec![1, 0xff, 0xff, 0xff, 0xff, 0, 1, 2]),
        (
            "log_record",
            encode_record(&LogRecord::Input {
                time: Time::new(5, 6),
                input: Input::Received { conn: ConnId(1), bytes: vec![1, 2, 3] },
            }),
        ),
        (
            "log_record",
            encode_record(&LogRecord::Genesis {
                node_id: peer.node_id(),
                config: Box::default(),
                rng_seed: 3,
                time: Time::new(0, 1),
            }),
        ),
        ("log_record", vec![1, 1, 0xff, 0xff, 0xff, 0xff, 0xff, 0x0f]),
        ("node_inputs", inbound_session),
        ("node_inputs", joining),
        ("node_inputs", vec![0; 40]),
        ("node_inputs", refused),
    ]
}
