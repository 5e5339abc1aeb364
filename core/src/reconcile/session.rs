//! One round of reconciliation from the asker's side, as a pure state machine over the local
//! key set and the peer's answers (the module drives it over the request layer; the benchmark
//! drives it in memory).
//!
//! 1. `Start` carries our size and cell 0 (about 60 bytes). Equal sets answer `Equal`: one
//!    round trip. One differing key is pure in cell 0 and settles then too.
//! 2. Otherwise the answer carries the counts of the peer's first [`ESTIMATE_CELLS`] cells; the
//!    difference of counts estimates the difference's size `d` ([`sketch::estimate`]), and we
//!    ask for about `2d` cells at once (in frame-sized chunks, pipelined), which peel with high
//!    probability: two round trips. If they do not, we ask for half as many again.
//! 3. When the difference is a large part of the peer's set (an empty node joining, a long
//!    partition), listing the peer's keys is cheaper, and that is the bulk path: pages of keys
//!    in id order, merged with ours as they come.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::content::verify::ContentId;
use crate::reconcile::catalogue::KeySet;
use crate::reconcile::proto::{
    CELLS_PER_MESSAGE, ESTIMATE_CELLS, IN_FLIGHT_MAX, KEYS_PER_PAGE, Request, Response, WireCell, count_minus,
};
use crate::reconcile::sketch::{self, Decoder, Key};

/// Keys of ours one bulk step reports at most (the rest the peer finds in its own rounds).
pub const OURS_PER_STEP_MAX: usize = 20_000;
/// Bytes per cell and per key on the wire, for choosing the cheaper path.
const CELL_BYTES: u64 = 50;
const KEY_BYTES: u64 = 40;

/// Cells to ask for when the difference is estimated at `estimate` keys.
pub fn plan(estimate: f64) -> u32 {
    (1.8 * estimate + 32.0).ceil().min(f64::from(u32::MAX)) as u32
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
enum Stage {
    Starting,
    Cells {
        decoder: Decoder,
        /// Cells received in order so far (from 0).
        have: u32,
        /// Cells asked for (`have..asked` are in flight or in `chunks`).
        asked: u32,
        /// Most cells both sides keep.
        limit: u32,
        chunks: BTreeMap<u32, Vec<WireCell>>,
    },
    Keys {
        /// Keys listed so far.
        listed: u64,
    },
    Done,
}

/// What a round found (a batch of it: the bulk path reports page by page).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Found {
    /// Keys the peer has and we do not (a missing item, or another version of one we have).
    pub theirs: Vec<Key>,
    /// Keys we have and the peer does not.
    pub ours: Vec<Key>,
}

/// A batch of what a round found, as SPEC R8.1 names it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Difference {
    /// Items the peer has and we do not: fetched.
    pub missing_here: Vec<Key>,
    /// Items we have and the peer does not: offered.
    pub missing_there: Vec<Key>,
    /// Items both have in different versions (ours, theirs): resolved by the conflict rule
    /// (their version is fetched; if ours wins, it is offered back).
    pub conflicts: Vec<(Key, Key)>,
}

impl Found {
    /// Splits the batch into what is missing on each side and the conflicts (a conflict's
    /// two keys come in the same batch: the bulk path compares a page with our keys in the
    /// same id range).
    pub fn split(self) -> Difference {
        let theirs: BTreeMap<[u8; 32], Key> = self.theirs.iter().map(|k| (k.id, *k)).collect();
        let mut out = Difference::default();
        let mut conflicted = std::collections::BTreeSet::new();
        for ours in self.ours {
            match theirs.get(&ours.id) {
                Some(t) => {
                    conflicted.insert(ours.id);
                    out.conflicts.push((ours, *t));
                }
                None => out.missing_there.push(ours),
            }
        }
        out.missing_here = self.theirs.into_iter().filter(|k| !conflicted.contains(&k.id)).collect();
        out
    }
}

/// What to do after an answer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Step {
    pub send: Vec<Request>,
    pub found: Found,
    /// The round is over (`found` is the last batch).
    pub done: bool,
}

/// An answer that breaks the protocol (the peer is to blame).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bad(pub &'static str);

