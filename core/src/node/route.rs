//! Routing: messages to the handshake or to their protocol's module, answers and failures to
//! the module that asked, and the deferred effects modules leave for the node (closing,
//! penalising, start-up steps, what one module tells another).

use super::*;

impl Node {
    // ---- routing ----

    pub(super) fn handle_message(&mut self, conn_id: ConnId, message: Message) {
        let Some(conn) = self.state.conns.get(conn_id) else { return };
        let Some(peer) = conn.established().map(|e| e.node_id) else {
            let link = handshake::handle_message(&mut cx!(self), &self.identity, conn_id, message);
            self.run_deferred();
            if let Some(link) = link.filter(|l| self.state.conns.contains(l.conn)) {
                self.on_established(&link);
            }
            return;
        };
        match message {
            Message::Hello(_) | Message::HelloAck(_) => {
                self.misbehaved(conn_id, CloseReason::Protocol(Violation::SecondHandshake));
            }
            Message::Refused(_) => {
                self.misbehaved(conn_id, CloseReason::Protocol(Violation::RefusalAfterHandshake));
            }
            Message::Request { id, body } => {
                if !self.state.requests.admit(self.state.now.mono, conn_id, body.protocol()) {
                    let violation = Violation::RequestFlood { kind: body.kind() };
                    return self.misbehaved(conn_id, CloseReason::Protocol(violation));
                }
                // One line per protocol.
                match body {
                    Request::Discovery(r) => {
                        let content = &self.state.content;
                        self.state.discovery.handle_request(&mut cx!(self), conn_id, peer, id, r, || content.popular())
                    }
                    Request::Content(r) => self.state.content.handle_request(&mut cx!(self), conn_id, id, r),
                    Request::Reconcile(r) => self.state.reconcile.handle_request(&mut cx!(self), conn_id, id, r),
                    Request::Dht(r) => self.state.dht.handle_request(&mut cx!(self), conn_id, peer, id, r),
                    Request::Status(r) => self.state.netstatus.handle_request(&mut cx!(self), conn_id, id, r),
                }
            }
            Message::Response { id, body } => {
                let kind = body.kind();
                self.state.requests.heard(conn_id, self.state.now.mono);
                match self.state.requests.answer(conn_id, id, kind) {
                    Answer::Expected(pending) => {
                        self.state.counters.record_rtt(self.state.now.mono.ms_since(pending.sent));
                        self.route_response(conn_id, peer, &pending, body)
                    }
                    Answer::Late(_) | Answer::Cancelled => {
                        cx!(self).event(Event::LateAnswer { conn: conn_id, id, kind })
                    }
                    Answer::UnknownId => {
                        self.misbehaved(conn_id, CloseReason::Protocol(Violation::UnknownRequestId { id, kind }))
                    }
                    Answer::WrongKind { expected } => {
                        let violation = Violation::WrongAnswerKind { id, expected, got: kind };
                        self.misbehaved(conn_id, CloseReason::Protocol(violation))
                    }
                }
            }
            Message::Cancel { id } => {
                // Cancels count against the content protocol's rate, like the requests they name.
                if !self.state.requests.admit(self.state.now.mono, conn_id, crate::wire::Protocol::Content) {
                    let violation = Violation::RequestFlood { kind: crate::wire::Kind::Cancel };
                    return self.misbehaved(conn_id, CloseReason::Protocol(violation));
                }
                cx!(self).output(Output::CancelServe { conn: conn_id, request: id });
            }
            // Pieces are split out of the stream by the driver (`content::stream`); one inside
            // the frame stream means the peer's framing is broken.
            Message::Piece { .. } => {
                let err = crate::wire::WireError::Undecodable("piece header inside the frame stream".into());
                self.misbehaved(conn_id, CloseReason::Wire(err))
            }
        }
    }

    /// An answer goes to the module that asked (its kind already matched the request's).
    pub(super) fn route_response(&mut self, conn: ConnId, peer: NodeId, pending: &Pending, body: Response) {
        match (pending.origin, body) {
            (Origin::Discovery, Response::Discovery(r)) => {
                self.state.discovery.handle_response(&mut cx!(self), conn, peer, r)
            }
            (Origin::Content, Response::Content(r)) => {
                self.state.content.handle_response(&mut cx!(self), conn, pending, r)
            }
            (Origin::Reconcile, Response::Reconcile(r)) => {
                self.state.reconcile.handle_response(&mut cx!(self), conn, pending, r)
            }
            (Origin::Dht, Response::Dht(r)) => self.state.dht.handle_response(&mut cx!(self), conn, pending, r),
            // A peer noted our report: nothing more to do.
            (Origin::Status, Response::Status(_)) => {}
            // Kinds were matched against the request, so the protocol matches too.
            _ => {}
        }
    }

    pub(super) fn route_failure(&mut self, conn: ConnId, pending: &Pending) {
        match pending.origin {
            Origin::Discovery => self.state.discovery.on_request_failed(&mut cx!(self), conn, pending),
            Origin::Content => self.state.content.on_request_failed(&mut cx!(self), conn, pending),
            Origin::Reconcile => self.state.reconcile.on_request_failed(&mut cx!(self), conn, pending),
            Origin::Dht => self.state.dht.on_request_failed(&mut cx!(self), conn, pending),
            // A report that was not noted is not sent again: the next one comes in 30 s.
            Origin::Status => {}
        }
    }

