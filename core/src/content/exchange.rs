//! The exchange side of the content module: answering peers (listings, metadata from the
//! store, availability, pieces) and learning what peers hold (listings on connect,
//! announcements when an item is added or completed).

use super::*;

impl Content {
    // ---- serving ----

    pub fn handle_request(&mut self, cx: &mut Cx<'_>, conn: ConnId, id: RequestId, request: Request) {
        match request {
            Request::List { after } => {
                use core::ops::Bound;
                let start = after.map_or(Bound::Unbounded, Bound::Excluded);
                let mut items: Vec<Listed> = self
                    .items
                    .range((start, Bound::Unbounded))
                    .filter(|(_, i)| i.head_stored && i.held.ones() > 0)
                    .take(LISTING_MAX + 1)
                    .map(|(cid, i)| i.listed(*cid))
                    .collect();
                let more = items.len() > LISTING_MAX;
                items.truncate(LISTING_MAX);
                cx.respond(conn, id, wire::Response::Content(Response::Listing { items, more }));
            }
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

    // ---- listings and announcements ----

    pub(super) fn request_listing(&mut self, cx: &mut Cx<'_>, conn: ConnId) {
        let Some(peer) = self.peers.get_mut(&conn) else { return };
        let Some(after) = peer.listing else { return };
        if peer.listing_pending {
            return;
        }
        if cx.request(conn, wrap(Request::List { after }), Origin::Content, 0).is_ok() {
            peer.listing_pending = true;
        }
    }

    pub(super) fn on_listing(&mut self, cx: &mut Cx<'_>, conn: ConnId, response: Response) {
        let Response::Listing { items, more } = response else { return };
        let last = items.last().map(|l| l.id);
        for listed in items {
            self.learn(cx, conn, listed);
        }
        if let Some(peer) = self.peers.get_mut(&conn) {
            peer.listing_pending = false;
            peer.listing = if more && last.is_some() && self.remote.len() < REMOTE_MAX { Some(last) } else { None };
        }
        self.request_listing(cx, conn);
        self.start_transfers(cx);
        self.check_initial(cx);
    }

    /// A peer holds (part of) an item: remember it, add it as a source of a running
    /// transfer, and queue it if the policy wants it.
    pub(super) fn learn(&mut self, cx: &mut Cx<'_>, conn: ConnId, listed: Listed) {
        if Layout::new(listed.size).is_err() {
            return;
        }
        let Some(peer) = self.peers.get_mut(&conn) else { return };
        if !self.remote.contains_key(&listed.id) && self.remote.len() >= REMOTE_MAX {
            return;
        }
        peer.holds.insert(listed.id);
        let remote =
            self.remote.entry(listed.id).or_insert_with(|| Remote { size: listed.size, holders: BTreeMap::new() });
        remote.holders.insert(conn, listed.complete);
        if let Some(t) = self.active.get_mut(&listed.id) {
            let avail = if listed.complete { Avail::All } else { Avail::Unknown };
            let source = t.sources.entry(conn).or_insert(Source { avail: Avail::Unknown, pieces: 0 });
            if listed.complete || source.avail == Avail::Unknown {
                source.avail = avail;
            }
            t.progress = cx.now.mono;
            return self.pump(cx, listed.id);
        }
        if self.holds(&listed.id) || self.queued.contains(&listed.id) || self.removed.contains(&listed.id) {
            return;
        }
        if cx.config.replicate == Replicate::All {
            self.push_queue(listed.id, false, false);
        }
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
