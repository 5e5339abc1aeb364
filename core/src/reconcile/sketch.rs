//! Rateless IBLT (Yang, Gilad, Alizadeh: "Practical Rateless Set Reconciliation", SIGCOMM
//! 2024) over the catalogue's keys.
//!
//! A set defines an infinite sequence of *coded cells*; each key is XORed into cell 0 and into a
//! pseudo-random, ever sparser run of later cells (cell `i` holds a given key with probability
//! `1 / (1 + i/2)`). Subtracting two sets' prefixes cell by cell gives the prefix of their
//! symmetric difference, which peels like an IBLT once the prefix is about 1.35–2 cells per
//! differing key, whatever the sets' sizes.
//!
//! The node keeps a prefix of [`Sketch::len`] cells of its own set up to date as keys come and
//! go: a change touches the cells its mapping hits inside the prefix, about `2 ln(len/2)` of
//! them (O(log n), 20 at the largest prefix). Nothing is rebuilt per round.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

/// What is reconciled: an item's id and the first 8 bytes of its signed metadata's hash (so
/// two replicas with different metadata for one id differ in one key each).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Key {
    pub id: [u8; 32],
    pub tag: [u8; 8],
}

/// Keyed BLAKE3 of a key: the checksum that tells a pure cell from a mixed one.
const CHECKSUM_KEY: [u8; 32] = *b"mynet reconcile cell checksum v1";

impl Key {
    pub fn checksum(&self) -> u64 {
        let mut bytes = [0u8; 40];
        bytes[..32].copy_from_slice(&self.id);
        bytes[32..].copy_from_slice(&self.tag);
        let hash = blake3::keyed_hash(&CHECKSUM_KEY, &bytes);
        let mut first = [0u8; 8];
        first.copy_from_slice(&hash.as_bytes()[..8]);
        u64::from_le_bytes(first)
    }

    fn xor(&mut self, other: &Key) {
        for (a, b) in self.id.iter_mut().zip(other.id.iter()) {
            *a ^= b;
        }
        for (a, b) in self.tag.iter_mut().zip(other.tag.iter()) {
            *a ^= b;
        }
    }

    fn is_zero(&self) -> bool {
        self.id == [0; 32] && self.tag == [0; 8]
    }
}

/// The cells a key is XORed into: 0, then a pseudo-random increasing run (the reference
/// implementation's generator, seeded with the key's checksum).
#[derive(Clone, Copy, Debug)]
pub struct Mapping {
    prng: u64,
    index: u64,
    first: bool,
}

impl Mapping {
    pub fn new(checksum: u64) -> Mapping {
        Mapping { prng: checksum, index: 0, first: true }
    }
}

impl Iterator for Mapping {
    type Item = u64;

    fn next(&mut self) -> Option<u64> {
        if self.first {
            self.first = false;
            return Some(0);
        }
        if self.index == u64::MAX {
            return None;
        }
        let r = self.prng.wrapping_mul(0xda94_2042_e4dd_58b5);
        self.prng = r;
        // diff = (i + 1.5) * ((1 - u)^(-1/2) - 1), with u = r / 2^64. IEEE sqrt and ceil are
        // exact, so every platform computes the same run.
        let step = ((self.index as f64 + 1.5) * ((1u64 << 32) as f64 / ((r as f64) + 1.0).sqrt() - 1.0)).ceil();
        // `as` saturates; a step of 0 cannot happen (the factor is at least 2^32/2^32 - 1 >= 0
        // and ceil of a positive number is at least 1), but keep the run strictly increasing.
        self.index = self.index.saturating_add((step as u64).max(1));
        Some(self.index)
    }
}

/// Probability that a key is in cell `i` (the generator's target; its first few cells run up
/// to 4% lower, which the estimate tolerates).
pub fn density(i: usize) -> f64 {
    2.0 / (2.0 + i as f64)
}

/// One coded cell: the XOR of its keys, the XOR of their checksums, and how many there are
/// (a difference of two cells counts ours negative).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cell {
    pub key: Key,
    pub checksum: u64,
    pub count: i64,
}

