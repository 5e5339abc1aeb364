#![allow(unsafe_code)] // The counting allocator below must implement the unsafe GlobalAlloc trait.
//! Simulator and replay benchmark. Not a timed test: it prints figures and ratios against
//! baselines measured in the same run.
//!
//! cargo run --release -p mynet-sim --example bench -- [NODES...] [--duration-s S] [--faults NAME]
//!
//! For each node count: simulated time / wall time, events per second and memory per node,
//! next to a bare event queue (same number of events, no node work). Then replay throughput
//! of one node's log against decoding the same log without a node.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use mynet_sim::{SimConfig, World};
use mynet_storage::{Start, read_records, replay};

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: delegates every call unchanged to the system allocator; it only counts bytes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
        PEAK.fetch_max(live, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut sizes = Vec::new();
    let mut duration_s = 3600u64;
    let mut faults = "none".to_string();
    let mut i = 0;
    while i < args.len() {
        match args[i].as_str() {
            "--duration-s" => {
                duration_s = args.get(i + 1).and_then(|s| s.parse().ok()).unwrap_or(duration_s);
                i += 1;
            }
            "--faults" => {
                faults = args.get(i + 1).cloned().unwrap_or(faults);
                i += 1;
            }
            n => sizes.extend(n.parse::<usize>().ok()),
        }
        i += 1;
    }
    if sizes.is_empty() {
        sizes = vec![100, 200, 1000, 10_000];
    }
    println!("simulator: {duration_s} s simulated per run, faults {faults}");
    println!(
        "{:>7} {:>10} {:>12} {:>12} {:>12} {:>14} {:>16}",
        "nodes", "wall_s", "sim/wall", "events", "events/s", "KiB/node(peak)", "bare sim/wall"
    );
    for nodes in sizes {
        bench_sim(nodes, duration_s, &faults);
    }
    bench_replay();
}

fn bench_sim(nodes: usize, duration_s: u64, faults: &str) {
    let Some(config) = SimConfig::new(1, nodes, duration_s * 1000).with_faults(faults) else {
        eprintln!("unknown fault profile {faults}");
        return;
    };
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let started = Instant::now();
    let mut world = World::new(config);
    if let Err(err) = world.run() {
        println!("{nodes:>7} run failed: {err}");
        return;
    }
    let wall = started.elapsed().as_secs_f64();
    let peak = PEAK.load(Ordering::Relaxed).saturating_sub(base);
    let summary = world.summary();
    let bare_wall = bare_queue(summary.events, duration_s * 1_000_000);
    println!(
        "{nodes:>7} {wall:>10.2} {:>12.0} {:>12} {:>12.0} {:>14.1} {:>16.0}",
        duration_s as f64 / wall,
        summary.events,
        summary.events as f64 / wall,
        peak as f64 / 1024.0 / nodes as f64,
        duration_s as f64 / bare_wall,
    );
}

/// The same number of events through a bare priority queue: each event schedules one more
/// at a pseudo-random later time. What the simulator would cost with free nodes.
fn bare_queue(events: u64, horizon_us: u64) -> f64 {
    let started = Instant::now();
    let mut queue = BinaryHeap::new();
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let live = (events / 50).clamp(1, 1_000_000);
    for seq in 0..live {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        queue.push(Reverse((x % horizon_us.max(1), seq)));
    }
    let mut done = 0u64;
    let mut seq = live;
    while done < events {
        let Some(Reverse((at, _))) = queue.pop() else { break };
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        queue.push(Reverse((at + x % 1_000_000, seq)));
        seq += 1;
        done += 1;
    }
    std::hint::black_box(&queue);
    started.elapsed().as_secs_f64()
}

fn bench_replay() {
    let mut config = SimConfig::new(1, 50, 24 * 3_600_000);
    config.keep_logs = vec![0, 5];
    // Keep the whole log so replay covers the whole hour.
    config.node_config.log_retain_bytes = u64::MAX;
    config.node_config.snapshot_interval_events = u64::MAX / 2;
    let mut world = World::new(config);
    if let Err(err) = world.run() {
        println!("replay bench run failed: {err}");
        return;
    }
    println!("\nreplay: whole event logs of two nodes of a 50-node, 24 h simulation");
    println!("{:>6} {:>10} {:>14} {:>18} {:>10}", "node", "events", "replay ev/s", "decode-only ev/s", "ratio");
    for node in [0, 5] {
        let Some(log) = world.memory_log(node) else { continue };
        let started = Instant::now();
        let decoded = read_records(log).filter(|r| r.is_ok()).count();
        let decode_s = started.elapsed().as_secs_f64();
        let started = Instant::now();
        let Ok((report, _)) = replay(log, world.identity(node), Start::Earliest, None, None) else {
            continue;
        };
        let replay_s = started.elapsed().as_secs_f64();
        assert!(report.divergence.is_none());
        let (replay_rate, decode_rate) = (report.events as f64 / replay_s, decoded as f64 / decode_s);
        println!(
            "{node:>6} {:>10} {replay_rate:>14.0} {decode_rate:>18.0} {:>10.2}",
            report.events,
            replay_rate / decode_rate
        );
    }
}
