//! Figure: bytes of a reconciliation round in which nothing differs, as the catalogue grows.
//!
//! ```text
//! cargo run --release -p mynet-sim --example reconcile_idle [-- NODES MINUTES]
//! ```
//!
//! For 1,000, 10,000 and 100,000 items, node 0 publishes the catalogue at 1 s (metadata only,
//! `mynet sim --catalogue N`), every node reconciles until it holds all of it, and then rounds
//! run every 30 s with nothing changing. Prints one JSON line per size: the mean bytes of an idle
//! round (both directions, frames), idle rounds counted, and the ratio to the 1,000-item figure
//! (flat means the cost of a quiet network does not grow with the catalogue; the program
//! exits 1 when a size costs more than 10% above the 1,000-item figure). The naive exchange
//! of the whole state map is printed beside it for scale (40 bytes per item, one way).

use mynet_sim::{SimConfig, run};

fn main() {
    let args: Vec<u64> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let nodes = args.first().copied().unwrap_or(5) as usize;
    let minutes = args.get(1).copied().unwrap_or(5);
    let mut base = None;
    for items in [1_000usize, 10_000, 100_000] {
        let mut config = SimConfig::new(1, nodes, minutes * 60_000);
        config.catalogue = items;
        let summary = run(config).unwrap_or_else(|e| panic!("{items} items: {e}"));
        let r = &summary.reconcile;
        assert!(r.converged && r.items == items, "{items} items: {r:?}");
        let idle = r.idle_bytes_per_round;
        let base = *base.get_or_insert(idle);
        println!(
            "{}",
            serde_json::json!({
                "items": items,
                "nodes": nodes,
                "idle_bytes_per_round": idle,
                "ratio_to_1000_items": (idle / base * 1000.0).round() / 1000.0,
                "rounds": r.rounds,
                "bulk_rounds": r.bulk_rounds,
                "naive_bytes_per_round": 40 * items,
                "wall_time_s": summary.wall_time_s,
            })
        );
        if idle > base * 1.1 {
            eprintln!("not flat: an idle round costs {idle} B at {items} items, {base} B at 1,000");
            std::process::exit(1);
        }
    }
}