impl Cell {
    pub fn apply(&mut self, key: &Key, checksum: u64, sign: i64) {
        self.key.xor(key);
        self.checksum ^= checksum;
        self.count += sign;
    }

    /// `self - other`.
    pub fn minus(&self, other: &Cell) -> Cell {
        let mut key = self.key;
        key.xor(&other.key);
        Cell { key, checksum: self.checksum ^ other.checksum, count: self.count - other.count }
    }

    pub fn is_zero(&self) -> bool {
        self.count == 0 && self.checksum == 0 && self.key.is_zero()
    }

    /// Holds exactly one key (count ±1 and the checksum matches).
    pub fn pure(&self) -> Option<(Key, i64)> {
        ((self.count == 1 || self.count == -1) && self.key.checksum() == self.checksum)
            .then_some((self.key, self.count))
    }
}

/// Smallest prefix kept.
pub const LEN_MIN: usize = 64;
/// Largest prefix kept (1.6 MiB of cells): reconciles differences up to about 14,000 keys;
/// larger ones take the bulk path.
pub const LEN_MAX: usize = 32_768;

/// The prefix length kept for a set of `n` keys: twice the next power of two, within bounds
/// (a difference larger than about half the set is cheaper to settle by listing it).
pub fn len_for(n: usize) -> usize {
    (2 * n.max(1).next_power_of_two()).clamp(LEN_MIN, LEN_MAX)
}

/// A set's first cells, kept up to date as keys are added and removed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sketch {
    cells: Vec<Cell>,
}

impl Default for Sketch {
    fn default() -> Sketch {
        Sketch { cells: vec![Cell::default(); LEN_MIN] }
    }
}

impl Sketch {
    /// An empty set's prefix of `len` cells.
    pub fn with_len(len: usize) -> Sketch {
        Sketch { cells: vec![Cell::default(); len] }
    }

    pub fn len(&self) -> usize {
        self.cells.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cells.is_empty()
    }

    pub fn cells(&self) -> &[Cell] {
        &self.cells
    }

    /// Cell 0: every key, so it is the set's fingerprint and size.
    pub fn first(&self) -> Cell {
        self.cells.first().copied().unwrap_or_default()
    }

    pub fn insert(&mut self, key: &Key) {
        self.apply(key, 1);
    }

    pub fn remove(&mut self, key: &Key) {
        self.apply(key, -1);
    }

    fn apply(&mut self, key: &Key, sign: i64) {
        let checksum = key.checksum();
        let len = self.cells.len() as u64;
        for i in Mapping::new(checksum).take_while(|i| *i < len) {
            self.cells[i as usize].apply(key, checksum, sign);
        }
    }

    /// Rebuilds the prefix at `len` cells from the whole set (when the set outgrew it).
    pub fn rebuild<'a>(&mut self, len: usize, keys: impl Iterator<Item = &'a Key>) {
        *self = Sketch::with_len(len);
        for key in keys {
            self.insert(key);
        }
    }
}

/// Peels a growing prefix of the difference `theirs - ours`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decoder {
    cells: Vec<Cell>,
    /// Keys only they have (positive in the difference).
    theirs: Vec<Key>,
    /// Keys only we have.
    ours: Vec<Key>,
    /// Every key peeled, to catch one that turns up again.
    peeled: BTreeSet<Key>,
    /// The cells contradict each other (a set changed while its cells were being sent): a key
    /// turned up again after it was peeled. Peeling stops; the round must settle another way.
    broken: bool,
}

impl Decoder {
    pub fn len(&self) -> usize {
        self.cells.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cells.is_empty()
    }

