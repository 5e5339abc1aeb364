//! Metrics (SPEC R11) and health checks (R10.2): a loop samples the node every
//! [`SAMPLE_INTERVAL`] (its status, through the driver, and the process's resources, with
//! sysinfo), keeps the last [`HISTORY_MAX`] samples (`GET /metrics/history`, `mynet metrics
//! --history`), judges the health checks, and renders the latest sample as Prometheus text
//! (`GET /metrics`, prometheus-client's OpenMetrics encoder, names
//! `mynet_<subsystem>_<name>_<unit>` and `process_*`).

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mynet_core::context::RTT_BUCKETS;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::{Mutex, mpsc};

use crate::driver::ApiRequest;

/// Time between two samples.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(5);
/// Samples kept.
pub const HISTORY_MAX: usize = 1_000;
/// Time between two walks of the data dir (its size).
const DISK_WALK_INTERVAL: Duration = Duration::from_secs(30);
/// Free space under which the disk check fails.
pub const DISK_FREE_MIN_BYTES: u64 = 1 << 30;
/// Outputs waiting for durability above which the event-log check fails.
pub const DURABILITY_BACKLOG_MAX: u64 = 10_000;

/// The metrics, shared by the sampling loop and the API.
pub type SharedMetrics = Arc<Mutex<Metrics>>;

/// The process's resources.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Resources {
    /// Percent of one core over the last sample interval.
    pub cpu_percent: f64,
    /// CPU time used since start.
    pub cpu_seconds: f64,
    /// Resident memory.
    pub memory_bytes: u64,
    /// Bytes of files under the data dir (event log, store, configs).
    pub disk_bytes: u64,
    /// Free space on the data dir's file system (`None` if it could not be found).
    pub disk_free_bytes: Option<u64>,
    /// Open peer connections (established and handshaking).
    pub open_connections: u64,
}

/// One health check's verdict.
#[derive(Clone, Debug, Serialize)]
pub struct Check {
    pub check: &'static str,
    /// What it checks.
    pub checks: &'static str,
    pub pass: bool,
    pub reason: String,
}

/// One sample: figures at a moment, rates over the interval before it.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Sample {
    pub timestamp_ms: u64,
    pub uptime_s: u64,
    pub peers: u64,
    pub known_peers: u64,
    pub cpu_percent: f64,
    pub memory_bytes: u64,
    pub disk_bytes: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Bandwidth over the interval, bytes per second.
    pub bandwidth_in: f64,
    pub bandwidth_out: f64,
    /// Messages per second over the interval, both directions.
    pub messages_per_s: f64,
    /// Handshakes that succeeded, of those that finished, since start.
    pub connection_success: Option<f64>,
    /// Round trips of requests answered in the interval (bucket upper bounds), if any.
    pub rtt_p50_ms: Option<u64>,
    pub rtt_p99_ms: Option<u64>,
    pub items: u64,
    pub bytes_stored: u64,
    pub sync_queue: u64,
    pub synced: u64,
    /// Mean time to replicate an item, since start.
    pub replicate_ms_mean: Option<u64>,
    pub reconcile_rounds: u64,
    /// Messages both ways since start (for the next sample's rate).
    #[serde(skip)]
    messages_total: u64,
}

/// The latest sample, the history, and what the exposition and health need.
#[derive(Debug, Default)]
pub struct Metrics {
    history: VecDeque<Sample>,
    status: Value,
    resources: Resources,
    health: Vec<Check>,
    /// The running config at the last sample (health checks read its limits).
    config: Value,
    samples: u64,
}

impl Metrics {
    /// Takes a sample of `status` (the driver's status JSON) and `resources`.
    pub fn record(&mut self, status: Value, resources: Resources, config: &Value) {
        let previous = self.history.back().cloned();
        let rtt_before = self.status.pointer("/counters/rtt_ms").cloned();
        let sample = sample(&status, &resources, previous.as_ref(), rtt_before.as_ref());
        self.health = health(&status, &resources, config);
        self.history.push_back(sample);
        while self.history.len() > HISTORY_MAX {
            self.history.pop_front();
        }
        self.status = status;
        self.resources = resources;
        self.config = config.clone();
        self.samples += 1;
    }

