//! Refusals that explain themselves (issue 12, point 8).
//!
//! A node that refuses a connection (a full inbound or per-IP limit, a blacklisted address or
//! node, another network, an incompatible version, a clock too far off) first tells the peer
//! why, in a signed [`Refusal`] sent over the secure channel instead of the handshake answer,
//! with a retry hint; the dialler logs it, leaves the node alone until the hint has passed, and
//! names it when start-up fails.
//!
//! Explaining costs a Noise handshake and a signature, so it is bounded: at most
//! [`REFUSING_MAX`] connections are being refused at once (a connection over a limit is
//! accepted only to be told why, outside the connection table and its limits, and cut after
//! [`REFUSING_DEADLINE_MS`]), and explanations are rate limited per IP ([`PER_IP`]) and for
//! everyone ([`GLOBAL`]). Past any of these, the connection is closed silently, as it was
//! before refusals explained themselves.
//!
//! The dialler checks the signature (over the channel binding, so a refusal cannot be replayed
//! on another connection) and the identity it dialled, then remembers the hint per node id
//! (bounded by [`HEARD_MAX`]): no module dials that node again before it has passed.

use core::fmt;
use core::net::{IpAddr, SocketAddr};
use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::event::CloseReason;
use crate::handshake::{Binding, HandshakeError};
use crate::id::{ConnId, NodeId, PublicKey, bytes64};
use crate::identity::{self, Identity};
use crate::time::Mono;
use crate::wire::{SHORT_STRING_MAX, WireError};

const DOMAIN: &str = "mynet/refusal/v1";

/// Connections accepted only to explain why they are refused, at once.
pub const REFUSING_MAX: usize = 16;
/// A connection being refused must have its secure channel up within this long (and the
/// handshake timeout, if shorter); it is cut silently otherwise.
pub const REFUSING_DEADLINE_MS: u64 = 5_000;
/// Explanations per remote IP: a burst of 8, then one every 2 s.
pub const PER_IP: Gcra = Gcra { burst: 8, interval_ms: 2_000 };
/// Explanations in all: a burst of 32, then ten a second.
pub const GLOBAL: Gcra = Gcra { burst: 32, interval_ms: 100 };
/// Remote IPs whose explanation rate is tracked at once; past it, new IPs get no explanation
/// until older ones have refilled.
pub const RATED_IPS_MAX: usize = 1024;
/// The retry hint for a full limit: this long plus up to [`LIMIT_RETRY_JITTER_MS`], so
/// refused nodes do not come back all at once. Measured in the simulator (40 nodes joining in
/// 2 s, 8 inbound slots each, seeds 1-8): against closing silently, refused dials -27% and all
/// dials -16%, but the refused joiners reach their peer target later (p90 2.4 s -> 25 s);
/// 30 s + 15 s cost 12 s more for no fewer dials, and 10 s + 10 s left the network split on
/// 5 of 8 seeds (late joiners formed an island).
pub const LIMIT_RETRY_MS: u32 = 15_000;
/// The random part of a limit's retry hint (from the node's seeded generator).
pub const LIMIT_RETRY_JITTER_MS: u32 = 15_000;
/// The retry hint when clocks differ too much (NTP may fix one of them meanwhile).
pub const CLOCK_RETRY_MS: u32 = 60_000;
/// Longest hint a dialler honours; a refusal saying "do not retry" (0) also keeps the node
/// from being dialled for this long (until a restart, which may come with a new config).
pub const RETRY_HINT_MS_MAX: u64 = 3_600_000;
/// Nodes whose retry hint we remember at once; the one due soonest is forgotten first.
pub const HEARD_MAX: usize = 1024;

