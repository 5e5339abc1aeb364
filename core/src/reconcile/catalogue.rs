//! The catalogue: every item's winning signed metadata, and the reconciled key set beside it
//! (ids with their metadata tags, in id order, and the coded-cell prefix kept in step).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::content::verify::ContentId;
use crate::reconcile::meta::Signed;
use crate::reconcile::proto::{
    CELLS_PER_MESSAGE, ESTIMATE_CELLS, KEYS_PER_PAGE, METAS_BYTES_MAX, Refusal, Request, Response, WireCell,
};
use crate::reconcile::sketch::{Key, Sketch, len_for};

/// A set of keys (one per id) and its coded cells.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeySet {
    tags: BTreeMap<ContentId, [u8; 8]>,
    sketch: Sketch,
}

impl KeySet {
    pub fn len(&self) -> usize {
        self.tags.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tags.is_empty()
    }

    pub fn sketch(&self) -> &Sketch {
        &self.sketch
    }

    pub fn tag(&self, id: &ContentId) -> Option<[u8; 8]> {
        self.tags.get(id).copied()
    }

    /// Sets the id's key (replacing its old one): O(log n) cell updates.
    pub fn put(&mut self, key: Key) {
        let id = ContentId(key.id);
        if let Some(old) = self.tags.insert(id, key.tag) {
            if old == key.tag {
                return;
            }
            self.sketch.remove(&Key { id: key.id, tag: old });
        }
        if len_for(self.tags.len()) > self.sketch.len() {
            // Outgrown: rebuild at twice the length (amortised O(log n) per insert).
            let keys: Vec<Key> = self.keys_after(None).collect();
            self.sketch.rebuild(len_for(self.tags.len()), keys.iter());
        } else {
            self.sketch.insert(&key);
        }
    }

    pub fn delete(&mut self, id: &ContentId) {
        if let Some(tag) = self.tags.remove(id) {
            self.sketch.remove(&Key { id: id.0, tag });
        }
    }

    /// Keys in id order after `after`.
    pub fn keys_after(&self, after: Option<ContentId>) -> impl Iterator<Item = Key> + '_ {
        use core::ops::Bound;
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        self.tags.range((start, Bound::Unbounded)).map(|(id, tag)| Key { id: id.0, tag: *tag })
    }

    /// Keys with ids in `(after, upto]` (`upto` None: to the end).
    pub fn keys_between(&self, after: Option<ContentId>, upto: Option<ContentId>) -> Vec<Key> {
        self.keys_after(after).take_while(|k| upto.is_none_or(|u| ContentId(k.id) <= u)).collect()
    }

    /// A fingerprint of the whole set (cell 0 holds every key).
    pub fn digest(&self) -> [u8; 32] {
        let first = self.sketch.first();
        let mut h = blake3::Hasher::new();
        h.update(&first.key.id).update(&first.key.tag).update(&first.checksum.to_le_bytes());
        h.update(&first.count.to_le_bytes());
        *h.finalize().as_bytes()
    }

    /// The first message of a round.
    pub fn start(&self) -> Request {
        Request::Start { count: self.len() as u64, cell: WireCell::from_cell(&self.sketch.first()) }
    }

    /// Answers the requests that read only the key set (`Start`, `Cells`, `Keys`).
    pub fn answer(&self, request: &Request) -> Option<Response> {
        let cells = self.sketch.cells();
        Some(match request {
            Request::Start { count, cell } => {
                let ours = self.sketch.first();
                let diff = cell.minus(&ours);
                if *count == self.len() as u64 && diff.is_zero() {
                    return Some(Response::Equal);
                }
                // One differing key settles from cell 0 alone: no estimate needed.
                let n = if diff.pure().is_some() { 0 } else { ESTIMATE_CELLS.min(cells.len() - 1) };
                let counts = cells[1..=n].iter().map(|c| (c.count as u16).to_le_bytes()).collect();
                Response::Differs {
                    count: self.len() as u64,
                    len: cells.len() as u32,
                    cell: WireCell::from_cell(&ours),
                    counts,
                }
            }
            Request::Cells { from, to } => {
                if *to as usize > cells.len() {
                    return Some(Response::Refused { reason: Refusal::BeyondIndex { len: cells.len() as u32 } });
                }
                let (from, to) = (*from as usize, (*to as usize).min(*from as usize + CELLS_PER_MESSAGE));
                Response::Cells { cells: cells[from.min(to)..to].iter().map(WireCell::from_cell).collect() }
            }
            Request::Keys { after } => {
                let mut keys: Vec<Key> = self.keys_after(*after).take(KEYS_PER_PAGE + 1).collect();
                let more = keys.len() > KEYS_PER_PAGE;
                keys.truncate(KEYS_PER_PAGE);
                Response::Keys { keys, more }
            }
            Request::Get { .. } | Request::Offer { .. } => return None,
        })
    }
}

/// What [`Catalogue::put`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Put {
    /// A new item.
    New,
    /// A newer version replaced ours.
    Replaced,
    /// We had exactly this.
    Same,
    /// Ours wins the conflict; theirs was dropped.
    Kept,
}

/// Every item's winning metadata and the key set reconciled over it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Catalogue {
    metas: BTreeMap<ContentId, Signed>,
    set: KeySet,
}

impl Catalogue {
    pub fn len(&self) -> usize {
        self.metas.len()
    }

    pub fn is_empty(&self) -> bool {
        self.metas.is_empty()
    }

    pub fn get(&self, id: &ContentId) -> Option<&Signed> {
        self.metas.get(id)
    }

    pub fn metas(&self) -> &BTreeMap<ContentId, Signed> {
        &self.metas
    }

    pub fn set(&self) -> &KeySet {
        &self.set
    }

    /// Applies the conflict rule: keeps whichever version wins.
    pub fn put(&mut self, signed: Signed) -> Put {
        let id = signed.meta.id;
        let put = match self.metas.get(&id) {
            None => Put::New,
            Some(old) if *old == signed => return Put::Same,
            Some(old) if signed.beats(old) => Put::Replaced,
            Some(_) => return Put::Kept,
        };
        self.set.put(signed.key());
        self.metas.insert(id, signed);
        put
    }

    /// Answers `Get`: metadata for the ids asked, within the byte budget.
    pub fn answer_get(&self, ids: &[ContentId]) -> Response {
        let mut metas = Vec::new();
        let mut bytes = 0;
        let mut answered = 0u16;
        for id in ids {
            if let Some(signed) = self.metas.get(id) {
                let len = postcard::experimental::serialized_size(signed).unwrap_or(usize::MAX);
                if bytes + len > METAS_BYTES_MAX {
                    break;
                }
                bytes += len;
                metas.push(signed.clone());
            }
            answered += 1;
        }
        Response::Metas { metas, answered }
    }

    /// A digest of every item's metadata (equal on converged replicas).
    pub fn digest(&self) -> [u8; 32] {
        self.set.digest()
    }
}
