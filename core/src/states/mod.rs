//! Content states and groups (SPEC R9; the seed's `MultiStateContentHandler` and its three
//! processors), computed from the signed catalogue.
//!
//! - **State** of an item: `encrypted` if it was sealed with a key, else `preview` if it carries
//!   the `preview` tag, else `decrypted` ([`classify`]); an item declared a preview gets the tag.
//! - **Group**: a root item and the items whose metadata names it (`group`); the root's
//!   relations say what each member is (`decrypted`, `preview`, ...). All of it is signed
//!   metadata, versioned and converging like the rest of the catalogue.
//! - **Processors** ([`flags`]): an encrypted item's key must be named by a known key record that
//!   is valid now and not revoked, else `key_missing` / `key_expired` / `key_revoked`; the
//!   decrypted form of an encrypted item must be its plaintext (the parent's signed plaintext
//!   hash, and where the node holds the key, decrypting the parent: `relation_mismatch`); a
//!   preview must be smaller than its original (`preview_not_smaller`, a warning). Flagged
//!   items are kept and replicated: a flag is information, never a reason to drop data.
//! - **Replication** of groups is whole: members are queued with their root, root first, as far
//!   as `replicate_states` allows (the content module, `Named`).
//!
//! Key *material* never reaches this module: it stays in the runtime's key registry. The only
//! key-dependent fact the node learns is a check's verdict ([`States::checked`]).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::content::ContentId;
use crate::reconcile::catalogue::Catalogue;
use crate::reconcile::meta::{FUTURE_MAX_MS, ItemState, KeyRecord, Meta, key_record_id};

/// The tag that marks a preview.
pub const PREVIEW_TAG: &str = "preview";
/// The relation kind from an encrypted original to its decrypted form.
pub const DECRYPTED: &str = "decrypted";
/// Misbehaviour points for publishing a decrypted form that is not the original's plaintext:
/// a penalty, not a ban (it may be an honest publisher's wrong file, and the publisher may be
/// a bootstrap node the penalising node needs after a restart).
pub const POINTS_RELATION_MISMATCH: u32 = 20;
/// Verdicts of decrypt checks remembered (the oldest are forgotten first).
pub const CHECKS_MAX: usize = 10_000;

/// An integrity flag on an item.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Flag {
    /// Encrypted, and no key record names its key.
    KeyMissing,
    /// Encrypted with a key that is not valid now (before its start or after its end).
    KeyExpired,
    /// Encrypted with a revoked key.
    KeyRevoked,
    /// Said to be the decrypted form of an encrypted item, but it is not its plaintext.
    RelationMismatch,
    /// A preview not smaller than its original (a warning).
    PreviewNotSmaller,
}

impl Flag {
    pub const ALL: [Flag; 5] =
        [Flag::KeyMissing, Flag::KeyExpired, Flag::KeyRevoked, Flag::RelationMismatch, Flag::PreviewNotSmaller];

    pub fn as_str(self) -> &'static str {
        match self {
            Flag::KeyMissing => "key_missing",
            Flag::KeyExpired => "key_expired",
            Flag::KeyRevoked => "key_revoked",
            Flag::RelationMismatch => "relation_mismatch",
            Flag::PreviewNotSmaller => "preview_not_smaller",
        }
    }
}

/// The state an item gets: sealed items are encrypted; otherwise the `preview` tag (added if
/// the item is declared a preview) makes a preview; otherwise it is decrypted.
pub fn classify(encrypted: bool, declared_preview: bool, tags: &mut Vec<String>) -> ItemState {
    if encrypted {
        return ItemState::Encrypted;
    }
    if declared_preview && !tags.iter().any(|t| t == PREVIEW_TAG) {
        tags.push(PREVIEW_TAG.to_string());
    }
    if tags.iter().any(|t| t == PREVIEW_TAG) { ItemState::Preview } else { ItemState::Decrypted }
}

/// An operator's description of an item it publishes (`mynet add` with states and groups).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItemEdit {
    pub id: ContentId,
    pub size: u64,
    /// Sealed with `key_id`; `plain_hash` is the plaintext's BLAKE3 hash.
    pub key_id: Option<String>,
    pub plain_hash: Option<[u8; 32]>,
    pub tags: Vec<String>,
    /// Member of the group rooted at this item, related to it by `relation` (e.g. `preview`).
    pub group: Option<ContentId>,
    pub relation: Option<String>,
}

/// An operator's key record edit (`mynet key add`, `mynet key rm --revoke`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyEdit {
    pub key_id: String,
    pub algorithm: String,
    pub valid_until_ms: Option<u64>,
    pub revoked: bool,
}

