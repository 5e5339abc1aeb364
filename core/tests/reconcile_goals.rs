//! The goals for reconciliation at 1,000,000 items, checked on every run rather than
//! only printed by the benchmark (`cargo run --release -p mynet-core --example reconcile`):
//! nothing differs: at most 100 bytes in one round trip; 100 differ: at most 16 KB in at most
//! two; 10,000 differ: at most 1.5 MB. And the idle cost is flat: a round between equal sets
//! costs the same at a thousand items as at a million.

use std::collections::BTreeSet;

use mynet_core::content::ContentId;
use mynet_core::reconcile::catalogue::KeySet;
use mynet_core::reconcile::session::{InMemory, in_memory};
use mynet_core::reconcile::sketch::Key;

fn key(n: u64) -> Key {
    let id = *blake3::hash(&n.to_le_bytes()).as_bytes();
    let mut tag = [0u8; 8];
    tag.copy_from_slice(&blake3::hash(&id).as_bytes()[..8]);
    Key { id, tag }
}

fn set(range: std::ops::Range<u64>) -> KeySet {
    let mut s = KeySet::default();
    for n in range {
        s.put(key(n));
    }
    s
}

/// `a` is `base` (keys `0..n`); the asker's copy lacks `diff / 2` of them (rounded down) and
/// has `diff - diff / 2` of its own, so the difference is split between the sides. Checks the
/// round found exactly that.
fn round(base: &KeySet, n: u64, diff: u64) -> InMemory {
    let (only_theirs, only_ours) = (diff / 2, diff - diff / 2);
    let mut ours = base.clone();
    for k in 0..only_theirs {
        ours.delete(&ContentId(key(k).id));
    }
    for k in n..n + only_ours {
        ours.put(key(k));
    }
    let r = in_memory(&ours, base).expect("a valid round");
    assert_eq!(r.theirs, (0..only_theirs).map(key).collect::<BTreeSet<_>>(), "diff {diff}");
    assert_eq!(r.ours, (n..n + only_ours).map(key).collect::<BTreeSet<_>>(), "diff {diff}");
    r
}

#[test]
fn a_million_items_reconcile_within_the_goals_and_the_idle_cost_is_flat() {
    let small = set(0..1_000);
    let idle_small = round(&small, 1_000, 0);
    const N: u64 = 1_000_000;
    let base = set(0..N);
    let idle = round(&base, N, 0);
    assert!(idle.bytes <= 100 && idle.round_trips == 1, "d=0: {} B in {} round trips", idle.bytes, idle.round_trips);
    assert!(
        idle.bytes <= idle_small.bytes + 4,
        "idle round at 1,000 items {} B, at 1,000,000 {} B",
        idle_small.bytes,
        idle.bytes
    );
    let hundred = round(&base, N, 100);
    assert!(
        hundred.bytes <= 16_000 && hundred.round_trips <= 2,
        "d=100: {} B in {} round trips",
        hundred.bytes,
        hundred.round_trips
    );
    let many = round(&base, N, 10_000);
    assert!(many.bytes <= 1_500_000, "d=10,000: {} B in {} round trips", many.bytes, many.round_trips);
}
