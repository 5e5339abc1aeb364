//! Identifiers that cross module boundaries: node ids, public keys, connection ids.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::hex;

/// A node's id: BLAKE3 of its ed25519 public key. Shown as 64 lowercase hex characters.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct NodeId(pub [u8; 32]);

impl NodeId {
    /// The id as four big-endian words: comparing them is comparing the bytes.
    fn words(&self) -> [u64; 4] {
        let w = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&self.0[i * 8..i * 8 + 8]);
            u64::from_be_bytes(b)
        };
        [w(0), w(1), w(2), w(3)]
    }
}

// Lexicographic byte order, compared a word at a time: node ids key the hottest maps
// (known peers), and four integer compares beat a memcmp call.
impl Ord for NodeId {
    fn cmp(&self, other: &NodeId) -> std::cmp::Ordering {
        self.words().cmp(&other.words())
    }
}

impl PartialOrd for NodeId {
    fn partial_cmp(&self, other: &NodeId) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl NodeId {
    /// The id that belongs to `key`.
    pub fn from_public_key(key: &PublicKey) -> NodeId {
        NodeId(*blake3::hash(&key.0).as_bytes())
    }

    /// Parses 64 hex characters.
    pub fn from_hex(text: &str) -> Result<NodeId, hex::HexError> {
        hex::decode_array(text).map(NodeId)
    }

    /// The first 8 hex characters, for logs.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..4])
    }

    /// XOR distance to another id (Kademlia metric), as big-endian bytes.
    pub fn distance(&self, other: &NodeId) -> [u8; 32] {
        let mut out = [0u8; 32];
        for (i, slot) in out.iter_mut().enumerate() {
            *slot = self.0[i] ^ other.0[i];
        }
        out
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(&self.0))
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({})", self.short())
    }
}

/// An ed25519 public key (32 bytes, compressed Edwards point).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PublicKey(pub [u8; 32]);

impl PublicKey {
    /// Parses 64 hex characters.
    pub fn from_hex(text: &str) -> Result<PublicKey, hex::HexError> {
        hex::decode_array(text).map(PublicKey)
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(&self.0))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", hex::encode(&self.0[..4]))
    }
}

/// Serde for 32-byte ids: hex in human-readable formats (JSON), raw bytes in postcard.
#[macro_export]
#[doc(hidden)]
macro_rules! hex_serde {
    ($ty:ident) => {
        impl serde::Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                // Non-human-readable: one byte string, not 32 one-byte elements (faster to
                // encode, decode and hash).
                if s.is_human_readable() {
                    s.serialize_str(&$crate::hex::encode(&self.0))
                } else {
                    s.serialize_bytes(&self.0)
                }
            }
        }

        impl<'de> serde::Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<$ty, D::Error> {
                if d.is_human_readable() {
                    let text = <String as serde::Deserialize>::deserialize(d)?;
                    $ty::from_hex(&text).map_err(serde::de::Error::custom)
                } else {
                    $crate::id::bytes32::deserialize(d).map($ty)
                }
            }
        }
    };
}

hex_serde!(NodeId);
hex_serde!(PublicKey);

/// A connection handle shared by the core and its driver.
///
/// Outbound ids are allocated by the core (top bit clear); inbound ids by the driver through
/// [`ConnId::inbound`] (top bit set), so the two never collide.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ConnId(pub u64);

impl ConnId {
    const INBOUND_BIT: u64 = 1 << 63;

    /// The id of the `n`th inbound connection a driver accepted.
    pub fn inbound(n: u64) -> ConnId {
        ConnId(n | Self::INBOUND_BIT)
    }

    /// Whether the driver allocated this id for an inbound connection.
    pub fn is_inbound(self) -> bool {
        self.0 & Self::INBOUND_BIT != 0
    }
}

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_inbound() { write!(f, "in#{}", self.0 & !Self::INBOUND_BIT) } else { write!(f, "out#{}", self.0) }
    }
}

/// Serde helper for byte vectors as one byte string (serde's default is a sequence of u8).
pub mod byte_vec {
    use serde::de::{Error, SeqAccess, Visitor};
    use serde::{Deserializer, Serializer};
    use std::fmt;

    /// Serializes as a byte string.
    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(bytes)
    }

    /// Deserializes a byte string (or, from self-describing formats, a sequence).
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E: Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
            fn visit_byte_buf<E: Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(v)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
                while let Some(b) = seq.next_element()? {
                    out.push(b);
                }
                Ok(out)
            }
        }
        d.deserialize_bytes(V)
    }
}

/// Serde helper: exactly 32 bytes from a byte string.
pub mod bytes32 {
    use serde::Deserializer;
    use serde::de::{Error, Visitor};
    use std::fmt;

    /// Deserializes a byte string of exactly 32 bytes.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = [u8; 32];
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("32 bytes")
            }
            fn visit_bytes<E: Error>(self, v: &[u8]) -> Result<[u8; 32], E> {
                v.try_into().map_err(|_| E::invalid_length(v.len(), &self))
            }
        }
        d.deserialize_bytes(V)
    }
}

/// Serde helper for 64-byte arrays (serde derives stop at 32).
pub mod bytes64 {
    use serde::de::{Error, Visitor};
    use serde::{Deserializer, Serializer};
    use std::fmt;

    /// Serializes as a byte string.
    pub fn serialize<S: Serializer>(bytes: &[u8; 64], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(bytes)
    }

    /// Deserializes a byte string of exactly 64 bytes.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 64], D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = [u8; 64];
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("64 bytes")
            }
            fn visit_bytes<E: Error>(self, v: &[u8]) -> Result<[u8; 64], E> {
                v.try_into().map_err(|_| E::invalid_length(v.len(), &self))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<[u8; 64], A::Error> {
                let mut out = [0u8; 64];
                for (i, slot) in out.iter_mut().enumerate() {
                    *slot = seq.next_element()?.ok_or_else(|| A::Error::invalid_length(i, &self))?;
                }
                Ok(out)
            }
        }
        d.deserialize_bytes(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn node_id_order_is_byte_order(a in any::<[u8; 32]>(), b in any::<[u8; 32]>()) {
            prop_assert_eq!(NodeId(a).cmp(&NodeId(b)), a.cmp(&b));
        }
    }
}

/// Serde for maps whose keys are not strings (enums): a sequence of `(key, value)` pairs, so
/// the state stays representable as JSON (`mynet replay --state`).
pub mod map_as_pairs {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<K: Serialize, V: Serialize, S: Serializer>(map: &BTreeMap<K, V>, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(map.iter())
    }

    pub fn deserialize<'de, K, V, D>(d: D) -> Result<BTreeMap<K, V>, D::Error>
    where
        K: Deserialize<'de> + Ord,
        V: Deserialize<'de>,
        D: Deserializer<'de>,
    {
        Vec::<(K, V)>::deserialize(d).map(|pairs| pairs.into_iter().collect())
    }
}
