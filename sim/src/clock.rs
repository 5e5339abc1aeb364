//! Node-local clocks: a monotonic clock with offset and drift, and a wall clock with skew that
//! can jump. Converting a node's deadline back to simulated time rounds up, so a timer never
//! fires before the node's own clock reaches it.

use mynet_core::{Mono, Time};

use crate::world::WALL_EPOCH_MS;

/// One node's view of time.
#[derive(Clone, Copy, Debug, Default)]
pub struct NodeClock {
    /// Monotonic offset, microseconds.
    pub offset_us: u64,
    /// Rate error, parts per million (positive runs fast).
    pub drift_ppm: i64,
    /// Wall clock error, milliseconds.
    pub wall_skew_ms: i64,
}

impl NodeClock {
    /// What this node's clocks read at simulated time `sim_us`.
    pub fn read(&self, sim_us: u64) -> Time {
        let mono = self.mono(sim_us);
        // The wall clock drifts with the node's oscillator but has no monotonic offset.
        let local_ms = (mono - self.offset_us) / 1000;
        let wall = (WALL_EPOCH_MS as i64 + local_ms as i64 + self.wall_skew_ms).max(0) as u64;
        Time::new(mono, wall)
    }

    fn mono(&self, sim_us: u64) -> u64 {
        let drifted = i128::from(sim_us) + i128::from(sim_us) * i128::from(self.drift_ppm) / 1_000_000;
        (drifted.max(0) as u64).saturating_add(self.offset_us)
    }

    /// The earliest simulated time at which this clock reads at least `at`.
    pub fn sim_time_of(&self, at: Mono) -> u64 {
        let local = at.0.saturating_sub(self.offset_us) as i128;
        let mut sim = (local * 1_000_000 / (1_000_000 + i128::from(self.drift_ppm))).max(0) as u64;
        while self.mono(sim) < at.0 {
            sim += 1;
        }
        sim
    }
}
