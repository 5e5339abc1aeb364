//! Wire messages and framing.
//!
//! A frame is `[u32 big-endian length][u8 wire version][postcard payload]`, where the length
//! counts the version byte and the payload. The length is checked against [`FRAME_LEN_MAX`]
//! before a single byte of the payload is buffered, so a peer cannot make us allocate more.

use std::fmt;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::content::proto as content;
use crate::dht;
use crate::discovery;
use crate::handshake::{self, Hello};
use crate::netstatus;
use crate::reconcile;
use crate::refusal::Refusal;
use crate::request::RequestId;

pub use crate::discovery::{EXCLUDE_MAX, NetworkInfo, NetworkStats, PEERS_PER_ANSWER_MAX, PeerRecord};

/// The wire format version carried in every frame (2: requests carry ids; 3: content).
pub const WIRE_VERSION: u8 = 6;
/// Bytes of the length prefix.
pub const FRAME_HEADER_LEN: usize = 4;
/// Largest frame body (version byte + payload) we accept or send. The largest message today
/// is about 9 KiB (a full `DiscoverPeers` exclude list); a protocol whose data can be larger
/// pages it (see ARCHITECTURE.md, "Messages larger than a frame").
pub const FRAME_LEN_MAX: usize = 64 * 1024;
/// Longest string field (network id, version, feature) a peer may send.
pub const SHORT_STRING_MAX: usize = 64;

/// The envelope: every message a peer can send. The handshake has its own two variants; every
/// other protocol nests its messages in a [`Request`] or a [`Response`], and each protocol's
/// module owns its message types and their decode bounds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// The initiator's signed handshake (SPEC R6.2 `handshake`).
    Hello(Hello),
    /// The responder's signed answer (SPEC R6.2 `handshake_response`).
    HelloAck(Hello),
    /// A question the peer must answer with a [`Message::Response`] carrying the same id.
    Request { id: RequestId, body: Request },
    /// The answer to the request `id` that the receiver sent on this connection.
    Response { id: RequestId, body: Response },
    /// The answer to a content `Piece` request `id`: the piece's raw bytes follow this frame
    /// on the stream (see `content::proto`). The driver's transport takes them out of the
    /// stream; the node itself never sees this message.
    Piece { id: RequestId, header: content::PieceHeader },
    /// The sender no longer wants the answer to its request `id` (an endgame duplicate that
    /// lost the race): the receiver drops it if it has not sent it yet. No answer.
    Cancel { id: RequestId },
    /// The responder refuses the connection and says why, signed and bound to the channel,
    /// instead of its handshake answer; it closes the connection next (see `refusal`).
    Refused(Refusal),
}

/// A request, by protocol. Adding a protocol adds one variant here and in [`Response`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Peer exchange (SPEC R4.3, R5.1).
    Discovery(discovery::Request),
    /// Content: listings, announcements, metadata, pieces (SPEC R7).
    Content(content::Request),
    /// Reconciliation of the catalogue (SPEC R8).
    Reconcile(reconcile::proto::Request),
    /// The DHT: nodes near an id, provider records (SPEC R5.2).
    Dht(dht::proto::Request),
    /// The status broadcast (SPEC R10.2).
    Status(netstatus::Request),
}

/// An answer, by protocol.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// Peer exchange.
    Discovery(discovery::Response),
    /// Content.
    Content(content::Response),
    /// Reconciliation.
    Reconcile(reconcile::proto::Response),
    /// The DHT.
    Dht(dht::proto::Response),
    /// The status broadcast.
    Status(netstatus::Response),
}

/// Every kind of message, flat: what the request layer expects, what logs and filters name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Kind {
    Hello,
    HelloAck,
    GetNetworkInfo,
    NetworkInfo,
    DiscoverPeers,
    Peers,
    Announce,
    Ack,
    GetHead,
    Head,
    GetPage,
    Page,
    GetHave,
    Have,
    GetPiece,
    Piece,
    NotHeld,
    Cancel,
    Reconcile,
    Equal,
    Differs,
    GetCells,
    Cells,
    GetKeys,
    Keys,
    GetMeta,
    Metas,
    Offer,
    Taken,
    Refused,
    FindNode,
    Nodes,
    GetProviders,
    Providers,
    AddProviders,
    Added,
    StatusReport,
    StatusNoted,
    ConnectionRefused,
}

