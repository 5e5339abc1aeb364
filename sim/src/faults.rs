//! Fault profiles: which faults a run injects and how often (SPEC R12.2, TigerBeetle VOPR-style
//! swarm testing: every seed draws its own profile, so many seeds cover many combinations).
//!
//! The transport is TCP + Noise, so a fault shows up the way it would in production: packet
//! loss and reordering cost retransmission and head-of-line delay; bytes duplicated or spliced
//! into a stream fail Noise's authentication and reset the connection; stalls and partitions
//! longer than the TCP user timeout reset connections.

use std::collections::BTreeMap;

use rand_chacha::ChaCha8Rng;
use rand_core::{Rng, SeedableRng};
use serde::Serialize;

use crate::net::unit;

/// A stall or partition longer than this resets the connections it blocks (TCP user timeout).
pub const USER_TIMEOUT_US: u64 = 30_000_000;
/// First retransmission timeout after a loss.
pub const RTO_US: u64 = 200_000;

/// Names accepted by `--faults`.
pub const PROFILE_NAMES: &[&str] = &["none", "swarm", "network", "partition", "crash", "clock", "byzantine", "all"];

/// Rates of every fault the simulator can inject. Probabilities are per message unless named
/// otherwise; intervals are mean times between events across the whole run (0 = never).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct FaultProfile {
    pub name: String,
    pub jitter_us_max: u64,
    pub loss: f64,
    pub reorder: f64,
    pub duplicate: f64,
    pub reset: f64,
    pub stall: f64,
    pub stall_ms_max: u64,
    /// Per-node uplink in bytes/s drawn in `[min, max]`; 0 means unlimited.
    pub bandwidth_min: u64,
    pub bandwidth_max: u64,
    pub partition_every_ms: u64,
    pub partition_ms_max: u64,
    /// Fraction of partitions that block one direction only.
    pub one_way: f64,
    /// Mean time between crashes of any one node.
    pub crash_every_ms: u64,
    pub down_ms_max: u64,
    pub clock_skew_ms_max: u64,
    pub drift_ppm_max: u64,
    pub clock_jump_every_ms: u64,
    pub clock_jump_ms_max: u64,
    /// Fraction of nodes that share their IP address with others (groups of 2-3).
    pub shared_ip: f64,
    /// Misbehaving peers, as a fraction of the node count (at least one when non-zero).
    pub adversaries: f64,
    pub attack_every_ms: u64,
}

impl FaultProfile {
    /// A named profile; `swarm` draws one from `seed`.
    /// The named profile; `a+b` combines profiles (each field the larger of the two), so a
    /// combination a test builds can be reproduced from the command line.
    pub fn named(name: &str, seed: u64) -> Option<FaultProfile> {
        if let Some((first, rest)) = name.split_once('+') {
            let (a, b) = (FaultProfile::named(first, seed)?, FaultProfile::named(rest, seed)?);
            return Some(a.combine(b, name));
        }
        let profile = match name {
            "none" => FaultProfile { name: "none".into(), jitter_us_max: 2_000, ..FaultProfile::default() },
            "network" => FaultProfile::network(),
            "partition" => FaultProfile { name: "partition".into(), ..FaultProfile::partition() },
            "crash" => FaultProfile { name: "crash".into(), ..FaultProfile::crash() },
            "clock" => FaultProfile { name: "clock".into(), ..FaultProfile::clock() },
            "byzantine" => FaultProfile { name: "byzantine".into(), ..FaultProfile::byzantine() },
            "all" => FaultProfile::all(),
            "swarm" => FaultProfile::swarm(seed),
            _ => return None,
        };
        Some(profile)
    }

    fn combine(self, o: FaultProfile, name: &str) -> FaultProfile {
        FaultProfile {
            name: name.into(),
            jitter_us_max: self.jitter_us_max.max(o.jitter_us_max),
            loss: self.loss.max(o.loss),
            reorder: self.reorder.max(o.reorder),
            duplicate: self.duplicate.max(o.duplicate),
            reset: self.reset.max(o.reset),
            stall: self.stall.max(o.stall),
            stall_ms_max: self.stall_ms_max.max(o.stall_ms_max),
            bandwidth_min: self.bandwidth_min.max(o.bandwidth_min),
            bandwidth_max: self.bandwidth_max.max(o.bandwidth_max),
            partition_every_ms: self.partition_every_ms.max(o.partition_every_ms),
            partition_ms_max: self.partition_ms_max.max(o.partition_ms_max),
            one_way: self.one_way.max(o.one_way),
            crash_every_ms: self.crash_every_ms.max(o.crash_every_ms),
            down_ms_max: self.down_ms_max.max(o.down_ms_max),
            clock_skew_ms_max: self.clock_skew_ms_max.max(o.clock_skew_ms_max),
            drift_ppm_max: self.drift_ppm_max.max(o.drift_ppm_max),
            clock_jump_every_ms: self.clock_jump_every_ms.max(o.clock_jump_every_ms),
            clock_jump_ms_max: self.clock_jump_ms_max.max(o.clock_jump_ms_max),
            shared_ip: self.shared_ip.max(o.shared_ip),
            adversaries: self.adversaries.max(o.adversaries),
            attack_every_ms: self.attack_every_ms.max(o.attack_every_ms),
        }
    }

