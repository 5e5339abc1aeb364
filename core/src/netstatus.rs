//! Module: the status broadcast (SPEC R10.2). Every [`INTERVAL_MS`] a ready node signs a short
//! report of itself (phase, uptime, peers, items, bytes stored, catalogue size, version) and
//! sends it to each established peer as a request of protocol `Status` (answered `Noted`).
//! What peers report is kept per node (at most [`REPORTS_MAX`], the oldest evicted), aged out
//! after [`MAX_AGE_MS`], and shown by `mynet network`.
//!
//! A report must come from the node it names (the connection's proven id), carry a sequence
//! number above the last one taken from that node, fit its bounds and verify against the
//! peer's key; the request layer's rate window ([`RATE_LIMIT`]) bounds how often a peer may
//! send. A bad signature or a report for another node is misbehaviour; a stale one is
//! dropped and counted.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::context::Cx;
use crate::event::{CloseReason, Phase, Violation};
use crate::id::{ConnId, NodeId};
use crate::identity::{self, Identity};
use crate::request::{Origin, RequestId};
use crate::time::Mono;
use crate::wire::{self, Kind, RateLimit, WireError};

/// Time between two reports of ours.
pub const INTERVAL_MS: u64 = 30_000;
/// Age past which a peer's report is dropped (three intervals missed).
pub const MAX_AGE_MS: u64 = 3 * INTERVAL_MS;
/// Reports kept, one per node.
pub const REPORTS_MAX: usize = 1_024;
/// Reports a peer may send per window (one per interval, with room for a restart).
pub const RATE_LIMIT: RateLimit = RateLimit { max: 3, window_ms: INTERVAL_MS };
/// Reports of ours in flight to one peer.
pub const IN_FLIGHT_MAX: usize = 1;
/// Longest version string a report carries.
pub const VERSION_MAX: usize = 32;
/// Domain of the signature.
const DOMAIN: &[u8] = b"mynet status report v1";

/// One node's signed report of itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub node_id: NodeId,
    /// Grows with every report the node sends (restarts included: it starts from wall time).
    pub seq: u64,
    /// The sender's wall clock, Unix milliseconds.
    pub wall_ms: u64,
    pub phase: Phase,
    pub uptime_s: u64,
    pub peers: u32,
    pub items: u64,
    pub bytes_stored: u64,
    pub catalogue_items: u64,
    pub version: String,
    #[serde(with = "crate::id::bytes64")]
    pub signature: [u8; 64],
}

/// The figures a report carries, from the node's status.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Figures {
    pub uptime_s: u64,
    pub peers: u32,
    pub items: u64,
    pub bytes_stored: u64,
    pub catalogue_items: u64,
}

impl Report {
    fn signed_bytes(&self) -> Vec<u8> {
        let body = (
            DOMAIN,
            self.node_id,
            self.seq,
            self.wall_ms,
            self.phase,
            self.uptime_s,
            self.peers,
            self.items,
            self.bytes_stored,
            self.catalogue_items,
            &self.version,
        );
        postcard::to_allocvec(&body).expect("postcard encoding into a Vec cannot fail")
    }

    /// Bounds a decoded report must keep.
    pub fn check_bounds(&self) -> Result<(), WireError> {
        if self.version.len() > VERSION_MAX {
            return Err(WireError::OutOfBounds(format!(
                "status report version of {} bytes; at most {VERSION_MAX}",
                self.version.len()
            )));
        }
        Ok(())
    }
}

/// `report` signed by `identity` (its `signature` replaced).
pub fn sign(identity: &Identity, mut report: Report) -> Report {
    report.signature = identity.sign(&report.signed_bytes());
    report
}

/// Requests of the status protocol.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    Report(Report),
}

/// Answers of the status protocol.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    Noted,
}

impl Request {
    pub fn kind(&self) -> Kind {
        Kind::StatusReport
    }

    pub fn expects(&self) -> Kind {
        Kind::StatusNoted
    }

    pub fn check_bounds(&self) -> Result<(), WireError> {
        match self {
            Request::Report(report) => report.check_bounds(),
        }
    }
}

impl Response {
    pub fn kind(&self) -> Kind {
        Kind::StatusNoted
    }

    pub fn check_bounds(&self) -> Result<(), WireError> {
        Ok(())
    }
}

/// A peer's report as we keep it.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Heard {
    report: Report,
    at: Mono,
}

/// Counters of the module.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetStatusStats {
    pub sent: u64,
    pub received: u64,
    pub stale: u64,
    pub bad: u64,
    pub aged_out: u64,
    pub evicted: u64,
}

/// One peer's report as `mynet network` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportStatus {
    pub node_id: NodeId,
    pub phase: String,
    pub uptime_s: u64,
    pub peers: u32,
    pub items: u64,
    pub bytes_stored: u64,
    pub catalogue_items: u64,
    pub version: String,
    pub seq: u64,
    pub wall_ms: u64,
    /// Seconds since we took it.
    pub age_s: u64,
}

