//! Same seed, same trace hash: the property that makes every simulator failure reproducible.

use mynet_sim::{SimConfig, run};

#[test]
fn seeds_run_twice_give_identical_traces() {
    for seed in [1, 2, 3, 42, 1000] {
        let a = run(SimConfig::new(seed, 40, 180_000)).expect("run");
        let b = run(SimConfig::new(seed, 40, 180_000)).expect("run");
        assert_eq!(
            (a.trace_hash.as_str(), a.events),
            (b.trace_hash.as_str(), b.events),
            "seed {seed} is not deterministic"
        );
        assert_eq!(a.ready_nodes, 40, "seed {seed}: {a:?}");
        assert!(a.connected, "seed {seed}: {a:?}");
    }
}
