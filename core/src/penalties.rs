//! Misbehaviour scores and the blacklist (SPEC R6.3), bounded by [`OFFENDERS_MAX`].

use core::net::IpAddr;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::id::NodeId;
use crate::time::Mono;

/// Score at which an offender is blacklisted.
pub const BAN_SCORE: u32 = 100;
/// Most offenders tracked at once; the lowest score is forgotten first.
pub const OFFENDERS_MAX: usize = 4096;
/// Misbehaviour points for a protocol violation by a proven identity.
pub const POINTS_VIOLATION: u32 = 50;
/// Misbehaviour points for a failed handshake or a bad frame before one, or a forged record.
pub const POINTS_HANDSHAKE: u32 = 20;

/// Who misbehaved: a proven identity, or only an address when no identity was proven yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Offender {
    /// A peer whose handshake verified.
    Node(NodeId),
    /// An address that failed before proving anything.
    Ip(IpAddr),
}

impl core::fmt::Display for Offender {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Offender::Node(id) => write!(f, "node {id}"),
            Offender::Ip(ip) => write!(f, "ip {ip}"),
        }
    }
}

/// A misbehaviour score, decaying by one point a second.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Penalty {
    /// Points at `updated`.
    pub score: u32,
    /// When the score was last changed.
    pub updated: Mono,
    /// Blacklisted until this instant, if banned.
    pub banned_until: Option<Mono>,
}

/// A blacklisted peer or address, as status shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Banned {
    /// `node <id>` or `ip <address>`.
    pub offender: String,
    /// Its misbehaviour score when it was last penalised.
    pub score: u32,
    /// Seconds until the ban expires.
    pub expires_in_s: u64,
}

/// Misbehaviour scores and the blacklist, bounded by [`OFFENDERS_MAX`].
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Penalties {
    #[serde(with = "crate::id::map_as_pairs")]
    scores: BTreeMap<Offender, Penalty>,
}

impl Penalties {
    /// Adds `points` to `who`; returns the new score and whether this banned it.
    pub fn add(&mut self, who: Offender, points: u32, now: Mono, ban_ms: u64) -> (u32, bool) {
        if !self.scores.contains_key(&who) && self.scores.len() >= OFFENDERS_MAX {
            let victim = self
                .scores
                .iter()
                .filter(|(_, p)| p.banned_until.is_none_or(|until| until <= now))
                .min_by_key(|(k, p)| (p.score, p.updated, **k))
                .map(|(k, _)| *k);
            match victim {
                Some(victim) => {
                    self.scores.remove(&victim);
                }
                None => return (0, false),
            }
        }
        let entry = self.scores.entry(who).or_insert(Penalty { score: 0, updated: now, banned_until: None });
        let decayed = entry.score.saturating_sub(now.ms_since(entry.updated).min(u64::from(u32::MAX)) as u32 / 1000);
        entry.score = decayed.saturating_add(points);
        entry.updated = now;
        let newly_banned = entry.score >= BAN_SCORE && entry.banned_until.is_none_or(|until| until <= now);
        if newly_banned {
            entry.banned_until = Some(now.plus_ms(ban_ms));
        }
        (entry.score, newly_banned)
    }

    /// Whether `who` is blacklisted at `now`.
    pub fn is_banned(&self, who: &Offender, now: Mono) -> bool {
        self.scores.get(who).and_then(|p| p.banned_until).is_some_and(|until| now < until)
    }

    /// Milliseconds left of `who`'s ban at `now`, if it is blacklisted.
    pub fn ban_left_ms(&self, who: &Offender, now: Mono) -> Option<u64> {
        let until = self.scores.get(who).and_then(|p| p.banned_until).filter(|until| now < *until)?;
        Some(until.ms_since(now).max(1))
    }

    /// Who is blacklisted at `now`, with the seconds left, in offender order.
    pub fn banned(&self, now: Mono) -> Vec<Banned> {
        self.scores
            .iter()
            .filter_map(|(who, p)| {
                let until = p.banned_until.filter(|u| now < *u)?;
                Some(Banned {
                    offender: who.to_string(),
                    score: p.score,
                    expires_in_s: until.ms_since(now).div_ceil(1000),
                })
            })
            .collect()
    }

    /// Offenders currently tracked.
    pub fn len(&self) -> usize {
        self.scores.len()
    }

    /// Whether nobody is tracked.
    pub fn is_empty(&self) -> bool {
        self.scores.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn penalties_ban_and_expire() {
        let mut penalties = Penalties::default();
        let who = Offender::Node(NodeId([1; 32]));
        assert_eq!(penalties.add(who, 60, Mono(0), 1000), (60, false));
        assert_eq!(penalties.add(who, 60, Mono(0), 1000), (120, true));
        assert!(penalties.is_banned(&who, Mono(999_999)));
        assert!(!penalties.is_banned(&who, Mono(1_000_000)));
    }

    /// Regression (review): once the table was full of offenders that had ever been banned,
    /// expired bans were never evicted and nobody new could be banned again.
    #[test]
    fn expired_bans_make_room_for_new_offenders() {
        let mut penalties = Penalties::default();
        for i in 0..OFFENDERS_MAX as u32 {
            let mut id = [0u8; 32];
            id[..4].copy_from_slice(&i.to_be_bytes());
            penalties.add(Offender::Node(NodeId(id)), BAN_SCORE, Mono(0), 1000);
        }
        let newcomer = Offender::Node(NodeId([0xff; 32]));
        assert_eq!(penalties.add(newcomer, BAN_SCORE, Mono(2_000_000), 1000), (BAN_SCORE, true));
        assert!(penalties.is_banned(&newcomer, Mono(2_000_001)));
        assert_eq!(penalties.len(), OFFENDERS_MAX);
    }
}
