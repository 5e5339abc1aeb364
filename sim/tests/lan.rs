//! LAN discovery through the real node code, in broadcast domains: nodes with an empty
//! bootstrap list find each other by their signed announcements alone and connect, each domain
//! on its own (liveness is judged per domain at the end of every run).

use mynet_sim::{SimConfig, run};

#[test]
fn nodes_with_no_bootstrap_list_find_their_lan_and_only_their_lan() {
    let mut config = SimConfig::new(1, 30, 120_000);
    config.lan = 10;
    let summary = run(config.clone()).unwrap_or_else(|e| panic!("{e}"));
    let lan = &summary.lan;
    assert_eq!(summary.ready_nodes, 30);
    assert!(summary.connected, "every domain is connected");
    assert_eq!(summary.peers_min, 8, "each node reaches its target within its domain of 10");
    assert_eq!((lan.domains, lan.peers_across_domains, lan.rejected), (3, 0, 0), "{lan:?}");
    assert!(lan.peers_found_by_lan >= 30, "{lan:?}");
    // Announcements stay rare: start, 1 s, 3 s, answers to newcomers (at most one a second),
    // then one per discovery interval.
    assert!(lan.announcements <= 30 * 8, "{lan:?}");
    assert!(summary.time_to_target_peers.p99_ms < 5_000.0, "{:?}", summary.time_to_target_peers);
    assert_eq!(run(config).map(|s| s.trace_hash).ok(), Some(summary.trace_hash), "deterministic");
}

/// Crashes, partitions, lost datagrams, clock jumps and misbehaving peers: after healing,
/// every domain is connected again and every node is back at its target.
#[test]
fn lan_domains_heal_under_the_swarm_faults() {
    for seed in [1, 5] {
        let mut config = SimConfig::new(seed, 40, 180_000).with_faults("swarm").expect("profile");
        config.lan = 10;
        let summary = run(config).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        assert_eq!(summary.lan.peers_across_domains, 0, "seed {seed}: {:?}", summary.lan);
        assert!(summary.connected, "seed {seed}");
    }
}
