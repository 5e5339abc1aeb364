//! Reconciliation in the simulator: publishers, concurrent conflicting edits (`--updates`),
//! a metadata-only catalogue (`--catalogue`), the convergence liveness check and the
//! `reconcile` summary.
//!
//! With `--publishers P` the network's `publishers` names nodes `0..P` (the items of
//! `--content` and every edit come from them); without it any node may publish. Each edit
//! of `--updates` is a pair: two different publishers give the same item new tags at
//! (almost) the same instant, often on opposite sides of a partition, so replicas see the two
//! versions in different orders and the conflict rule alone decides.

use mynet_core::content::ContentId;
use mynet_core::reconcile::meta::Signed;

use super::*;

/// `reconcile` in the summary.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct ReconcileSummary {
    /// Items in the catalogue every replica should hold.
    pub items: usize,
    /// Rounds finished, summed over the honest nodes running at the end.
    pub rounds: u64,
    /// Bytes of those rounds.
    pub bytes: u64,
    /// Mean bytes of a round in which nothing differed.
    pub idle_bytes_per_round: f64,
    pub bulk_rounds: u64,
    /// What rounds found (SPEC R8.1), summed: items missing at the asker, missing at the peer,
    /// and conflicts (the same item in different versions).
    pub missing_here: u64,
    pub missing_there: u64,
    pub conflicts: u64,
    /// Versions replaced by a winning one (conflicts resolved), and metadata refused.
    pub replaced: u64,
    pub refused: u64,
    /// Edits made (`--updates`, two per pair).
    pub edits: u64,
    /// Every honest replica running at the end holds the same catalogue.
    pub converged: bool,
}

/// The edits and what was published.
#[derive(Debug, Default)]
pub struct Edits {
    /// Every version published, by item: the winner among those not lost is what replicas
    /// must converge to.
    pub published: BTreeMap<ContentId, Vec<Signed>>,
    /// Versions that died with their publisher before anyone else had them (their hashes).
    pub lost: BTreeSet<[u8; 32]>,
    pub edits: u64,
    /// Metadata-only items of `--catalogue`.
    pub catalogue: Vec<ContentId>,
}

impl World {
    /// The nodes that may publish: `0..P`, or every honest node.
    pub(super) fn publisher_count(&self) -> usize {
        if self.config.publishers == 0 { self.honest } else { self.config.publishers.min(self.honest) }
    }

    /// Schedules the `--updates` edit pairs and the `--catalogue` items.
    pub(super) fn schedule_reconcile(&mut self) {
        if self.config.catalogue > 0 {
            for k in 0..self.config.catalogue as u64 {
                let mut input = [0u8; 16];
                input[..8].copy_from_slice(&self.config.seed.to_le_bytes());
                input[8..].copy_from_slice(&k.to_le_bytes());
                self.edits.catalogue.push(ContentId(*blake3::hash(&input).as_bytes()));
            }
            self.schedule(1_000_000, Ev::Catalogue);
        }
        let items = self.content.items.len();
        let publishers = self.publisher_count();
        if items == 0 || publishers < 2 {
            return;
        }
        for _ in 0..self.config.updates {
            let item = (self.rng.next_u64() % items as u64) as usize;
            let first = (self.rng.next_u64() % publishers as u64) as usize;
            let second = (first + 1 + (self.rng.next_u64() % (publishers as u64 - 1)) as usize) % publishers;
            // After the item was added, before the faults heal.
            let from = self.content.items[item].at_us + 1_000_000;
            let until = self.config.heal_at_us().max(from + 1);
            let at = from + self.rng.next_u64() % (until - from);
            let tag = self.rng.next_u64() % 1000;
            self.schedule(at, Ev::Edit { node: first, item, tag });
            let jitter = self.rng.next_u64() % 50_000;
            self.schedule(at + jitter, Ev::Edit { node: second, item, tag: tag + 1 });
        }
    }

    /// One publisher's edit: new tags for the item, signed by it.
    pub(super) fn edit(&mut self, n: usize, item: usize, tag: u64) -> Result<(), SimError> {
        if self.honest(n).is_none_or(|h| h.journaled.is_none()) {
            return Ok(());
        }
        let (id, size) = (self.content.items[item].id, self.content.items[item].size);
        self.edits.edits += 1;
        self.node_input(n, Input::Describe { id, size, tags: vec![format!("edit-{tag}")] })?;
        self.record_published(n, id);
        Ok(())
    }

    /// Node 0 publishes the `--catalogue` items (metadata only).
    pub(super) fn publish_catalogue(&mut self) -> Result<(), SimError> {
        for id in self.edits.catalogue.clone() {
            self.node_input(0, Input::Describe { id, size: 1024, tags: Vec::new() })?;
            self.record_published(0, id);
        }
        Ok(())
    }

    /// Remembers the version node `n` now holds for `id` (after it published one).
    pub(super) fn record_published(&mut self, n: usize, id: ContentId) {
        let Some(signed) = self.node(n).and_then(|node| node.reconcile().catalogue().get(&id)).cloned() else {
            return;
        };
        let versions = self.edits.published.entry(id).or_default();
        if !versions.contains(&signed) {
            versions.push(signed);
        }
    }

