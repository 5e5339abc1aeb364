//! What durability costs: appends through the group-commit storage thread (one fsync per
//! group) against plain fjall appends with no fsync at all, measured in the same run.
//!
//! `cargo run --release -p mynet-storage --example group_commit [SECONDS] [RECORD_BYTES] [RATE]`
//!
//! The producer appends as fast as the storage queue takes records (or RATE appends per
//! second, paced every millisecond) and, like the driver, notes when each one becomes durable. It prints appends per second for both, the ratio,
//! the average group size, and the append-to-durable latency percentiles.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mynet_core::{ConnId, Input, Time};
use mynet_storage::log::encode_input_record;
use mynet_storage::{Durable, EventLog, FjallLog, GroupCommitLog};

fn record(i: u64, size: usize) -> Vec<u8> {
    encode_input_record(&Time::new(i, i), &Input::Received { conn: ConnId(i % 50), bytes: vec![7; size] })
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let seconds: f64 = args.next().map_or(Ok(2.0), |s| s.parse())?;
    let size: usize = args.next().map_or(Ok(200), |s| s.parse())?;
    let rate: u64 = args.next().map_or(Ok(0), |s| s.parse())?;
    let run_for = Duration::from_secs_f64(seconds);

    // Baseline: appends on the calling thread, never synced (the fastest the log can take).
    let dir = tempfile::tempdir()?;
    let mut plain = FjallLog::open(dir.path())?;
    let started = Instant::now();
    let mut plain_count = 0u64;
    while started.elapsed() < run_for {
        plain.append_bytes(record(plain_count, size))?;
        plain_count += 1;
    }
    let plain_rate = plain_count as f64 / started.elapsed().as_secs_f64();
    drop(plain);

    // Group commit: the same appends, fsync per group on the storage thread.
    let dir = tempfile::tempdir()?;
    let durable = Arc::new(AtomicU64::new(0));
    let groups = Arc::new(AtomicU64::new(0));
    let (seen, counted) = (durable.clone(), groups.clone());
    let mut log = GroupCommitLog::spawn(FjallLog::open(dir.path())?, move |d| {
        if let Durable::Before(seq) = d {
            seen.store(seq, Ordering::Release);
            counted.fetch_add(1, Ordering::Relaxed);
        }
    })?;
    // Latency: sample one append in 64 and time it until the storage thread reports it.
    let samples = Arc::new(Mutex::new(Vec::new()));
    let mut waiting: Vec<(u64, Instant)> = Vec::new();
    let started = Instant::now();
    let mut count = 0u64;
    while started.elapsed() < run_for {
        if rate > 0 && count >= (started.elapsed().as_secs_f64() * rate as f64) as u64 {
            std::thread::sleep(Duration::from_millis(1));
        }
        let seq = log.append_bytes(record(count, size))?;
        count += 1;
        if seq.is_multiple_of(64) {
            waiting.push((seq, Instant::now()));
        }
        let now_durable = durable.load(Ordering::Acquire);
        waiting.retain(|(seq, at)| {
            let done = *seq < now_durable;
            if done && let Ok(mut s) = samples.lock() {
                s.push(at.elapsed());
            }
            !done
        });
    }
    log.sync()?;
    let group_rate = count as f64 / started.elapsed().as_secs_f64();
    let group_count = groups.load(Ordering::Relaxed).max(1);
    let mut latencies = samples.lock().map(|s| s.clone()).unwrap_or_default();
    latencies.sort();
    let pct = |q: f64| {
        latencies.get(((latencies.len().max(1) - 1) as f64 * q) as usize).map_or(0.0, |d| d.as_secs_f64() * 1e3)
    };
    println!("record {size} B, {seconds} s each, group commit paced at {rate} appends/s (0: unpaced)");
    println!("plain fjall appends, no fsync:   {plain_rate:>10.0} appends/s");
    println!(
        "group commit, fsync per group:  {group_rate:>10.0} appends/s ({:.2}x the baseline), {} fsyncs, {:.0} appends per fsync",
        group_rate / plain_rate,
        group_count,
        count as f64 / group_count as f64
    );
    println!("append -> durable latency: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms", pct(0.5), pct(0.99), pct(1.0));
    Ok(())
}
