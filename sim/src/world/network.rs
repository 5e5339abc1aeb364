//! The simulated network: dials, links, delivery times, resets, partitions, clock jumps, and
//! the misbehaving peers.

use super::*;

/// A node's downlink is this many times its uplink (asymmetric access links).
pub const DOWNLINK_FACTOR: u64 = 4;

// ---- the network ----
impl World {
    pub(super) fn end(&self, n: usize, conn: ConnId) -> End {
        (n, self.nodes[n].epoch, conn)
    }

    pub(super) fn apply(&mut self, n: usize, output: Output) {
        match output {
            Output::Dial { conn, addr } => self.dial(self.end(n, conn), addr),
            Output::Accept { conn } => self.accept(self.end(n, conn)),
            Output::Send { conn, bytes } => {
                let bytes = if self.is_sybil(n) { self.sybil_rewrite(n, conn, bytes) } else { bytes };
                self.send(self.end(n, conn), bytes)
            }
            Output::Close { conn } => self.close(self.end(n, conn)),
            Output::Event(_) => {}
            Output::LanAnnounce { bytes } => self.lan_announce(n, bytes),
            content => self.apply_content(n, content),
        }
    }

    pub(super) fn dial(&mut self, from: End, addr: SocketAddr) {
        let target = self.by_addr.get(&addr).copied();
        if target.is_some_and(|t| self.vanished(t)) {
            // Nobody answers the SYN: the dialler's own deadlines end it.
            self.count("dial_vanished");
            return;
        }
        if target.is_some_and(|t| self.blocked(from.0, t) || self.blocked(t, from.0)) {
            // The SYN is lost in the partition; the dialler's handshake deadline ends it.
            self.count("dial_partitioned");
            return;
        }
        let delay = self.one_way(from.0, target);
        self.schedule(self.now_us + delay, Ev::Connect { from, addr });
    }

    pub(super) fn connect(&mut self, from: End, addr: SocketAddr) -> Result<(), SimError> {
        let target =
            self.by_addr.get(&addr).copied().filter(|t| self.honest(*t).is_some_and(|h| h.journaled.is_some()));
        let Some(to) = target else {
            let delay = self.one_way(from.0, None);
            self.schedule(self.now_us + delay, Ev::Closed { to: from, reason: "connection refused" });
            return Ok(());
        };
        let inbound = ConnId::inbound(self.nodes[to].next_inbound);
        self.nodes[to].next_inbound += 1;
        let to_end = self.end(to, inbound);
        self.links.insert(from, Link::new(to_end));
        self.links.insert(to_end, Link::new(from));
        // The dialler's source port is ephemeral, as on a real host.
        let source = SocketAddr::new(self.nodes[from.0].addr.ip(), 40_000 + (from.2.0 % 20_000) as u16);
        self.node_input(to, Input::Incoming { conn: inbound, addr: source })
    }

    /// The responder accepted: the Noise handshake takes one more round trip. The initiator
    /// finishes first; the responder when the initiator's last handshake message arrives.
    pub(super) fn accept(&mut self, end: End) {
        let Some(peer) = self.links.get(&end).map(|l| l.peer) else { return };
        if self.blocked(end.0, peer.0) || self.blocked(peer.0, end.0) {
            return;
        }
        let mut binding = [0u8; 32];
        self.rng.fill_bytes(&mut binding);
        let binding = Binding(binding);
        let one_way = self.nodes[end.0].place.latency_us(&self.nodes[peer.0].place);
        self.schedule(self.now_us + one_way, Ev::Secured { to: peer, binding });
        self.schedule(self.now_us + 2 * one_way, Ev::Secured { to: end, binding });
        if let Some(link) = self.links.get_mut(&peer) {
            link.last_us = self.now_us + 2 * one_way;
        }
    }

    pub(super) fn send(&mut self, end: End, bytes: Vec<u8>) {
        let Some(peer) = self.links.get(&end).map(|l| l.peer) else { return };
        if self.vanished(peer.0) {
            // Nothing acknowledges: TCP gives up after its user timeout.
            self.count("to_vanished");
            return self.reset_link(end, self.now_us + USER_TIMEOUT_US, "connection timed out");
        }
        self.messages += 1;
        self.bytes += bytes.len() as u64;
        let active = self.faults_active();
        let profile = &self.config.faults;
        let (reset, duplicate) = (profile.reset, profile.duplicate);
        if active && chance(&mut self.rng, reset) {
            self.count("reset");
            return self.reset_link(end, self.now_us, "connection reset by peer");
        }
        if active && chance(&mut self.rng, duplicate) {
            // Bytes replayed into the stream fail Noise's authentication.
            self.count("duplicate");
            return self.reset_link(end, self.now_us, "noise: message authentication failed");
        }
        let at = self.delivery_time(end, peer, bytes.len(), active, false);
        if self.blocked_past_user_timeout(end, peer) {
            self.count("user_timeout_reset");
            return self.reset_link(end, self.now_us + USER_TIMEOUT_US, "connection timed out");
        }
        if let Some(link) = self.links.get_mut(&end) {
            link.last_us = at;
        }
        self.schedule(at, Ev::Deliver { to: peer, bytes });
    }