/// Why a node refused a connection, as it tells the dialler.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RefusalReason {
    /// The refusing node has its `max` inbound connections.
    InboundLimit { max: u32 },
    /// The refusing node has `max` connections from the dialler's IP address.
    PerIpLimit { max: u32 },
    /// The dialler (its address or its node id) is blacklisted there.
    Banned,
    /// The refusing node belongs to network `ours`.
    WrongNetwork { ours: String },
    /// The refusing node speaks protocol version `ours`, which is not compatible.
    IncompatibleVersion { ours: String },
    /// The dialler's handshake timestamp was `skew_ms` away from the refusing node's clock.
    ClockSkew { skew_ms: u64, limit_ms: u64 },
}

impl RefusalReason {
    /// The explanation for an admission refusal, if it is one a peer is told.
    pub fn of_admission(reason: &CloseReason) -> Option<RefusalReason> {
        match reason {
            CloseReason::InboundLimit { max } => Some(RefusalReason::InboundLimit { max: *max }),
            CloseReason::PerIpLimit { max, .. } => Some(RefusalReason::PerIpLimit { max: *max }),
            CloseReason::Banned => Some(RefusalReason::Banned),
            _ => None,
        }
    }

    /// The explanation for a refused Hello, if it is one a peer is told (not a bad signature
    /// or a forged id: a peer that sends those learns nothing from us).
    pub fn of_handshake(err: &HandshakeError) -> Option<RefusalReason> {
        match err {
            HandshakeError::WrongNetwork { ours, .. } => Some(RefusalReason::WrongNetwork { ours: ours.clone() }),
            HandshakeError::IncompatibleVersion { ours, .. } => {
                Some(RefusalReason::IncompatibleVersion { ours: ours.clone() })
            }
            HandshakeError::ClockSkew { skew_ms, limit_ms } => {
                Some(RefusalReason::ClockSkew { skew_ms: *skew_ms, limit_ms: *limit_ms })
            }
            _ => None,
        }
    }

    /// Decode bounds: short strings.
    pub fn check_bounds(&self) -> Result<(), WireError> {
        match self {
            RefusalReason::WrongNetwork { ours } | RefusalReason::IncompatibleVersion { ours }
                if ours.len() > SHORT_STRING_MAX =>
            {
                Err(WireError::OutOfBounds(format!(
                    "refusal string of {} bytes; at most {SHORT_STRING_MAX}",
                    ours.len()
                )))
            }
            _ => Ok(()),
        }
    }
}

impl fmt::Display for RefusalReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RefusalReason::InboundLimit { max } => write!(f, "inbound connection limit ({max}) reached"),
            RefusalReason::PerIpLimit { max } => write!(f, "per-IP connection limit ({max}) reached"),
            RefusalReason::Banned => f.write_str("we are blacklisted there"),
            RefusalReason::WrongNetwork { ours } => write!(f, "wrong network (the node is on {ours:?})"),
            RefusalReason::IncompatibleVersion { ours } => {
                write!(f, "incompatible protocol version (the node speaks {ours})")
            }
            RefusalReason::ClockSkew { skew_ms, limit_ms } => {
                write!(f, "our clocks differ by {} s (the limit is {} s)", skew_ms.div_ceil(1000), limit_ms / 1000)
            }
        }
    }
}

/// How a retry hint reads in logs: `retry after 31 s`, or that there is no point.
pub struct RetryHint(pub u32);

impl fmt::Display for RetryHint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            0 => f.write_str("do not retry"),
            ms => write!(f, "retry after {} s", u64::from(ms).div_ceil(1000)),
        }
    }
}

/// The signed explanation a refusing node sends instead of its handshake answer
/// (`Message::Refused`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    /// The refusing node's id; must be BLAKE3 of `public_key`.
    pub node_id: NodeId,
    /// Its ed25519 key.
    pub public_key: PublicKey,
    /// Why.
    pub reason: RefusalReason,
    /// Milliseconds before the dialler should try again; 0: do not, the answer will not change.
    pub retry_after_ms: u32,
    /// ed25519 over the domain, the channel binding and the fields above.
    #[serde(with = "bytes64")]
    pub signature: [u8; 64],
}