/// One round with one peer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    stage: Stage,
    /// Took the bulk path.
    pub bulk: bool,
    /// Cells asked for beyond the first plan (the estimate was low).
    pub extended: u32,
    /// The sets were equal when the round started (one round trip, nothing to do).
    pub equal: bool,
    /// How many keys the peer said it has (bounds its listing).
    their_count: u64,
}

impl Session {
    /// A round and its first request.
    pub fn start(set: &KeySet) -> (Session, Request) {
        (Session { stage: Stage::Starting, bulk: false, extended: 0, equal: false, their_count: 0 }, set.start())
    }

    pub fn done(&self) -> bool {
        self.stage == Stage::Done
    }

    /// Handles the answer to `asked`.
    pub fn on_answer(&mut self, set: &KeySet, asked: &Request, answer: Response) -> Result<Step, Bad> {
        match (asked, answer) {
            (Request::Start { .. }, Response::Equal) => {
                self.equal = true;
                Ok(self.finish(Found::default()))
            }
            (Request::Start { .. }, Response::Differs { count, len, cell, counts }) => {
                self.on_differs(set, count, len, cell, &counts)
            }
            (Request::Cells { from, to }, Response::Cells { cells }) => {
                if cells.len() != (to - from) as usize {
                    return Err(Bad("cells answer of the wrong length"));
                }
                self.on_cells(set, *from, cells)
            }
            (Request::Cells { .. }, Response::Refused { .. }) => Ok(self.go_bulk()),
            (Request::Keys { after }, Response::Keys { keys, more }) => self.on_keys(set, *after, &keys, more),
            _ => Err(Bad("answer does not fit the round")),
        }
    }

    fn finish(&mut self, found: Found) -> Step {
        self.stage = Stage::Done;
        Step { send: Vec::new(), found, done: true }
    }

    fn go_bulk(&mut self) -> Step {
        self.bulk = true;
        self.stage = Stage::Keys { listed: 0 };
        Step { send: vec![Request::Keys { after: None }], found: Found::default(), done: false }
    }

    fn on_differs(
        &mut self,
        set: &KeySet,
        count: u64,
        len: u32,
        cell: WireCell,
        counts: &[[u8; 2]],
    ) -> Result<Step, Bad> {
        if self.stage != Stage::Starting {
            return Err(Bad("second answer to a round's start"));
        }
        self.their_count = count;
        let ours = set.sketch().cells();
        let mut diff0 = cell.minus(&ours[0]);
        diff0.count = i64::try_from(count).unwrap_or(i64::MAX).saturating_sub(set.len() as i64);
        let mut decoder = Decoder::default();
        decoder.extend([diff0]);
        if decoder.peel() {
            return Ok(self.finish(Found { theirs: decoder.theirs().to_vec(), ours: decoder.ours().to_vec() }));
        }
        if set.is_empty() {
            return Ok(self.go_bulk());
        }
        let n = counts.len().min(ours.len() - 1).min(ESTIMATE_CELLS);
        let cs: Vec<i64> = (0..n).map(|k| count_minus(counts[k], &ours[k + 1])).collect();
        let estimate = sketch::estimate(diff0.count, &cs);
        let limit = (ours.len() as u32).min(len);
        let want = plan(estimate);
        // Listing the peer's keys is cheaper, or the difference is past what both keep.
        if want > limit || u64::from(want) * CELL_BYTES > count.saturating_mul(KEY_BYTES) {
            return Ok(self.go_bulk());
        }
        self.stage = Stage::Cells { decoder, have: 1, asked: want, limit, chunks: BTreeMap::new() };
        Ok(Step { send: chunks(1, want), found: Found::default(), done: false })
    }