impl Kind {
    /// The name in logs, `mynet replay --kind` and SPEC terms.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Hello => "hello",
            Kind::HelloAck => "handshake_response",
            Kind::GetNetworkInfo => "get_network_info",
            Kind::NetworkInfo => "network_info",
            Kind::DiscoverPeers => "discover_peers",
            Kind::Peers => "peers",
            Kind::Announce => "announce",
            Kind::Ack => "ack",
            Kind::GetHead => "get_head",
            Kind::Head => "head",
            Kind::GetPage => "get_page",
            Kind::Page => "page",
            Kind::GetHave => "get_have",
            Kind::Have => "have",
            Kind::GetPiece => "get_piece",
            Kind::Piece => "piece",
            Kind::NotHeld => "not_held",
            Kind::Cancel => "cancel",
            Kind::Reconcile => "reconcile",
            Kind::Equal => "equal",
            Kind::Differs => "differs",
            Kind::GetCells => "get_cells",
            Kind::Cells => "cells",
            Kind::GetKeys => "get_keys",
            Kind::Keys => "keys",
            Kind::GetMeta => "get_meta",
            Kind::Metas => "metas",
            Kind::Offer => "offer",
            Kind::Taken => "taken",
            Kind::Refused => "refused",
            Kind::FindNode => "find_node",
            Kind::Nodes => "nodes",
            Kind::GetProviders => "get_providers",
            Kind::Providers => "providers",
            Kind::AddProviders => "add_providers",
            Kind::Added => "added",
            Kind::StatusReport => "status_report",
            Kind::StatusNoted => "status_noted",
            Kind::ConnectionRefused => "connection_refused",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The protocols that make requests; each has its own rate limit and in-flight bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Protocol {
    Discovery,
    Content,
    Reconcile,
    Dht,
    Status,
}

impl Protocol {
    /// How many protocols there are (the request layer keeps one rate window per protocol).
    pub const COUNT: usize = 5;

    /// Dense index in `0..COUNT`.
    pub fn index(self) -> usize {
        match self {
            Protocol::Discovery => 0,
            Protocol::Content => 1,
            Protocol::Reconcile => 2,
            Protocol::Dht => 3,
            Protocol::Status => 4,
        }
    }

    /// Requests of this protocol a peer may make per window, and the window.
    pub fn rate_limit(self) -> RateLimit {
        match self {
            Protocol::Discovery => discovery::RATE_LIMIT,
            Protocol::Content => content::RATE_LIMIT,
            Protocol::Reconcile => reconcile::proto::RATE_LIMIT,
            Protocol::Dht => dht::proto::RATE_LIMIT,
            Protocol::Status => netstatus::RATE_LIMIT,
        }
    }

    /// Requests of this protocol we keep in flight to one peer.
    pub fn in_flight_max(self) -> usize {
        match self {
            Protocol::Discovery => discovery::IN_FLIGHT_MAX,
            Protocol::Content => content::IN_FLIGHT_MAX,
            Protocol::Reconcile => reconcile::proto::IN_FLIGHT_MAX,
            Protocol::Dht => dht::proto::IN_FLIGHT_MAX,
            Protocol::Status => netstatus::IN_FLIGHT_MAX,
        }
    }
}

/// At most `max` requests per `window_ms`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    /// Requests allowed in one window.
    pub max: u16,
    /// Window length.
    pub window_ms: u64,
}

impl Message {
    /// The message's kind.
    pub fn kind(&self) -> Kind {
        match self {
            Message::Hello(_) => Kind::Hello,
            Message::HelloAck(_) => Kind::HelloAck,
            Message::Request { body, .. } => body.kind(),
            Message::Response { body, .. } => body.kind(),
            Message::Piece { .. } => Kind::Piece,
            Message::Cancel { .. } => Kind::Cancel,
            Message::Refused(_) => Kind::ConnectionRefused,
        }
    }

    fn check_bounds(&self) -> Result<(), WireError> {
        match self {
            Message::Hello(hello) | Message::HelloAck(hello) => handshake::check_bounds(hello),
            Message::Request { body: Request::Discovery(r), .. } => r.check_bounds(),
            Message::Response { body: Response::Discovery(r), .. } => r.check_bounds(),
            Message::Request { body: Request::Content(r), .. } => r.check_bounds(),
            Message::Response { body: Response::Content(r), .. } => r.check_bounds(),
            Message::Request { body: Request::Reconcile(r), .. } => r.check_bounds(),
            Message::Response { body: Response::Reconcile(r), .. } => r.check_bounds(),
            Message::Request { body: Request::Dht(r), .. } => r.check_bounds(),
            Message::Response { body: Response::Dht(r), .. } => r.check_bounds(),
            Message::Request { body: Request::Status(r), .. } => r.check_bounds(),
            Message::Response { body: Response::Status(r), .. } => r.check_bounds(),
            Message::Piece { header, .. } => header.piece_len().map(|_| ()),
            Message::Cancel { .. } => Ok(()),
            Message::Refused(refusal) => refusal.check_bounds(),
        }
    }
}