    /// Whether the link from `end` makes no progress for longer than the TCP user timeout: a
    /// stall or a partition, not a long queue behind a slow uplink (queued bytes keep being
    /// acknowledged, so TCP does not give up on them).
    pub(super) fn blocked_past_user_timeout(&self, end: End, peer: End) -> bool {
        let now = self.now_us;
        let stalled = self.links.get(&end).map_or(0, |l| l.stalled_until_us);
        let healed = if self.blocked(end.0, peer.0) { self.partition.as_ref().map_or(now, |p| p.until_us) } else { 0 };
        stalled.max(healed).saturating_sub(now) > USER_TIMEOUT_US
    }

    /// When bytes sent now from `end` arrive: latency, jitter, uplink serialization, loss and
    /// reordering delays, stalls, partitions; never before earlier bytes on the same link.
    ///
    /// Pieces queue behind each other on the sender's uplink and the receiver's downlink.
    /// Control frames do not queue behind pieces: as in the production writer, which sends
    /// control frames first and keeps at most a few pieces queued, they wait at most for the
    /// piece being written.
    pub(super) fn delivery_time(&mut self, end: End, peer: End, len: usize, active: bool, piece: bool) -> u64 {
        let now = self.now_us;
        let profile = self.config.faults.clone();
        let mut delay =
            self.nodes[end.0].place.latency_us(&self.nodes[peer.0].place) + upto(&mut self.rng, profile.jitter_us_max);
        let node = &mut self.nodes[end.0];
        if let Some(serialize_us) = (len as u64 * 1_000_000).checked_div(node.uplink_bps) {
            let ahead = node.uplink_free_us.saturating_sub(now);
            let wait =
                if piece { ahead } else { ahead.min(mynet_core::content::PIECE_LEN * 1_000_000 / node.uplink_bps) };
            node.uplink_free_us = node.uplink_free_us.max(now) + serialize_us;
            delay += wait + serialize_us;
        }
        if active && chance(&mut self.rng, profile.loss) {
            self.count("loss");
            delay += faults::RTO_US << (self.rng.next_u64() % 4);
        }
        if active && chance(&mut self.rng, profile.reorder) {
            self.count("reorder");
            delay += upto(&mut self.rng, 50_000 + 10 * profile.jitter_us_max);
        }
        if active && chance(&mut self.rng, profile.stall) {
            self.count("stall");
            let until = now + upto(&mut self.rng, profile.stall_ms_max * 1000);
            if let Some(link) = self.links.get_mut(&end) {
                link.stalled_until_us = link.stalled_until_us.max(until);
            }
        }
        let link = self.links.get(&end);
        let last = link.map_or(0, |l| if piece { l.last_piece_us } else { l.last_us });
        let mut at = (now + delay).max(last).max(link.map_or(0, |l| l.stalled_until_us));
        if self.blocked(end.0, peer.0) {
            let heal = self.partition.as_ref().map_or(now, |p| p.until_us);
            at = at.max(heal + delay);
        }
        // The receiver's downlink is shared by everything arriving at it: four providers
        // cannot deliver faster than one downloader takes in.
        let receiver = &mut self.nodes[peer.0];
        if let Some(serialize_us) = (len as u64 * 1_000_000).checked_div(receiver.uplink_bps * DOWNLINK_FACTOR) {
            let done = receiver.downlink_free_us.max(at.saturating_sub(serialize_us)) + serialize_us;
            receiver.downlink_free_us = done;
            if piece {
                at = at.max(done);
            }
        }
        at
    }

    /// Closes the link from `end`'s side: the peer learns after the bytes already in flight.
    pub(super) fn close(&mut self, end: End) {
        let Some(link) = self.links.remove(&end) else { return };
        self.links.remove(&link.peer);
        let at = (self.now_us + self.one_way(end.0, Some(link.peer.0))).max(link.last_us).max(link.last_piece_us);
        self.schedule(at, Ev::Closed { to: link.peer, reason: "connection closed by peer" });
    }

    /// Resets a link: both ends learn at `at` (the peer one latency later).
    pub(super) fn reset_link(&mut self, end: End, at: u64, reason: &'static str) {
        let Some(link) = self.links.remove(&end) else { return };
        self.links.remove(&link.peer);
        let latency = self.one_way(end.0, Some(link.peer.0));
        self.schedule(at, Ev::Closed { to: end, reason });
        self.schedule(at + latency, Ev::Closed { to: link.peer, reason });
    }