impl Refusal {
    /// Our refusal for the channel with `binding`, signed.
    pub fn sign(identity: &Identity, binding: Binding, reason: RefusalReason, retry_after_ms: u32) -> Refusal {
        let mut refusal = Refusal {
            node_id: identity.node_id(),
            public_key: identity.public_key(),
            reason,
            retry_after_ms,
            signature: [0; 64],
        };
        refusal.signature = identity.sign(&refusal.signed_bytes(binding));
        refusal
    }

    /// Checks the id against the key and the signature against the channel with `binding`.
    pub fn verify(&self, binding: Binding) -> Result<(), HandshakeError> {
        if NodeId::from_public_key(&self.public_key) != self.node_id {
            return Err(HandshakeError::NodeIdMismatch { claimed: self.node_id });
        }
        identity::verify(&self.public_key, &self.signed_bytes(binding), &self.signature)
            .map_err(|_| HandshakeError::BadSignature)
    }

    /// Decode bounds.
    pub fn check_bounds(&self) -> Result<(), WireError> {
        self.reason.check_bounds()
    }

    fn signed_bytes(&self, binding: Binding) -> Vec<u8> {
        #[derive(Serialize)]
        struct Signed<'a> {
            domain: &'a str,
            binding: [u8; 32],
            node_id: NodeId,
            public_key: PublicKey,
            reason: &'a RefusalReason,
            retry_after_ms: u32,
        }
        let signed = Signed {
            domain: DOMAIN,
            binding: binding.0,
            node_id: self.node_id,
            public_key: self.public_key,
            reason: &self.reason,
            retry_after_ms: self.retry_after_ms,
        };
        postcard::to_allocvec(&signed).expect("postcard encoding into a Vec cannot fail")
    }
}

/// A rate as the generic cell rate algorithm keeps it: `burst` events at once, then one per
/// `interval_ms`. The state is one instant, when the bucket is full again, so an entry whose
/// instant has passed is the same as no entry and can be forgotten.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gcra {
    /// Events allowed at once.
    pub burst: u64,
    /// One more event is allowed per this many milliseconds.
    pub interval_ms: u64,
}

impl Gcra {
    /// When the bucket that is full again at `full_at` would be full again after one more
    /// event at `now`, if the event is allowed.
    fn take(self, full_at: Mono, now: Mono) -> Option<Mono> {
        let next = full_at.max(now).plus_ms(self.interval_ms);
        (next <= now.plus_ms(self.burst * self.interval_ms)).then_some(next)
    }
}

/// A connection accepted only to be told why it is refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusing {
    /// The remote address.
    pub addr: SocketAddr,
    /// Why it was refused (the admission rule it broke).
    pub reason: CloseReason,
    /// What the peer is told.
    pub explain: RefusalReason,
    /// The hint the peer is given.
    pub retry_after_ms: u32,
    /// When it is cut if its secure channel is not up.
    pub deadline: Mono,
}

/// A node that refused us, and until when we leave it alone.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heard {
    /// Why it refused.
    pub reason: RefusalReason,
    /// The hint it gave.
    pub retry_after_ms: u32,
    /// No dial before this instant.
    pub until: Mono,
}

/// Refusals, both ways: the connections being refused and the explanation rate (ours), and
/// the hints nodes that refused us gave (theirs).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Refusals {
    refusing: BTreeMap<ConnId, Refusing>,
    /// When each IP's explanation bucket is full again (only IPs whose bucket is not full).
    per_ip: BTreeMap<IpAddr, Mono>,
    /// `per_ip` by instant, to forget full buckets without a scan.
    per_ip_full: BTreeSet<(Mono, IpAddr)>,
    /// When the global bucket is full again.
    global: Mono,
    heard: BTreeMap<NodeId, Heard>,
    /// `heard` by `until`, to forget passed hints without a scan.
    heard_until: BTreeSet<(Mono, NodeId)>,
}

/// Counts for status `refusals`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefusalStatus {
    /// Connections being refused right now (waiting for their secure channel).
    pub refusing: u32,
    /// Nodes that refused us whose retry hint has not passed.
    pub waiting_for: u32,
}

