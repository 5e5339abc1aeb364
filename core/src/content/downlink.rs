//! The node's own downlink, as the piece scheduler sees it: how fast pieces reach us (all
//! sources together), and how many bytes we have asked for that are still on their way.
//!
//! Each source's pipeline is sized from that source's rate, but sources share our link. A
//! node behind a slow downlink that fills every source's pipeline asks for more than it can
//! receive before the deadlines: its own link queues the answers, they time out, the pieces
//! are asked again of other sources, the first copies still arrive (a timed-out request is
//! not recalled: its bytes are already on the wire), and the link fills with duplicates while
//! the one piece still missing waits behind them (a congestion collapse at the receiver; CI
//! swarm seed 2091). So the scheduler keeps all piece requests together within
//! [`AHEAD_MS`] of the measured delivery rate, and counts a request that timed out or was
//! cancelled as still coming until its grace ends or its piece arrives.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::content::verify::PIECE_LEN;
use crate::id::ConnId;
use crate::request::RequestId;
use crate::time::Mono;

/// Seconds of the measured delivery rate that may be asked for at once (in milliseconds).
pub const AHEAD_MS: u64 = 4_000;
/// What may be asked for at once before the rate is measured.
pub const UNMEASURED_BYTES: u64 = 8 * PIECE_LEN;
/// What may always be asked for at once, however slow the link measured.
pub const FLOOR_BYTES: u64 = 4 * PIECE_LEN;
/// The rate is sampled over windows at least this long while pieces are being fetched.
pub const WINDOW_MS: u64 = 1_000;
/// Requests remembered as still coming; past it the one expected soonest is forgotten.
pub const OWED_MAX: usize = 4_096;

/// A piece request no longer in flight for its transfer whose bytes may still arrive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Owed {
    /// When we stop expecting it (its grace, or its deadline for a cancelled one).
    until: Mono,
    len: u64,
}

/// See the module documentation.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Downlink {
    /// Smoothed delivery rate of pieces from all sources, bytes per second (`None`: not
    /// measured yet).
    rate: Option<u64>,
    /// Piece bytes that arrived in the current window (in time, late, or cancelled ones).
    window_bytes: u64,
    /// Start of the current window; `None` while nothing is asked for.
    window_start: Option<Mono>,
    /// By connection, then request (nested, so the state stays representable as JSON).
    owed: BTreeMap<ConnId, BTreeMap<RequestId, Owed>>,
}

impl Downlink {
    /// Bytes that may be on their way to us at once.
    pub fn budget(&self) -> u64 {
        match self.rate {
            None => UNMEASURED_BYTES,
            Some(rate) => rate.saturating_mul(AHEAD_MS).checked_div(1000).unwrap_or(0).max(FLOOR_BYTES),
        }
    }

    /// The measured rate, bytes per second (0 before the first sample).
    pub fn rate(&self) -> u64 {
        self.rate.unwrap_or(0)
    }

    /// A piece of `len` bytes arrived (whatever became of it).
    pub fn arrived(&mut self, len: u64) {
        self.window_bytes = self.window_bytes.saturating_add(len);
    }

    /// A piece was asked for: the window runs. A window left open over a quiet spell (the
    /// housekeeping tick that samples it stops when no transfer runs) starts again, so idle
    /// time is not taken for a slow link.
    pub fn asking(&mut self, now: Mono) {
        if self.window_start.is_none_or(|start| now.ms_since(start) >= 2 * WINDOW_MS) {
            self.window_start = Some(now);
            self.window_bytes = 0;
        }
    }

    /// Closes the window if it is long enough: one rate sample (a quarter of the smoothed rate).
    /// `busy`: something is still on its way, so the next window starts now.
    pub fn sample(&mut self, now: Mono, busy: bool) {
        let Some(start) = self.window_start else { return };
        let ms = now.ms_since(start);
        if ms < WINDOW_MS {
            return;
        }
        let sample = self.window_bytes.saturating_mul(1000) / ms;
        self.rate = Some(self.rate.map_or(sample, |rate| (rate.saturating_mul(3) + sample) / 4));
        self.window_bytes = 0;
        self.window_start = busy.then_some(now);
    }

    /// The piece request `request` on `conn` left its transfer (timed out, cancelled) but its
    /// `len` bytes may still come until `until`.
    pub fn owe(&mut self, conn: ConnId, request: RequestId, until: Mono, len: u64) {
        if self.owed() >= OWED_MAX
            && let Some((c, r)) = self
                .owed
                .iter()
                .flat_map(|(c, on)| on.iter().map(move |(r, o)| (o.until, *c, *r)))
                .min()
                .map(|(_, c, r)| (c, r))
        {
            self.settle(c, r);
        }
        self.owed.entry(conn).or_default().insert(request, Owed { until, len });
    }

