//! Content states and groups in the simulator (SPEC R9).
//!
//! With `--content N` (N ≥ 4), items come in blocks of four; every other block is a group: an
//! encrypted original (key `key-B`), its decrypted form and two previews, described by the
//! original's publisher once all four are added. Some groups have no key record (`key_missing`),
//! some a decrypted form that is not the original's plaintext (a wrong signed plaintext hash:
//! `relation_mismatch`), and previews are as large as their sizes fall (`preview_not_smaller`).
//! One node in three is given every key (its registry, modelled here): when it holds an
//! original and its decrypted form it reports the decrypt check, as the runtime does.
//!
//! Invariants: key bytes never appear in any frame a node sends nor in any log record kept
//! (checked as they are sent, and at the end); a node is never told a verdict for a key it was
//! not given (the model only checks on nodes that hold the key). Liveness: after the faults
//! heal, every replica reports the same group members and flags for every group.

use mynet_core::content::ContentId;
use mynet_core::states::{ItemEdit, KeyEdit, States};

use super::*;

/// Items per block; blocks with an even index are groups.
const BLOCK: usize = 4;
/// Period of the decrypt-check sweep (as the runtime's).
const SWEEP_US: u64 = 30_000_000;

/// A group of the workload.
#[derive(Clone, Debug)]
pub struct SimGroup {
    /// Item indices: original, decrypted form, two previews.
    pub items: [usize; BLOCK],
    pub key_id: String,
    /// A key record is published.
    pub key_published: bool,
    /// The decrypted form's signed plaintext hash is not the original's plaintext.
    pub broken: bool,
}

/// The groups, the keys (bytes never given to any node: only verdicts are) and counters.
#[derive(Debug)]
pub struct Groups {
    pub groups: Vec<SimGroup>,
    pub keys: BTreeMap<String, [u8; 32]>,
    /// First bytes of the keys, to scan frames cheaply.
    first_bytes: [bool; 256],
    pub decrypt_checks: u64,
    pub frames_scanned: u64,
}

/// `groups` in the summary.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct GroupsSummary {
    pub groups: usize,
    /// Decrypt checks reported by the nodes given the keys.
    pub decrypt_checks: u64,
    /// Flags of the groups' members as the first replica reports them.
    pub flags: BTreeMap<String, u64>,
    /// Every replica reports the same members and flags for every group.
    pub consistent: bool,
}

impl Default for Groups {
    fn default() -> Groups {
        Groups {
            groups: Vec::new(),
            keys: BTreeMap::new(),
            first_bytes: [false; 256],
            decrypt_checks: 0,
            frames_scanned: 0,
        }
    }
}

impl Groups {
    fn contains_key_bytes(&self, bytes: &[u8]) -> bool {
        if self.keys.is_empty() || bytes.len() < 32 {
            return false;
        }
        bytes.windows(32).any(|w| self.first_bytes[usize::from(w[0])] && self.keys.values().any(|k| k[..] == *w))
    }
}

/// Whether node `n` was given every key.
fn has_keys(n: usize) -> bool {
    n.is_multiple_of(3)
}

impl World {
    /// Forms the groups of the `--content` workload (after `schedule_content`).
    pub(super) fn schedule_groups(&mut self) {
        let blocks = self.content.items.len() / BLOCK;
        for b in (0..blocks).step_by(2) {
            let items = [b * BLOCK, b * BLOCK + 1, b * BLOCK + 2, b * BLOCK + 3];
            let key_id = format!("key-{b}");
            let mut key = [0u8; 32];
            self.rng.fill_bytes(&mut key);
            self.groups.first_bytes[usize::from(key[0])] = true;
            self.groups.keys.insert(key_id.clone(), key);
            let g = self.groups.groups.len();
            let group = SimGroup { items, key_id, key_published: g % 3 != 1, broken: g % 3 == 2 };
            // Described once all four are added (their publishers may differ), before the heal.
            let added = items.iter().map(|i| self.content.items[*i].at_us).max().unwrap_or(0);
            self.schedule(added + 5_000_000, Ev::Group { group: g });
            self.groups.groups.push(group);
        }
        if !self.groups.groups.is_empty() {
            self.schedule(SWEEP_US, Ev::DecryptSweep);
        }
    }

