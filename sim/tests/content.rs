//! The content workload through the real node code: replication, verification, faults.

use mynet_sim::{SimConfig, run};

fn content(seed: u64, nodes: usize, duration_ms: u64, items: usize, faults: &str) -> SimConfig {
    let mut config = SimConfig::new(seed, nodes, duration_ms).with_faults(faults).expect("profile");
    config.content = items;
    config
}

#[test]
fn every_item_reaches_every_node_without_faults() {
    let summary = run(content(11, 12, 120_000, 20, "none")).unwrap_or_else(|e| panic!("{e}"));
    let c = &summary.content;
    assert_eq!(c.items, 20, "{c:?}");
    assert_eq!(c.replicas_complete, c.replicas_expected, "{c:?}");
    assert_eq!(c.bad_pieces_caught, 0);
}

#[test]
fn content_runs_are_deterministic() {
    let a = run(content(5, 10, 60_000, 10, "none")).expect("a");
    let b = run(content(5, 10, 60_000, 10, "none")).expect("b");
    assert_eq!(a.trace_hash, b.trace_hash);
    assert_eq!(a.content, b.content);
}

#[test]
fn bad_pieces_stalls_and_lies_are_survived_and_bad_senders_caught() {
    let summary = run(content(21, 16, 240_000, 16, "byzantine")).unwrap_or_else(|e| panic!("{e}"));
    let c = &summary.content;
    assert_eq!(c.replicas_complete, c.replicas_expected, "{c:?}");
}

#[test]
fn crashes_mid_transfer_keep_held_pieces_and_resume() {
    let summary = run(content(31, 12, 300_000, 12, "crash")).unwrap_or_else(|e| panic!("{e}"));
    let c = &summary.content;
    assert_eq!(c.replicas_complete, c.replicas_expected, "{c:?}");
}