/// An item the catalogue names, as the content module needs it to queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Named {
    pub id: ContentId,
    pub size: u64,
    pub state: ItemState,
    /// Its group's root, if it is a member of another item's group.
    pub root: Option<ContentId>,
}

impl Named {
    pub fn of(meta: &Meta) -> Named {
        Named { id: meta.id, size: meta.size, state: meta.state, root: meta.group.filter(|g| *g != meta.id) }
    }
}

/// Whether a key record makes a key usable at `now_wall_ms`; the flag if not.
pub fn key_flag(record: Option<&KeyRecord>, now_wall_ms: u64) -> Option<Flag> {
    let Some(record) = record else { return Some(Flag::KeyMissing) };
    if record.revoked {
        return Some(Flag::KeyRevoked);
    }
    // A record's start is its publisher's clock: a clock behind it by less than the tolerance
    // versions get (`FUTURE_MAX_MS`) does not make the key "not valid yet" (replicas would
    // disagree on the flag by their clocks).
    let not_yet = now_wall_ms.saturating_add(FUTURE_MAX_MS) < record.valid_from_ms;
    if not_yet || record.valid_until_ms.is_some_and(|until| now_wall_ms > until) {
        return Some(Flag::KeyExpired);
    }
    None
}

/// The state module's own state: verdicts of decrypt checks the runtime made with key material
/// the node never sees.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct States {
    /// Encrypted parent → decrypted child → whether decrypting the parent gave the child
    /// (nested, so the state stays representable as JSON).
    checks: BTreeMap<ContentId, BTreeMap<ContentId, bool>>,
    /// Verdicts held, at most [`CHECKS_MAX`].
    count: usize,
}

impl States {
    /// Records a decrypt check's verdict; false if it was already known.
    pub fn checked(&mut self, parent: ContentId, child: ContentId, ok: bool) -> bool {
        let known = self.verdict(parent, child);
        if known == Some(ok) {
            return false;
        }
        if known.is_none() && self.count >= CHECKS_MAX {
            // Keep failures (they carry blame) over successes when full.
            let pairs = || self.checks.iter().flat_map(|(p, m)| m.iter().map(move |(c, ok)| (*p, *c, *ok)));
            let drop = pairs().find(|(_, _, ok)| *ok).or_else(|| pairs().next());
            let Some((p, c, _)) = drop else { return false };
            self.remove(p, c);
        }
        if self.checks.entry(parent).or_default().insert(child, ok).is_none() {
            self.count += 1;
        }
        true
    }

    fn remove(&mut self, parent: ContentId, child: ContentId) {
        let Some(children) = self.checks.get_mut(&parent) else { return };
        if children.remove(&child).is_some() {
            self.count -= 1;
        }
        if children.is_empty() {
            self.checks.remove(&parent);
        }
    }

    /// Whether the pair was checked, and how it went.
    pub fn verdict(&self, parent: ContentId, child: ContentId) -> Option<bool> {
        self.checks.get(&parent).and_then(|m| m.get(&child)).copied()
    }

    /// The flags of one item.
    pub fn flags(&self, catalogue: &Catalogue, meta: &Meta, now_wall_ms: u64) -> Vec<Flag> {
        let mut out = Vec::new();
        if !meta.is_item() {
            return out;
        }
        match meta.state {
            ItemState::Encrypted => {
                let record = meta
                    .key_id
                    .as_deref()
                    .and_then(|k| catalogue.get(&key_record_id(k)))
                    .and_then(|s| s.meta.key.as_ref());
                out.extend(key_flag(record, now_wall_ms));
            }
            ItemState::Decrypted => {
                if let Some(parent) = self.parent(catalogue, meta, Some(DECRYPTED)) {
                    let signed_mismatch =
                        parent.state == ItemState::Encrypted && parent.plain_hash.is_some_and(|h| h != meta.id.0);
                    if signed_mismatch || self.verdict(parent.id, meta.id) == Some(false) {
                        out.push(Flag::RelationMismatch);
                    }
                }
            }
            ItemState::Preview => {
                let original = self.parent(catalogue, meta, None);
                if original.is_some_and(|o| meta.size >= o.size) {
                    out.push(Flag::PreviewNotSmaller);
                }
            }
        }
        out
    }

