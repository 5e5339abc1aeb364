//! Module: LAN discovery (SPEC R5.3). Signed announcements that the driver multicasts on the
//! local network, and what the node makes of the ones it hears.
//!
//! The node builds and signs each announcement (`Output::LanAnnounce`: network id, node id,
//! key, protocol version, listen address, wall-clock timestamp); the driver sends the bytes on
//! an IPv4 and an IPv6 multicast group on each real interface and hands back what it receives
//! (`Input::LanHeard`, with the datagram's source address). A heard announcement is checked
//! cheapest first (size, magic, decoding, network, self, version, key, signature, clock,
//! replay, blacklist) and a good one goes to discovery as a peer `Found::Lan`, which dials it
//! within the connection limits like any other candidate (SPEC R5.5).
//!
//! Rates: an announcement at start, again 1 s and 3 s later (a node starting beside others
//! is heard even if the first datagram is lost), then every `discovery_interval_ms` (R5.4). A
//! node hearing one it did not know answers with its own announcement, at most once per
//! [`ANSWER_MIN_MS`], so a newcomer learns the nodes already there within a second.
//! Announcements heard beyond [`HEARD_PER_WINDOW`] per [`HEARD_WINDOW_MS`] are dropped before
//! any signature is checked, so a flooding host costs little.

use core::net::{IpAddr, SocketAddr};
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::{parse_version, versions_compatible};
use crate::context::{Cx, Deferred, Output};
use crate::discovery::PeerRecord;
use crate::event::Event;
use crate::id::{NodeId, PublicKey};
use crate::identity::{self, Identity};
use crate::peers::Found;
use crate::penalties::Offender;
use crate::time::Mono;
use crate::wire::SHORT_STRING_MAX;

/// First bytes of every announcement: stray datagrams on the port are dropped unread.
pub const MAGIC: [u8; 4] = *b"MYNL";
/// Largest announcement (ours are about 250 bytes).
pub const ANNOUNCE_MAX_BYTES: usize = 512;
/// Domain of the signature.
const DOMAIN: &str = "mynet/lan-announce/v1";
/// Repeats after the first announcement, in ms after it.
const EARLY_REPEATS_MS: [u64; 2] = [1_000, 3_000];
/// An answer to a newcomer comes at most this often.
pub const ANSWER_MIN_MS: u64 = 1_000;
/// Announcements examined per window; the rest are dropped unverified.
pub const HEARD_PER_WINDOW: u32 = 200;
pub const HEARD_WINDOW_MS: u64 = 10_000;
/// Nodes remembered (newest timestamp and address each); the longest unheard is forgotten
/// (and could then be replayed within `max_clock_skew_ms`: a replay names a key's owner at an
/// address it used, which the handshake checks before anything else happens).
pub const HEARD_NODES_MAX: usize = 1024;

/// What goes on the wire after [`MAGIC`] (postcard).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announcement {
    pub node_id: NodeId,
    pub public_key: PublicKey,
    pub network_id: String,
    pub network_version: String,
    /// Where the sender accepts connections (an unspecified IP: at the datagram's source IP).
    pub listen_addr: SocketAddr,
    /// Sender's wall clock, Unix milliseconds.
    pub timestamp_ms: u64,
    #[serde(with = "crate::id::bytes64")]
    pub signature: [u8; 64],
}

impl Announcement {
    fn signed_bytes(&self) -> Vec<u8> {
        let body = (
            DOMAIN,
            self.node_id,
            self.public_key,
            &self.network_id,
            &self.network_version,
            self.listen_addr,
            self.timestamp_ms,
        );
        postcard::to_allocvec(&body).expect("postcard encoding into a Vec cannot fail")
    }

    /// Our announcement, signed.
    pub fn build(identity: &Identity, network_id: &str, version: &str, listen_addr: SocketAddr, now_ms: u64) -> Self {
        let mut a = Announcement {
            node_id: identity.node_id(),
            public_key: identity.public_key(),
            network_id: network_id.to_string(),
            network_version: version.to_string(),
            listen_addr,
            timestamp_ms: now_ms,
            signature: [0; 64],
        };
        a.signature = identity.sign(&a.signed_bytes());
        a
    }

