//! The connection table and admission (SPEC R6.1): every connection the node has, its
//! handshake state, and the limits, counted incrementally so admission is O(log n).

use core::net::{IpAddr, SocketAddr};
use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::event::{CloseReason, Direction};
use crate::handshake::Binding;
use crate::id::{ConnId, NodeId, PublicKey};
use crate::time::Mono;
use crate::wire::FrameBuffer;

/// A peer whose handshake verified.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Established {
    /// Its proven id.
    pub node_id: NodeId,
    /// Its key.
    pub public_key: PublicKey,
    /// Where it says it listens (an unspecified IP replaced by the one we see).
    pub listen_addr: Option<SocketAddr>,
    /// When the handshake completed.
    pub since: Mono,
}

/// Where a connection is in its life.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum ConnState {
    /// Dialling, or accepted and running the secure handshake.
    Opening,
    /// Inbound, secure: waiting for the peer's Hello.
    AwaitHello { binding: Binding },
    /// Outbound, secure, Hello sent: waiting for the answer.
    AwaitAck { binding: Binding },
    /// Handshake verified.
    Established(Established),
}

/// One connection.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Conn {
    /// Who opened it.
    pub direction: Direction,
    /// The remote address.
    pub addr: SocketAddr,
    /// Handshake progress.
    pub state: ConnState,
    /// When the handshake must have completed.
    pub handshake_deadline: Mono,
    /// The identity we dialled, if we dialled a known node.
    pub expect: Option<NodeId>,
    /// Whether this is a link to a bootstrap node.
    pub bootstrap: bool,
    /// A DHT contact: not a regular peer (it does not count towards `target_peers` and closes
    /// when idle) unless discovery promotes it.
    #[serde(default)]
    pub transient: bool,
    /// Bytes of a frame not yet complete.
    pub frames: FrameBuffer,
}

impl Conn {
    /// The verified peer, once the handshake completed.
    pub fn established(&self) -> Option<&Established> {
        match &self.state {
            ConnState::Established(e) => Some(e),
            _ => None,
        }
    }

    /// The peer id proven, or the one we dialled.
    pub fn peer_hint(&self) -> Option<NodeId> {
        self.established().map(|e| e.node_id).or(self.expect)
    }
}

/// Every connection, with counts kept in step for admission.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Conns {
    table: BTreeMap<ConnId, Conn>,
    next_outbound: u64,
    inbound: u32,
    outbound: u32,
    per_ip: BTreeMap<IpAddr, u32>,
    /// Handshake deadlines of connections not yet established.
    handshake_deadlines: BTreeSet<(Mono, ConnId)>,
}

impl Conns {
    /// One connection.
    pub fn get(&self, conn: ConnId) -> Option<&Conn> {
        self.table.get(&conn)
    }

    /// One connection, to advance its handshake or frame buffer.
    pub fn get_mut(&mut self, conn: ConnId) -> Option<&mut Conn> {
        self.table.get_mut(&conn)
    }

    /// Whether `conn` is open.
    pub fn contains(&self, conn: ConnId) -> bool {
        self.table.contains_key(&conn)
    }

    /// Every connection in id order.
    pub fn iter(&self) -> impl Iterator<Item = (ConnId, &Conn)> {
        self.table.iter().map(|(id, c)| (*id, c))
    }

    /// Ids of every connection.
    pub fn ids(&self) -> Vec<ConnId> {
        self.table.keys().copied().collect()
    }

    /// How many connections there are.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// Established connections in id order, with their peers.
    pub fn established(&self) -> impl Iterator<Item = (ConnId, &Conn, &Established)> {
        self.table.iter().filter_map(|(id, c)| c.established().map(|e| (*id, c, e)))
    }

    /// The established connection to `peer`, if any (the lowest id when the duplicate rule
    /// has not settled two yet). A scan: connections number at most the configured limits.
    pub fn established_to(&self, peer: &NodeId) -> Option<(ConnId, &Conn, &Established)> {
        self.established().find(|(_, _, e)| e.node_id == *peer)
    }

    /// Established peers' ids, in id order.
    pub fn peer_ids(&self) -> Vec<NodeId> {
        let mut ids: Vec<NodeId> = self.established().map(|(_, _, e)| e.node_id).collect();
        ids.sort();
        ids
    }

    /// Whether some connection is to (or dialled for) `peer`.
    pub fn has_conn_to(&self, peer: &NodeId) -> bool {
        self.table.values().any(|c| c.peer_hint() == Some(*peer))
    }

    /// Connections per direction (handshaking ones included).
    pub fn direction_counts(&self) -> (u32, u32) {
        (self.inbound, self.outbound)
    }

    /// Why a new connection in `direction` with `ip` would break a limit, if it would.
    pub fn admission_refusal(&self, config: &Config, direction: Direction, ip: IpAddr) -> Option<CloseReason> {
        match direction {
            Direction::Inbound if self.inbound >= config.max_inbound => {
                return Some(CloseReason::InboundLimit { max: config.max_inbound });
            }
            Direction::Outbound if self.outbound >= config.max_outbound => {
                return Some(CloseReason::OutboundLimit { max: config.max_outbound });
            }
            _ => {}
        }
        if self.per_ip.get(&ip).copied().unwrap_or(0) >= config.max_per_ip {
            return Some(CloseReason::PerIpLimit { ip, max: config.max_per_ip });
        }
        None
    }

