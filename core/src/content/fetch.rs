//! The fetching side of the content module: answers to our requests (heads, pages,
//! availability, pieces), the sync queue and its workers, and the scheduler that keeps each
//! transfer's sources busy (pipeline depth from the measured rate, the late-piece endgame).

use super::*;

impl Content {
    // ---- answers ----

    pub fn handle_response(&mut self, cx: &mut Cx<'_>, conn: ConnId, pending: &Pending, response: Response) {
        if pending.kind == wire::Kind::Announce {
            if let Some(peer) = self.peers.get_mut(&conn) {
                peer.announce_pending = false;
            }
            return self.flush_announcements(cx, conn);
        }
        let Some(asked) = self.asked.remove(conn, pending.id) else { return };
        match (asked, response) {
            (Asked::Head(id), Response::Head { size, cvs }) => self.on_head(cx, conn, id, size, cvs),
            (Asked::Page(id, page), Response::Page { cvs }) => self.on_page(cx, conn, id, page, cvs),
            (Asked::Have(id, page), Response::Have { bits }) => {
                if let Some(source) = self.active.get_mut(&id).and_then(|t| t.sources.get_mut(&conn)) {
                    source.avail = Avail::Page { page, bits, at: cx.now.mono };
                }
                self.pump(cx, id);
            }
            (asked, _) => {
                // NotHeld: the peer does not (or no longer) hold it; stop asking it for this item.
                let id = asked.item();
                if let Asked::Piece(_, index) = asked
                    && let Some(t) = self.active.get_mut(&id)
                {
                    t.settle(index, conn, pending.id);
                }
                if let Some(t) = self.active.get_mut(&id) {
                    if let Asked::Head(_) = asked {
                        t.head_pending = None;
                    }
                    t.drop_source(conn);
                }
                if let Some(remote) = self.remote.get_mut(&id) {
                    remote.holders.remove(&conn);
                }
                self.pump(cx, id);
            }
        }
    }

    pub fn on_request_failed(&mut self, cx: &mut Cx<'_>, conn: ConnId, pending: &Pending) {
        if pending.kind == wire::Kind::Announce {
            if let Some(peer) = self.peers.get_mut(&conn) {
                peer.announce_pending = false;
            }
            return;
        }
        let Some(asked) = self.asked.remove(conn, pending.id) else { return };
        if let Some(peer) = self.peers.get_mut(&conn) {
            peer.failures += 1;
            if let Asked::Piece(..) = asked {
                // Its answer takes longer than we waited: the next deadline for this source is
                // twice this wait (see `pump`), so a busy source is not asked in a loop it
                // always loses.
                peer.latency_ms = peer.latency_ms.max(cx.now.mono.ms_since(pending.sent));
            }
        }
        let id = asked.item();
        if let Some(t) = self.active.get_mut(&id) {
            match asked {
                Asked::Head(_) => t.head_pending = None,
                Asked::Page(_, page) => {
                    t.page_pending.remove(&page);
                }
                Asked::Have(..) => {
                    if let Some(s) = t.sources.get_mut(&conn) {
                        s.avail = Avail::Unknown;
                    }
                }
                Asked::Piece(_, index) => {
                    t.settle(index, conn, pending.id);
                    if let Some(s) = t.sources.get_mut(&conn) {
                        s.timeouts += 1;
                    }
                    // Not recalled: its bytes may be on the wire, filling our link until its
                    // grace ends (`pending.deadline` is now the grace's end).
                    let len = t.layout.map_or(PIECE_LEN, |l| l.piece_len(index));
                    self.down.owe(conn, pending.id, pending.deadline, len);
                }
            }
        }
        self.pump(cx, id);
    }