    /// After node `n` restarted from its durable log: versions it published that neither it
    /// nor any other node holds died with the crash (they were neither durable nor sent).
    pub(super) fn forget_lost(&mut self, n: usize) {
        let Some(author) = self.node(n).map(|node| node.identity().public_key()) else { return };
        let mut lost = Vec::new();
        for versions in self.edits.published.values() {
            for v in versions.iter().filter(|v| v.meta.author == author) {
                let held = (0..self.honest)
                    .any(|m| self.node(m).is_some_and(|node| node.reconcile().catalogue().get(&v.meta.id) == Some(v)));
                if !held {
                    lost.push(v.hash());
                }
            }
        }
        self.edits.lost.extend(lost);
    }

    /// Whether the run reconciles anything (content, edits or a catalogue).
    fn reconciles(&self) -> bool {
        self.config.content > 0 || self.config.catalogue > 0
    }

    /// Honest nodes running at the end, and their catalogue digests. Nodes that served bad
    /// content are left out: their peers banned them, so they are cut off by design (as the
    /// peer and content liveness checks leave them out).
    fn digests(&self) -> Vec<(usize, [u8; 32])> {
        (0..self.honest)
            .filter(|n| self.honest(*n).is_some_and(|h| h.content_fault.is_none()))
            .filter_map(|n| self.node(n).map(|node| (n, node.reconcile().catalogue().digest())))
            .collect()
    }

    /// Liveness: after the faults heal, every honest replica holds the same catalogue, with
    /// every published item, each at the version the conflict rule picks among those that
    /// reached the network.
    pub(super) fn check_reconcile(&self) -> Result<(), SimError> {
        if !self.reconciles() {
            return Ok(());
        }
        let budget_s = (self.config.duration_ms * 1000 - self.config.heal_at_us()) / 1_000_000;
        let fail = |failure: LivenessFailure, node: Option<usize>| SimError::Liveness {
            failure,
            node,
            budget_s,
            command: self.config.command(),
        };
        let digests = self.digests();
        let Some(&(first, digest)) = digests.first() else { return Ok(()) };
        let reference = self.node(first).map(|node| node.reconcile().catalogue());
        for &(n, other) in &digests {
            if other != digest {
                let mine = self.node(n).map_or(0, |node| node.reconcile().catalogue().len());
                let theirs = reference.map_or(0, |c| c.len());
                let detail = format!("{mine} items against node {first}'s {theirs}, digests differ");
                return Err(fail(LivenessFailure::MetadataDiverged { node: n, detail }, Some(n)));
            }
        }
        let Some(catalogue) = reference else { return Ok(()) };
        // Authors that served bad content are banned: what they published may never have left.
        let banned: BTreeSet<mynet_core::id::PublicKey> = (0..self.honest)
            .filter(|n| self.honest(*n).is_some_and(|h| h.content_fault.is_some()))
            .map(|n| self.nodes[n].identity.public_key())
            .collect();
        for id in self.edits.published.keys() {
            let Some(versions) = self.edits.published.get(id) else { continue };
            let winner = versions
                .iter()
                .filter(|v| !self.edits.lost.contains(&v.hash()))
                .filter(|v| !banned.contains(&v.meta.author) || catalogue.get(id) == Some(*v))
                .max_by_key(|v| v.order());
            let Some(winner) = winner else { continue };
            let detail = match catalogue.get(id) {
                None => format!("item {id} was published but no replica holds it"),
                Some(held) if held != winner => format!(
                    "item {id}: replicas agree on version {} by {}, the rule picks {} by {}",
                    held.meta.version, held.meta.author, winner.meta.version, winner.meta.author
                ),
                Some(_) => continue,
            };
            return Err(fail(LivenessFailure::MetadataDiverged { node: first, detail }, Some(first)));
        }
        Ok(())
    }

    pub(super) fn reconcile_summary(&self) -> ReconcileSummary {
        let mut summary = ReconcileSummary { edits: self.edits.edits, ..ReconcileSummary::default() };
        let (mut idle_rounds, mut idle_bytes) = (0u64, 0u64);
        for n in 0..self.honest {
            let Some(node) = self.node(n) else { continue };
            let s = node.reconcile().stats();
            summary.rounds += s.rounds;
            summary.bytes += s.bytes;
            summary.bulk_rounds += s.bulk_rounds;
            summary.replaced += s.replaced;
            summary.missing_here += s.missing_here;
            summary.missing_there += s.missing_there;
            summary.conflicts += s.conflicts;
            summary.refused +=
                s.refused_malformed + s.refused_bad_signature + s.refused_not_publisher + s.refused_future;
            idle_rounds += s.idle_rounds;
            idle_bytes += s.idle_bytes;
        }
        if idle_rounds > 0 {
            summary.idle_bytes_per_round = (idle_bytes as f64 / idle_rounds as f64 * 10.0).round() / 10.0;
        }
        let digests = self.digests();
        summary.converged = digests.windows(2).all(|w| w[0].1 == w[1].1);
        summary.items =
            digests.first().and_then(|(n, _)| self.node(*n)).map_or(0, |node| node.reconcile().catalogue().len());
        summary
    }
}
