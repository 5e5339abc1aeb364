//! Run statistics: latency histograms and their percentiles.

use hdrhistogram::Histogram;
use serde::Serialize;

/// p50/p90/p99/max of a histogram, in milliseconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// A histogram of durations in microseconds (1 µs to 1 day, 3 significant digits).
#[derive(Clone, Debug)]
pub struct Durations(Histogram<u64>);

impl Default for Durations {
    fn default() -> Durations {
        Durations(Histogram::new_with_bounds(1, 86_400_000_000, 3).expect("valid histogram bounds"))
    }
}

impl Durations {
    /// Records one duration.
    pub fn record(&mut self, us: u64) {
        self.0.saturating_record(us.max(1));
    }

    /// The percentiles so far.
    pub fn percentiles(&self) -> Percentiles {
        let ms = |us: u64| (us as f64 / 10.0).round() / 100.0;
        Percentiles {
            count: self.0.len(),
            p50_ms: ms(self.0.value_at_quantile(0.5)),
            p90_ms: ms(self.0.value_at_quantile(0.9)),
            p99_ms: ms(self.0.value_at_quantile(0.99)),
            max_ms: ms(self.0.max()),
        }
    }
}
