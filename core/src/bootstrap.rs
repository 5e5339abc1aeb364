//! Bootstrap (SPEC R4.1, R4.2): dial every configured bootstrap node in rounds, backing off
//! between rounds, until one answers or the rounds run out and start-up fails. A bootstrap node
//! that refused us (see `refusal`) is not dialled again before its retry hint has passed, and a
//! failed start-up names what the refusing nodes said.

use core::net::SocketAddr;
use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::context::{Cx, Startup};
use crate::event::{BootstrapRefusal, CloseReason, Event, Phase, StartupFailure};
use crate::handshake::Link;
use crate::id::NodeId;
use crate::time::Mono;

/// The bootstrap module's state.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Bootstrap {
    round: u32,
    /// Bootstrap nodes dialled this round and not concluded.
    pending: BTreeSet<NodeId>,
    connected_this_round: u32,
    retry_at: Option<Mono>,
    /// Whether this process's bootstrap phase is over (later bootstrap links are ordinary).
    done: bool,
    /// Bootstrap nodes whose last word this phase was a signed refusal (at most one entry per
    /// configured node), for the start-up failure to name.
    refused: BTreeMap<NodeId, BootstrapRefusal>,
}

/// A bootstrap node asking us to wait longer than this makes start-up fail at once, naming the
/// refusal, instead of sitting in the bootstrap phase (limits ask for 15-30 s, bans for their
/// time left).
pub const HINT_WAIT_MS_MAX: u64 = 300_000;

impl Bootstrap {
    /// Starts (or, after a restart, restarts) the bootstrap phase.
    pub fn start(&mut self, cx: &mut Cx<'_>) {
        *self = Bootstrap::default();
        if cx.config.bootstrap_nodes.is_empty() {
            cx.event(Event::FirstNode);
            self.done = true;
            cx.startup(Startup::BootstrapDone);
        } else {
            self.round(cx);
        }
    }

    /// When the next round is due.
    pub fn poll_timeout(&self) -> Option<Mono> {
        self.retry_at
    }

    /// Runs the next round if it is due.
    pub fn handle_timeout(&mut self, cx: &mut Cx<'_>) {
        if self.retry_at.is_some_and(|at| at <= cx.now.mono) {
            self.retry_at = None;
            self.round(cx);
        }
    }

    /// A handshake completed: a bootstrap node we were waiting for answered.
    pub fn on_established(&mut self, cx: &mut Cx<'_>, link: &Link) {
        if link.bootstrap {
            self.concluded(cx, link.node_id, link.addr, None);
        }
    }

    /// A connection ended; a dial to a pending bootstrap node failed if it never got through.
    pub fn on_closed(&mut self, cx: &mut Cx<'_>, closed: &crate::node::Closed) {
        if closed.reason.process_ending() || closed.established || !closed.bootstrap {
            return;
        }
        if let Some(expected) = closed.expect {
            self.concluded(cx, expected, closed.addr, Some(closed.reason.clone()));
        }
    }

    /// The process is ending: no more rounds.
    pub fn on_shutdown(&mut self) {
        self.retry_at = None;
    }

    fn round(&mut self, cx: &mut Cx<'_>) {
        self.round += 1;
        self.connected_this_round = 0;
        for node in &cx.config.bootstrap_nodes.clone() {
            // A node that refused us is left alone until its retry hint has passed.
            if cx.conns.has_conn_to(&node.node_id) || cx.refusals.waiting_for(&node.node_id, cx.now.mono).is_some() {
                continue;
            }
            match cx.dial(node.address, Some(node.node_id), true) {
                Ok(_) => {
                    self.pending.insert(node.node_id);
                }
                Err(reason) => cx.event(Event::BootstrapFailed { node_id: node.node_id, addr: node.address, reason }),
            }
        }
        if self.pending.is_empty() {
            self.round_over(cx);
        }
    }

    fn concluded(&mut self, cx: &mut Cx<'_>, node_id: NodeId, addr: SocketAddr, failure: Option<CloseReason>) {
        if !self.pending.remove(&node_id) {
            return;
        }
        match failure {
            None => {
                self.connected_this_round += 1;
                self.refused.remove(&node_id);
                cx.event(Event::BootstrapConnected { node_id, addr });
            }
            Some(reason) => {
                if let CloseReason::RefusedByPeer { reason, retry_after_ms } = &reason {
                    let refusal =
                        BootstrapRefusal { node_id, addr, reason: reason.clone(), retry_after_ms: *retry_after_ms };
                    self.refused.insert(node_id, refusal);
                }
                cx.event(Event::BootstrapFailed { node_id, addr, reason })
            }
        }
        if self.pending.is_empty() {
            self.round_over(cx);
        }
    }

    fn round_over(&mut self, cx: &mut Cx<'_>) {
        if self.done || cx.phase != Phase::Bootstrap {
            return;
        }
        if self.connected_this_round > 0 || cx.conns.established().next().is_some() {
            self.done = true;
            return cx.startup(Startup::BootstrapDone);
        }
        let (round, of) = (self.round, cx.config.bootstrap_attempts);
        match self.hint_wait_ms(cx).filter(|_| round < of) {
            Some(hint_ms) => {
                cx.event(Event::BootstrapRetry { round: round + 1, of });
                // Exponential back-off, a busy bootstrap node gets time to release slots; and
                // never before some node's retry hint has passed, so the round dials someone.
                let backoff_ms = cx.config.bootstrap_retry_ms.saturating_mul(1 << (round.saturating_sub(1)).min(16));
                self.retry_at = Some(cx.now.mono.plus_ms(backoff_ms.max(hint_ms)));
            }
            None => {
                self.done = true;
                cx.startup(Startup::Failed(Phase::Bootstrap, self.failure(cx)));
            }
        }
    }

    /// How long until some bootstrap node may be dialled again: 0 if one did not ask us to
    /// wait; `None` if every one refused for good (another network, version) or asks for
    /// longer than [`HINT_WAIT_MS_MAX`].
    fn hint_wait_ms(&self, cx: &Cx<'_>) -> Option<u64> {
        let now = cx.now.mono;
        cx.config
            .bootstrap_nodes
            .iter()
            .filter(|node| self.refused.get(&node.node_id).is_none_or(|r| r.retry_after_ms > 0))
            .map(|node| cx.refusals.wait_left_ms(&node.node_id, now).unwrap_or(0))
            .min()
            .filter(|ms| *ms <= HINT_WAIT_MS_MAX)
    }

    /// Why start-up fails: the refusals heard, in config order, if there were any.
    fn failure(&self, cx: &Cx<'_>) -> StartupFailure {
        if self.refused.is_empty() {
            return StartupFailure::NoBootstrapReachable;
        }
        let nodes = &cx.config.bootstrap_nodes;
        let refused: Vec<BootstrapRefusal> =
            nodes.iter().filter_map(|node| self.refused.get(&node.node_id).cloned()).collect();
        let others = nodes.len().saturating_sub(refused.len()) as u32;
        StartupFailure::BootstrapRefused { refused, others }
    }
}