/// The module's state.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct NetStatus {
    next: Option<Mono>,
    seq: u64,
    reports: BTreeMap<NodeId, Heard>,
    stats: NetStatusStats,
}

impl NetStatus {
    /// Ready: the first report goes out now, then every interval.
    pub fn start(&mut self, cx: &Cx<'_>) {
        self.next = Some(cx.now.mono);
        // A restarted node's reports must still grow past what peers took before.
        self.seq = self.seq.max(cx.now.wall_ms);
    }

    pub fn poll_timeout(&self) -> Option<Mono> {
        let oldest = self.reports.values().map(|h| h.at.plus_ms(MAX_AGE_MS)).min();
        [self.next, oldest].into_iter().flatten().min()
    }

    /// Sends our report when due, and drops reports that aged out.
    pub fn handle_timeout(&mut self, cx: &mut Cx<'_>, identity: &Identity, figures: impl FnOnce() -> Figures) {
        let now = cx.now.mono;
        let before = self.reports.len();
        self.reports.retain(|_, h| now.ms_since(h.at) < MAX_AGE_MS);
        self.stats.aged_out += (before - self.reports.len()) as u64;
        if self.next.is_none_or(|at| at > now) {
            return;
        }
        self.next = Some(now.plus_ms(INTERVAL_MS));
        let figures = figures();
        self.seq += 1;
        let report = Report {
            node_id: identity.node_id(),
            seq: self.seq,
            wall_ms: cx.now.wall_ms,
            phase: cx.phase,
            uptime_s: figures.uptime_s,
            peers: figures.peers,
            items: figures.items,
            bytes_stored: figures.bytes_stored,
            catalogue_items: figures.catalogue_items,
            version: cx.config.protocol_version.chars().take(VERSION_MAX).collect(),
            signature: [0; 64],
        };
        let report = sign(identity, report);
        let peers: Vec<ConnId> = cx.conns.established().filter(|(_, c, _)| !c.transient).map(|(id, _, _)| id).collect();
        for conn in peers {
            let body = wire::Request::Status(Request::Report(report.clone()));
            if cx.request(conn, body, Origin::Status, 0).is_ok() {
                self.stats.sent += 1;
            }
        }
    }

    /// A peer's report (already admitted by the protocol's rate window).
    pub fn handle_request(&mut self, cx: &mut Cx<'_>, conn: ConnId, id: RequestId, request: Request) {
        let Request::Report(report) = request;
        let Some(peer) = cx.conns.get(conn).and_then(|c| c.established()).map(|e| (e.node_id, e.public_key)) else {
            return;
        };
        if report.node_id != peer.0 {
            return cx.misbehaved(conn, CloseReason::Protocol(Violation::ForeignNodeId { kind: Kind::StatusReport }));
        }
        if identity::verify(&peer.1, &report.signed_bytes(), &report.signature).is_err() {
            self.stats.bad += 1;
            return cx.misbehaved(conn, CloseReason::Protocol(Violation::BadStatusReport));
        }
        cx.respond(conn, id, wire::Response::Status(Response::Noted));
        if self.reports.get(&report.node_id).is_some_and(|h| h.report.seq >= report.seq) {
            self.stats.stale += 1;
            return;
        }
        self.stats.received += 1;
        if !self.reports.contains_key(&report.node_id) && self.reports.len() >= REPORTS_MAX {
            let oldest = self.reports.iter().min_by_key(|(id, h)| (h.at, **id)).map(|(id, _)| *id);
            if let Some(oldest) = oldest {
                self.reports.remove(&oldest);
                self.stats.evicted += 1;
            }
        }
        self.reports.insert(report.node_id, Heard { report, at: cx.now.mono });
    }

    /// What peers reported, newest first, with how old each is.
    pub fn reports(&self, now: Mono) -> Vec<ReportStatus> {
        let mut out: Vec<ReportStatus> = self
            .reports
            .values()
            .filter(|h| now.ms_since(h.at) < MAX_AGE_MS)
            .map(|h| ReportStatus {
                node_id: h.report.node_id,
                phase: h.report.phase.name().to_string(),
                uptime_s: h.report.uptime_s,
                peers: h.report.peers,
                items: h.report.items,
                bytes_stored: h.report.bytes_stored,
                catalogue_items: h.report.catalogue_items,
                version: h.report.version.clone(),
                seq: h.report.seq,
                wall_ms: h.report.wall_ms,
                age_s: now.ms_since(h.at) / 1000,
            })
            .collect();
        out.sort_by_key(|r| (r.age_s, r.node_id));
        out
    }

    pub fn stats(&self) -> &NetStatusStats {
        &self.stats
    }

    /// Reports kept (the invariant check bounds it).
    pub fn len(&self) -> usize {
        self.reports.len()
    }

    pub fn is_empty(&self) -> bool {
        self.reports.is_empty()
    }

    pub fn on_restart(&mut self) {
        self.next = None;
    }

    pub fn on_shutdown(&mut self) {
        self.next = None;
    }
}
