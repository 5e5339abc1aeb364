//! mynet-tests: cross-crate tests (simulator scenarios, replay round trips). The tests live in
//! `tests/`; this library only holds what they share.

pub mod fuzz;

use mynet_sim::{SimConfig, World};

/// Runs a world to its end and panics with the reproduction command if an invariant broke.
pub fn run_world(config: SimConfig) -> World {
    let mut world = World::new(config);
    if let Err(err) = world.run() {
        panic!("{err}");
    }
    world
}