    fn on_cells(&mut self, set: &KeySet, from: u32, cells: Vec<WireCell>) -> Result<Step, Bad> {
        let ours = set.sketch().cells();
        let Stage::Cells { decoder, have, asked, limit, chunks: waiting } = &mut self.stage else {
            return Err(Bad("cells outside a round"));
        };
        if from < *have || from >= *asked || waiting.contains_key(&from) {
            return Err(Bad("cells not asked for"));
        }
        waiting.insert(from, cells);
        while let Some(next) = waiting.remove(have) {
            let start = *have as usize;
            if start + next.len() > ours.len() {
                // Our own prefix shrank under the round (it never does; be safe).
                return Ok(self.go_bulk());
            }
            decoder.extend(next.iter().enumerate().map(|(k, c)| c.minus(&ours[start + k])));
            *have += next.len() as u32;
        }
        if *have < *asked {
            return Ok(Step::default());
        }
        if decoder.peel() {
            let found = Found { theirs: decoder.theirs().to_vec(), ours: decoder.ours().to_vec() };
            return Ok(self.finish(found));
        }
        if decoder.broken() {
            // A set changed under the round; listing is immune to that.
            return Ok(self.go_bulk());
        }
        let more = (*asked + (*asked / 2).max(32)).min(*limit);
        if more <= *asked {
            return Ok(self.go_bulk());
        }
        let from = *asked;
        *asked = more;
        self.extended += 1;
        Ok(Step { send: chunks(from, more), found: Found::default(), done: false })
    }

    fn on_keys(&mut self, set: &KeySet, after: Option<ContentId>, keys: &[Key], more: bool) -> Result<Step, Bad> {
        let Stage::Keys { listed } = &mut self.stage else {
            return Err(Bad("keys outside the bulk path"));
        };
        // Pages are full but the last: a peer cannot stretch a listing with short pages.
        if more && keys.len() < KEYS_PER_PAGE {
            return Err(Bad("a short page that says there is more"));
        }
        *listed += keys.len() as u64;
        // Past what the peer's count allows (its set grew more than that while we listed, or
        // it lies): the round ends with what it found, and the next one, with a new count,
        // goes on from there. Honest peers are not blamed, and no round lists without end.
        let stop = *listed >= listing_max(self.their_count);
        let mut prev = after.map(|a| a.0);
        for k in keys {
            if prev.is_some_and(|p| k.id <= p) {
                return Err(Bad("keys out of order"));
            }
            prev = Some(k.id);
        }
        if more && keys.is_empty() {
            return Err(Bad("an empty page that says there is more"));
        }
        let upto = if more { keys.last().map(|k| ContentId(k.id)) } else { None };
        let mut found = Found::default();
        let mine = set.keys_between(after, upto);
        let theirs: BTreeMap<[u8; 32], [u8; 8]> = keys.iter().map(|k| (k.id, k.tag)).collect();
        for k in keys {
            if set.tag(&ContentId(k.id)) != Some(k.tag) {
                found.theirs.push(*k);
            }
        }
        for k in mine {
            if theirs.get(&k.id) != Some(&k.tag) && found.ours.len() < OURS_PER_STEP_MAX {
                found.ours.push(k);
            }
        }
        if !more || stop {
            return Ok(self.finish(found));
        }
        Ok(Step { send: vec![Request::Keys { after: upto }], found, done: false })
    }
}

/// A whole round run in memory, `a` asking `b` (the benchmark and the tests; the module runs
/// rounds over the request layer).
#[derive(Clone, Debug, Default)]
pub struct InMemory {
    /// Every frame of the round, both ways, as it goes on the wire before encryption.
    pub bytes: u64,
    /// Request waves, with the module's per-peer in-flight bound.
    pub round_trips: u32,
    pub bulk: bool,
    pub theirs: std::collections::BTreeSet<Key>,
    pub ours: std::collections::BTreeSet<Key>,
}

/// Runs one round of `a` asking `b` to its end, as the module does over the request layer.
pub fn in_memory(a: &KeySet, b: &KeySet) -> Result<InMemory, Bad> {
    use crate::request::RequestId;
    use crate::wire::{self, Message};
    let (mut session, first) = Session::start(a);
    let mut waiting = std::collections::VecDeque::from([first]);
    let mut out = InMemory::default();
    let mut next_id = 0u32;
    let frame_len = |m: &Message| wire::encode_frame(m).map_or(0, |f| f.len() as u64);
    while !waiting.is_empty() {
        out.round_trips += 1;
        let wave: Vec<Request> = waiting.drain(..waiting.len().min(IN_FLIGHT_MAX)).collect();
        for asked in wave {
            next_id += 1;
            let id = RequestId(next_id);
            out.bytes += frame_len(&Message::Request { id, body: wire::Request::Reconcile(asked.clone()) });
            let answer = b.answer(&asked).ok_or(Bad("a request the peer cannot answer"))?;
            out.bytes += frame_len(&Message::Response { id, body: wire::Response::Reconcile(answer.clone()) });
            let step = session.on_answer(a, &asked, answer)?;
            out.theirs.extend(step.found.theirs);
            out.ours.extend(step.found.ours);
            waiting.extend(step.send);
        }
    }
    if !session.done() {
        return Err(Bad("the round stopped before its end"));
    }
    out.bulk = session.bulk;
    Ok(out)
}