    /// A piece answering a request that timed out (`sent` is when we asked) or that we
    /// cancelled. Still needed (its transfer runs, the piece is neither held nor being stored,
    /// and it matches its verified chaining value), it is kept as if it came in time: a source
    /// whose uplink is shared by many downloaders answers late every time, and dropping its
    /// pieces would leave an item it alone holds unfetchable. Otherwise its bytes were wasted.
    #[allow(clippy::too_many_arguments)]
    pub fn on_late_piece(
        &mut self,
        cx: &mut Cx<'_>,
        conn: ConnId,
        request: RequestId,
        sent: Option<Mono>,
        header: proto::PieceHeader,
        hash: [u8; 32],
        data: PieceData,
    ) {
        let len = header.piece_len().unwrap_or(0);
        self.down.arrived(len);
        if self.down.settle(conn, request) {
            // Room on our link for another request: whichever transfer waited for it.
            self.pump_all(cx);
        }
        if let (Some(sent), Some(p)) = (sent, self.peers.get_mut(&conn)) {
            p.note_latency(cx.now.mono.ms_since(sent));
        }
        let (id, index) = (header.id, header.index);
        let needed = self.items.get(&id).is_some_and(|i| index < i.held.len() && !i.held.get(index));
        let usable = self.active.get(&id).is_some_and(|t| {
            needed
                && !t.storing.contains(&index)
                && t.layout.is_some_and(|l| l.size == header.size && data_len_ok(&data, l.piece_len(index)))
                && t.expected(index) == Some(hash)
        });
        if !usable {
            self.stats.wasted_bytes += len;
            return;
        }
        self.stats.late_pieces_kept += 1;
        self.keep_piece(cx, conn, id, index, len, data);
    }

    /// A piece arrived in answer to `pending` (its kind matched). `hash` is what the driver
    /// computed over the bytes (`stream::piece_hash`).
    #[allow(clippy::too_many_arguments)]
    pub fn on_piece(
        &mut self,
        cx: &mut Cx<'_>,
        conn: ConnId,
        peer: NodeId,
        pending: &Pending,
        header: proto::PieceHeader,
        hash: [u8; 32],
        data: PieceData,
    ) {
        self.down.arrived(header.piece_len().unwrap_or(0));
        let Some(Asked::Piece(id, index)) = self.asked.remove(conn, pending.id) else { return };
        let Some(t) = self.active.get_mut(&id) else {
            self.stats.wasted_bytes += header.piece_len().unwrap_or(0);
            return;
        };
        t.settle(index, conn, pending.id);
        let layout = t.layout.unwrap_or(Layout { size: header.size });
        let expected = t.expected(index);
        let honest = header.id == id
            && header.index == index
            && header.size == layout.size
            && data_len_ok(&data, layout.piece_len(index))
            && expected == Some(hash);
        if !honest {
            // Honest peers serve only what they verified: the sender is banned and the piece is
            // fetched elsewhere.
            self.stats.bad_pieces += 1;
            cx.event(Event::BadPiece { conn, peer, id, index });
            t.drop_source(conn);
            cx.misbehaved(conn, CloseReason::Protocol(Violation::BadPiece { index }));
            cx.penalise(Offender::Node(peer), POINTS_BAD_DATA);
            return self.pump(cx, id);
        }
        let now = cx.now.mono;
        let len = layout.piece_len(index);
        if let Some(p) = self.peers.get_mut(&conn) {
            // Delivery rate: bytes over the time since the previous delivery (or the request).
            let since = p.last_piece.map_or(pending.sent, |last| last.max(pending.sent));
            let us = now.0.saturating_sub(since.0).max(1);
            let sample = len.saturating_mul(1_000_000) / us;
            p.rate = if p.rate == 0 { sample } else { (p.rate * 7 + sample) / 8 };
            p.last_piece = Some(now);
            p.note_latency(now.ms_since(pending.sent));
        }
        self.keep_piece(cx, conn, id, index, len, data);
    }

