//! Swarm testing in CI: fixed seeds, each drawing its own fault profile, run twice and
//! compared event by event; every run must keep its invariants and heal.

use mynet_sim::{SimConfig, World, first_divergence};

fn traced(seed: u64, nodes: usize, minutes: u64, faults: &str) -> World {
    let mut config = SimConfig::new(seed, nodes, minutes * 60_000).with_faults(faults).expect("profile");
    config.record_trace = true;
    let mut world = World::new(config);
    if let Err(err) = world.run() {
        panic!("seed {seed} ({faults}): {err}");
    }
    world
}

#[test]
fn fixed_swarm_seeds_are_deterministic_and_heal() {
    for seed in [1, 2, 3, 4, 5, 6, 7, 8] {
        let a = traced(seed, 40, 10, "swarm");
        let b = traced(seed, 40, 10, "swarm");
        if let Some(i) = first_divergence(a.trace_events(), b.trace_events()) {
            let show = |w: &World| w.trace_events().get(i).map_or("(none)".into(), ToString::to_string);
            panic!("seed {seed}: runs first differ at event {i}: {} vs {}", show(&a), show(&b));
        }
        assert_eq!(a.summary().trace_hash, b.summary().trace_hash, "seed {seed}: final states differ");
    }
}

#[test]
fn every_fault_at_once_still_heals() {
    for seed in [11, 12, 13] {
        let world = traced(seed, 60, 15, "all");
        let summary = world.summary();
        for fault in ["crash", "partition", "clock_jump", "attack_discovery_flood", "loss"] {
            assert!(
                summary.faults_injected.get(fault).copied().unwrap_or(0) > 0,
                "seed {seed}: no {fault} injected: {:?}",
                summary.faults_injected
            );
        }
    }
}

#[test]
fn crashed_nodes_restart_from_their_durable_logs() {
    // The simulator checks after every restart that the node's state is what its log implies.
    let world = traced(21, 30, 20, "crash");
    let restarts = world.summary().faults_injected.get("restart").copied().unwrap_or(0);
    assert!(restarts >= 5, "too few restarts to mean anything: {restarts}");
}

#[test]
fn swarm_seeds_with_content_are_deterministic_and_every_item_replicates() {
    for seed in [31, 32, 33, 34] {
        let run = || {
            let mut config = SimConfig::new(seed, 30, 10 * 60_000).with_faults("swarm").expect("profile");
            config.record_trace = true;
            config.content = 20;
            let mut world = World::new(config);
            if let Err(err) = world.run() {
                panic!("seed {seed} (swarm, --content 20): {err}");
            }
            world
        };
        let (a, b) = (run(), run());
        if let Some(i) = first_divergence(a.trace_events(), b.trace_events()) {
            panic!("seed {seed} with content: runs first differ at event {i}");
        }
        let (sa, sb) = (a.summary(), b.summary());
        assert_eq!(sa.trace_hash, sb.trace_hash, "seed {seed}: final states differ");
        assert_eq!(sa.content.replicas_complete, sa.content.replicas_expected, "seed {seed}: {:?}", sa.content);
    }
}