    /// Pairs (encrypted original, its decrypted form) that involve `id`, from the catalogue.
    pub fn decrypt_pairs(catalogue: &Catalogue, id: &ContentId) -> Vec<(ContentId, ContentId)> {
        let Some(meta) = catalogue.get(id).map(|s| &s.meta) else { return Vec::new() };
        let mut out = Vec::new();
        if meta.state == ItemState::Encrypted {
            out.extend(meta.relations.iter().filter(|r| r.kind == DECRYPTED).map(|r| (meta.id, r.child)));
        }
        if let Some(root) = meta.group.filter(|g| *g != meta.id).and_then(|g| catalogue.get(&g)).map(|s| &s.meta)
            && root.state == ItemState::Encrypted
            && root.relations.iter().any(|r| r.kind == DECRYPTED && r.child == meta.id)
        {
            out.push((root.id, meta.id));
        }
        out
    }

    /// The item `meta` is related from: its group's root, when the root names it (with
    /// `kind`, if given).
    fn parent<'a>(&self, catalogue: &'a Catalogue, meta: &Meta, kind: Option<&str>) -> Option<&'a Meta> {
        let root = meta.group.filter(|g| *g != meta.id)?;
        let root = &catalogue.get(&root)?.meta;
        root.relations.iter().any(|r| r.child == meta.id && kind.is_none_or(|k| r.kind == k)).then_some(root)
    }

    /// The group `id` belongs to (as root or member), with each member's relation and flags.
    pub fn group(&self, catalogue: &Catalogue, id: &ContentId, now_wall_ms: u64) -> Option<GroupView> {
        let meta = &catalogue.get(id)?.meta;
        if !meta.is_item() {
            return None;
        }
        let root_id = meta.group.unwrap_or(meta.id);
        let root = catalogue.get(&root_id).map(|s| &s.meta);
        let mut ids: BTreeSet<ContentId> = BTreeSet::new();
        ids.insert(root_id);
        if let Some(root) = root {
            ids.extend(root.relations.iter().map(|r| r.child));
        }
        // Members that name the root without the root naming them (yet): shown, unrelated.
        ids.extend(catalogue.metas().values().filter(|s| s.meta.group == Some(root_id)).map(|s| s.meta.id));
        let mut members = Vec::new();
        let root_first = std::iter::once(root_id).chain(ids.into_iter().filter(|i| *i != root_id));
        for member in root_first {
            let m = catalogue.get(&member).map(|s| &s.meta);
            let relation = root.and_then(|r| r.relations.iter().find(|x| x.child == member)).map(|r| r.kind.clone());
            members.push(MemberView {
                id: member,
                root: member == root_id,
                known: m.is_some(),
                state: m.map(|m| m.state),
                size: m.map(|m| m.size),
                relation,
                key_id: m.and_then(|m| m.key_id.clone()),
                flags: m.map(|m| self.flags(catalogue, m, now_wall_ms)).unwrap_or_default(),
                held: false,
            });
        }
        Some(GroupView { root: root_id, members })
    }

    /// Items by state and by flag, over the whole catalogue.
    pub fn status(&self, catalogue: &Catalogue, now_wall_ms: u64) -> StatesStatus {
        let mut status = StatesStatus::default();
        for signed in catalogue.metas().values() {
            let meta = &signed.meta;
            if !meta.is_item() {
                status.key_records += 1;
                continue;
            }
            *status.by_state.entry(state_name(meta.state).to_string()).or_default() += 1;
            for flag in self.flags(catalogue, meta, now_wall_ms) {
                *status.by_flag.entry(flag.as_str().to_string()).or_default() += 1;
            }
        }
        status
    }
}

pub fn state_name(state: ItemState) -> &'static str {
    match state {
        ItemState::Encrypted => "encrypted",
        ItemState::Decrypted => "decrypted",
        ItemState::Preview => "preview",
    }
}

/// One member of a group, as `mynet group` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberView {
    pub id: ContentId,
    pub root: bool,
    /// Its metadata is in the catalogue (a relation may name an item not seen yet).
    pub known: bool,
    pub state: Option<ItemState>,
    pub size: Option<u64>,
    pub relation: Option<String>,
    pub key_id: Option<String>,
    pub flags: Vec<Flag>,
    /// Held completely here (filled in by the node, which knows the content module).
    pub held: bool,
}

/// A group, root first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupView {
    pub root: ContentId,
    pub members: Vec<MemberView>,
}

/// `states` in status: items by state and by flag.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatesStatus {
    pub by_state: BTreeMap<String, u64>,
    pub by_flag: BTreeMap<String, u64>,
    pub key_records: u64,
}

#[cfg(test)]
mod tests;