    /// A verified piece of a running transfer: the first copy wins (a duplicate still in
    /// flight is cancelled) and goes to the store.
    fn keep_piece(&mut self, cx: &mut Cx<'_>, conn: ConnId, id: ContentId, index: u64, len: u64, data: PieceData) {
        let Some(t) = self.active.get_mut(&id) else { return };
        t.progress = cx.now.mono;
        t.served_by.insert(conn);
        if let Some(copies) = t.in_flight.remove(&index) {
            for (c, r, _) in copies {
                if let Some(pending) = cx.cancel(c, r) {
                    // The source may have sent it already, and on a congested link what is
                    // queued towards us cannot be recalled: owed until its deadline. (Owing
                    // it only for about its source's latency let swarm seed 2091 over-ask
                    // again: 756 of 800 replicas.)
                    self.down.owe(c, r, pending.deadline, len);
                }
                self.asked.remove(c, r);
                if let Some(source) = t.sources.get_mut(&c) {
                    source.pieces = source.pieces.saturating_sub(1);
                }
            }
        }
        let Some(item) = self.items.get(&id) else { return };
        if item.held.get(index) || !t.storing.insert(index) {
            self.stats.wasted_bytes += len;
        } else {
            cx.output(Output::StorePiece { piece: PieceRef { id, index }, data });
        }
        self.pump(cx, id);
    }

    // ---- the queue and transfers ----

    pub(super) fn push_queue(&mut self, id: ContentId, front: bool, force: bool) {
        if self.queued.contains(&id) || self.active.contains_key(&id) {
            return;
        }
        if self.queue.len() >= QUEUE_MAX && !force {
            return;
        }
        self.queued.insert(id);
        if front {
            self.queue.push_front(id);
        } else {
            self.queue.push_back(id);
        }
    }

    pub(super) fn unqueue(&mut self, id: &ContentId) {
        if self.queued.remove(id) {
            self.queue.retain(|q| q != id);
        }
    }

    /// Starts transfers from the queue while workers are free.
    pub(super) fn start_transfers(&mut self, cx: &mut Cx<'_>) {
        let workers = cx.config.sync_workers.max(1) as usize;
        while self.active.len() < workers {
            let Some(id) = self.queue.pop_front() else { break };
            self.queued.remove(&id);
            if self.holds(&id) {
                continue;
            }
            let wanted = self.wanted.contains(&id) || self.items.get(&id).is_some_and(|i| i.here);
            let size = self.items.get(&id).map(|i| i.size).or_else(|| self.remote.get(&id).map(|r| r.size));
            if let Some(size) = size {
                let held = self.items.get(&id).map_or(0, held_bytes);
                if self.bytes_stored + self.reserved() + (size - held) > cx.config.storage_max_bytes {
                    cx.event(Event::TransferFailed { id, reason: TransferFailure::NoRoom });
                    self.stats.failed_syncs += 1;
                    continue;
                }
            }
            let layout = size.and_then(|s| Layout::new(s).ok());
            let mut t = Transfer::new(id, layout, cx.now.mono, wanted, rand_core::Rng::next_u64(cx.rng));
            if let Some(remote) = self.remote.get(&id) {
                for (conn, complete) in &remote.holders {
                    let avail = if *complete { Avail::All } else { Avail::Unknown };
                    t.sources.insert(*conn, Source::new(avail));
                }
            }

            if t.sources.is_empty() {
                // Nobody told us they hold it (an operator's `get`): ask every peer for its
                // head, and for an operator's item the DHT too (`find_peers_with_content`);
                // replication waits for a stall first (holders usually announce meanwhile).
                if wanted {
                    cx.defer(crate::context::Deferred::FindProviders(id.0));
                }
                for conn in self.peers.keys() {
                    t.sources.insert(*conn, Source::new(Avail::Unknown));
                }
            }
            if let Some(item) = self.items.get(&id) {
                t.low = item.held.next_clear(0).unwrap_or(item.layout().pieces());
            }
            self.active.insert(id, t);
            // Peers that listed it before (a retry): ask them again.
            self.refresh_sources(id);
            let sources = self.active.get(&id).map_or(0, |t| t.sources.len() as u32);
            cx.event(Event::TransferStarted { id, sources });
            self.pump(cx, id);
        }
        self.arm(cx);
    }

