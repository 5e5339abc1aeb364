//! Item metadata, signed by its author, and the rule that makes every replica pick the same
//! version (SPEC R8.2).
//!
//! **The conflict rule.** Two versions of one item's metadata are ordered by
//! `(version, author key, metadata hash)`, compared in that order (the key and the hash as
//! bytes); the greater one wins. It is a total order over signed metadata, so "keep the
//! greater" is commutative, associative and idempotent ([`merge`]) and every replica that has
//! seen the same versions holds the same one, whatever order they arrived in.
//!
//! **Versions** are the author's wall clock in milliseconds, and never less than the previous
//! version plus one ([`next_version`]). A version more than [`FUTURE_MAX_MS`] ahead of the
//! receiver's clock is clamped out: refused now ([`Invalid::Future`]) and accepted by a later
//! round once the receiver's clock reaches it, so a publisher cannot win every future conflict
//! by signing `u64::MAX`, and the order stays the same on every replica (nothing is rewritten).

use serde::{Deserialize, Serialize};

use crate::content::verify::{ContentId, Layout};
use crate::id::{PublicKey, bytes64};
use crate::identity::{self, Identity};
use crate::reconcile::sketch::Key;

/// Tags on one item.
pub const TAGS_MAX: usize = 16;
/// Relations from one item.
pub const RELATIONS_MAX: usize = 16;
/// Bytes of a tag, a relation type or a key id.
pub const LABEL_MAX: usize = 64;
/// A version may be this far ahead of the receiver's clock. Honest clocks err by seconds to
/// minutes (a VM resumed, NTP lost, a clock stepped by hand: the simulator's swarm jumps clocks
/// by up to 10 minutes), and refusing their edits would keep replicas apart until the clock
/// behind catches up; an hour ahead is a broken clock or an attack, and what it signs waits.
pub const FUTURE_MAX_MS: u64 = 60 * 60 * 1000;
/// What the signature covers starts with this (so it cannot be replayed as another message).
const CONTEXT: &[u8] = b"mynet item metadata v1\0";

/// The state of a work in the uploader's service (SPEC R9).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ItemState {
    Encrypted,
    #[default]
    Decrypted,
    Preview,
}

/// A relation from this item to another (`kind`: e.g. `decrypted`, `preview`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Relation {
    pub kind: String,
    pub child: ContentId,
}

/// A key record (SPEC R9): what the network knows of a key, never the key itself. It travels
/// in the catalogue as the metadata of a pseudo-item whose id is [`key_record_id`], signed by a
/// publisher, and converges by the same conflict rule as item metadata.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    pub key_id: String,
    /// The sealing format (`mynet_storage::sealed::ALGORITHM`).
    pub algorithm: String,
    /// Wall-clock milliseconds from which the key is valid.
    pub valid_from_ms: u64,
    /// Wall-clock milliseconds until which it is valid (`None`: no end).
    pub valid_until_ms: Option<u64>,
    pub revoked: bool,
}

/// The catalogue id of the record of key `key_id`.
pub fn key_record_id(key_id: &str) -> ContentId {
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"mynet key record\0");
    hasher.update(key_id.as_bytes());
    ContentId(*hasher.finalize().as_bytes())
}

/// What an author says about an item.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    pub id: ContentId,
    pub size: u64,
    pub pieces: u64,
    pub state: ItemState,
    /// The group's root item, if the item belongs to a group.
    pub group: Option<ContentId>,
    pub relations: Vec<Relation>,
    pub tags: Vec<String>,
    /// The key an encrypted item was encrypted with.
    pub key_id: Option<String>,
    /// An encrypted item's plaintext BLAKE3 hash (the id its decrypted form has).
    pub plain_hash: Option<[u8; 32]>,
    /// Set when this entry is a key record rather than an item.
    pub key: Option<KeyRecord>,
    /// Author's clock, milliseconds; see the module doc.
    pub version: u64,
    pub author: PublicKey,
}

/// Metadata and its author's signature.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signed {
    pub meta: Meta,
    #[serde(with = "bytes64")]
    pub signature: [u8; 64],
}

