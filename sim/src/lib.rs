//! mynet-sim: a deterministic simulator that runs many real [`mynet_core::Node`]s over a seeded
//! network model on one thread.
//!
//! The engine is a priority queue of `(time, sequence)` events with no fixed tick: it jumps to
//! the next event, and node timers come from `Node::poll_timeout`. Everything random comes
//! from one ChaCha generator seeded by `--seed`, so a seed always gives the same run and the
//! same trace hash.

pub mod adversary;
pub mod clock;
pub mod faults;
pub mod html;
pub mod invariant;
pub mod log;
pub mod net;
pub mod stats;
pub mod world;

pub use invariant::{LivenessFailure, Violation};
pub use world::{
    SAMPLES_MAX, Sample, SimConfig, SimError, Summary, Timeline, TraceEvent, World, first_divergence,
    sample_interval_us,
};

/// Runs a whole simulation and returns its summary.
pub fn run(config: SimConfig) -> Result<Summary, world::SimError> {
    let mut world = World::new(config);
    world.run()?;
    Ok(world.summary())
}