    /// Whether the id is its key's and the signature holds.
    pub fn verify(&self) -> Result<(), Rejection> {
        if NodeId::from_public_key(&self.public_key) != self.node_id {
            return Err(Rejection::IdMismatch);
        }
        identity::verify(&self.public_key, &self.signed_bytes(), &self.signature).map_err(|_| Rejection::BadSignature)
    }

    /// The datagram: [`MAGIC`] then the postcard encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut bytes = MAGIC.to_vec();
        bytes.extend(postcard::to_allocvec(self).expect("postcard encoding into a Vec cannot fail"));
        bytes
    }

    /// Decodes a datagram (bounds first: postcard has no limits of its own).
    pub fn decode(bytes: &[u8]) -> Result<Announcement, Rejection> {
        if bytes.len() > ANNOUNCE_MAX_BYTES {
            return Err(Rejection::TooLarge);
        }
        let body = bytes.strip_prefix(&MAGIC).ok_or(Rejection::NotAnnouncement)?;
        let a: Announcement = postcard::from_bytes(body).map_err(|_| Rejection::Undecodable)?;
        if a.network_id.len() > SHORT_STRING_MAX || a.network_version.len() > SHORT_STRING_MAX {
            return Err(Rejection::Undecodable);
        }
        Ok(a)
    }
}

/// Why a heard announcement was not used.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Rejection {
    #[error("larger than {ANNOUNCE_MAX_BYTES} bytes")]
    TooLarge,
    #[error("not a mynet announcement")]
    NotAnnouncement,
    #[error("undecodable")]
    Undecodable,
    #[error("another network")]
    OtherNetwork,
    #[error("incompatible protocol version")]
    Version,
    #[error("node id is not its key's")]
    IdMismatch,
    #[error("bad signature")]
    BadSignature,
    #[error("timestamp too far from our clock")]
    ClockSkew,
    #[error("older than one already heard")]
    Replayed,
    #[error("a copy of one already taken")]
    Duplicate,
    #[error("blacklisted")]
    Banned,
    #[error("no address we can dial (a loopback address heard from another host, or IPv6 link-local)")]
    Unreachable,
}

/// The newest announcement heard from one node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Heard {
    timestamp_ms: u64,
    addr: SocketAddr,
    at: Mono,
}

/// LAN discovery's figures (status `lan`; the driver adds its interfaces and errors).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LanStatus {
    /// Announcing and listening (`lan_discovery` on and a listen address a LAN can reach).
    pub active: bool,
    /// Announcements sent (each goes out on every interface).
    pub sent: u64,
    /// Announcements heard (the driver drops our own, looped back by multicast).
    pub heard: u64,
    /// Copies of an announcement already taken (it reached us on two interfaces or groups).
    pub duplicates: u64,
    /// Announcements from other nodes that passed every check.
    pub accepted: u64,
    /// Nodes first learnt from an announcement.
    pub new_peers: u64,
    /// Heard but refused (see `last_rejection`).
    pub rejected: u64,
    /// Dropped unread over the rate limit.
    pub rate_limited: u64,
    /// Nodes remembered.
    pub nodes: u32,
    /// The last refusal: the source and why.
    pub last_rejection: Option<String>,
}

/// The module's state.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Lan {
    /// The next scheduled announcement (start, early repeats, then every interval).
    next: Option<Mono>,
    /// An answer to a newcomer, apart from the schedule.
    answer: Option<Mono>,
    /// Announcements since start (the early repeats).
    since_start: u32,
    last_sent: Option<Mono>,
    #[serde(with = "crate::id::map_as_pairs")]
    heard: BTreeMap<NodeId, Heard>,
    window_start: Mono,
    window_count: u32,
    status: LanStatus,
}

/// Whether announcing makes sense: on, and listening where a LAN can reach us.
fn reachable(cx: &Cx<'_>) -> bool {
    let addr = cx.config.listen_addr;
    cx.config.lan_discovery && addr.port() != 0 && !addr.ip().is_loopback()
}

impl Lan {
    /// The node started (or restarted): announce now.
    pub fn start(&mut self, cx: &mut Cx<'_>, identity: &Identity) {
        self.status.active = reachable(cx);
        self.since_start = 0;
        self.answer = None;
        self.next = self.status.active.then_some(cx.now.mono);
        self.handle_timeout(cx, identity);
    }