    /// Resources (of the latest sample) and health (judged now, on `status`) for status;
    /// both empty before the first sample.
    pub fn status_extras(&self, status: &Value) -> (Value, Value) {
        if self.samples == 0 {
            return (json!({}), json!([]));
        }
        (json!(self.resources), json!(health(status, &self.resources, &self.config)))
    }

    /// The history, oldest first.
    pub fn history_json(&self) -> Value {
        json!({ "interval_s": SAMPLE_INTERVAL.as_secs(), "max": HISTORY_MAX, "samples": self.history })
    }

    /// Prometheus text (OpenMetrics) of `status` (fresh from the node, or the latest sample's
    /// when `None`) with the latest sample's resources.
    pub fn prometheus_text(&self, status: Option<Value>) -> String {
        let status = status.unwrap_or_else(|| self.status.clone());
        let health = if self.samples == 0 { Vec::new() } else { health(&status, &self.resources, &self.config) };
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Exposition { status, resources: self.resources.clone(), health }));
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &registry);
        text
    }
}

fn u(status: &Value, pointer: &str) -> u64 {
    status.pointer(pointer).and_then(Value::as_u64).unwrap_or(0)
}

fn rtt_counts(value: Option<&Value>) -> [u64; RTT_BUCKETS] {
    let mut out = [0u64; RTT_BUCKETS];
    if let Some(list) = value.and_then(Value::as_array) {
        for (slot, v) in out.iter_mut().zip(list) {
            *slot = v.as_u64().unwrap_or(0);
        }
    }
    out
}

/// The upper bound (ms) of the bucket where the `q` quantile of `counts` falls.
fn quantile_ms(counts: &[u64; RTT_BUCKETS], q: f64) -> Option<u64> {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = ((total as f64) * q).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (i, count) in counts.iter().enumerate() {
        seen += count;
        if seen >= rank {
            return Some(1u64 << i);
        }
    }
    Some(1u64 << (RTT_BUCKETS - 1))
}

fn messages_total(status: &Value) -> u64 {
    ["/counters/messages_in", "/counters/messages_out"]
        .iter()
        .filter_map(|p| status.pointer(p).and_then(Value::as_object))
        .flat_map(|m| m.values())
        .filter_map(Value::as_u64)
        .sum()
}

fn sample(status: &Value, resources: &Resources, previous: Option<&Sample>, rtt_before: Option<&Value>) -> Sample {
    let timestamp_ms = u(status, "/timestamp");
    let (bytes_in, bytes_out) = (u(status, "/counters/bytes_in"), u(status, "/counters/bytes_out"));
    let messages = messages_total(status);
    let elapsed_s = previous.map(|p| timestamp_ms.saturating_sub(p.timestamp_ms) as f64 / 1000.0).filter(|s| *s > 0.0);
    let rate = |now: u64, before: u64| elapsed_s.map_or(0.0, |s| now.saturating_sub(before) as f64 / s);
    let (ok, failed) = (u(status, "/counters/handshakes_ok"), u(status, "/counters/handshakes_failed"));
    let now_rtt = rtt_counts(status.pointer("/counters/rtt_ms"));
    let before_rtt = rtt_counts(rtt_before);
    let mut interval_rtt = [0u64; RTT_BUCKETS];
    for i in 0..RTT_BUCKETS {
        interval_rtt[i] = now_rtt[i].saturating_sub(before_rtt[i]);
    }
    let synced = u(status, "/sync/synced_content");
    Sample {
        timestamp_ms,
        uptime_s: u(status, "/uptime_s"),
        peers: u(status, "/peer_count"),
        known_peers: u(status, "/known_peers"),
        cpu_percent: resources.cpu_percent,
        memory_bytes: resources.memory_bytes,
        disk_bytes: resources.disk_bytes,
        bytes_in,
        bytes_out,
        bandwidth_in: rate(bytes_in, previous.map_or(0, |p| p.bytes_in)),
        bandwidth_out: rate(bytes_out, previous.map_or(0, |p| p.bytes_out)),
        messages_per_s: rate(messages, previous.map_or(0, |p| p.messages_total)),
        connection_success: (ok + failed > 0).then(|| ok as f64 / (ok + failed) as f64),
        rtt_p50_ms: quantile_ms(&interval_rtt, 0.5),
        rtt_p99_ms: quantile_ms(&interval_rtt, 0.99),
        items: u(status, "/content/items"),
        bytes_stored: u(status, "/content/bytes_stored"),
        sync_queue: u(status, "/sync/queue"),
        synced,
        replicate_ms_mean: (synced > 0).then(|| u(status, "/sync/sync_ms") / synced),
        reconcile_rounds: u(status, "/reconcile/rounds"),
        messages_total: messages,
    }
}

