//! The exchange side of the content module: answering peers (metadata from the store,
//! availability, pieces) and learning what peers hold (announcements when an item is added or
//! completed). Which items exist comes from the catalogue (the reconcile module), not from here.

use super::*;
use crate::states::Named;

impl Content {
    // ---- serving ----

    pub fn handle_request(&mut self, cx: &mut Cx<'_>, conn: ConnId, id: RequestId, request: Request) {
        match request {
            Request::Announce { items } => {
                cx.respond(conn, id, wire::Response::Content(Response::Ack));
                for listed in items {
                    self.learn(cx, conn, listed);
                }
                self.start_transfers(cx);
            }
            Request::Head { id: cid } => match self.items.get(&cid) {
                Some(item) if item.head_stored => {
                    cx.output(Output::Serve { conn, request: id, what: Serve::Head { id: cid } })
                }
                _ => cx.respond(conn, id, wire::Response::Content(Response::NotHeld)),
            },
            Request::Page { id: cid, page } => match self.items.get(&cid) {
                Some(item) if item.head_stored && page < item.layout().pages() => {
                    cx.output(Output::Serve { conn, request: id, what: Serve::Page { id: cid, page } })
                }
                _ => cx.respond(conn, id, wire::Response::Content(Response::NotHeld)),
            },
            Request::Have { id: cid, page } => {
                let answer = match self.items.get(&cid) {
                    Some(item) if page < item.layout().pages() => {
                        let range = item.layout().page_pieces(page);
                        Response::Have { bits: item.held.to_bytes(range.start, range.end) }
                    }
                    _ => Response::NotHeld,
                };
                cx.respond(conn, id, wire::Response::Content(answer));
            }
            Request::Piece { id: cid, index } => match self.items.get_mut(&cid) {
                Some(item) if item.held.get(index) => {
                    item.served += 1;
                    self.stats.pieces_served += 1;
                    let size = item.size;
                    cx.output(Output::Serve { conn, request: id, what: Serve::Piece { id: cid, index, size } })
                }
                _ => cx.respond(conn, id, wire::Response::Content(Response::NotHeld)),
            },
        }
        self.arm(cx);
    }

    // ---- announcements ----

    /// A peer holds (part of) an item: remember it (its holders help once the catalogue
    /// names it), add it as a source of a running transfer, and queue it if the catalogue
    /// names it and the policy wants it. Announcements alone never make an item replicated:
    /// only signed metadata does.
    pub(super) fn learn(&mut self, cx: &mut Cx<'_>, conn: ConnId, listed: Listed) {
        if Layout::new(listed.size).is_err() {
            return;
        }
        let Some(peer) = self.peers.get_mut(&conn) else { return };
        if !self.remote.contains_key(&listed.id) && self.remote.len() >= REMOTE_MAX {
            return;
        }
        let remote = self.remote.entry(listed.id).or_insert_with(|| Remote {
            size: listed.size,
            holders: BTreeMap::new(),
            catalogued: false,
            allowed: true,
        });
        if remote.size != listed.size {
            return;
        }
        peer.holds.insert(listed.id);
        remote.holders.insert(conn, listed.complete);
        let catalogued = remote.catalogued && remote.allowed;
        if let Some(t) = self.active.get_mut(&listed.id) {
            let avail = if listed.complete { Avail::All } else { Avail::Unknown };
            let source = t.sources.entry(conn).or_insert(Source::new(Avail::Unknown));
            if listed.complete || source.avail == Avail::Unknown {
                source.avail = avail;
            }
            t.progress = cx.now.mono;
            return self.pump(cx, listed.id);
        }
        // A holder appeared for an item we want and are not fetching (its first transfer may
        // have found nobody): fetch it now rather than at the next retry.
        let id = listed.id;
        // Partly held: we were fetching it (the catalogue named it, or the operator asked).
        let wanted = catalogued || self.items.contains_key(&id);
        if wanted
            && cx.config.replicate == Replicate::All
            && !self.holds(&id)
            && !self.queued.contains(&id)
            && !self.removed.contains(&id)
        {
            self.retry.remove(&id);
            self.push_queue(id, false, false);
            self.start_transfers(cx);
        }
    }

    /// Items new to the catalogue, or in a new version: remembered with their size, and
    /// queued if the policy replicates them (`replicate`, and `replicate_states` for the item's
    /// state). Groups replicate whole: roots are queued before their members, and a member
    /// queues its root (SPEC R9).
    pub fn catalogued(&mut self, cx: &mut Cx<'_>, items: &[Named]) {
        let mut items = items.to_vec();
        items.sort_by_key(|n| (n.root.is_some(), n.id));
        for named in &items {
            let (id, size) = (named.id, named.size);
            if let Some(root) = named.root
                && self.remote.get(&root).is_some_and(|r| r.catalogued && r.allowed)
                && !self.holds(&root)
                && !self.removed.contains(&root)
                && cx.config.replicate == Replicate::All
            {
                self.push_queue(root, false, false);
            }
            if Layout::new(size).is_err() {
                continue;
            }
            if !self.remote.contains_key(&id) && self.remote.len() >= REMOTE_MAX {
                continue;
            }
            let remote = self.remote.entry(id).or_insert_with(|| Remote {
                size,
                holders: BTreeMap::new(),
                catalogued: true,
                allowed: true,
            });
            if remote.size != size {
                // The signed size wins over what announcements claimed.
                remote.size = size;
                remote.holders.clear();
            }
            remote.catalogued = true;
            remote.allowed = cx.config.replicate_states.contains(&named.state);
            if !remote.allowed {
                continue;
            }
            if self.items.contains_key(&id)
                || self.queued.contains(&id)
                || self.active.contains_key(&id)
                || self.removed.contains(&id)
            {
                continue;
            }
            if cx.config.replicate == Replicate::All {
                self.push_queue(id, false, false);
            }
        }
        self.start_transfers(cx);
        self.check_initial(cx);
    }

    /// Tells every peer about an item we added or completed.
    pub(super) fn announce(&mut self, cx: &mut Cx<'_>, listed: Listed) {
        let conns: Vec<ConnId> = self.peers.keys().copied().collect();
        for conn in conns {
            if let Some(peer) = self.peers.get_mut(&conn) {
                if peer.announce.len() >= ANNOUNCE_QUEUE_MAX {
                    peer.announce.pop_front();
                }
                peer.announce.push_back(listed);
            }
            self.flush_announcements(cx, conn);
        }
        self.arm(cx);
    }

    pub(super) fn flush_announcements(&mut self, cx: &mut Cx<'_>, conn: ConnId) {
        let Some(peer) = self.peers.get_mut(&conn) else { return };
        if peer.announce_pending || peer.announce.is_empty() {
            return;
        }
        let n = peer.announce.len().min(ANNOUNCE_MAX);
        let items: Vec<Listed> = peer.announce.iter().take(n).copied().collect();
        if cx.request(conn, wrap(Request::Announce { items }), Origin::Content, 0).is_ok() {
            peer.announce.drain(..n);
            peer.announce_pending = true;
        }
    }
}