    /// A provider record named the peer on `conn` as a holder of `id` (the DHT connected us).
    pub fn holder(&mut self, cx: &mut Cx<'_>, conn: ConnId, id: ContentId) {
        if !self.peers.contains_key(&conn) || self.holds(&id) {
            return;
        }
        // A transfer that found no source waits for its retry: start it again now.
        if !self.active.contains_key(&id) && self.retry.remove(&id) {
            self.push_queue(id, true, true);
            self.start_transfers(cx);
        }
        if let Some(t) = self.active.get_mut(&id) {
            t.sources.entry(conn).or_insert(Source::new(Avail::Unknown));
            self.pump(cx, id);
        }
        self.arm(cx);
    }

    /// Adds as sources every connected peer that listed or announced the item.
    pub(super) fn refresh_sources(&mut self, id: ContentId) {
        let Some(t) = self.active.get_mut(&id) else { return };
        let holders = self.remote.get(&id).map(|r| &r.holders);
        for (conn, peer) in &self.peers {
            if !peer.holds.contains(&id) || t.sources.contains_key(conn) {
                continue;
            }
            let complete = holders.and_then(|h| h.get(conn)).copied().unwrap_or(false);
            let avail = if complete { Avail::All } else { Avail::Unknown };
            t.sources.insert(*conn, Source::new(avail));
        }
    }

    /// A stalled transfer asks every connected peer once (per attempt) what it has: holders
    /// learn of each other only by announcements made when an item completes, so a peer met
    /// later may hold it unannounced, while the one holder we heard of stalls.
    pub(super) fn widen_sources(&mut self, id: ContentId) {
        let Some(t) = self.active.get_mut(&id) else { return };
        if t.widened {
            return;
        }
        t.widened = true;
        for conn in self.peers.keys() {
            t.sources.entry(*conn).or_insert(Source::new(Avail::Unknown));
        }
    }

    /// Bytes the running transfers will still add.
    pub(super) fn reserved(&self) -> u64 {
        self.active
            .values()
            .map(|t| {
                let size = t.layout.map_or(0, |l| l.size);
                size - self.items.get(&t.id).map_or(0, held_bytes).min(size)
            })
            .sum()
    }

    pub(super) fn fail(&mut self, cx: &mut Cx<'_>, id: ContentId, reason: TransferFailure) {
        let Some(t) = self.active.remove(&id) else { return };
        self.cancel_all(cx, &t);
        self.stats.failed_syncs += 1;
        cx.event(Event::TransferFailed { id, reason });
        if reason == TransferFailure::NoSource && (t.wanted || cx.config.replicate == Replicate::All) {
            // A holder may come back or turn up: try again later.
            self.retry.insert(id);
            self.retry_at.get_or_insert(cx.now.mono.plus_ms(RETRY_MS));
        }
        self.start_transfers(cx);
        self.check_initial(cx);
    }

    pub(super) fn cancel_all(&mut self, cx: &mut Cx<'_>, t: &Transfer) {
        let keys: Vec<(ConnId, RequestId)> =
            self.asked.iter().filter(|(_, _, a)| a.item() == t.id).map(|(c, r, _)| (c, r)).collect();
        for (conn, request) in keys {
            let asked = self.asked.remove(conn, request);
            if let (Some(pending), Some(Asked::Piece(_, index))) = (cx.cancel(conn, request), asked) {
                let len = t.layout.map_or(PIECE_LEN, |l| l.piece_len(index));
                self.down.owe(conn, request, pending.deadline, len);
            }
        }
    }

    /// Bytes asked of our link and still on their way: pieces in flight for the running
    /// transfers, and requests that timed out or were cancelled but may still be answered.
    pub(super) fn in_flight_bytes(&mut self, now: Mono) -> u64 {
        let transfers: u64 = self.active.values().map(Transfer::bytes_in_flight).sum();
        transfers + self.down.owed_bytes(now)
    }

