//! The node's door to content states and groups (SPEC R9): read access for `mynet group`, and
//! the runtime's decrypt verdicts.

use super::*;

impl Node {
    /// Content states and decrypt verdicts, read-only.
    pub fn states(&self) -> &crate::states::States {
        &self.state.states
    }

    /// The group `id` belongs to, each member's state, whether it is held here and its flags
    /// (`mynet group`).
    pub fn group(&self, id: &ContentId) -> Option<crate::states::GroupView> {
        let catalogue = self.state.reconcile.catalogue();
        let mut view = self.state.states.group(catalogue, id, self.state.now.wall_ms)?;
        for member in &mut view.members {
            member.held = self.state.content.holds(&member.id);
        }
        Some(view)
    }

    /// The runtime decrypted `parent` with key material the node never sees and compared the
    /// plaintext with `child`: a mismatch flags the relation and penalises the child's author.
    pub(super) fn relation_checked(&mut self, parent: ContentId, child: ContentId, ok: bool) {
        if !self.state.states.checked(parent, child, ok) || ok {
            return;
        }
        cx!(self).event(Event::RelationMismatch { parent, child });
        let author = self.state.reconcile.catalogue().get(&child).map(|s| s.meta.author);
        if let Some(author) = author.filter(|a| *a != self.identity.public_key()) {
            let points = crate::states::POINTS_RELATION_MISMATCH;
            cx!(self).penalise(crate::penalties::Offender::Node(NodeId::from_public_key(&author)), points);
        }
    }
}
