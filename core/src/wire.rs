//! Wire messages and framing.
//!
//! A frame is `[u32 big-endian length][u8 wire version][postcard payload]`, where the length
//! counts the version byte and the payload. The length is checked against [`FRAME_LEN_MAX`]
//! before a single byte of the payload is buffered, so a peer cannot make us allocate more.

use core::net::SocketAddr;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::id::{NodeId, PublicKey, bytes64};

/// The wire format version carried in every frame.
pub const WIRE_VERSION: u8 = 1;
/// Bytes of the length prefix.
pub const FRAME_HEADER_LEN: usize = 4;
/// Largest frame body (version byte + payload) we accept or send. The largest message today
/// is about 9 KiB (a full `DiscoverPeers` exclude list); bulk data will travel in chunks.
pub const FRAME_LEN_MAX: usize = 64 * 1024;
/// Most peers in one `Peers` or `NetworkInfo` answer (SPEC R5.1: `max_peers` 50).
pub const PEERS_PER_ANSWER_MAX: usize = 50;
/// Most ids in a `DiscoverPeers` exclude list.
pub const EXCLUDE_MAX: usize = 256;
/// Most feature names in a handshake, and their longest length.
pub const FEATURES_MAX: usize = 16;
/// Longest string field (network id, version, feature) a peer may send.
pub const SHORT_STRING_MAX: usize = 64;
/// Most content hashes in a popular-content list.
pub const POPULAR_CONTENT_MAX: usize = 100;

/// Every message a peer can send.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// The initiator's signed handshake (SPEC R6.2 `handshake`).
    Hello(Hello),
    /// The responder's signed answer (SPEC R6.2 `handshake_response`).
    HelloAck(Hello),
    /// Ask for active peers, network statistics and popular content (SPEC R4.3).
    GetNetworkInfo,
    /// The answer to [`Message::GetNetworkInfo`].
    NetworkInfo(NetworkInfo),
    /// SPEC R5.1 `discover_peers(node_id, max_peers, exclude)`.
    DiscoverPeers {
        /// The requester; must be the identity proven on this connection.
        node_id: NodeId,
        /// How many peers the requester wants, at most [`PEERS_PER_ANSWER_MAX`].
        max_peers: u16,
        /// Ids the requester already has.
        exclude: Vec<NodeId>,
    },
    /// The answer to [`Message::DiscoverPeers`].
    Peers(Vec<PeerRecord>),
}

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

/// A peer as passed around by discovery.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
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

/// The answer to [`Message::GetNetworkInfo`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkInfo {
    /// Active peers.
    pub peers: Vec<PeerRecord>,
    /// Statistics.
    pub stats: NetworkStats,
    /// Popular content hashes (empty until content sync exists).
    pub popular_content: Vec<[u8; 32]>,
}

/// Why bytes from a peer could not be turned into a message.
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

/// Encodes `message` as one frame.
pub fn encode_frame(message: &Message) -> Vec<u8> {
    let mut out = vec![0u8; FRAME_HEADER_LEN];
    out.push(WIRE_VERSION);
    let mut out = postcard::to_extend(message, out).expect("postcard encoding into a Vec cannot fail for wire types");
    let body_len = out.len() - FRAME_HEADER_LEN;
    assert!(body_len <= FRAME_LEN_MAX, "built a {body_len}-byte frame; senders bound what they put in a message");
    out[..FRAME_HEADER_LEN].copy_from_slice(&(body_len as u32).to_be_bytes());
    out
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
    check_bounds(&message)?;
    Ok(message)
}

fn check_bounds(message: &Message) -> Result<(), WireError> {
    let fail = |what: String| Err(WireError::OutOfBounds(what));
    match message {
        Message::Hello(hello) | Message::HelloAck(hello) => {
            if hello.network_id.len() > SHORT_STRING_MAX || hello.network_version.len() > SHORT_STRING_MAX {
                return fail("handshake string field too long".into());
            }
            if hello.features.len() > FEATURES_MAX || hello.features.iter().any(|f| f.len() > SHORT_STRING_MAX) {
                return fail(format!(
                    "{} features; at most {FEATURES_MAX} of {SHORT_STRING_MAX} bytes",
                    hello.features.len()
                ));
            }
        }
        Message::NetworkInfo(info)
            if (info.peers.len() > PEERS_PER_ANSWER_MAX || info.popular_content.len() > POPULAR_CONTENT_MAX) =>
        {
            return fail(format!(
                "network info with {} peers, {} content",
                info.peers.len(),
                info.popular_content.len()
            ));
        }
        Message::DiscoverPeers { exclude, .. } if exclude.len() > EXCLUDE_MAX => {
            return fail(format!("exclude list of {}; at most {EXCLUDE_MAX}", exclude.len()));
        }
        Message::Peers(peers) if peers.len() > PEERS_PER_ANSWER_MAX => {
            return fail(format!("{} peers in one answer; at most {PEERS_PER_ANSWER_MAX}", peers.len()));
        }
        _ => {}
    }
    Ok(())
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
    use proptest::prelude::*;

    fn peer(i: u8) -> PeerRecord {
        PeerRecord {
            node_id: NodeId([i; 32]),
            address: SocketAddr::from(([127, 0, 0, i], 7000 + u16::from(i))),
            public_key: PublicKey([i; 32]),
        }
    }

    fn arb_message() -> impl Strategy<Value = Message> {
        prop_oneof![
            Just(Message::GetNetworkInfo),
            (any::<[u8; 32]>(), 0u16..100, proptest::collection::vec(any::<[u8; 32]>(), 0..20)).prop_map(
                |(id, max_peers, ex)| Message::DiscoverPeers {
                    node_id: NodeId(id),
                    max_peers,
                    exclude: ex.into_iter().map(NodeId).collect()
                }
            ),
            proptest::collection::vec(any::<u8>(), 0..50)
                .prop_map(|ids| Message::Peers(ids.into_iter().map(peer).collect())),
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
            let stream: Vec<u8> = messages.iter().flat_map(encode_frame).collect();
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
            let mut stream: Vec<u8> = messages.iter().flat_map(encode_frame).collect();
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
        let mut frame = encode_frame(&Message::GetNetworkInfo);
        frame[FRAME_HEADER_LEN] = 9;
        assert_eq!(decode_body(&frame[FRAME_HEADER_LEN..]), Err(WireError::UnknownVersion(9)));
        let mut body = encode_frame(&Message::GetNetworkInfo)[FRAME_HEADER_LEN..].to_vec();
        body.push(0);
        assert!(matches!(decode_body(&body), Err(WireError::Undecodable(_))));
        let big = Message::Peers((0..=PEERS_PER_ANSWER_MAX as u8).map(peer).collect());
        assert!(matches!(decode_body(&encode_frame(&big)[FRAME_HEADER_LEN..]), Err(WireError::OutOfBounds(_))));
        assert_eq!(decode_body(&[]), Err(WireError::EmptyFrame));
    }
}