/// Why metadata was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Invalid {
    /// Fields out of bounds or inconsistent (pieces not matching size, labels too long).
    Malformed,
    /// The signature does not verify under the author key.
    BadSignature,
    /// The author is not in the network's `publishers`.
    NotPublisher,
    /// The version is more than [`FUTURE_MAX_MS`] ahead of our clock.
    Future,
}

impl Invalid {
    /// Whether the sender is to blame (an honest peer only forwards what it verified; a
    /// version from the future may be the sender's clock being ahead, or ours behind).
    pub fn blames_sender(self) -> bool {
        !matches!(self, Invalid::Future)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Invalid::Malformed => "malformed",
            Invalid::BadSignature => "bad_signature",
            Invalid::NotPublisher => "not_publisher",
            Invalid::Future => "future_version",
        }
    }
}

impl Meta {
    /// Metadata for an item of `size` bytes with default fields.
    pub fn new(id: ContentId, size: u64, version: u64, author: PublicKey) -> Meta {
        let pieces = Layout::new(size).map_or(0, |l| l.pieces());
        Meta {
            id,
            size,
            pieces,
            state: ItemState::Decrypted,
            group: None,
            relations: Vec::new(),
            tags: Vec::new(),
            key_id: None,
            plain_hash: None,
            key: None,
            version,
            author,
        }
    }

    /// The metadata of a key record.
    pub fn key_record(record: KeyRecord, version: u64, author: PublicKey) -> Meta {
        let mut meta = Meta::new(key_record_id(&record.key_id), 0, version, author);
        meta.key = Some(record);
        meta
    }

    /// Whether this is an item (not a key record).
    pub fn is_item(&self) -> bool {
        self.key.is_none()
    }

    fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).unwrap_or_default()
    }

    pub fn check(&self) -> Result<(), Invalid> {
        let layout = Layout::new(self.size).map_err(|_| Invalid::Malformed)?;
        let label_ok = |s: &String| !s.is_empty() && s.len() <= LABEL_MAX;
        let ok = layout.pieces() == self.pieces
            && self.tags.len() <= TAGS_MAX
            && self.tags.iter().all(label_ok)
            && self.relations.len() <= RELATIONS_MAX
            && self.relations.iter().all(|r| label_ok(&r.kind))
            && self.key_id.as_ref().is_none_or(label_ok);
        let record_ok = self.key.as_ref().is_none_or(|k| {
            label_ok(&k.key_id)
                && label_ok(&k.algorithm)
                && self.id == key_record_id(&k.key_id)
                && self.size == 0
                && self.group.is_none()
                && self.relations.is_empty()
                && self.tags.is_empty()
                && self.key_id.is_none()
                && self.plain_hash.is_none()
                && self.state == ItemState::Decrypted
        });
        // An encrypted item names its key; nothing else does.
        let state_ok = (self.state == ItemState::Encrypted) == self.key_id.is_some();
        if ok && record_ok && state_ok { Ok(()) } else { Err(Invalid::Malformed) }
    }

    pub fn sign(self, identity: &Identity) -> Signed {
        let signature = identity.sign(&signed_bytes(&self.encode()));
        Signed { meta: self, signature }
    }
}

fn signed_bytes(encoded: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(CONTEXT.len() + encoded.len());
    bytes.extend_from_slice(CONTEXT);
    bytes.extend_from_slice(encoded);
    bytes
}

impl Signed {
    /// BLAKE3 of the metadata's canonical encoding.
    pub fn hash(&self) -> [u8; 32] {
        *blake3::hash(&self.meta.encode()).as_bytes()
    }

    /// What reconciliation compares: the id and the first 8 bytes of the hash.
    pub fn key(&self) -> Key {
        let mut tag = [0u8; 8];
        tag.copy_from_slice(&self.hash()[..8]);
        Key { id: self.meta.id.0, tag }
    }

    /// The conflict order (see the module doc).
    pub fn order(&self) -> (u64, [u8; 32], [u8; 32]) {
        (self.meta.version, self.meta.author.0, self.hash())
    }

