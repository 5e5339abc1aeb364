//! Refusing connections, explained when the budget allows (see `refusal`): an inbound
//! connection over a limit or from a blacklisted address is accepted only to finish its secure
//! channel and hear a signed `Refused`, then closed; a refused Hello gets one before its close.

use super::*;
use crate::conns::ConnState;
use crate::refusal::{REFUSING_DEADLINE_MS, Refusal, RefusalReason, Refusing};

impl Node {
    /// A peer connected: accept it, or refuse it, with an explanation if the budget allows.
    pub(super) fn handle_incoming(&mut self, conn: ConnId, addr: SocketAddr) {
        let Some(reason) = cx!(self).inbound_refusal(addr) else {
            return cx!(self).accept(conn, addr);
        };
        self.state.counters.inbound_refused += 1;
        let now = self.state.now.mono;
        let explain = RefusalReason::of_admission(&reason);
        let Some(explain) = explain.filter(|_| self.state.refusals.may_refuse_explained(now, addr.ip())) else {
            return self.refuse_silently(conn, addr, reason);
        };
        let banned = matches!(reason, CloseReason::Banned).then_some(Offender::Ip(addr.ip()));
        let retry_after_ms = cx!(self).retry_hint(&explain, banned);
        let deadline = now.plus_ms(self.state.config.handshake_timeout_ms.min(REFUSING_DEADLINE_MS));
        self.state.refusals.start(conn, Refusing { addr, reason, explain, retry_after_ms, deadline });
        self.out.outputs.push_back(Output::Accept { conn });
    }

    /// The secure channel of a connection being refused is up: the peer hears why, then the
    /// connection closes (the driver sends what is queued first).
    pub(super) fn explain_refusal(&mut self, conn: ConnId, binding: Binding, refusing: Refusing) {
        let refusal = Refusal::sign(&self.identity, binding, refusing.explain, refusing.retry_after_ms);
        if cx!(self).send(conn, &Message::Refused(refusal)).is_ok() {
            self.state.counters.refusals_explained += 1;
        }
        let event =
            Event::ConnectionClosed { conn, addr: refusing.addr, peer: None, reason: refusing.reason, by_us: true };
        cx!(self).event(event);
        self.out.outputs.push_back(Output::Close { conn });
    }

    /// A refused Hello (another network, version, clock; a blacklisted node): the peer hears
    /// why before the close that follows, if the explanation rate allows.
    pub(super) fn explain_hello_refusal(&mut self, conn: ConnId, reason: RefusalReason, retry_after_ms: u32) {
        let Some(c) = self.state.conns.get(conn) else { return };
        let (ConnState::AwaitHello { binding }, ip) = (&c.state, c.addr.ip()) else { return };
        let binding = *binding;
        if !self.state.refusals.may_explain(self.state.now.mono, ip) {
            self.state.counters.refusals_silent += 1;
            return;
        }
        let refusal = Refusal::sign(&self.identity, binding, reason, retry_after_ms);
        if cx!(self).send(conn, &Message::Refused(refusal)).is_ok() {
            self.state.counters.refusals_explained += 1;
        }
    }

    /// The transport of a connection being refused ended before it heard why.
    pub(super) fn refusing_closed(&mut self, conn: ConnId, refusing: Refusing, transport: String) {
        self.state.counters.refusals_silent += 1;
        let event = Event::ConnectionClosed {
            conn,
            addr: refusing.addr,
            peer: None,
            reason: CloseReason::Transport(transport),
            by_us: false,
        };
        cx!(self).event(event);
    }

    /// Connections being refused whose secure channel did not come up in time are cut.
    pub(super) fn refusals_expired(&mut self, now: Mono) {
        for conn in self.state.refusals.expired(now) {
            if let Some(refusing) = self.state.refusals.take(conn) {
                self.refuse_silently(conn, refusing.addr, refusing.reason);
            }
        }
    }

    /// The process is ending (shutdown, a failed start-up): connections being refused close.
    pub(super) fn stop_refusing(&mut self, reason: CloseReason) {
        for (conn, refusing) in self.state.refusals.take_all() {
            self.state.counters.refusals_silent += 1;
            let event =
                Event::ConnectionClosed { conn, addr: refusing.addr, peer: None, reason: reason.clone(), by_us: true };
            cx!(self).event(event);
            self.out.outputs.push_back(Output::Close { conn });
        }
    }

    fn refuse_silently(&mut self, conn: ConnId, addr: SocketAddr, reason: CloseReason) {
        self.state.counters.refusals_silent += 1;
        cx!(self).event(Event::ConnectionClosed { conn, addr, peer: None, reason, by_us: true });
        self.out.outputs.push_back(Output::Close { conn });
    }
}