impl Request {
    /// The request's kind.
    pub fn kind(&self) -> Kind {
        match self {
            Request::Discovery(r) => r.kind(),
            Request::Content(r) => r.kind(),
            Request::Reconcile(r) => r.kind(),
            Request::Dht(r) => r.kind(),
            Request::Status(r) => r.kind(),
        }
    }

    /// The kind of answer it expects.
    pub fn expects(&self) -> Kind {
        match self {
            Request::Discovery(r) => r.expects(),
            Request::Content(r) => r.expects(),
            Request::Reconcile(r) => r.expects(),
            Request::Dht(r) => r.expects(),
            Request::Status(r) => r.expects(),
        }
    }

    /// Its protocol.
    pub fn protocol(&self) -> Protocol {
        match self {
            Request::Discovery(_) => Protocol::Discovery,
            Request::Content(_) => Protocol::Content,
            Request::Reconcile(_) => Protocol::Reconcile,
            Request::Dht(_) => Protocol::Dht,
            Request::Status(_) => Protocol::Status,
        }
    }
}

impl Response {
    /// The answer's kind.
    pub fn kind(&self) -> Kind {
        match self {
            Response::Discovery(r) => r.kind(),
            Response::Content(r) => r.kind(),
            Response::Reconcile(r) => r.kind(),
            Response::Dht(r) => r.kind(),
            Response::Status(r) => r.kind(),
        }
    }
}

/// Why bytes from a peer could not be turned into a message, or a message into a frame.
#[derive(Debug, Error, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum WireError {
    #[error("frame length {len} exceeds the maximum {max}")]
    FrameTooLarge { len: usize, max: usize },
    #[error("empty frame")]
    EmptyFrame,
    #[error("unsupported wire version {0}")]
    UnknownVersion(u8),
    #[error("undecodable frame: {0}")]
    Undecodable(String),
    #[error("{0}")]
    OutOfBounds(String),
}

/// Encodes `message` as one frame, or refuses it if it does not fit [`FRAME_LEN_MAX`]
/// (a protocol whose data can grow pages it instead; see `discovery` for bounded lists).
pub fn encode_frame(message: &Message) -> Result<Vec<u8>, WireError> {
    let mut out = vec![0u8; FRAME_HEADER_LEN];
    out.push(WIRE_VERSION);
    let mut out = postcard::to_extend(message, out).map_err(|e| WireError::Undecodable(e.to_string()))?;
    let body_len = out.len() - FRAME_HEADER_LEN;
    if body_len > FRAME_LEN_MAX {
        return Err(WireError::FrameTooLarge { len: body_len, max: FRAME_LEN_MAX });
    }
    let len = u32::try_from(body_len).map_err(|_| WireError::FrameTooLarge { len: body_len, max: FRAME_LEN_MAX })?;
    out[..FRAME_HEADER_LEN].copy_from_slice(&len.to_be_bytes());
    Ok(out)
}

/// Decodes one frame body (version byte + payload) and checks its bounds.
pub fn decode_body(body: &[u8]) -> Result<Message, WireError> {
    let (&version, payload) = body.split_first().ok_or(WireError::EmptyFrame)?;
    if version != WIRE_VERSION {
        return Err(WireError::UnknownVersion(version));
    }
    let (message, rest): (Message, &[u8]) =
        postcard::take_from_bytes(payload).map_err(|e| WireError::Undecodable(e.to_string()))?;
    if !rest.is_empty() {
        return Err(WireError::Undecodable(format!("{} trailing bytes", rest.len())));
    }
    message.check_bounds()?;
    Ok(message)
}

/// Reassembles frames from a byte stream, refusing oversized ones before buffering them.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct FrameBuffer {
    buf: Vec<u8>,
}

impl FrameBuffer {
    /// Bytes buffered and not yet part of a complete frame.
    pub fn buffered_len(&self) -> usize {
        self.buf.len()
    }