    /// Whether this version beats `other` (another version of the same item).
    pub fn beats(&self, other: &Signed) -> bool {
        self.order() > other.order()
    }

    /// Checks bounds, the signature, the author's right to publish (`publishers` empty: anyone
    /// may) and the version against our clock.
    pub fn validate(&self, publishers: &[PublicKey], now_wall_ms: u64) -> Result<(), Invalid> {
        self.meta.check()?;
        identity::verify(&self.meta.author, &signed_bytes(&self.meta.encode()), &self.signature)
            .map_err(|_| Invalid::BadSignature)?;
        if !publishers.is_empty() && !publishers.contains(&self.meta.author) {
            return Err(Invalid::NotPublisher);
        }
        if self.meta.version > now_wall_ms.saturating_add(FUTURE_MAX_MS) {
            return Err(Invalid::Future);
        }
        Ok(())
    }
}

/// The winner of two versions of one item (the conflict rule).
pub fn merge(a: Signed, b: Signed) -> Signed {
    if b.beats(&a) { b } else { a }
}

/// The version a new edit gets: our clock, and always past the version it replaces.
pub fn next_version(now_wall_ms: u64, previous: Option<&Signed>) -> u64 {
    previous.map_or(now_wall_ms, |p| now_wall_ms.max(p.meta.version.saturating_add(1)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn signed(author: u8, version: u64, tag: &str) -> Signed {
        let identity = Identity::from_secret_bytes(&[author; 32]);
        let mut meta = Meta::new(ContentId([9; 32]), 1000, version, identity.public_key());
        meta.tags.push(tag.to_string());
        meta.sign(&identity)
    }

    #[test]
    fn validation_refuses_bad_signatures_strangers_and_the_future() {
        let good = signed(1, 1_000, "a");
        assert_eq!(good.validate(&[], 1_000), Ok(()));
        assert_eq!(good.validate(&[good.meta.author], 1_000), Ok(()));
        let other = Identity::from_secret_bytes(&[2; 32]).public_key();
        assert_eq!(good.validate(&[other], 1_000), Err(Invalid::NotPublisher));
        let mut tampered = good.clone();
        tampered.meta.tags[0] = "b".into();
        assert_eq!(tampered.validate(&[], 1_000), Err(Invalid::BadSignature));
        let future = signed(1, 1_000 + FUTURE_MAX_MS + 1, "a");
        assert_eq!(future.validate(&[], 1_000), Err(Invalid::Future));
        assert_eq!(future.validate(&[], 1_001), Ok(()), "accepted once our clock catches up");
        let mut bad = Meta::new(ContentId([9; 32]), 1000, 1, good.meta.author);
        bad.pieces = 7;
        assert_eq!(bad.check(), Err(Invalid::Malformed));
    }

    #[test]
    fn next_version_moves_past_the_previous_one() {
        let previous = signed(1, 5_000, "a");
        assert_eq!(next_version(1_000, Some(&previous)), 5_001, "a clock behind still moves forward");
        assert_eq!(next_version(9_000, Some(&previous)), 9_000);
        assert_eq!(next_version(9_000, None), 9_000);
    }

    fn arb() -> impl Strategy<Value = Signed> {
        // Few authors, versions and tags: ties on version and on author are common.
        (1u8..4, 0u64..4, 0u8..3).prop_map(|(a, v, t)| signed(a, v, &format!("t{t}")))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn merge_is_commutative_associative_and_idempotent(a in arb(), b in arb(), c in arb()) {
            prop_assert_eq!(merge(a.clone(), b.clone()), merge(b.clone(), a.clone()));
            prop_assert_eq!(
                merge(merge(a.clone(), b.clone()), c.clone()),
                merge(a.clone(), merge(b.clone(), c.clone()))
            );
            prop_assert_eq!(merge(a.clone(), a.clone()), a.clone());
            // A total order: distinct metadata never tie.
            if a != b {
                prop_assert_ne!(a.order(), b.order());
            }
        }
    }
}