    /// Gives every running transfer a chance to ask for more (room opened on our link).
    pub(super) fn pump_all(&mut self, cx: &mut Cx<'_>) {
        let ids: Vec<ContentId> = self.active.keys().copied().collect();
        for id in ids {
            self.pump(cx, id);
        }
    }

    pub(super) fn on_head(&mut self, cx: &mut Cx<'_>, conn: ConnId, id: ContentId, size: u64, cvs: Vec<[u8; 32]>) {
        let Some(t) = self.active.get_mut(&id) else { return };
        t.head_pending = None;
        if t.head.is_some() {
            return;
        }
        let verified = Layout::new(size).and_then(|layout| {
            if t.layout.is_some_and(|l| l != layout) {
                return Err(VerifyError::RootMismatch);
            }
            if layout.pages() > 1 {
                verify::verify_page_list(&id, layout, &cvs)?;
            } else {
                verify::verify_pieces(&id, layout, &cvs)?;
            }
            Ok(layout)
        });
        let layout = match verified {
            Ok(layout) => layout,
            Err(_) => return self.bad_metadata(cx, conn, id),
        };
        t.layout = Some(layout);
        t.head = Some(cvs.clone());
        t.progress = cx.now.mono;
        let item = self.items.entry(id).or_insert_with(|| Item {
            size,
            held: Bits::new(layout.pieces()),
            here: false,
            head_stored: false,
            served: 0,
        });
        item.head_stored = true;
        cx.output(Output::StoreHead { id, size, cvs });
        self.pump(cx, id);
    }

    pub(super) fn on_page(&mut self, cx: &mut Cx<'_>, conn: ConnId, id: ContentId, page: u64, cvs: Vec<[u8; 32]>) {
        let Some(t) = self.active.get_mut(&id) else { return };
        t.page_pending.remove(&page);
        let (Some(layout), Some(head)) = (t.layout, t.head.as_ref()) else { return };
        let Some(entry) = head.get(page as usize) else { return self.bad_metadata(cx, conn, id) };
        if verify::verify_page(layout, page, entry, &cvs).is_err() {
            return self.bad_metadata(cx, conn, id);
        }
        t.progress = cx.now.mono;
        if t.pages_needed().contains(&page) {
            t.pages.insert(page, cvs.clone());
        }
        cx.output(Output::StorePage { id, page, cvs });
        self.pump(cx, id);
    }

    pub(super) fn bad_metadata(&mut self, cx: &mut Cx<'_>, conn: ConnId, id: ContentId) {
        if let Some(t) = self.active.get_mut(&id) {
            t.drop_source(conn);
        }
        if let Some(peer) = self.peers.get(&conn) {
            cx.penalise(Offender::Node(peer.node), POINTS_BAD_DATA);
        }
        cx.misbehaved(conn, CloseReason::Protocol(Violation::BadMetadata));
        self.pump(cx, id);
    }

    /// Held pieces moved on: advance the window; finish the item when it is whole.
    pub(super) fn advance(&mut self, cx: &mut Cx<'_>, id: ContentId) {
        let (Some(t), Some(item)) = (self.active.get_mut(&id), self.items.get(&id)) else { return };
        t.low = item.held.next_clear(t.low).unwrap_or(item.layout().pieces());
        t.forget_pages_below();
        if !item.complete() {
            return self.pump(cx, id);
        }
        let size = item.size;
        let Some(t) = self.active.remove(&id) else { return };
        self.cancel_all(cx, &t);
        self.stats.synced_content += 1;
        self.stats.sync_ms += cx.now.mono.ms_since(t.started);
        self.wanted.remove(&id);
        cx.defer(crate::context::Deferred::Provide(id.0));
        cx.event(Event::ItemComplete {
            id,
            size,
            sources: t.served_by.len() as u32,
            ms: cx.now.mono.ms_since(t.started),
        });
        self.announce(cx, Listed { id, size, complete: true });
        self.start_transfers(cx);
        self.check_initial(cx);
    }