    pub fn on_shutdown(&mut self) {
        (self.next, self.answer) = (None, None);
    }

    pub fn poll_timeout(&self) -> Option<Mono> {
        [self.next, self.answer].into_iter().flatten().min()
    }

    pub fn status(&self) -> LanStatus {
        LanStatus { nodes: self.heard.len() as u32, ..self.status.clone() }
    }

    pub fn handle_timeout(&mut self, cx: &mut Cx<'_>, identity: &Identity) {
        let now = cx.now.mono;
        let (scheduled, answer) = (self.next.is_some_and(|at| at <= now), self.answer.is_some_and(|at| at <= now));
        if !scheduled && !answer {
            return;
        }
        // Any announcement answers the newcomers waiting for one.
        self.answer = None;
        let cfg = cx.config;
        let announcement =
            Announcement::build(identity, &cfg.network_id, &cfg.protocol_version, cfg.listen_addr, cx.now.wall_ms);
        cx.output(Output::LanAnnounce { bytes: announcement.encode() });
        self.status.sent += 1;
        self.last_sent = Some(now);
        if !scheduled {
            return;
        }
        let after = EARLY_REPEATS_MS.get(self.since_start as usize).map_or(cfg.discovery_interval_ms, |at| {
            let previous = self.since_start.checked_sub(1).map_or(0, |i| EARLY_REPEATS_MS[i as usize]);
            at - previous
        });
        self.since_start += 1;
        self.next = Some(now.plus_ms(after));
    }

    /// The driver heard `bytes` from `from` on the LAN.
    pub fn heard(&mut self, cx: &mut Cx<'_>, from: SocketAddr, bytes: &[u8]) {
        if !self.status.active {
            return;
        }
        let now = cx.now.mono;
        self.status.heard += 1;
        if now.ms_since(self.window_start) >= HEARD_WINDOW_MS {
            (self.window_start, self.window_count) = (now, 0);
        }
        if self.window_count >= HEARD_PER_WINDOW {
            self.status.rate_limited += 1;
            return;
        }
        self.window_count += 1;
        match self.check(cx, from, bytes) {
            Ok(None) => {}
            Err(Rejection::Duplicate) => self.status.duplicates += 1,
            Ok(Some(record)) => self.accept(cx, record, now),
            Err(why) => {
                self.status.rejected += 1;
                self.status.last_rejection = Some(format!("{from}: {why}"));
            }
        }
    }

    /// Checks an announcement, cheapest first; `Ok(None)` for our own.
    fn check(&self, cx: &Cx<'_>, from: SocketAddr, bytes: &[u8]) -> Result<Option<(PeerRecord, u64)>, Rejection> {
        let a = Announcement::decode(bytes)?;
        if a.network_id != cx.config.network_id {
            return Err(Rejection::OtherNetwork);
        }
        if a.node_id == cx.node_id {
            return Ok(None);
        }
        let compatible = match (parse_version(&a.network_version), parse_version(&cx.config.protocol_version)) {
            (Some(theirs), Some(ours)) => versions_compatible(theirs, ours),
            _ => false,
        };
        if !compatible {
            return Err(Rejection::Version);
        }
        a.verify()?;
        if a.timestamp_ms.abs_diff(cx.now.wall_ms) > cx.config.max_clock_skew_ms {
            return Err(Rejection::ClockSkew);
        }
        match self.heard.get(&a.node_id).map(|h| h.timestamp_ms) {
            Some(t) if t == a.timestamp_ms => return Err(Rejection::Duplicate),
            Some(t) if t > a.timestamp_ms => return Err(Rejection::Replayed),
            _ => {}
        }
        if cx.penalties.is_banned(&Offender::Node(a.node_id), cx.now.mono) {
            return Err(Rejection::Banned);
        }
        let address = dial_addr(a.listen_addr, from).ok_or(Rejection::Unreachable)?;
        Ok(Some((PeerRecord { node_id: a.node_id, address, public_key: a.public_key }, a.timestamp_ms)))
    }