/// Keys a peer that said it has `count` may list in one round: its set may grow while we list
/// (new items published), by an eighth and a page at most.
pub fn listing_max(count: u64) -> u64 {
    count.saturating_add(count / 8).saturating_add(KEYS_PER_PAGE as u64)
}

/// Requests for cells `from..to`, a frame's worth each.
fn chunks(from: u32, to: u32) -> Vec<Request> {
    (from..to)
        .step_by(CELLS_PER_MESSAGE)
        .map(|a| Request::Cells { from: a, to: (a + CELLS_PER_MESSAGE as u32).min(to) })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn key(n: u64) -> Key {
        let hash = blake3::hash(&n.to_le_bytes());
        Key { id: *hash.as_bytes(), tag: [n as u8; 8] }
    }

    fn set(keys: impl Iterator<Item = u64>) -> KeySet {
        let mut s = KeySet::default();
        for k in keys {
            s.put(key(k));
        }
        s
    }

    /// Runs a round in memory: (found theirs, found ours, round trips, bulk).
    fn run(a: &KeySet, b: &KeySet) -> (BTreeSet<Key>, BTreeSet<Key>, u32, bool) {
        let r = in_memory(a, b).expect("a valid round");
        (r.theirs, r.ours, r.round_trips, r.bulk)
    }

    #[test]
    fn equal_sets_take_one_round_trip_and_one_key_too() {
        let a = set(0..5_000);
        let (t, o, trips, _) = run(&a, &a.clone());
        assert!(t.is_empty() && o.is_empty());
        assert_eq!(trips, 1);
        let b = set(0..5_001);
        let (t, o, trips, _) = run(&a, &b);
        assert_eq!((t.len(), o.len(), trips), (1, 0, 1));
    }

    #[test]
    fn a_difference_settles_in_two_round_trips_and_large_ones_go_bulk() {
        let a = set(0..20_000);
        let b = set(50..20_050);
        let (t, o, trips, bulk) = run(&a, &b);
        assert_eq!(t, (20_000..20_050).map(key).collect());
        assert_eq!(o, (0..50).map(key).collect());
        assert!(trips <= 3 && !bulk, "{trips} round trips");
        // An empty node lists.
        let (t, _, _, bulk) = run(&KeySet::default(), &b);
        assert!(bulk);
        assert_eq!(t.len(), 20_000);
        // Half the set differs: listing is cheaper.
        let c = set(10_000..30_000);
        let (t, o, _, bulk) = run(&a, &c);
        assert!(bulk);
        assert_eq!((t.len(), o.len()), (10_000, 10_000));
    }

    /// Goes to the bulk path against a peer that says it has `count` keys; returns the round
    /// and the first `Keys` request.
    fn bulk_against(count: u64) -> (Session, KeySet, Request) {
        let mine = KeySet::default();
        let (mut session, first) = Session::start(&mine);
        let theirs = set(0..count);
        let answer = theirs.answer(&first).expect("answerable");
        let step = session.on_answer(&mine, &first, answer).expect("valid");
        assert!(session.bulk, "an empty node lists");
        let [asked] = <[Request; 1]>::try_from(step.send).expect("one request");
        (session, mine, asked)
    }

    #[test]
    fn a_peer_cannot_make_a_listing_last_forever() {
        // A short page that says there is more.
        let (mut session, mine, asked) = bulk_against(3_000);
        let page: Vec<Key> = (0..10u64).map(|n| Key { id: [n as u8 + 1; 32], tag: [0; 8] }).collect();
        assert_eq!(
            session.on_answer(&mine, &asked, Response::Keys { keys: page, more: true }),
            Err(Bad("a short page that says there is more"))
        );
        // Full pages past the count the peer gave: the round ends there, with what it found so
        // far (our keys past the last page listed are not taken for missing there).
        let (mut session, mut mine, mut asked) = bulk_against(3_000);
        let beyond = Key { id: [0xff; 32], tag: [2; 8] };
        mine.put(beyond);
        let mut next = 0u64;
        let mut pages = 0;
        let last = loop {
            let keys: Vec<Key> = (0..KEYS_PER_PAGE as u64)
                .map(|k| {
                    let mut id = [0; 32];
                    id[..8].copy_from_slice(&(next + k).to_be_bytes());
                    Key { id, tag: [1; 8] }
                })
                .collect();
            next += KEYS_PER_PAGE as u64;
            pages += 1;
            let step = session.on_answer(&mine, &asked, Response::Keys { keys, more: true }).expect("not blamed");
            if step.done {
                break step;
            }
            asked = step.send.into_iter().next().expect("next page");
        };
        assert!(session.done());
        assert_eq!(pages, listing_max(3_000).div_ceil(KEYS_PER_PAGE as u64));
        assert_eq!(last.found.theirs.len(), KEYS_PER_PAGE);
        assert!(last.found.ours.is_empty(), "{:?}", last.found.ours);
        // An honest listing of a set that grew a little while we listed is fine.
        let (mut session, mine, asked) = bulk_against(3_000);
        let grown = set(0..3_300);
        let mut queue = vec![asked];
        let mut listed = 0;
        while let Some(asked) = queue.pop() {
            let step = session.on_answer(&mine, &asked, grown.answer(&asked).expect("answerable")).expect("honest");
            listed += step.found.theirs.len();
            queue.extend(step.send);
        }
        assert!(session.done());
        assert_eq!(listed, 3_300);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]

        /// For random sets and differences (keys only one side has, and items both have in
        /// different versions), a whole round, whichever path it takes, finds exactly the
        /// symmetric difference.
        #[test]
        fn a_round_finds_exactly_the_symmetric_difference(
            shared in proptest::collection::btree_set(0u64..1_000_000, 0..3_000),
            only_ours in proptest::collection::btree_set(1_000_000u64..2_000_000, 0..200),
            only_theirs in proptest::collection::btree_set(2_000_000u64..3_000_000, 0..200),
            changed in proptest::collection::btree_set(0usize..3_000, 0..50),
        ) {
            let shared: Vec<u64> = shared.into_iter().collect();
            let a = set(shared.iter().copied().chain(only_ours.iter().copied()));
            let mut b = set(shared.iter().copied().chain(only_theirs.iter().copied()));
            let mut want_theirs: BTreeSet<Key> = only_theirs.iter().map(|n| key(*n)).collect();
            let mut want_ours: BTreeSet<Key> = only_ours.iter().map(|n| key(*n)).collect();
            for i in changed.into_iter().filter(|i| *i < shared.len()) {
                let mut newer = key(shared[i]);
                newer.tag = [newer.tag[0].wrapping_add(1); 8];
                b.put(newer);
                want_theirs.insert(newer);
                want_ours.insert(key(shared[i]));
            }
            let (theirs, ours, _, _) = run(&a, &b);
            proptest::prop_assert_eq!(theirs, want_theirs);
            proptest::prop_assert_eq!(ours, want_ours);
        }
    }

    #[test]
    fn a_round_splits_into_missing_here_missing_there_and_conflicts() {
        let a = set(0..1_000);
        let mut b = set(5..1_003);
        let mut changed = key(7);
        changed.tag = [99; 8];
        b.put(changed);
        let r = in_memory(&a, &b).expect("a valid round");
        let found = Found { theirs: r.theirs.into_iter().collect(), ours: r.ours.into_iter().collect() };
        let d = found.split();
        let sorted = |keys: Vec<Key>| keys.into_iter().collect::<BTreeSet<_>>();
        assert_eq!(sorted(d.missing_here), (1_000..1_003).map(key).collect());
        assert_eq!(sorted(d.missing_there), (0..5).map(key).collect());
        assert_eq!(d.conflicts, vec![(key(7), changed)]);
    }

    #[test]
    fn another_version_of_an_item_shows_on_both_sides() {
        let a = set(0..1_000);
        let mut b = a.clone();
        let mut changed = key(7);
        changed.tag = [99; 8];
        b.put(changed);
        let (t, o, trips, _) = run(&a, &b);
        assert_eq!(t, BTreeSet::from([changed]));
        assert_eq!(o, BTreeSet::from([key(7)]));
        assert!(trips <= 2);
    }
}