    /// Connections past `config`'s limits (after the limits shrank), newest first within each
    /// limit, with the reason each is closed.
    pub fn over_limits(&self, config: &Config) -> Vec<(ConnId, CloseReason)> {
        let mut out: Vec<(ConnId, CloseReason)> = Vec::new();
        let (mut inbound, mut outbound) = (self.inbound, self.outbound);
        let mut per_ip = self.per_ip.clone();
        for (id, conn) in self.table.iter().rev() {
            let ip = conn.addr.ip();
            let reason = match conn.direction {
                Direction::Inbound if inbound > config.max_inbound => {
                    Some(CloseReason::InboundLimit { max: config.max_inbound })
                }
                Direction::Outbound if outbound > config.max_outbound => {
                    Some(CloseReason::OutboundLimit { max: config.max_outbound })
                }
                _ if per_ip.get(&ip).copied().unwrap_or(0) > config.max_per_ip => {
                    Some(CloseReason::PerIpLimit { ip, max: config.max_per_ip })
                }
                _ => None,
            };
            if let Some(reason) = reason {
                match conn.direction {
                    Direction::Inbound => inbound -= 1,
                    Direction::Outbound => outbound -= 1,
                }
                if let Some(n) = per_ip.get_mut(&ip) {
                    *n = n.saturating_sub(1);
                }
                out.push((*id, reason));
            }
        }
        out
    }

    /// A fresh id for a connection we dial.
    pub fn next_outbound_id(&mut self) -> ConnId {
        let id = ConnId(self.next_outbound);
        self.next_outbound += 1;
        id
    }

    /// Adds a connection in its opening state.
    pub fn insert(&mut self, id: ConnId, conn: Conn) {
        match conn.direction {
            Direction::Inbound => self.inbound += 1,
            Direction::Outbound => self.outbound += 1,
        }
        *self.per_ip.entry(conn.addr.ip()).or_insert(0) += 1;
        self.handshake_deadlines.insert((conn.handshake_deadline, id));
        if let Some(old) = self.table.insert(id, conn) {
            // Drivers never reuse a live id (the node checks); keep the counts right anyway.
            self.forget_counts(id, &old);
        }
    }

    /// Marks `conn` established.
    pub fn establish(&mut self, id: ConnId, established: Established) {
        let Some(conn) = self.table.get_mut(&id) else { return };
        self.handshake_deadlines.remove(&(conn.handshake_deadline, id));
        conn.state = ConnState::Established(established);
    }

    /// Removes a connection.
    pub fn remove(&mut self, id: ConnId) -> Option<Conn> {
        let conn = self.table.remove(&id)?;
        self.forget_counts(id, &conn);
        Some(conn)
    }

    fn forget_counts(&mut self, id: ConnId, conn: &Conn) {
        match conn.direction {
            Direction::Inbound => self.inbound = self.inbound.saturating_sub(1),
            Direction::Outbound => self.outbound = self.outbound.saturating_sub(1),
        }
        if let Some(n) = self.per_ip.get_mut(&conn.addr.ip()) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_ip.remove(&conn.addr.ip());
            }
        }
        self.handshake_deadlines.remove(&(conn.handshake_deadline, id));
    }

    /// The earliest handshake deadline.
    pub fn next_handshake_deadline(&self) -> Option<(Mono, ConnId)> {
        self.handshake_deadlines.first().copied()
    }

    /// Connections whose handshake deadline passed at `now`.
    pub fn handshakes_expired(&self, now: Mono) -> Vec<ConnId> {
        self.handshake_deadlines.iter().take_while(|(at, _)| *at <= now).map(|(_, id)| *id).collect()
    }

    /// Recounts everything from the table and compares with the kept counts and `config`'s limits.
    pub fn check(&self, config: &Config) -> Result<(), crate::node::InvariantViolation> {
        use crate::node::InvariantViolation;
        let (mut inbound, mut outbound, mut handshaking) = (0u32, 0u32, 0usize);
        // A sorted vector, not a map: this runs after every simulated step.
        let mut ips: Vec<IpAddr> = Vec::with_capacity(self.table.len());
        for (id, conn) in &self.table {
            match conn.direction {
                Direction::Inbound => inbound += 1,
                Direction::Outbound => outbound += 1,
            }
            ips.push(conn.addr.ip());
            if conn.established().is_none() {
                handshaking += 1;
                if !self.handshake_deadlines.contains(&(conn.handshake_deadline, *id)) {
                    return Err(InvariantViolation::IndexOutOfStep { what: "handshake deadlines" });
                }
            }
        }
        if inbound > config.max_inbound || outbound > config.max_outbound {
            return Err(InvariantViolation::ConnectionLimits { inbound, outbound });
        }
        ips.sort_unstable();
        let mut distinct = 0;
        for run in ips.chunk_by(|a, b| a == b) {
            let count = run.len() as u32;
            if count > config.max_per_ip {
                return Err(InvariantViolation::PerIpLimit { ip: run[0], count, max: config.max_per_ip });
            }
            if self.per_ip.get(&run[0]) != Some(&count) {
                return Err(InvariantViolation::IndexOutOfStep { what: "per-IP counts" });
            }
            distinct += 1;
        }
        if (inbound, outbound) != (self.inbound, self.outbound)
            || distinct != self.per_ip.len()
            || handshaking != self.handshake_deadlines.len()
        {
            return Err(InvariantViolation::IndexOutOfStep { what: "connection counts" });
        }
        Ok(())
    }
}