impl Refusals {
    // ---- our side: refusing ----

    /// Whether `conn` is a connection being refused.
    pub fn is_refusing(&self, conn: ConnId) -> bool {
        self.refusing.contains_key(&conn)
    }

    /// Whether a connection from `ip` may be accepted to be told why it is refused: a free
    /// slot and the rate allows. Takes the rate's tokens if it may.
    pub fn may_refuse_explained(&mut self, now: Mono, ip: IpAddr) -> bool {
        self.refusing.len() < REFUSING_MAX && self.may_explain(now, ip)
    }

    /// Whether an explanation to `ip` is within the rate now; takes its tokens if it is.
    pub fn may_explain(&mut self, now: Mono, ip: IpAddr) -> bool {
        while let Some(&(at, old)) = self.per_ip_full.first()
            && at <= now
        {
            self.per_ip_full.remove(&(at, old));
            self.per_ip.remove(&old);
        }
        let ip_full_at = self.per_ip.get(&ip).copied();
        if ip_full_at.is_none() && self.per_ip.len() >= RATED_IPS_MAX {
            return false;
        }
        let (Some(ip_next), Some(global_next)) =
            (PER_IP.take(ip_full_at.unwrap_or(now), now), GLOBAL.take(self.global, now))
        else {
            return false;
        };
        if let Some(old) = ip_full_at {
            self.per_ip_full.remove(&(old, ip));
        }
        self.per_ip.insert(ip, ip_next);
        self.per_ip_full.insert((ip_next, ip));
        self.global = global_next;
        true
    }

    /// Starts refusing `conn` (accepted; its secure channel will come).
    pub fn start(&mut self, conn: ConnId, refusing: Refusing) {
        self.refusing.insert(conn, refusing);
    }

    /// Stops refusing `conn` (its channel is up, it closed, or its deadline passed).
    pub fn take(&mut self, conn: ConnId) -> Option<Refusing> {
        self.refusing.remove(&conn)
    }

    /// Every connection being refused, taken (shutdown, a failed start-up, a restart).
    pub fn take_all(&mut self) -> Vec<(ConnId, Refusing)> {
        std::mem::take(&mut self.refusing).into_iter().collect()
    }

    /// The earliest deadline of a connection being refused.
    pub fn next_deadline(&self) -> Option<(Mono, ConnId)> {
        // At most `REFUSING_MAX` entries: a scan is cheaper than an index.
        self.refusing.iter().map(|(id, r)| (r.deadline, *id)).min()
    }

    /// Connections being refused whose deadline passed at `now`.
    pub fn expired(&self, now: Mono) -> Vec<ConnId> {
        self.refusing.iter().filter(|(_, r)| r.deadline <= now).map(|(id, _)| *id).collect()
    }

    // ---- their side: refusals we heard ----

    /// `node` refused us at `now` with `retry_after_ms`: no dial before the hint has passed
    /// (at most [`RETRY_HINT_MS_MAX`]; a "do not retry" keeps it away that long).
    pub fn heard(&mut self, node: NodeId, now: Mono, reason: RefusalReason, retry_after_ms: u32) {
        let wait_ms = match retry_after_ms {
            0 => RETRY_HINT_MS_MAX,
            ms => u64::from(ms).min(RETRY_HINT_MS_MAX),
        };
        let until = now.plus_ms(wait_ms);
        if let Some(old) = self.heard.remove(&node) {
            self.heard_until.remove(&(old.until, node));
        }
        self.forget_passed(now);
        if self.heard.len() >= HEARD_MAX
            && let Some((_, soonest)) = self.heard_until.pop_first()
        {
            self.heard.remove(&soonest);
        }
        self.heard.insert(node, Heard { reason, retry_after_ms, until });
        self.heard_until.insert((until, node));
    }

    /// What `node` told us, if its hint has not passed at `now`.
    pub fn waiting_for(&self, node: &NodeId, now: Mono) -> Option<&Heard> {
        self.heard.get(node).filter(|h| now < h.until)
    }