    /// Appends the next cells of the difference; keys already peeled are taken out of them.
    pub fn extend(&mut self, diff: impl IntoIterator<Item = Cell>) {
        let start = self.cells.len() as u64;
        self.cells.extend(diff);
        let end = self.cells.len() as u64;
        for (keys, sign) in [(&self.theirs, 1), (&self.ours, -1)] {
            for key in keys {
                let checksum = key.checksum();
                for i in Mapping::new(checksum).skip_while(|i| *i < start).take_while(|i| *i < end) {
                    self.cells[i as usize].apply(key, checksum, -sign);
                }
            }
        }
    }

    /// Peels what it can. True when the whole prefix is accounted for, so the difference is
    /// exactly `theirs` and `ours` (cell 0 holds every differing key, so an empty cell 0 with
    /// every cell zero means nothing is left).
    pub fn peel(&mut self) -> bool {
        if self.broken {
            return false;
        }
        let len = self.cells.len() as u64;
        let mut pure: Vec<usize> = (0..self.cells.len()).filter(|i| self.cells[*i].pure().is_some()).collect();
        while let Some(i) = pure.pop() {
            let Some((key, sign)) = self.cells[i].pure() else { continue };
            if !self.peeled.insert(key) {
                // Peeling it again would put it back where it was never counted, and around.
                self.broken = true;
                return false;
            }
            if sign > 0 {
                self.theirs.push(key);
            } else {
                self.ours.push(key);
            }
            let checksum = key.checksum();
            for j in Mapping::new(checksum).take_while(|j| *j < len) {
                let cell = &mut self.cells[j as usize];
                cell.apply(&key, checksum, -sign);
                if cell.pure().is_some() {
                    pure.push(j as usize);
                }
            }
        }
        self.done()
    }

    pub fn done(&self) -> bool {
        !self.broken && !self.cells.is_empty() && self.cells.iter().all(Cell::is_zero)
    }

    /// The cells contradict each other (see the field); more cells will not help.
    pub fn broken(&self) -> bool {
        self.broken
    }

    pub fn theirs(&self) -> &[Key] {
        &self.theirs
    }

    pub fn ours(&self) -> &[Key] {
        &self.ours
    }

    /// Differing keys recovered so far.
    pub fn recovered(&self) -> usize {
        self.theirs.len() + self.ours.len()
    }
}