    /// Feeds `bytes` and calls `on_frame` with every complete frame body, in order, until it
    /// returns false. Frames wholly inside `bytes` are passed without copying; only a partial
    /// frame is buffered, at most `FRAME_HEADER_LEN + FRAME_LEN_MAX` bytes.
    pub fn drain(&mut self, mut bytes: &[u8], mut on_frame: impl FnMut(&[u8]) -> bool) -> Result<(), WireError> {
        while !self.buf.is_empty() && !bytes.is_empty() {
            let need = self.needed()?;
            let take = need.saturating_sub(self.buf.len()).min(bytes.len());
            self.buf.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.buf.len() == need && need > FRAME_HEADER_LEN {
                let body = std::mem::take(&mut self.buf);
                if !on_frame(&body[FRAME_HEADER_LEN..]) {
                    return Ok(());
                }
            } else if self.buf.len() == need && self.body_len() == 0 {
                return Err(WireError::EmptyFrame);
            }
        }
        while bytes.len() >= FRAME_HEADER_LEN {
            let len = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
            if len > FRAME_LEN_MAX {
                return Err(WireError::FrameTooLarge { len, max: FRAME_LEN_MAX });
            }
            if len == 0 {
                return Err(WireError::EmptyFrame);
            }
            if bytes.len() < FRAME_HEADER_LEN + len {
                break;
            }
            if !on_frame(&bytes[FRAME_HEADER_LEN..FRAME_HEADER_LEN + len]) {
                return Ok(());
            }
            bytes = &bytes[FRAME_HEADER_LEN + len..];
        }
        self.buf.extend_from_slice(bytes);
        if self.buf.len() >= FRAME_HEADER_LEN {
            self.needed()?;
        }
        Ok(())
    }

    /// Appends `bytes` and returns every complete frame body, or the first error.
    ///
    /// At most `FRAME_HEADER_LEN + FRAME_LEN_MAX` bytes stay buffered between calls.
    pub fn push(&mut self, mut bytes: &[u8], frames: &mut Vec<Vec<u8>>) -> Result<(), WireError> {
        loop {
            let need = self.needed()?;
            let take = need.saturating_sub(self.buf.len()).min(bytes.len());
            self.buf.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.buf.len() < need {
                return Ok(());
            }
            if need > FRAME_HEADER_LEN {
                frames.push(self.buf[FRAME_HEADER_LEN..].to_vec());
                self.buf.clear();
            } else if self.body_len() == 0 {
                return Err(WireError::EmptyFrame);
            }
            if bytes.is_empty() && self.buf.is_empty() {
                return Ok(());
            }
        }
    }

    fn body_len(&self) -> usize {
        let mut header = [0u8; FRAME_HEADER_LEN];
        header.copy_from_slice(&self.buf[..FRAME_HEADER_LEN]);
        u32::from_be_bytes(header) as usize
    }