    /// Milliseconds until we may dial `node` again, if it asked us to wait.
    pub fn wait_left_ms(&self, node: &NodeId, now: Mono) -> Option<u64> {
        self.waiting_for(node, now).map(|h| h.until.ms_since(now).max(1))
    }

    /// The process restarted: the transport of every connection being refused died, and the
    /// config (network, version) may have changed, so old hints are forgotten.
    pub fn on_restart(&mut self) {
        *self = Refusals::default();
    }

    /// Status `refusals`.
    pub fn status(&self, now: Mono) -> RefusalStatus {
        RefusalStatus {
            refusing: self.refusing.len() as u32,
            waiting_for: self.heard_until.iter().filter(|(until, _)| now < *until).count() as u32,
        }
    }

    /// Checks the bounds, and that each index is as long as its table (O(1): this runs after
    /// every simulated step; [`Refusals::check`] compares them entry by entry).
    pub fn check_bounds(&self) -> Result<(), crate::node::InvariantViolation> {
        use crate::node::InvariantViolation;
        if self.refusing.len() > REFUSING_MAX || self.per_ip.len() > RATED_IPS_MAX || self.heard.len() > HEARD_MAX {
            return Err(InvariantViolation::IndexOutOfStep { what: "refusal table bounds" });
        }
        if self.per_ip.len() != self.per_ip_full.len() || self.heard.len() != self.heard_until.len() {
            return Err(InvariantViolation::IndexOutOfStep { what: "refusal rate or hint index" });
        }
        Ok(())
    }

    /// Checks that the indexes agree with their tables entry by entry (O(n): tests, fuzzing).
    pub fn check(&self) -> Result<(), String> {
        self.check_bounds().map_err(|e| e.to_string())?;
        if let Some((at, ip)) = self.per_ip_full.iter().find(|(at, ip)| self.per_ip.get(ip) != Some(at)) {
            return Err(format!("refusal rate of {ip}: indexed at {at:?}, not in the table"));
        }
        if let Some((until, id)) =
            self.heard_until.iter().find(|(until, id)| self.heard.get(id).is_none_or(|h| h.until != *until))
        {
            return Err(format!("refusal hint of {id}: indexed until {until:?}, not in the table"));
        }
        Ok(())
    }

    fn forget_passed(&mut self, now: Mono) {
        while let Some(&(until, node)) = self.heard_until.first()
            && until <= now
        {
            self.heard_until.remove(&(until, node));
            self.heard.remove(&node);
        }
    }
}