/// Estimates the size of a difference from the counts of its cells `1..` (cell 0's count, the
/// difference of the set sizes, is `c0`): each `c_i^2 / (p_i (1 - p_i))` is an unbiased
/// estimate (after taking out the part the size difference explains), and their mean has a
/// relative error of about `sqrt(2 / counts.len())`.
pub fn estimate(c0: i64, counts: &[i64]) -> f64 {
    if counts.is_empty() {
        return c0.unsigned_abs() as f64;
    }
    let c0 = c0 as f64;
    let sum: f64 = counts
        .iter()
        .enumerate()
        .map(|(k, c)| {
            let p = density(k + 1);
            let c = *c as f64;
            (c * c - p * p * c0 * c0) / (p * (1.0 - p))
        })
        .sum();
    (sum / counts.len() as f64).max(c0.abs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(n: u32) -> Key {
        let hash = blake3::hash(&n.to_le_bytes());
        let mut tag = [0u8; 8];
        tag.copy_from_slice(&hash.as_bytes()[..8]);
        Key { id: *hash.as_bytes(), tag }
    }

    fn sketch(keys: &BTreeSet<u32>, len: usize) -> Sketch {
        let keys: Vec<Key> = keys.iter().map(|n| key(*n)).collect();
        let mut s = Sketch::with_len(len);
        s.rebuild(len, keys.iter());
        s
    }

    /// Decodes `theirs - ours`, asking for more cells until it peels.
    fn decode(ours: &Sketch, theirs: &Sketch) -> Option<Decoder> {
        let mut d = Decoder::default();
        let mut at = 0;
        while at < ours.len() {
            let to = (at * 3 / 2).max(at + 8).min(ours.len());
            d.extend((at..to).map(|i| theirs.cells()[i].minus(&ours.cells()[i])));
            at = to;
            if d.peel() {
                return Some(d);
            }
        }
        None
    }

    #[test]
    fn mapping_density_matches() {
        let n = 20_000u32;
        let mut hits = [0u32; 64];
        for k in 0..n {
            for i in Mapping::new(key(k).checksum()).take_while(|i| *i < 64) {
                hits[i as usize] += 1;
            }
        }
        for (i, h) in hits.iter().enumerate() {
            let expected = density(i) * f64::from(n);
            // The generator approximates the density; the first cells run a few percent low.
            let slack = 0.05 * expected + 4.0 * expected.sqrt() + 1.0;
            assert!((f64::from(*h) - expected).abs() < slack, "cell {i}: {h} vs {expected}");
        }
    }

    #[test]
    fn insert_then_remove_is_empty_and_order_does_not_matter() {
        let mut a = Sketch::with_len(256);
        let mut b = Sketch::with_len(256);
        for k in 0..100 {
            a.insert(&key(k));
        }
        for k in (0..100).rev() {
            b.insert(&key(k));
        }
        assert_eq!(a, b);
        for k in 0..100 {
            a.remove(&key(k));
        }
        assert_eq!(a, Sketch::with_len(256));
    }

    #[test]
    fn estimate_is_within_a_third() {
        for d in [50u32, 400, 3_000] {
            let ours: BTreeSet<u32> = (0..10_000).collect();
            let theirs: BTreeSet<u32> = (d / 2..10_000 + d - d / 2).collect();
            let (a, b) = (sketch(&ours, 256), sketch(&theirs, 256));
            let counts: Vec<i64> = (1..256).map(|i| b.cells()[i].count - a.cells()[i].count).collect();
            let e = estimate(b.first().count - a.first().count, &counts);
            assert!((e - f64::from(d)).abs() < f64::from(d) / 3.0, "d={d}: estimate {e}");
        }
    }

    /// Regression (sim `--catalogue 1000`, 10 nodes: the run hung and took 20 GiB): a key the
    /// peer added between sending two chunks of cells is in the later cells only; peeling it
    /// there put it into the earlier cells negated, peeling that put it back, and so on
    /// forever. The decoder now stops and says the cells contradict each other.
    #[test]
    fn cells_that_contradict_each_other_stop_peeling() {
        // A key that lands in the later cells.
        let late = (50..)
            .find(|k| Mapping::new(key(*k).checksum()).take_while(|i| *i < 256).any(|i| i >= 128))
            .expect("some key does");
        let ours = sketch(&(0..50).collect(), 256);
        let before = ours.clone();
        let after = sketch(&(0..50).chain([late]).collect(), 256);
        let mut d = Decoder::default();
        d.extend((0..128).map(|i| before.cells()[i].minus(&ours.cells()[i])));
        d.extend((128..256).map(|i| after.cells()[i].minus(&ours.cells()[i])));
        assert!(!d.peel());
        assert!(d.broken() && !d.done());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// For random sets, decoding finds exactly the symmetric difference.
        #[test]
        fn finds_exactly_the_symmetric_difference(
            shared in proptest::collection::btree_set(0u32..1_000_000, 0..400),
            only_ours in proptest::collection::btree_set(1_000_000u32..2_000_000, 0..60),
            only_theirs in proptest::collection::btree_set(2_000_000u32..3_000_000, 0..60),
        ) {
            let ours: BTreeSet<u32> = shared.union(&only_ours).copied().collect();
            let theirs: BTreeSet<u32> = shared.union(&only_theirs).copied().collect();
            let (a, b) = (sketch(&ours, 1024), sketch(&theirs, 1024));
            let d = decode(&a, &b).expect("decodes within 1024 cells");
            let got_ours: BTreeSet<Key> = d.ours().iter().copied().collect();
            let got_theirs: BTreeSet<Key> = d.theirs().iter().copied().collect();
            prop_assert_eq!(got_ours, only_ours.iter().map(|n| key(*n)).collect::<BTreeSet<_>>());
            prop_assert_eq!(got_theirs, only_theirs.iter().map(|n| key(*n)).collect::<BTreeSet<_>>());
        }
    }
}