    /// Like the runtime's periodic sweep: nodes given the keys check the pairs whose metadata
    /// arrived after both items were held.
    pub(super) fn decrypt_sweep(&mut self) {
        let roots: Vec<ContentId> = self.groups.groups.iter().map(|g| self.content.items[g.items[0]].id).collect();
        for n in (0..self.honest).filter(|n| has_keys(*n)) {
            for root in &roots {
                self.schedule_decrypt_checks(n, *root);
            }
        }
        self.schedule(self.now_us + SWEEP_US, Ev::DecryptSweep);
    }

    /// The original's publisher describes the group: the key record, the original (sealed with
    /// the key), then each member naming the original as its root.
    pub(super) fn describe_group(&mut self, g: usize) -> Result<(), SimError> {
        let group = self.groups.groups[g].clone();
        let item = |w: &World, k: usize| {
            let i = &w.content.items[group.items[k]];
            (i.id, i.size, i.origin)
        };
        let (root, root_size, origin) = item(self, 0);
        let n = (0..self.honest)
            .map(|k| (origin + k) % self.honest)
            .find(|m| self.honest(*m).is_some_and(|h| h.journaled.is_some()) && *m < self.publisher_count());
        let Some(n) = n else { return Ok(()) };
        if group.key_published {
            let edit = KeyEdit {
                key_id: group.key_id.clone(),
                algorithm: "xchacha20poly1305-stream-64k".into(),
                valid_until_ms: None,
                revoked: false,
            };
            self.node_input(n, Input::KeyEdit(edit))?;
            self.record_published(n, mynet_core::reconcile::meta::key_record_id(&group.key_id));
        }
        let decrypted = item(self, 1).0;
        let plain = if group.broken { *blake3::hash(&decrypted.0).as_bytes() } else { decrypted.0 };
        let edit = ItemEdit {
            id: root,
            size: root_size,
            key_id: Some(group.key_id.clone()),
            plain_hash: Some(plain),
            tags: Vec::new(),
            group: Some(root),
            relation: None,
        };
        self.node_input(n, Input::Edit(edit))?;
        self.record_published(n, root);
        for (k, relation) in [(1, "decrypted"), (2, "preview"), (3, "preview")] {
            let (id, size, _) = item(self, k);
            let edit = ItemEdit {
                id,
                size,
                key_id: None,
                plain_hash: None,
                tags: Vec::new(),
                group: Some(root),
                relation: Some(relation.into()),
            };
            self.node_input(n, Input::Edit(edit))?;
            self.record_published(n, id);
        }
        self.record_published(n, root);
        Ok(())
    }

    /// A node given the keys that now holds an original and its decrypted form checks them
    /// (the runtime's decrypt check; its verdict is what the model knows of the bytes).
    pub(super) fn schedule_decrypt_checks(&mut self, n: usize, id: ContentId) {
        if self.groups.groups.is_empty() || !has_keys(n) {
            return;
        }
        let Some(node) = self.node(n) else { return };
        let due: Vec<(ContentId, ContentId)> = States::decrypt_pairs(node.reconcile().catalogue(), &id)
            .into_iter()
            .filter(|(parent, child)| {
                node.content().holds(parent)
                    && node.content().holds(child)
                    && node.states().verdict(*parent, *child).is_none()
            })
            .collect();
        let epoch = self.nodes[n].epoch;
        for (parent, child) in due {
            self.schedule(self.now_us + 1_000, Ev::DecryptCheck { node: n, epoch, parent, child });
        }
    }

    pub(super) fn decrypt_check(
        &mut self,
        n: usize,
        epoch: u32,
        parent: ContentId,
        child: ContentId,
    ) -> Result<(), SimError> {
        if self.nodes[n].epoch != epoch || self.node(n).is_none() {
            return Ok(());
        }
        // The real plaintext of a group's original is its decrypted form's bytes, unless the
        // group was made with a wrong one.
        let ok = self.groups.groups.iter().any(|g| {
            self.content.items[g.items[0]].id == parent && self.content.items[g.items[1]].id == child && !g.broken
        });
        self.groups.decrypt_checks += 1;
        self.node_input(n, Input::RelationChecked { parent, child, ok })
    }