/// The retry hint for `reason`: limits come back after [`LIMIT_RETRY_MS`] plus jitter
/// (`jitter` is a random number from the node's generator), a ban when it ends
/// (`ban_left_ms`), another network or version never, a clock after [`CLOCK_RETRY_MS`].
pub fn retry_hint(reason: &RefusalReason, jitter: u64, ban_left_ms: Option<u64>) -> u32 {
    match reason {
        RefusalReason::InboundLimit { .. } | RefusalReason::PerIpLimit { .. } => {
            LIMIT_RETRY_MS + (jitter % u64::from(LIMIT_RETRY_JITTER_MS)) as u32
        }
        RefusalReason::Banned => ban_left_ms.map_or(LIMIT_RETRY_MS, |ms| u32::try_from(ms.max(1)).unwrap_or(u32::MAX)),
        RefusalReason::WrongNetwork { .. } | RefusalReason::IncompatibleVersion { .. } => 0,
        RefusalReason::ClockSkew { .. } => CLOCK_RETRY_MS,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_verifies_only_on_its_channel_and_with_its_key() {
        let id = Identity::from_secret_bytes(&[3; 32]);
        let refusal = Refusal::sign(&id, Binding([1; 32]), RefusalReason::PerIpLimit { max: 3 }, 31_000);
        assert_eq!(refusal.verify(Binding([1; 32])), Ok(()));
        assert_eq!(refusal.verify(Binding([2; 32])), Err(HandshakeError::BadSignature));
        let mut longer = refusal.clone();
        longer.retry_after_ms = 1;
        assert_eq!(longer.verify(Binding([1; 32])), Err(HandshakeError::BadSignature));
        let mut forged = refusal;
        forged.node_id = NodeId([9; 32]);
        assert!(matches!(forged.verify(Binding([1; 32])), Err(HandshakeError::NodeIdMismatch { .. })));
    }

    #[test]
    fn the_rate_allows_bursts_per_ip_and_in_all_then_refills() {
        let mut r = Refusals::default();
        let ip: IpAddr = [10, 0, 0, 1].into();
        let now = Mono(1_000_000);
        let allowed = (0..20).filter(|_| r.may_explain(now, ip)).count();
        assert_eq!(allowed as u64, PER_IP.burst);
        assert!(!r.may_explain(now.plus_ms(PER_IP.interval_ms - 1), ip));
        assert!(r.may_explain(now.plus_ms(PER_IP.interval_ms), ip), "one more per interval");
        // Other IPs share the global bucket (full again by then, less the one just taken).
        let t = now.plus_ms(PER_IP.interval_ms);
        let others = (2..100u8).filter(|i| r.may_explain(t, [10, 0, 1, *i].into())).count() as u64;
        assert_eq!(others, GLOBAL.burst - 1);
        assert!(!r.may_explain(t, [10, 0, 2, 1].into()), "the global rate holds for new IPs too");
        // Once every bucket is full again, nothing is tracked.
        let later = t.plus_ms(PER_IP.burst * PER_IP.interval_ms + 1);
        assert!(r.may_explain(later, ip));
        assert_eq!(r.per_ip.len(), 1, "full buckets are forgotten");
        r.check().expect("indexes agree");
    }

    #[test]
    fn hints_are_bounded_and_a_do_not_retry_waits_the_maximum() {
        let mut r = Refusals::default();
        let now = Mono(0);
        r.heard(NodeId([1; 32]), now, RefusalReason::WrongNetwork { ours: "x".into() }, 0);
        assert_eq!(r.wait_left_ms(&NodeId([1; 32]), now), Some(RETRY_HINT_MS_MAX));
        r.heard(NodeId([2; 32]), now, RefusalReason::Banned, u32::MAX);
        assert_eq!(r.wait_left_ms(&NodeId([2; 32]), now), Some(RETRY_HINT_MS_MAX));
        for i in 0..HEARD_MAX as u32 + 10 {
            let mut id = [0u8; 32];
            id[..4].copy_from_slice(&i.to_be_bytes());
            id[31] = 7;
            r.heard(NodeId(id), now, RefusalReason::InboundLimit { max: 1 }, 1000 + i);
        }
        assert_eq!(r.heard.len(), HEARD_MAX);
        r.check().expect("indexes agree");
        assert_eq!(r.wait_left_ms(&NodeId([1; 32]), now.plus_ms(RETRY_HINT_MS_MAX)), None);
    }

    #[test]
    fn hints_follow_the_reason() {
        let limit = retry_hint(&RefusalReason::PerIpLimit { max: 3 }, 7, None);
        assert_eq!(limit, LIMIT_RETRY_MS + 7);
        assert!(
            retry_hint(&RefusalReason::InboundLimit { max: 3 }, u64::MAX, None)
                < LIMIT_RETRY_MS + LIMIT_RETRY_JITTER_MS
        );
        assert_eq!(retry_hint(&RefusalReason::Banned, 0, Some(12_345)), 12_345);
        assert_eq!(retry_hint(&RefusalReason::WrongNetwork { ours: "a".into() }, 0, None), 0);
        assert_eq!(retry_hint(&RefusalReason::ClockSkew { skew_ms: 1, limit_ms: 1 }, 0, None), CLOCK_RETRY_MS);
        assert_eq!(RetryHint(30_001).to_string(), "retry after 31 s");
        assert_eq!(RetryHint(0).to_string(), "do not retry");
    }
}