    /// Total bytes (header + body) the frame being assembled needs.
    fn needed(&self) -> Result<usize, WireError> {
        if self.buf.len() < FRAME_HEADER_LEN {
            return Ok(FRAME_HEADER_LEN);
        }
        let len = self.body_len();
        if len > FRAME_LEN_MAX {
            return Err(WireError::FrameTooLarge { len, max: FRAME_LEN_MAX });
        }
        Ok(FRAME_HEADER_LEN + len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::{NodeId, PublicKey};
    use core::net::SocketAddr;
    use proptest::prelude::*;

    fn peer(i: u8) -> PeerRecord {
        PeerRecord {
            node_id: NodeId([i; 32]),
            address: SocketAddr::from(([127, 0, 0, i], 7000 + u16::from(i))),
            public_key: PublicKey([i; 32]),
        }
    }

    fn request(id: u32, r: discovery::Request) -> Message {
        Message::Request { id: RequestId(id), body: Request::Discovery(r) }
    }

    fn arb_message() -> impl Strategy<Value = Message> {
        prop_oneof![
            any::<u32>().prop_map(|id| request(id, discovery::Request::GetNetworkInfo)),
            (any::<u32>(), any::<[u8; 32]>(), 0u16..100, proptest::collection::vec(any::<[u8; 32]>(), 0..20)).prop_map(
                |(rid, id, max_peers, ex)| request(
                    rid,
                    discovery::Request::DiscoverPeers {
                        node_id: NodeId(id),
                        max_peers,
                        exclude: ex.into_iter().map(NodeId).collect()
                    }
                )
            ),
            (any::<u32>(), proptest::collection::vec(any::<u8>(), 0..50)).prop_map(|(id, ids)| Message::Response {
                id: RequestId(id),
                body: Response::Discovery(discovery::Response::Peers(ids.into_iter().map(peer).collect()))
            }),
            (any::<[u8; 32]>(), "[a-z-]{0,20}", any::<u64>(), any::<Option<u16>>(), any::<u8>()).prop_map(
                |(k, net, ts, port, s)| {
                    Message::Hello(Hello {
                        node_id: NodeId(k),
                        public_key: PublicKey(k),
                        network_id: net,
                        network_version: "1.0.0".into(),
                        features: vec!["dht".into()],
                        timestamp_ms: ts,
                        listen_addr: port.map(|p| SocketAddr::from(([10, 0, 0, 1], p))),
                        signature: [s; 64],
                    })
                }
            ),
        ]
    }

    proptest! {
        #[test]
        fn frames_round_trip_in_any_chunking(messages in proptest::collection::vec(arb_message(), 1..8), cut in 1usize..64) {
            let stream: Vec<u8> = messages.iter().flat_map(|m| encode_frame(m).expect("fits")).collect();
            let mut buffer = FrameBuffer::default();
            let mut frames = Vec::new();
            for chunk in stream.chunks(cut) {
                buffer.push(chunk, &mut frames).expect("valid stream");
            }
            let decoded: Vec<Message> = frames.iter().map(|f| decode_body(f).expect("decodes")).collect();
            prop_assert_eq!(decoded, messages);
            prop_assert_eq!(buffer.buffered_len(), 0);
        }

        #[test]
        fn drain_agrees_with_push(messages in proptest::collection::vec(arb_message(), 1..6), cut in 1usize..300, garbage in proptest::collection::vec(any::<u8>(), 0..16)) {
            let mut stream: Vec<u8> = messages.iter().flat_map(|m| encode_frame(m).expect("fits")).collect();
            stream.extend(garbage);
            let (mut a, mut b) = (FrameBuffer::default(), FrameBuffer::default());
            let (mut pushed, mut drained) = (Vec::new(), Vec::new());
            let (mut ra, mut rb) = (Ok(()), Ok(()));
            for chunk in stream.chunks(cut) {
                if ra.is_ok() { ra = a.push(chunk, &mut pushed); }
                if rb.is_ok() { rb = b.drain(chunk, |f| { drained.push(f.to_vec()); true }); }
            }
            prop_assert_eq!(pushed, drained);
            prop_assert_eq!(ra, rb);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut buffer = FrameBuffer::default();
            let mut frames = Vec::new();
            if buffer.push(&bytes, &mut frames).is_ok() {
                for frame in &frames {
                    let _ = decode_body(frame);
                }
            }
            prop_assert!(buffer.buffered_len() <= FRAME_HEADER_LEN + FRAME_LEN_MAX);
        }
    }

    #[test]
    fn oversized_length_is_refused_before_buffering() {
        let mut buffer = FrameBuffer::default();
        let mut frames = Vec::new();
        let header = ((FRAME_LEN_MAX + 1) as u32).to_be_bytes();
        assert_eq!(
            buffer.push(&header, &mut frames),
            Err(WireError::FrameTooLarge { len: FRAME_LEN_MAX + 1, max: FRAME_LEN_MAX })
        );
        assert!(buffer.buffered_len() <= FRAME_HEADER_LEN);
    }

    #[test]
    fn bad_version_trailing_bytes_and_bounds_are_errors() {
        let ask = request(1, discovery::Request::GetNetworkInfo);
        let mut frame = encode_frame(&ask).expect("fits");
        frame[FRAME_HEADER_LEN] = 9;
        assert_eq!(decode_body(&frame[FRAME_HEADER_LEN..]), Err(WireError::UnknownVersion(9)));
        let mut body = encode_frame(&ask).expect("fits")[FRAME_HEADER_LEN..].to_vec();
        body.push(0);
        assert!(matches!(decode_body(&body), Err(WireError::Undecodable(_))));
        let big = Message::Response {
            id: RequestId(1),
            body: Response::Discovery(discovery::Response::Peers((0..=PEERS_PER_ANSWER_MAX as u8).map(peer).collect())),
        };
        let frame = encode_frame(&big).expect("fits a frame");
        assert!(matches!(decode_body(&frame[FRAME_HEADER_LEN..]), Err(WireError::OutOfBounds(_))));
        assert_eq!(decode_body(&[]), Err(WireError::EmptyFrame));
    }

    #[test]
    fn a_message_larger_than_a_frame_is_refused_not_panicked_on() {
        let huge = request(
            1,
            discovery::Request::DiscoverPeers {
                node_id: NodeId([1; 32]),
                max_peers: 1,
                exclude: vec![NodeId([2; 32]); 3000],
            },
        );
        assert!(matches!(encode_frame(&huge), Err(WireError::FrameTooLarge { .. })));
    }
}
