//! Reconciliation of the catalogue through the real node code: convergence under partitions,
//! crashes and concurrent conflicting edits, and the cost of rounds that find nothing.

use mynet_sim::{SimConfig, run};

/// 1,000 nodes; partitions and crashes until 60% of the run; items added by 6 publishers, and
/// 12 pairs of concurrent edits of the same items by two different publishers. After the
/// faults heal every honest replica holds the same catalogue, each item at the version the
/// conflict rule picks (the liveness check `MetadataDiverged` fails the run otherwise).
#[test]
fn a_thousand_nodes_converge_after_partitions_crashes_and_conflicting_edits() {
    let mut config = SimConfig::new(4, 1000, 240_000).with_faults("partition+crash").expect("profile");
    // Reconciliation is under test: a thousand replicas publishing provider records for each
    // item would multiply the run's cost for nothing it checks (`sim/tests/dht.rs` covers them).
    config.node_config.dht = false;
    config.content = 8;
    config.content_sizes = vec![4096; 8];
    config.updates = 12;
    config.publishers = 6;
    let summary = run(config).unwrap_or_else(|e| panic!("{e}"));
    let r = &summary.reconcile;
    assert!(r.converged, "{r:?}");
    // Eight items and the key record of their one group (the workload's groups).
    assert_eq!(r.items, 9, "{r:?}");
    assert!(r.edits >= 20, "edits at publishers that were up: {r:?}");
    assert!(r.replaced > 0, "edits replaced older versions: {r:?}");
    assert!(r.conflicts > 0 && r.missing_here > 0, "rounds found conflicts and missing items: {r:?}");
    let partitions: u64 =
        summary.faults_injected.iter().filter(|(k, _)| k.starts_with("partition")).map(|(_, v)| v).sum();
    assert!(partitions > 0, "{:?}", summary.faults_injected);
    assert!(summary.faults_injected.get("crash").copied().unwrap_or(0) > 0, "{:?}", summary.faults_injected);
    assert_eq!(summary.content.replicas_complete, summary.content.replicas_expected);
}

/// Regression (`mynet sim --nodes 10 --catalogue 1000`: the run hung and grew to 20 GiB): a
/// peer's set changed between two chunks of cells, and peeling went around in a circle. The
/// decoder now notices and the round takes the bulk path.
#[test]
fn a_thousand_items_published_at_once_converge_on_ten_nodes() {
    let mut config = SimConfig::new(1, 10, 120_000);
    config.catalogue = 1000;
    let summary = run(config).unwrap_or_else(|e| panic!("{e}"));
    let r = &summary.reconcile;
    assert!(r.converged && r.items == 1000, "{r:?}");
    // Once equal, a round is one small request and a smaller answer.
    assert!(r.idle_bytes_per_round > 0.0 && r.idle_bytes_per_round < 100.0, "{r:?}");
}

/// The cost of a quiet network does not grow with the catalogue: an idle round costs the same
/// at 10,000 items as at 1,000 (the figure from 1,000 to 100,000 items is
/// `cargo run --release -p mynet-sim --example reconcile_idle`).
#[test]
fn an_idle_round_costs_the_same_at_ten_times_the_items() {
    let idle = |items: usize| {
        let mut config = SimConfig::new(1, 5, 180_000);
        config.catalogue = items;
        let summary = run(config).unwrap_or_else(|e| panic!("{items} items: {e}"));
        let r = summary.reconcile;
        assert!(r.converged && r.items == items, "{r:?}");
        assert!(r.idle_bytes_per_round > 0.0, "idle rounds ran: {r:?}");
        r.idle_bytes_per_round
    };
    let (small, large) = (idle(1_000), idle(10_000));
    assert!(large <= small * 1.05, "idle round: {small} B at 1,000 items, {large} B at 10,000");
}

#[test]
fn reconcile_runs_with_edits_are_deterministic() {
    let config = || {
        let mut c = SimConfig::new(9, 20, 120_000).with_faults("network").expect("profile");
        c.content = 4;
        c.content_sizes = vec![2048; 4];
        c.updates = 4;
        c.publishers = 3;
        // Recording names every event (an edit's name was once missing from the table).
        c.record_trace = true;
        c
    };
    let (a, b) = (run(config()).expect("a"), run(config()).expect("b"));
    assert_eq!(a.trace_hash, b.trace_hash);
    assert_eq!(a.reconcile, b.reconcile);
    assert!(a.reconcile.converged);
}