    /// Discovery hears first: it sends its requests on the new link, so when bootstrap then
    /// concludes its phase, the discovery phase knows which answers to wait for.
    pub(super) fn on_established(&mut self, link: &Link) {
        self.state.discovery.on_established(&mut cx!(self), link);
        self.run_deferred();
        // A DHT contact carries DHT questions only.
        if self.state.conns.contains(link.conn) && !link.transient {
            self.state.content.on_established(&mut cx!(self), link);
            self.run_deferred();
        }
        if self.state.conns.contains(link.conn) && !link.transient {
            self.state.reconcile.on_established(&mut cx!(self), link);
            self.run_deferred();
        }
        if self.state.conns.contains(link.conn) {
            self.state.dht.on_established(&mut cx!(self), link);
            self.run_deferred();
        }
        if self.state.conns.contains(link.conn) {
            self.state.bootstrap.on_established(&mut cx!(self), link);
        }
    }

    // ---- deferred effects ----

    /// Applies what modules deferred, in order, until nothing is left. Every close removes a
    /// connection, so this ends.
    pub(super) fn run_deferred(&mut self) {
        while let Some(effect) = self.out.deferred.pop_front() {
            match effect {
                Deferred::Close(conn, reason) => self.close(conn, reason),
                Deferred::Misbehaved(conn, reason) => self.misbehaved(conn, reason),
                Deferred::Penalise(offender, points) => self.penalise(offender, points),
                Deferred::Startup(step) => self.startup_step(step),
                Deferred::Popular(ids) => self.state.content.queue_popular(&mut cx!(self), &ids),
                Deferred::Catalogued(items) => self.state.content.catalogued(&mut cx!(self), &items),
                Deferred::Discovered(records, found) => {
                    self.state.discovery.discovered(&mut cx!(self), &records, found)
                }
                Deferred::Holder { conn, id } => self.state.content.holder(&mut cx!(self), conn, ContentId(id)),
                Deferred::Provide(id) => self.state.dht.provide(&cx!(self), id),
                Deferred::FindProviders(id) => self.state.dht.find_providers(&mut cx!(self), id),
                Deferred::Explain(conn, reason, retry_after_ms) => {
                    self.explain_hello_refusal(conn, reason, retry_after_ms)
                }
                Deferred::CatalogueSettled => {
                    self.state.content.catalogue_settled();
                    self.state.content.check_initial(&mut cx!(self));
                }
            }
        }
    }

    /// Closes `conn` because the peer misbehaved, and penalises whoever it proved to be.
    pub(super) fn misbehaved(&mut self, conn_id: ConnId, reason: CloseReason) {
        let Some(conn) = self.state.conns.get(conn_id) else { return };
        let (offender, points) = match conn.established() {
            Some(e) => (Offender::Node(e.node_id), POINTS_VIOLATION),
            None => (Offender::Ip(conn.addr.ip()), POINTS_HANDSHAKE),
        };
        self.close(conn_id, reason);
        self.penalise(offender, points);
    }

    pub(super) fn penalise(&mut self, offender: Offender, points: u32) {
        let now = self.state.now.mono;
        let (score, banned) = self.state.penalties.add(offender, points, now, self.state.config.ban_duration_ms);
        cx!(self).event(Event::Penalised { offender, points, score, banned });
        if !banned {
            return;
        }
        if let Offender::Node(id) = offender {
            self.state.dht.on_banned(&id);
        }
        let victims: Vec<ConnId> = self
            .state
            .conns
            .iter()
            .filter(|(_, c)| match offender {
                Offender::Node(id) => c.established().is_some_and(|e| e.node_id == id),
                Offender::Ip(ip) => c.addr.ip() == ip && c.established().is_none(),
            })
            .map(|(id, _)| id)
            .collect();
        for id in victims {
            self.close(id, CloseReason::Banned);
        }
    }

    pub(super) fn close(&mut self, conn: ConnId, reason: CloseReason) {
        if self.state.conns.contains(conn) {
            self.out.outputs.push_back(Output::Close { conn });
            self.remove_conn(conn, reason, true);
        }
    }

    /// Forgets a connection and tells every module, in a fixed order.
    pub(super) fn remove_conn(&mut self, conn_id: ConnId, reason: CloseReason, by_us: bool) {
        let Some(conn) = self.state.conns.remove(conn_id) else { return };
        self.state.requests.close(conn_id);
        // A refusal's retry hint binds every module: none dials that node before it passes.
        if let (CloseReason::RefusedByPeer { reason: refusal, retry_after_ms }, Some(peer)) =
            (&reason, conn.peer_hint())
        {
            self.state.refusals.heard(peer, self.state.now.mono, refusal.clone(), *retry_after_ms);
        }
        let closed = Closed {
            conn: conn_id,
            addr: conn.addr,
            peer: conn.peer_hint(),
            expect: conn.expect,
            established: conn.established().is_some(),
            bootstrap: conn.bootstrap,
            reason,
        };
        let event = Event::ConnectionClosed {
            conn: conn_id,
            addr: closed.addr,
            peer: closed.peer,
            reason: closed.reason.clone(),
            by_us,
        };
        cx!(self).event(event);
        // When the process itself ends (restart, shutdown) a closed connection is not news.
        if closed.reason.process_ending() {
            return;
        }
        self.state.bootstrap.on_closed(&mut cx!(self), &closed);
        self.state.discovery.on_closed(&mut cx!(self), &closed);
        self.run_deferred();
        self.state.content.on_closed(&mut cx!(self), &closed);
        self.run_deferred();
        self.state.reconcile.on_closed(&mut cx!(self), &closed);
        self.run_deferred();
        self.state.dht.on_closed(&mut cx!(self), &closed);
    }
}