    pub(super) fn reset_all_links(&mut self, n: usize, reason: &'static str) {
        let ends: Vec<End> =
            self.links.range((n, 0, ConnId(0))..=(n, u32::MAX, ConnId(u64::MAX))).map(|(end, _)| *end).collect();
        for end in ends {
            if let Some(link) = self.links.remove(&end) {
                self.links.remove(&link.peer);
                let latency = self.one_way(n, Some(link.peer.0));
                self.schedule(self.now_us + latency, Ev::Closed { to: link.peer, reason });
            }
        }
    }

    pub(super) fn one_way(&mut self, n: usize, to: Option<usize>) -> u64 {
        let base = match to {
            Some(to) => self.nodes[n].place.latency_us(&self.nodes[to].place),
            None => net::LATENCY_US_MIN + net::LATENCY_US_SPAN,
        };
        base + upto(&mut self.rng, self.config.faults.jitter_us_max)
    }

    pub(super) fn blocked(&self, from: usize, to: usize) -> bool {
        self.partition.as_ref().is_some_and(|p| p.side[from] != p.side[to] && (!p.one_way || p.side[from]))
    }

    pub(super) fn start_partition(&mut self) {
        let profile = self.config.faults.clone();
        if self.faults_active() && self.partition.is_none() {
            let fraction = 0.2 + 0.3 * net::unit(&mut self.rng);
            let side = (0..self.nodes.len()).map(|_| chance(&mut self.rng, fraction)).collect();
            let one_way = chance(&mut self.rng, profile.one_way);
            let until_us = self.now_us + 1_000_000 + upto(&mut self.rng, profile.partition_ms_max * 1000);
            self.count(if one_way { "partition_one_way" } else { "partition" });
            self.partition = Some(Partition { side, one_way, until_us });
            self.schedule(until_us, Ev::Heal);
        }
        if let Some(after) = next_after(&mut self.rng, profile.partition_every_ms) {
            let from = self.partition.as_ref().map_or(self.now_us, |p| p.until_us);
            self.schedule(from + after, Ev::Partition);
        }
    }

    pub(super) fn clock_jump(&mut self, n: usize) {
        let profile = self.config.faults.clone();
        if self.faults_active() {
            let max = profile.clock_jump_ms_max;
            let jump = upto(&mut self.rng, 2 * max) as i64 - max as i64;
            self.nodes[n].clock.wall_skew_ms += jump;
            self.count("clock_jump");
        }
        if let Some(after) = next_after(&mut self.rng, profile.clock_jump_every_ms) {
            self.schedule(self.now_us + after, Ev::ClockJump(n));
        }
    }

    pub(super) fn schedule(&mut self, at_us: u64, ev: Ev) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.queue.push(Reverse(Scheduled { at_us, seq, ev }));
    }
}

// ---- misbehaving peers ----
impl World {
    pub(super) fn attack(&mut self, n: usize) {
        let profile = self.config.faults.clone();
        let target = (self.rng.next_u64() % self.honest.max(1) as u64) as usize;
        let alive = self.honest(target).is_some_and(|h| h.journaled.is_some());
        if self.faults_active() && alive {
            let attack = Attack::ALL[(self.rng.next_u64() % Attack::ALL.len() as u64) as usize];
            self.count(attack.name());
            let dials = if attack == Attack::ConnFlood { 8 } else { 1 };
            let addr = self.nodes[target].addr;
            for _ in 0..dials {
                let Actor::Adversary(adversary) = &mut self.nodes[n].actor else { return };
                let conn = adversary.open(attack);
                self.dial((n, 0, conn), addr);
            }
        }
        if let Some(after) = next_after(&mut self.rng, profile.attack_every_ms) {
            self.schedule(self.now_us + after, Ev::Attack(n));
        }
    }

    pub(super) fn adversary_input(&mut self, n: usize, input: Input) {
        let wall = self.nodes[n].clock.read(self.now_us).wall_ms;
        let network = self.config.node_config.network_id.clone();
        let (conn, frames) = {
            let World { nodes, rng, links, .. } = self;
            let Actor::Adversary(adversary) = &mut nodes[n].actor else { return };
            match input {
                Input::Secured { conn, binding } => (conn, adversary.on_secured(conn, binding, &network, wall, rng)),
                Input::Received { conn, .. } => {
                    let target = links.get(&(n, 0, conn)).map(|l| l.peer.0);
                    let Some(target) = target else { return };
                    let target_id = nodes[target].identity.node_id();
                    let Actor::Adversary(adversary) = &mut nodes[n].actor else { return };
                    (conn, adversary.on_received(conn, target_id, rng))
                }
                Input::Closed { conn, .. } => {
                    adversary.on_closed(conn);
                    return;
                }
                _ => return,
            }
        };
        for bytes in frames {
            self.send((n, 0, conn), bytes);
        }
    }
}
