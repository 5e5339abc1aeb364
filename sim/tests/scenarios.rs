//! Seeded scenarios through the real node code.

use mynet_sim::{SimConfig, World, run};

#[test]
fn three_nodes_where_two_know_only_the_first_form_a_full_mesh() {
    let mut world = World::new(SimConfig { join_spread_ms: Some(100), ..SimConfig::new(1, 3, 5_000) });
    world.run().expect("no invariant breaks");
    let graph = world.peer_graph();
    assert_eq!(
        graph,
        vec![vec![1, 2], vec![0, 2], vec![0, 1]]
            .into_iter()
            .map(|mut v: Vec<usize>| {
                v.sort_by_key(|i| world.node_id(*i));
                v
            })
            .collect::<Vec<_>>()
    );
    let summary = world.summary();
    assert_eq!(summary.ready_nodes, 3);
}

#[test]
fn same_seed_same_trace_hash_different_seed_different_hash() {
    let a = run(SimConfig::new(7, 60, 120_000)).expect("run a");
    let b = run(SimConfig::new(7, 60, 120_000)).expect("run b");
    let c = run(SimConfig::new(8, 60, 120_000)).expect("run c");
    assert_eq!(a.trace_hash, b.trace_hash);
    assert_eq!(a.events, b.events);
    assert_ne!(a.trace_hash, c.trace_hash);
}

#[test]
fn two_hundred_nodes_all_ready_and_connected() {
    let summary = run(SimConfig::new(3, 200, 600_000)).expect("run");
    assert_eq!(summary.ready_nodes, 200, "{summary:?}");
    assert!(summary.connected, "{summary:?}");
    assert!(summary.peers_min >= 8, "every node reaches its target of 8 peers: {summary:?}");
}