/// The health checks, each with what it checks and why it passed or failed.
pub fn health(status: &Value, resources: &Resources, config: &Value) -> Vec<Check> {
    let phase = status.get("phase").and_then(Value::as_str).unwrap_or("unknown");
    let peers = u(status, "/peer_count");
    let first_node = config.pointer("/bootstrap_nodes").and_then(Value::as_array).is_some_and(|b| b.is_empty());
    let backlog = u(status, "/outputs_awaiting_durability");
    let stored = u(status, "/content/bytes_stored");
    let storage_max = config.get("storage_max_bytes").and_then(Value::as_u64).unwrap_or(u64::MAX);
    let mut checks = vec![
        Check {
            check: "startup",
            checks: "the node finished its eight start-up phases",
            pass: phase == "ready",
            reason: format!("phase {phase}"),
        },
        Check {
            check: "peers",
            checks: "at least one peer is connected (a network's first node passes alone)",
            pass: peers > 0 || first_node,
            reason: if peers > 0 {
                crate::out::plural(peers as usize, "peer", "peers")
            } else if first_node {
                "no peers yet; this is the network's first node".into()
            } else {
                "no peers connected".into()
            },
        },
        Check {
            check: "event_log",
            checks: "fewer than 10,000 outputs wait for the event log to become durable",
            pass: backlog < DURABILITY_BACKLOG_MAX,
            reason: format!("{backlog} outputs waiting for the log to be durable"),
        },
        Check {
            check: "storage",
            checks: "content stored is below 95% of storage_max_bytes",
            pass: (stored as f64) < (storage_max as f64) * 0.95,
            reason: format!("{stored} of {storage_max} bytes"),
        },
    ];
    checks.push(match resources.disk_free_bytes {
        Some(free) => Check {
            check: "disk",
            checks: "the data dir's file system has at least 1 GiB free",
            pass: free >= DISK_FREE_MIN_BYTES,
            reason: format!("{} MiB free", free >> 20),
        },
        None => Check {
            check: "disk",
            checks: "the data dir's file system has at least 1 GiB free",
            pass: false,
            reason: "the data dir's file system was not found".into(),
        },
    });
    checks
}

/// What one scrape encodes: the latest sample.
#[derive(Debug)]
struct Exposition {
    status: Value,
    resources: Resources,
    health: Vec<Check>,
}