    fn accept(&mut self, cx: &mut Cx<'_>, (record, timestamp_ms): (PeerRecord, u64), now: Mono) {
        self.status.accepted += 1;
        let previous = self.heard.insert(record.node_id, Heard { timestamp_ms, addr: record.address, at: now });
        if self.heard.len() > HEARD_NODES_MAX
            && let Some(oldest) = self.heard.iter().min_by_key(|(id, h)| (h.at, **id)).map(|(id, _)| *id)
        {
            self.heard.remove(&oldest);
        }
        let new = previous.is_none();
        if new {
            self.status.new_peers += 1;
            cx.event(Event::LanPeer { node: record.node_id, addr: record.address });
            // Answer the newcomer soon, at most once per ANSWER_MIN_MS.
            let earliest = self.last_sent.map_or(now, |at| at.plus_ms(ANSWER_MIN_MS).max(now));
            if self.next.is_some() {
                self.answer = Some(self.answer.map_or(earliest, |a| a.min(earliest)));
            }
        }
        if new || previous.is_some_and(|p| p.addr != record.address) {
            cx.defer(Deferred::Discovered(vec![record], Found::Lan));
        }
    }
}

/// Where to dial the sender of an announcement heard from `from`: its listen address, or the
/// datagram's source IP when it listens on every address. A loopback address heard from
/// another host is not the sender's; an IPv6 link-local address (announced or as the source)
/// needs a scope the log does not keep.
pub fn dial_addr(listen: SocketAddr, from: SocketAddr) -> Option<SocketAddr> {
    let ip = listen.ip();
    if let IpAddr::V6(v6) = ip
        && v6.is_unicast_link_local()
    {
        return None;
    }
    if !ip.is_unspecified() {
        return (!ip.is_loopback() || from.ip().is_loopback()).then_some(listen);
    }
    match from.ip() {
        // It listens on IPv4 only; its IPv4 announcement will do.
        IpAddr::V6(_) if ip.is_ipv4() => None,
        IpAddr::V6(v6) if v6.is_unicast_link_local() => None,
        source => Some(SocketAddr::new(source, listen.port())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("address")
    }

    #[test]
    fn the_dial_address_comes_from_the_listen_address_or_the_source() {
        let from = addr("192.168.1.7:45000");
        assert_eq!(dial_addr(addr("0.0.0.0:7401"), from), Some(addr("192.168.1.7:7401")));
        assert_eq!(dial_addr(addr("192.168.1.8:7401"), from), Some(addr("192.168.1.8:7401")));
        assert_eq!(dial_addr(addr("[::]:7401"), from), Some(addr("192.168.1.7:7401")), "dual stack");
        assert_eq!(dial_addr(addr("127.0.0.1:7401"), from), None, "not the sender's loopback");
        assert_eq!(dial_addr(addr("127.0.0.1:7401"), addr("127.0.0.1:45000")), Some(addr("127.0.0.1:7401")));
        assert_eq!(dial_addr(addr("0.0.0.0:7401"), addr("[fd00::2]:45000")), None, "IPv4 only");
        assert_eq!(dial_addr(addr("[::]:7401"), addr("[fe80::1]:45000")), None, "link-local needs a scope");
        assert_eq!(dial_addr(addr("[::]:7401"), addr("[fd00::2]:45000")), Some(addr("[fd00::2]:7401")));
        assert_eq!(dial_addr(addr("[fe80::2]:7401"), addr("[fd00::2]:45000")), None, "announced link-local");
    }

    #[test]
    fn announcements_round_trip_and_bounds_hold() {
        let id = Identity::from_secret_bytes(&[3; 32]);
        let a = Announcement::build(&id, "net", "1.0.0", addr("10.0.0.1:7401"), 5);
        let bytes = a.encode();
        assert!(bytes.len() < ANNOUNCE_MAX_BYTES / 2, "{} bytes", bytes.len());
        assert_eq!(Announcement::decode(&bytes), Ok(a.clone()));
        assert_eq!(Announcement::decode(&bytes[4..]), Err(Rejection::NotAnnouncement));
        assert_eq!(Announcement::decode(&bytes[..bytes.len() - 1]), Err(Rejection::Undecodable));
        assert_eq!(Announcement::decode(&[0; ANNOUNCE_MAX_BYTES + 1]), Err(Rejection::TooLarge));
        let long = Announcement { network_id: "n".repeat(SHORT_STRING_MAX + 1), ..a };
        assert_eq!(Announcement::decode(&long.encode()), Err(Rejection::Undecodable));
    }
}
