//! Baselines for the set-reconciliation benchmark: the negentropy protocol (rust-nostr's
//! `negentropy` crate, run for real between two in-process sides) and the naive exchange of
//! whole state maps that the old design did.
//!
//! Both take the two sides' sets as slices of 32-byte ids. Duplicates within a side are ignored
//! (the sets are deduplicated first), and the order of the slices does not matter.

use negentropy::{Id, Negentropy, NegentropyStorageBase, NegentropyStorageVector};

/// The timestamp given to every item: ids are compared on their bytes alone.
const TIMESTAMP: u64 = 0;

/// Frame size limit passed to `Negentropy::borrowed`: 0, no limit. The crate has no default (the
/// constructor takes the limit explicitly, and a non-zero one must be at least 4096), so every
/// message carries all of a round in one frame and `round_trips` is the protocol's own minimum.
const FRAME_SIZE_LIMIT: u64 = 0;

/// What one negentropy reconciliation cost and what it found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Measured {
    /// Raw negentropy message bytes in both directions: every message of the initiator (the
    /// first from `initiate`, the rest from `reconcile_with_ids`) and every answer of the
    /// responder (from `reconcile`), including the responder's last answer after which the
    /// initiator has nothing more to send. No framing or transport overhead.
    pub bytes: u64,
    /// Initiator → responder → initiator exchanges until the initiator is done.
    pub round_trips: u32,
    /// Ids the initiator holds that the responder lacks (`a \ b`).
    pub have: usize,
    /// Ids the initiator needs from the responder (`b \ a`).
    pub need: usize,
}

/// Side A (the initiator, holding `a`) reconciles with side B (the responder, holding `b`) with
/// the negentropy protocol, version 1 (`0x61`) as the crate implements it.
///
/// Each side builds a sealed `NegentropyStorageVector` with every id at timestamp 0 (so the
/// order and the range bounds are those of the id bytes), then A calls `initiate`, B answers
/// each message with `reconcile`, and A handles each answer with `reconcile_with_ids` until it
/// returns `None`. The frame size limit is 0 (unlimited; see [`FRAME_SIZE_LIMIT`]).
///
/// The `have` and `need` ids that A learns are checked against the true set differences
/// (a failed check panics), so a result is never a wrong reconciliation's cost.
///
/// # Panics
/// If the crate returns an error, or the ids found differ from the true differences.
pub fn negentropy(a: &[[u8; 32]], b: &[[u8; 32]]) -> Measured {
    let a = sorted_unique(a);
    let b = sorted_unique(b);
    let storage_a = storage(&a);
    let storage_b = storage(&b);
    let mut side_a = Negentropy::borrowed(&storage_a, FRAME_SIZE_LIMIT).expect("frame size limit accepted");
    let mut side_b = Negentropy::borrowed(&storage_b, FRAME_SIZE_LIMIT).expect("frame size limit accepted");

    let mut have_ids: Vec<Id> = Vec::new();
    let mut need_ids: Vec<Id> = Vec::new();
    let mut bytes: u64 = 0;
    let mut round_trips: u32 = 0;
    let mut query = side_a.initiate().expect("initiate");
    loop {
        let answer = side_b.reconcile(&query).expect("responder reconcile");
        round_trips += 1;
        bytes += (query.len() + answer.len()) as u64;
        match side_a.reconcile_with_ids(&answer, &mut have_ids, &mut need_ids).expect("initiator reconcile") {
            Some(next) => query = next,
            None => break,
        }
    }

    let mut have: Vec<[u8; 32]> = have_ids.iter().map(|id| id.to_bytes()).collect();
    let mut need: Vec<[u8; 32]> = need_ids.iter().map(|id| id.to_bytes()).collect();
    have.sort_unstable();
    need.sort_unstable();
    assert!(have == difference(&a, &b), "negentropy's have ids are not a \\ b");
    assert!(need == difference(&b, &a), "negentropy's need ids are not b \\ a");
    Measured { bytes, round_trips, have: have.len(), need: need.len() }
}

/// Bytes of the naive exchange of whole state maps, as the old design did it, in one round trip:
/// A sends its whole map as (32-byte id, 8-byte version) entries, 40 bytes each, and B answers
/// with the entries that A lacks, 40 bytes each. So `40 * |a| + 40 * |b \ a|`, with `a` and `b`
/// taken as sets (duplicates counted once). Entries only, no framing or length prefixes; and
/// A's entries that B lacks are not sent back to B (that would take a second exchange).
pub fn naive(a: &[[u8; 32]], b: &[[u8; 32]]) -> u64 {
    const ENTRY: u64 = 32 + 8;
    let a = sorted_unique(a);
    let b = sorted_unique(b);
    ENTRY * a.len() as u64 + ENTRY * difference(&b, &a).len() as u64
}

fn sorted_unique(ids: &[[u8; 32]]) -> Vec<[u8; 32]> {
    let mut ids = ids.to_vec();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// A storage vector of `ids` (sorted and unique, so `seal`'s own sort finds them in order).
fn storage(ids: &[[u8; 32]]) -> NegentropyStorageVector {
    let mut storage = NegentropyStorageVector::with_capacity(ids.len());
    for id in ids {
        storage.insert(TIMESTAMP, Id::from_byte_array(*id)).expect("storage not sealed yet");
    }
    storage.seal().expect("sealed once");
    debug_assert_eq!(storage.size().ok(), Some(ids.len()));
    storage
}

/// `x \ y` for sorted, unique `x` and `y`, sorted.
fn difference(x: &[[u8; 32]], y: &[[u8; 32]]) -> Vec<[u8; 32]> {
    let mut out = Vec::new();
    let mut j = 0;
    for id in x {
        while j < y.len() && y[j] < *id {
            j += 1;
        }
        if y.get(j) != Some(id) {
            out.push(*id);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(range: core::ops::Range<u32>) -> Vec<[u8; 32]> {
        range.map(|i| *blake3::hash(&i.to_le_bytes()).as_bytes()).collect()
    }

    #[test]
    fn finds_the_true_differences() {
        let cases: [(core::ops::Range<u32>, core::ops::Range<u32>); 6] =
            [(0..0, 0..0), (0..5, 0..0), (0..0, 0..5), (0..1000, 0..1000), (0..1000, 3..1010), (0..300, 300..700)];
        for (ra, rb) in cases {
            let (a, b) = (ids(ra.clone()), ids(rb.clone()));
            let only_a = ra.clone().filter(|i| !rb.contains(i)).count();
            let only_b = rb.clone().filter(|i| !ra.contains(i)).count();
            let m = negentropy(&a, &b);
            assert_eq!((m.have, m.need), (only_a, only_b), "{ra:?} vs {rb:?}");
            assert!(m.round_trips >= 1 && m.bytes > 0);
            let common = rb.clone().filter(|i| ra.contains(i)).count();
            assert_eq!(naive(&a, &b), 40 * (ra.len() + rb.len() - common) as u64);
        }
    }

    #[test]
    fn duplicates_and_order_do_not_matter() {
        let a = ids(0..100);
        let mut b = ids(50..150);
        b.extend(ids(50..60));
        b.reverse();
        let m = negentropy(&a, &b);
        assert_eq!((m.have, m.need), (50, 50));
        assert_eq!(naive(&a, &b), 40 * 150);
    }
}