    /// Sends what the transfer can send now: its head, the pages its window needs, bitfield
    /// questions to partial sources, and piece requests up to each source's pipeline depth.
    pub(super) fn pump(&mut self, cx: &mut Cx<'_>, id: ContentId) {
        let Some(t) = self.active.get_mut(&id) else { return };
        let now = cx.now.mono;
        // Sources best first: measured rate, discounted by failures.
        let mut ranked: Vec<(u64, ConnId)> = t
            .sources
            .keys()
            .map(|c| {
                let p = self.peers.get(c);
                // Unmeasured: assumed fast until it lets a request time out (a source that
                // stalls must not keep the top rank on an assumption).
                let rate = p.map_or(RATE_UNKNOWN, |p| match (p.rate, p.failures) {
                    (0, 0) => RATE_UNKNOWN,
                    (0, _) => RATE_FLOOR,
                    (rate, _) => rate,
                });
                let failures = u64::from(p.map_or(0, |p| p.failures)).min(16);
                (rate / (1 + failures * failures), *c)
            })
            .collect();
        ranked.sort_by(|a, b| b.cmp(a));
        if t.head.is_none() {
            if t.head_pending.is_none() {
                let next = ranked.iter().map(|(_, c)| *c).find(|c| !t.head_asked.contains(c));
                if let Some(conn) = next
                    && let Ok(request) = cx.request(conn, wrap(Request::Head { id }), Origin::Content, 0)
                {
                    t.head_asked.insert(conn);
                    t.head_pending = Some(conn);
                    self.asked.insert(conn, request, Asked::Head(id));
                } else if next.is_none() {
                    // Everyone we could ask said no or failed: nobody connected holds it.
                    return self.fail(cx, id, TransferFailure::NoSource);
                }
            }
            return self.arm(cx);
        }
        let Some(layout) = t.layout else { return };
        for page in t.pages_needed() {
            if t.pages.contains_key(&page) || t.page_pending.contains_key(&page) {
                continue;
            }
            let from = ranked.iter().map(|(_, c)| *c).find(|c| t.sources.get(c).is_some_and(|s| s.avail == Avail::All));
            let from = from.or_else(|| ranked.first().map(|(_, c)| *c));
            if let Some(conn) = from
                && let Ok(request) = cx.request(conn, wrap(Request::Page { id, page }), Origin::Content, 0)
            {
                t.page_pending.insert(page, conn);
                self.asked.insert(conn, request, Asked::Page(id, page));
            }
        }
        let pieces = layout.pieces();
        let low_page = t.low / PIECES_PER_PAGE;
        let mut candidates = rarest_first(t, self.items.get(&id));
        // What all transfers may still ask of our link (see `downlink`); a transfer with
        // nothing in flight may always ask for one piece, so none starves.
        let budget = self.down.budget();
        let mut asked_bytes = self.in_flight_bytes(now);
        let Some(t) = self.active.get_mut(&id) else { return };
        let mut own = t.bytes_in_flight();
        'sources: for &(_, conn) in &ranked {
            let Some(source) = t.sources.get_mut(&conn) else { continue };
            let stale = match &source.avail {
                Avail::Unknown => true,
                Avail::Page { page, at, .. } => *page != low_page || now.ms_since(*at) >= HAVE_REFRESH_MS,
                _ => false,
            };
            if stale
                && source.pieces == 0
                && low_page < layout.pages()
                && let Ok(request) = cx.request(conn, wrap(Request::Have { id, page: low_page }), Origin::Content, 0)
            {
                source.avail = Avail::Asking;
                self.asked.insert(conn, request, Asked::Have(id, low_page));
            }
            let rate = self.peers.get(&conn).map_or(0, |p| p.rate);
            let depth = pipeline_depth(rate);
            while t.sources.get(&conn).is_some_and(|s| s.pieces < depth) {
                if own > 0 && asked_bytes.saturating_add(PIECE_LEN.min(layout.size)) > budget {
                    break 'sources;
                }
                // The rarest free piece this source has.
                let Some(source) = t.sources.get(&conn) else { break };
                let mut pick =
                    candidates.iter().position(|&(_, _, i)| Transfer::has(source, i)).map(|k| candidates.remove(k).2);
                // Endgame: everything left is in flight, and little is left. A piece that is
                // late at its source gets one duplicate elsewhere (the first verified copy
                // cancels the other). Earlier, a copy would only compete for the same uplinks.
                if pick.is_none() && t.low + WINDOW_PIECES >= pieces && t.in_flight.len() <= ENDGAME_PIECES {
                    let peers = &self.peers;
                    pick = t
                        .in_flight
                        .iter()
                        .find(|(i, copies)| {
                            copies.len() < COPIES_MAX
                                && copies.iter().all(|(c, _, sent)| {
                                    // Latency counts once the source delivered (a staller's
                                    // is only its timeouts).
                                    let (rate, latency) = peers.get(c).map_or((0, 0), |p| {
                                        (p.rate, if p.last_piece.is_some() { p.latency_ms } else { 0 })
                                    });
                                    // Late: twice what its rate predicts, and half again what
                                    // its pieces have been taking (a busy uplink answers
                                    // slowly but surely; a copy elsewhere would be waste).
                                    let due = (2 * layout.piece_len(**i) * 1000 / rate.max(RATE_FLOOR))
                                        .max(latency * 3 / 2)
                                        .max(LATE_MIN_MS);
                                    *c != conn && now.ms_since(*sent) >= due
                                })
                                && Transfer::has(source, **i)
                        })
                        .map(|(i, _)| *i);
                }
                let Some(index) = pick else { break };
                let len = layout.piece_len(index);
                let latency = self.peers.get(&conn).map_or(0, |p| p.latency_ms);
                let timeout =
                    piece_timeout(cx.config.handshake_timeout_ms, rate, source.pieces + 1, layout.piece_len(index))
                        .max(2 * latency)
                        .min(PIECE_TIMEOUT_MAX_MS);
                let body = wrap(Request::Piece { id, index });
                let Ok(request) = cx.request_within(conn, body, Origin::Content, index, timeout) else { break };
                self.asked.insert(conn, request, Asked::Piece(id, index));
                t.in_flight.entry(index).or_default().push((conn, request, now));
                if let Some(source) = t.sources.get_mut(&conn) {
                    source.pieces += 1;
                }
                own += len;
                asked_bytes += len;
                self.down.asking(now);
            }
        }
        self.arm(cx);
    }
}