fn counter(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> Result<(), std::fmt::Error> {
    ConstCounter::new(value).encode(encoder.encode_descriptor(name, help, None, MetricType::Counter)?)
}

fn gauge(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: f64) -> Result<(), std::fmt::Error> {
    ConstGauge::new(value).encode(encoder.encode_descriptor(name, help, None, MetricType::Gauge)?)
}

impl prometheus_client::collector::Collector for Exposition {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = &self.status;
        let r = &self.resources;
        counter(&mut e, "process_cpu_seconds", "CPU time used by the process.", r.cpu_seconds as u64)?;
        gauge(&mut e, "process_resident_memory_bytes", "Resident memory of the process.", r.memory_bytes as f64)?;
        gauge(&mut e, "mynet_disk_data_dir_bytes", "Bytes of files under the data dir.", r.disk_bytes as f64)?;
        if let Some(free) = r.disk_free_bytes {
            gauge(&mut e, "mynet_disk_free_bytes", "Free space on the data dir's file system.", free as f64)?;
        }
        gauge(&mut e, "mynet_uptime_seconds", "Time since the node started.", u(s, "/uptime_s") as f64)?;
        counter(&mut e, "mynet_network_received_bytes", "Bytes received from peers.", u(s, "/counters/bytes_in"))?;
        counter(&mut e, "mynet_network_sent_bytes", "Bytes sent to peers.", u(s, "/counters/bytes_out"))?;
        for (name, pointer, help) in [
            ("mynet_network_received_messages", "/counters/messages_in", "Messages received, by kind."),
            ("mynet_network_sent_messages", "/counters/messages_out", "Messages sent, by kind."),
        ] {
            let mut family = e.encode_descriptor(name, help, None, MetricType::Counter)?;
            if let Some(kinds) = s.pointer(pointer).and_then(Value::as_object) {
                for (kind, count) in kinds {
                    let labels = [("kind", kind.clone())];
                    ConstCounter::new(count.as_u64().unwrap_or(0)).encode(family.encode_family(&labels)?)?;
                }
            }
        }
        gauge(&mut e, "mynet_peers_connected", "Established peers.", u(s, "/peer_count") as f64)?;
        gauge(&mut e, "mynet_peers_known", "Peers remembered from discovery.", u(s, "/known_peers") as f64)?;
        gauge(
            &mut e,
            "mynet_connections_open",
            "Open peer connections, handshaking ones included.",
            r.open_connections as f64,
        )?;
        counter(&mut e, "mynet_connections_dials", "Connections dialled.", u(s, "/counters/dials"))?;
        {
            let mut family = e.encode_descriptor(
                "mynet_connections_handshakes",
                "Handshakes finished, by result.",
                None,
                MetricType::Counter,
            )?;
            for (result, pointer) in [("ok", "/counters/handshakes_ok"), ("failed", "/counters/handshakes_failed")] {
                let labels = [("result", result.to_string())];
                ConstCounter::new(u(s, pointer)).encode(family.encode_family(&labels)?)?;
            }
        }
        counter(
            &mut e,
            "mynet_connections_inbound_refused",
            "Inbound connections refused at admission.",
            u(s, "/counters/inbound_refused"),
        )?;
        {
            let counts = rtt_counts(s.pointer("/counters/rtt_ms"));
            let mut cumulative = 0u64;
            let mut buckets = Vec::with_capacity(RTT_BUCKETS);
            for (i, count) in counts.iter().enumerate() {
                cumulative += count;
                let upper = if i + 1 == RTT_BUCKETS { f64::INFINITY } else { (1u64 << i) as f64 / 1000.0 };
                buckets.push((upper, cumulative));
            }
            // The exact sum is not kept: each answer counts at its bucket's upper bound.
            let sum: f64 = counts.iter().enumerate().map(|(i, c)| *c as f64 * (1u64 << i) as f64 / 1000.0).sum();
            let family = e.encode_descriptor(
                "mynet_peer_rtt_seconds",
                "Round trips of answered requests (the sum counts each at its bucket's bound).",
                None,
                MetricType::Histogram,
            )?;
            let mut family = family;
            family.encode_histogram::<prometheus_client::encoding::NoLabelSet>(sum, cumulative, &buckets, None)?;
        }
        gauge(&mut e, "mynet_content_items", "Items on this node.", u(s, "/content/items") as f64)?;
        gauge(&mut e, "mynet_content_stored_bytes", "Bytes of content stored.", u(s, "/content/bytes_stored") as f64)?;
        gauge(&mut e, "mynet_content_sync_queue", "Items waiting to be fetched.", u(s, "/sync/queue") as f64)?;
        counter(&mut e, "mynet_content_synced_items", "Items fetched completely.", u(s, "/sync/synced_content"))?;
        counter(&mut e, "mynet_content_failed_syncs", "Fetches that failed.", u(s, "/sync/failed_syncs"))?;
        counter(&mut e, "mynet_content_synced_bytes", "Bytes of content fetched.", u(s, "/sync/bytes_synced"))?;
        counter(&mut e, "mynet_content_served_pieces", "Pieces served to peers.", u(s, "/sync/pieces_served"))?;
        counter(
            &mut e,
            "mynet_content_replicate_seconds",
            "Time from start to completion of the items fetched, summed.",
            u(s, "/sync/sync_ms") / 1000,
        )?;
        counter(&mut e, "mynet_reconcile_rounds", "Reconciliation rounds finished.", u(s, "/reconcile/rounds"))?;
        counter(&mut e, "mynet_reconcile_bytes", "Bytes of reconciliation messages.", u(s, "/reconcile/bytes"))?;
        {
            let mut family = e.encode_descriptor(
                "mynet_health_check",
                "Health checks: 1 passing, 0 failing.",
                None,
                MetricType::Gauge,
            )?;
            for check in &self.health {
                let labels = [("check", check.check.to_string())];
                ConstGauge::new(i64::from(check.pass)).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

/// Reads the process's resources; keeps the previous CPU reading for the rate.
pub struct Probe {
    system: sysinfo::System,
    pid: sysinfo::Pid,
    data_dir: PathBuf,
    last_cpu: Option<(Instant, u64)>,
    disk_bytes: u64,
    disk_walked: Option<Instant>,
}

impl Probe {
    pub fn new(data_dir: &Path) -> Probe {
        Probe {
            system: sysinfo::System::new(),
            pid: sysinfo::Pid::from_u32(std::process::id()),
            data_dir: data_dir.to_path_buf(),
            last_cpu: None,
            disk_bytes: 0,
            disk_walked: None,
        }
    }

    /// Reads CPU, memory and disk (blocking: run it off the async threads).
    pub fn read(&mut self, open_connections: u64) -> Resources {
        let kind = sysinfo::ProcessRefreshKind::nothing().with_cpu().with_memory();
        self.system.refresh_processes_specifics(sysinfo::ProcessesToUpdate::Some(&[self.pid]), true, kind);
        let (cpu_ms, memory) = self.system.process(self.pid).map_or((0, 0), |p| (p.accumulated_cpu_time(), p.memory()));
        let now = Instant::now();
        let cpu_percent = match self.last_cpu {
            Some((at, before)) if now > at => {
                cpu_ms.saturating_sub(before) as f64 / now.duration_since(at).as_millis().max(1) as f64 * 100.0
            }
            _ => 0.0,
        };
        self.last_cpu = Some((now, cpu_ms));
        if self.disk_walked.is_none_or(|at| now.duration_since(at) >= DISK_WALK_INTERVAL) {
            self.disk_bytes = dir_bytes(&self.data_dir);
            self.disk_walked = Some(now);
        }
        Resources {
            cpu_percent,
            cpu_seconds: cpu_ms as f64 / 1000.0,
            memory_bytes: memory,
            disk_bytes: self.disk_bytes,
            disk_free_bytes: free_space(&self.data_dir),
            open_connections,
        }
    }
}

/// Bytes of the files under `dir` (allocated blocks would need unsafe stat fields; the
/// length is what operators compare with `du --apparent-size`).
fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&path) else { continue };
        for entry in entries.flatten() {
            match entry.file_type() {
                Ok(t) if t.is_dir() => stack.push(entry.path()),
                Ok(t) if t.is_file() => total += entry.metadata().map_or(0, |m| m.len()),
                _ => {}
            }
        }
    }
    total
}

/// Free space of the file system holding `dir`: the disk with the longest mount point that
/// is a prefix of its canonical path.
fn free_space(dir: &Path) -> Option<u64> {
    let dir = std::fs::canonicalize(dir).ok()?;
    let disks = sysinfo::Disks::new_with_refreshed_list();
    disks
        .list()
        .iter()
        .filter(|d| dir.starts_with(d.mount_point()))
        .max_by_key(|d| d.mount_point().as_os_str().len())
        .map(|d| d.available_space())
}

/// Samples the node every [`SAMPLE_INTERVAL`] until the driver is gone.
pub async fn run(metrics: SharedMetrics, requests: mpsc::Sender<ApiRequest>, data_dir: PathBuf) {
    let probe = Arc::new(std::sync::Mutex::new(Probe::new(&data_dir)));
    let mut ticker = tokio::time::interval(SAMPLE_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let Some(status) = crate::api::forward_json(&requests, "/status", None).await else { return };
        let Some(config) = crate::api::forward_json(&requests, "/config/running", None).await else { return };
        let open = u(&status, "/peer_count") + u(&status, "/connections_handshaking");
        let probe = probe.clone();
        let read = tokio::task::spawn_blocking(move || probe.lock().map(|mut p| p.read(open)).unwrap_or_default());
        let resources = read.await.unwrap_or_default();
        metrics.lock().await.record(status, resources, &config);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_come_from_the_buckets() {
        let mut counts = [0u64; RTT_BUCKETS];
        counts[3] = 90; // <= 8 ms
        counts[7] = 10; // <= 128 ms
        assert_eq!(quantile_ms(&counts, 0.5), Some(8));
        assert_eq!(quantile_ms(&counts, 0.99), Some(128));
        assert_eq!(quantile_ms(&[0; RTT_BUCKETS], 0.5), None);
    }

    #[test]
    fn the_exposition_names_follow_prometheus_conventions_and_history_is_bounded() {
        let mut metrics = Metrics::default();
        let status = json!({
            "timestamp": 1_000, "uptime_s": 3, "peer_count": 2, "known_peers": 5, "phase": "ready",
            "counters": { "bytes_in": 100, "bytes_out": 50, "messages_in": { "Hello": 2 },
                          "messages_out": { "HelloAck": 1 }, "rtt_ms": [0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
                          "handshakes_ok": 3, "handshakes_failed": 1 },
            "content": { "items": 1, "bytes_stored": 10 }, "sync": { "synced_content": 2, "sync_ms": 3000 },
        });
        let config = json!({ "bootstrap_nodes": [], "storage_max_bytes": 1000 });
        for i in 0..(HISTORY_MAX + 5) {
            let mut s = status.clone();
            s["timestamp"] = json!(1_000 + i as u64 * 5_000);
            s["counters"]["bytes_in"] = json!(100 + i as u64 * 500);
            metrics.record(s, Resources { disk_free_bytes: Some(2 << 30), ..Resources::default() }, &config);
        }
        let history = metrics.history_json();
        let samples = history["samples"].as_array().expect("samples");
        assert_eq!(samples.len(), HISTORY_MAX);
        assert_eq!(samples[HISTORY_MAX - 1]["bandwidth_in"], json!(100.0));
        assert_eq!(samples[0]["connection_success"], json!(0.75));
        assert_eq!(samples[0]["replicate_ms_mean"], json!(1500));
        let text = metrics.prometheus_text(None);
        for line in [
            "mynet_network_received_bytes_total ",
            "mynet_network_received_messages_total{kind=\"Hello\"} 2",
            "mynet_connections_handshakes_total{result=\"failed\"} 1",
            "mynet_peer_rtt_seconds_bucket{le=\"0.004\"} 3",
            "mynet_peer_rtt_seconds_count 4",
            "mynet_peers_connected 2",
            "mynet_health_check{check=\"peers\"} 1",
            "process_resident_memory_bytes ",
            "# EOF",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        assert!(metrics.health.iter().all(|c| c.pass), "{:?}", metrics.health);
    }
}