    /// The answer to `request` on `conn` arrived (or will not): true if it was owed.
    pub fn settle(&mut self, conn: ConnId, request: RequestId) -> bool {
        let Some(on) = self.owed.get_mut(&conn) else { return false };
        let owed = on.remove(&request).is_some();
        if on.is_empty() {
            self.owed.remove(&conn);
        }
        owed
    }

    /// The connection closed: nothing more comes over it.
    pub fn forget(&mut self, conn: ConnId) {
        self.owed.remove(&conn);
    }

    /// Forgets what we no longer expect; the bytes still owed.
    pub fn owed_bytes(&mut self, now: Mono) -> u64 {
        self.owed.retain(|_, on| {
            on.retain(|_, o| o.until > now);
            !on.is_empty()
        });
        self.owed.values().flat_map(|on| on.values()).map(|o| o.len).sum()
    }

    /// Requests still owed (for status).
    pub fn owed(&self) -> usize {
        self.owed.values().map(BTreeMap::len).sum()
    }

    /// Every connection gone (a restart).
    pub fn clear(&mut self) {
        self.owed.clear();
        self.window_start = None;
        self.window_bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_follows_the_measured_rate_with_a_floor() {
        let mut d = Downlink::default();
        assert_eq!(d.budget(), UNMEASURED_BYTES);
        d.asking(Mono(0));
        d.arrived(2 * PIECE_LEN);
        d.sample(Mono(500_000), true);
        assert_eq!(d.budget(), UNMEASURED_BYTES, "a window shorter than WINDOW_MS is no sample");
        d.sample(Mono(1_000_000), true);
        assert_eq!(d.rate(), 2 * PIECE_LEN);
        assert_eq!(d.budget(), 8 * PIECE_LEN, "four seconds of two pieces a second");
        d.sample(Mono(2_000_000), false);
        assert_eq!(d.rate(), 3 * PIECE_LEN / 2, "nothing arrived: the rate falls a quarter of the way");
        d.sample(Mono(9_000_000), false);
        assert_eq!(d.rate(), 3 * PIECE_LEN / 2, "nothing asked for: no window, the rate stands");
        for s in 3..40 {
            d.asking(Mono(s * 1_000_000));
            d.sample(Mono((s + 1) * 1_000_000), true);
        }
        assert_eq!(d.budget(), FLOOR_BYTES, "a link that delivers nothing still gets the floor");
    }

    #[test]
    fn a_quiet_spell_is_not_taken_for_a_slow_link() {
        let mut d = Downlink::default();
        d.asking(Mono(0));
        d.arrived(4 * PIECE_LEN);
        d.sample(Mono(1_000_000), true);
        assert_eq!(d.rate(), 4 * PIECE_LEN);
        // The last tick left the window open; nothing ran for an hour; pieces arrived late.
        d.arrived(PIECE_LEN);
        d.asking(Mono(3_600_000_000));
        d.arrived(4 * PIECE_LEN);
        d.sample(Mono(3_601_000_000), true);
        assert_eq!(d.rate(), 4 * PIECE_LEN, "the window started when asking did");
    }

    #[test]
    fn owed_requests_count_until_they_come_close_or_expire() {
        let mut d = Downlink::default();
        d.owe(ConnId(1), RequestId(1), Mono(10_000_000), PIECE_LEN);
        d.owe(ConnId(1), RequestId(2), Mono(5_000_000), 10);
        d.owe(ConnId(2), RequestId(1), Mono(10_000_000), PIECE_LEN);
        assert_eq!(d.owed_bytes(Mono(0)), 2 * PIECE_LEN + 10);
        assert!(d.settle(ConnId(2), RequestId(1)));
        assert!(!d.settle(ConnId(2), RequestId(1)), "settles once");
        assert_eq!(d.owed_bytes(Mono(5_000_000)), PIECE_LEN, "expired at its grace");
        d.forget(ConnId(1));
        assert_eq!(d.owed_bytes(Mono(0)), 0);
        for i in 0..(OWED_MAX as u32 + 10) {
            d.owe(ConnId(3), RequestId(i), Mono(u64::from(i) + 1), 1);
        }
        assert_eq!(d.owed(), OWED_MAX, "bounded");
        assert!(!d.settle(ConnId(3), RequestId(0)), "the one expected soonest went first");
        // `replay --state` shows the node's state as JSON.
        serde_json::to_string(&d).expect("representable as JSON");
    }
}
