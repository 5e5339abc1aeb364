//! Time as a value: the driver passes it in, the core never reads a clock.

use serde::{Deserialize, Serialize};

/// A point on the node's monotonic clock, in microseconds since an arbitrary origin.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Mono(pub u64);

impl Mono {
    /// This instant plus `ms` milliseconds (saturating).
    pub fn plus_ms(self, ms: u64) -> Mono {
        Mono(self.0.saturating_add(ms.saturating_mul(1000)))
    }

    /// Milliseconds from `earlier` to `self`, zero if `earlier` is later.
    pub fn ms_since(self, earlier: Mono) -> u64 {
        self.0.saturating_sub(earlier.0) / 1000
    }
}

/// What the driver tells the node about "now": the monotonic instant that orders events and
/// deadlines, and the wall clock (Unix milliseconds) used only for timestamps peers see.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Time {
    /// Monotonic instant; never goes backwards within one log.
    pub mono: Mono,
    /// Wall-clock Unix time in milliseconds; may jump.
    pub wall_ms: u64,
}

impl Time {
    /// A time from its two readings.
    pub fn new(mono_us: u64, wall_ms: u64) -> Time {
        Time { mono: Mono(mono_us), wall_ms }
    }
}
