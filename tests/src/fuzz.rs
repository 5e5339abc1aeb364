//! Bodies of the fuzz targets. `fuzz/` calls these under libFuzzer; the tests in
//! `tests/fuzz_corpus.rs` run every file of the seed corpora through them on stable Rust.

use core::net::SocketAddr;

use mynet_core::handshake::{Binding, Role, build_hello};
use mynet_core::wire::{self, FrameBuffer, Message};
use mynet_core::{Config, ConnId, Identity, Input, Node, Time};
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
            let again = wire::encode_frame(&message);
            assert_eq!(wire::decode_body(&again[wire::FRAME_HEADER_LEN..]).as_ref(), Ok(&message));
        }
    }
}

const WALL_MS: u64 = 1_800_000_000_000;

/// A first node receiving `data` on a fresh inbound connection (after an optional valid
/// Hello): never panics and keeps its invariants.
pub fn handshake(data: &[u8]) {
    let mut node = Node::new(Config::default(), Identity::from_secret_bytes(&[1; 32]), 1, Time::new(0, WALL_MS));
    drain(&mut node);
    let conn = ConnId::inbound(0);
    let binding = Binding([7; 32]);
    let now = Time::new(1_000, WALL_MS);
    node.handle(now, Input::Incoming { conn, addr: SocketAddr::from(([10, 0, 0, 2], 4000)) });
    node.handle(now, Input::Secured { conn, binding });
    if data.first().is_some_and(|b| b & 1 == 1) {
        let peer = Identity::from_secret_bytes(&[2; 32]);
        let hello = build_hello(&peer, Role::Initiator, binding, "mynet-dev", "1.0.0", WALL_MS, None);
        node.handle(now, Input::Received { conn, bytes: wire::encode_frame(&Message::Hello(hello)) });
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

fn drain(node: &mut Node) {
    while node.poll_output().is_some() {}
}

/// Seed inputs for each target, by target name; `fuzz/corpus/NAME/` holds them as files.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    use mynet_core::wire::PeerRecord;
    use mynet_storage::log::LogRecord;
    let peer = Identity::from_secret_bytes(&[2; 32]);
    let hello = build_hello(&peer, Role::Initiator, Binding([7; 32]), "mynet-dev", "1.0.0", WALL_MS, None);
    let record = PeerRecord {
        node_id: peer.node_id(),
        address: SocketAddr::from(([10, 0, 0, 3], 7401)),
        public_key: peer.public_key(),
    };
    let mut frames_seed = vec![5u8];
    frames_seed.extend(wire::encode_frame(&Message::Hello(hello.clone())));
    frames_seed.extend(wire::encode_frame(&Message::Peers(vec![record.clone()])));
    let mut after_hello = vec![1u8];
    after_hello.extend(wire::encode_frame(&Message::DiscoverPeers {
        node_id: peer.node_id(),
        max_peers: 50,
        exclude: vec![],
    }));
    after_hello.extend(wire::encode_frame(&Message::GetNetworkInfo));
    let mut before_hello = vec![0u8];
    before_hello.extend(wire::encode_frame(&Message::GetNetworkInfo));
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
    ]
}
