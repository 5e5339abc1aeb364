//! Answering peers' DHT questions, and taking in their answers to ours (records checked,
//! forged ones penalised).

use super::*;

impl Dht {
    /// A peer asked us something (admitted by its rate limit).
    pub fn handle_request(&mut self, cx: &mut Cx<'_>, conn: ConnId, peer: NodeId, id: RequestId, request: Request) {
        let now = cx.now.mono;
        let penalties = cx.penalties;
        let keep = |e: &table::Entry| e.id != peer && !penalties.is_banned(&Offender::Node(e.id), now);
        let answer = match request {
            Request::FindNode { target } => {
                Response::Nodes(self.table.closest(&target.0, K, keep).into_iter().map(|e| e.record()).collect())
            }
            Request::GetProviders { key } => {
                let mut providers = self.providers.get(&key, K);
                if self.provided.contains(&key)
                    && let Some(addr) = cx.advertised_addr()
                    && providers.len() < K
                    && !providers.iter().any(|p| p.node_id == cx.node_id)
                {
                    providers.push(PeerRecord { node_id: cx.node_id, address: addr, public_key: cx.public_key });
                }
                let closer = self.table.closest(&key, K, keep).into_iter().map(|e| e.record()).collect();
                Response::Providers { providers, closer }
            }
            Request::AddProviders { keys } => {
                let provider = cx.conns.get(conn).and_then(|c| c.established()).and_then(|e| {
                    e.listen_addr.map(|a| PeerRecord { node_id: e.node_id, address: a, public_key: e.public_key })
                });
                let mut stored = 0;
                if let Some(provider) = provider.filter(|p| valid_addr(&p.address)) {
                    let expires = now.plus_ms(2 * cx.config.provider_republish_ms);
                    for key in keys {
                        if self.providers.add(key, provider, expires) {
                            stored += 1;
                        }
                    }
                }
                self.stats.records_stored += u64::from(stored);
                Response::Added { stored }
            }
        };
        self.stats.answered += 1;
        if let Some(used) = self.transient.get_mut(&conn) {
            *used = now;
        }
        cx.respond(conn, id, wire::Response::Dht(answer));
    }

    /// The answer to one of our requests.
    pub fn handle_response(&mut self, cx: &mut Cx<'_>, conn: ConnId, pending: &Pending, response: Response) {
        let Some(peer) = cx.conns.get(conn).and_then(|c| c.established()).map(|e| e.node_id) else { return };
        let now = cx.now.mono;
        let (records, providers) = match response {
            Response::Nodes(records) => (records, Vec::new()),
            Response::Providers { providers, closer } => (closer, providers),
            Response::Added { .. } => return,
        };
        let records = self.check_records(cx, peer, records);
        let providers = self.check_records(cx, peer, providers);
        let id = pending.tag;
        self.unwait(id, &peer);
        let Some(lookup) = self.lookups.get_mut(&id) else { return };
        for p in providers {
            if lookup.providers.len() < K && !lookup.providers.iter().any(|x| x.node_id == p.node_id) {
                lookup.providers.push(p);
            }
        }
        let rtt = lookup.answered(&peer, &records, now);
        // An answer on a link we dialled refreshes the peer's entry (and its round trip).
        let dialled = cx.conns.get(conn).filter(|c| c.direction == Direction::Outbound);
        if let (Some(c), Some(e)) = (dialled, dialled.and_then(|c| c.established())) {
            let record = PeerRecord { node_id: peer, address: c.addr, public_key: e.public_key };
            self.admit(cx, &record, rtt);
        }
        self.pump(cx, id);
    }

    /// Records from a peer: forged ones (an id that is not its key's) cost the sender points
    /// and are dropped, as are ourselves, banned peers and unusable addresses.
    fn check_records(&mut self, cx: &mut Cx<'_>, from: NodeId, records: Vec<PeerRecord>) -> Vec<PeerRecord> {
        let now = cx.now.mono;
        let mut forged = false;
        let mut kept = Vec::with_capacity(records.len());
        for r in records {
            let known = self.table.get(&r.node_id).is_some_and(|e| e.public_key == r.public_key);
            if !known && NodeId::from_public_key(&r.public_key) != r.node_id {
                forged = true;
                continue;
            }
            if r.node_id == cx.node_id
                || !valid_addr(&r.address)
                || is_bootstrap(cx, &r.node_id)
                || cx.penalties.is_banned(&Offender::Node(r.node_id), now)
            {
                continue;
            }
            kept.push(r);
        }
        if forged {
            self.stats.forged_records += 1;
            cx.penalise(Offender::Node(from), POINTS_HANDSHAKE);
        }
        kept
    }

    /// One of our requests timed out.
    pub fn on_request_failed(&mut self, cx: &mut Cx<'_>, conn: ConnId, pending: &Pending) {
        let Some(peer) = cx.conns.get(conn).and_then(|c| c.established()).map(|e| e.node_id) else { return };
        if pending.tag != u64::MAX {
            self.contact_failed(cx, pending.tag, &peer, true);
        }
    }
}