    /// Safety: no frame carries key bytes.
    pub(super) fn scan_frame(&mut self, n: usize, bytes: &[u8]) -> Result<(), SimError> {
        if self.groups.keys.is_empty() {
            return Ok(());
        }
        self.groups.frames_scanned += 1;
        if self.groups.contains_key_bytes(bytes) {
            return Err(self.invariant(n, Violation::KeyMaterial("a frame".into())));
        }
        Ok(())
    }

    /// Safety (at the end): no kept log record carries key bytes.
    pub(super) fn scan_logs(&self) -> Result<(), SimError> {
        if self.groups.keys.is_empty() {
            return Ok(());
        }
        for n in 0..self.honest {
            let Some(log) = self.memory_log(n) else { continue };
            for (seq, record) in mynet_storage::read_records(log).flatten() {
                if self.groups.contains_key_bytes(&mynet_storage::encode_record(&record)) {
                    return Err(self.invariant(n, Violation::KeyMaterial(format!("log record {seq}"))));
                }
            }
        }
        Ok(())
    }

    /// Every group as each replica sees it: (member, flags) in order.
    fn group_views(&self, n: usize) -> Vec<Vec<(ContentId, Vec<mynet_core::states::Flag>)>> {
        let Some(node) = self.node(n) else { return Vec::new() };
        self.groups
            .groups
            .iter()
            .map(|g| {
                let root = self.content.items[g.items[0]].id;
                node.group(&root).map(|v| v.members.into_iter().map(|m| (m.id, m.flags)).collect()).unwrap_or_default()
            })
            .collect()
    }

    fn replicas(&self) -> Vec<usize> {
        (0..self.honest).filter(|n| self.replicates(*n) && self.node(*n).is_some()).collect()
    }

    /// Liveness: every replica reports the same members and flags for every group.
    pub(super) fn check_groups(&self) -> Result<(), SimError> {
        self.scan_logs()?;
        let replicas = self.replicas();
        let Some(&first) = replicas.first() else { return Ok(()) };
        let reference = self.group_views(first);
        for &n in &replicas[1..] {
            let views = self.group_views(n);
            if let Some(g) = (0..reference.len()).find(|g| views.get(*g) != reference.get(*g)) {
                let root = self.content.items[self.groups.groups[g].items[0]].id;
                let detail = format!("group {root}: {:?} against node {first}'s {:?}", views.get(g), reference.get(g));
                let budget_s = (self.config.duration_ms * 1000 - self.config.heal_at_us()) / 1_000_000;
                return Err(SimError::Liveness {
                    failure: LivenessFailure::GroupsDiffer { node: n, detail },
                    node: Some(n),
                    budget_s,
                    command: self.config.command(),
                });
            }
        }
        Ok(())
    }

    pub(super) fn groups_summary(&self) -> GroupsSummary {
        let mut summary = GroupsSummary {
            groups: self.groups.groups.len(),
            decrypt_checks: self.groups.decrypt_checks,
            ..GroupsSummary::default()
        };
        let replicas = self.replicas();
        if let Some(&first) = replicas.first() {
            let reference = self.group_views(first);
            for (_, flags) in reference.iter().flatten() {
                for flag in flags {
                    *summary.flags.entry(flag.as_str().to_string()).or_default() += 1;
                }
            }
            summary.consistent = replicas.iter().all(|n| self.group_views(*n) == reference);
        } else {
            summary.consistent = true;
        }
        summary
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_bytes_are_found_anywhere_in_a_frame() {
        let mut groups = Groups::default();
        let key = [7u8; 32];
        groups.first_bytes[7] = true;
        groups.keys.insert("k".into(), key);
        let mut frame = vec![1u8; 100];
        assert!(!groups.contains_key_bytes(&frame));
        frame[40..72].copy_from_slice(&key);
        assert!(groups.contains_key_bytes(&frame));
        assert!(!groups.contains_key_bytes(&key[..31]), "shorter than a key");
    }
}