    fn network() -> FaultProfile {
        FaultProfile {
            name: "network".into(),
            jitter_us_max: 20_000,
            loss: 0.01,
            reorder: 0.01,
            duplicate: 0.0005,
            reset: 0.0005,
            stall: 0.0005,
            stall_ms_max: 40_000,
            bandwidth_min: 1_000_000,
            bandwidth_max: 100_000_000,
            shared_ip: 0.1,
            ..FaultProfile::default()
        }
    }

    fn partition() -> FaultProfile {
        FaultProfile {
            partition_every_ms: 60_000,
            partition_ms_max: 45_000,
            one_way: 0.3,
            jitter_us_max: 2_000,
            ..FaultProfile::default()
        }
    }

    fn crash() -> FaultProfile {
        FaultProfile { crash_every_ms: 600_000, down_ms_max: 20_000, jitter_us_max: 2_000, ..FaultProfile::default() }
    }

    fn clock() -> FaultProfile {
        FaultProfile {
            clock_skew_ms_max: 20_000,
            drift_ppm_max: 500,
            clock_jump_every_ms: 300_000,
            clock_jump_ms_max: 120_000,
            jitter_us_max: 2_000,
            ..FaultProfile::default()
        }
    }

    fn byzantine() -> FaultProfile {
        FaultProfile { adversaries: 0.05, attack_every_ms: 2_000, jitter_us_max: 2_000, ..FaultProfile::default() }
    }

    fn all() -> FaultProfile {
        let (n, p, c, k, b) = (
            FaultProfile::network(),
            FaultProfile::partition(),
            FaultProfile::crash(),
            FaultProfile::clock(),
            FaultProfile::byzantine(),
        );
        FaultProfile {
            name: "all".into(),
            partition_every_ms: p.partition_every_ms,
            partition_ms_max: p.partition_ms_max,
            one_way: p.one_way,
            crash_every_ms: c.crash_every_ms,
            down_ms_max: c.down_ms_max,
            clock_skew_ms_max: k.clock_skew_ms_max,
            drift_ppm_max: k.drift_ppm_max,
            clock_jump_every_ms: k.clock_jump_every_ms,
            clock_jump_ms_max: k.clock_jump_ms_max,
            adversaries: b.adversaries,
            attack_every_ms: b.attack_every_ms,
            ..n
        }
    }

    /// Each fault class is on with probability 1/2, at a rate drawn from its range.
    pub fn swarm(seed: u64) -> FaultProfile {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5357_4152_4d00_0000);
        let mut on = || rng.next_u64() & 1 == 1;
        let (net, part, crash, clock, byz) = (on(), on(), on(), on(), on());
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x7261_7465_7300_0000);
        let mut scale = |lo: f64, hi: f64| lo + (hi - lo) * unit(&mut rng);
        let mut profile = FaultProfile {
            name: "swarm".into(),
            jitter_us_max: scale(500.0, 30_000.0) as u64,
            ..FaultProfile::default()
        };
        if net {
            profile.loss = scale(0.0, 0.05);
            profile.reorder = scale(0.0, 0.05);
            profile.duplicate = scale(0.0, 0.002);
            profile.reset = scale(0.0, 0.002);
            profile.stall = scale(0.0, 0.002);
            profile.stall_ms_max = scale(1_000.0, 60_000.0) as u64;
            profile.bandwidth_min = scale(100_000.0, 10_000_000.0) as u64;
            profile.bandwidth_max = profile.bandwidth_min * 10;
            profile.shared_ip = scale(0.0, 0.3);
        }
        if part {
            profile.partition_every_ms = scale(20_000.0, 300_000.0) as u64;
            profile.partition_ms_max = scale(5_000.0, 90_000.0) as u64;
            profile.one_way = scale(0.0, 1.0);
        }
        if crash {
            profile.crash_every_ms = scale(120_000.0, 3_600_000.0) as u64;
            profile.down_ms_max = scale(1_000.0, 60_000.0) as u64;
        }
        if clock {
            // Static skew stays within half the handshake limit, so any two honest clocks agree;
            // jumps beyond it are corrected when faults heal (as NTP would).
            profile.clock_skew_ms_max = scale(0.0, 25_000.0) as u64;
            profile.drift_ppm_max = scale(0.0, 1_000.0) as u64;
            profile.clock_jump_every_ms = scale(60_000.0, 1_800_000.0) as u64;
            profile.clock_jump_ms_max = scale(1_000.0, 600_000.0) as u64;
        }
        if byz {
            profile.adversaries = scale(0.01, 0.1);
            profile.attack_every_ms = scale(200.0, 10_000.0) as u64;
        }
        profile
    }
}

/// How many of each fault were injected.
pub type FaultCounts = BTreeMap<&'static str, u64>;

/// True with probability `p`.
pub fn chance(rng: &mut ChaCha8Rng, p: f64) -> bool {
    p > 0.0 && unit(rng) < p
}

/// A delay uniform in `[1 us, 2 * mean]` (0 = never: `None`). Integer arithmetic only, so
/// every platform draws the same schedule (libm's `ln` is not bit-exact across platforms).
pub fn next_after(rng: &mut ChaCha8Rng, mean_ms: u64) -> Option<u64> {
    if mean_ms == 0 {
        return None;
    }
    Some(1 + rng.next_u64() % (2 * mean_ms * 1000))
}

/// Uniform in `[0, max]`.
pub fn upto(rng: &mut ChaCha8Rng, max: u64) -> u64 {
    if max == 0 { 0 } else { rng.next_u64() % (max + 1) }
}