/// Free pieces the transfer may ask for next, rarest among its sources first: the first
/// [`RAREST_SCAN`] free pieces of the window, each with how many sources have it, ties broken by
/// the transfer's salt. Downloaders that all took the lowest piece first would hold the same
/// pieces and could give each other nothing: every byte would come from the first holder's
/// uplink. Spread this way, they trade.
fn rarest_first(t: &Transfer, item: Option<&Item>) -> Vec<(usize, u64, u64)> {
    let Some(layout) = t.layout else { return Vec::new() };
    let end = (t.low + WINDOW_PIECES).min(layout.pieces());
    let mut out = Vec::new();
    for i in t.low..end {
        if out.len() >= RAREST_SCAN {
            break;
        }
        let free = !item.is_some_and(|it| it.held.get(i))
            && !t.storing.contains(&i)
            && !t.in_flight.contains_key(&i)
            && t.expected(i).is_some();
        if !free {
            continue;
        }
        let holders = t.sources.values().filter(|s| Transfer::has(s, i)).count();
        if holders > 0 {
            let tie = (i ^ t.salt).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 16;
            out.push((holders, tie, i));
        }
    }
    out.sort_unstable();
    out
}

/// Pieces in flight at most for the endgame's duplicates to start.
pub const ENDGAME_PIECES: usize = 4;

/// Free pieces weighed for rarity at each scheduling step (the rest of the window waits).
pub const RAREST_SCAN: usize = 64;
