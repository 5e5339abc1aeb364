//! Operator commands over the local API: `mynet status [--watch]`, `mynet metrics
//! [--history]`, `mynet config set`, `mynet network`, `mynet dashboard`.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use anyhow::Result;
use serde_json::{Value, json};

use crate::cli_content::{Api, human};
use crate::datadir::DataDir;
use crate::out::{outln, plural};

/// Refresh period of `mynet status --watch`.
const WATCH_EVERY: Duration = Duration::from_secs(2);

fn n(v: &Value, pointer: &str) -> u64 {
    v.pointer(pointer).and_then(Value::as_u64).unwrap_or(0)
}

fn s<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer).and_then(Value::as_str).unwrap_or("?")
}

/// The status as a readable table (R10.1: id, uptime, peers, content, storage, sync,
/// resources, health, timestamp).
pub fn status_table(status: &Value) -> String {
    let mut out = String::new();
    let mut line = |label: &str, value: String| out.push_str(&format!("{label:<16}{value}\n"));
    line("node id", s(status, "/node_id").to_string());
    line("network", format!("{} (listening on {})", s(status, "/network_id"), s(status, "/listen_addr")));
    line("phase", s(status, "/phase").to_string());
    let up = n(status, "/uptime_s");
    line("uptime", format!("{}h {:02}m {:02}s", up / 3600, up / 60 % 60, up % 60));
    let peers = n(status, "/peer_count");
    line(
        "peers",
        format!(
            "{} connected, {} handshaking, {} known",
            peers,
            n(status, "/connections_handshaking"),
            n(status, "/known_peers")
        ),
    );
    line(
        "content",
        format!(
            "{} ({} complete, {} partial)",
            plural(n(status, "/content/items") as usize, "item", "items"),
            n(status, "/content/complete"),
            n(status, "/content/partial")
        ),
    );
    line("storage", format!("{} of content", human(n(status, "/content/bytes_stored"))));
    line(
        "sync",
        format!(
            "{} queued, {} fetching, {} synced, {} failed; catalogue {} items, {} reconcile rounds",
            n(status, "/sync/queue"),
            n(status, "/sync/active_transfers"),
            n(status, "/sync/synced_content"),
            n(status, "/sync/failed_syncs"),
            n(status, "/reconcile/items"),
            n(status, "/reconcile/rounds")
        ),
    );
    let r = status.get("resources").cloned().unwrap_or(Value::Null);
    let free = r.get("disk_free_bytes").and_then(Value::as_u64).map_or("unknown".into(), human);
    line(
        "resources",
        format!(
            "CPU {:.1}%, memory {}, data dir {} ({free} free), {} open connections",
            r.get("cpu_percent").and_then(Value::as_f64).unwrap_or(0.0),
            human(n(&r, "/memory_bytes")),
            human(n(&r, "/disk_bytes")),
            n(&r, "/open_connections")
        ),
    );
    let traffic =
        format!("{} in, {} out", human(n(status, "/counters/bytes_in")), human(n(status, "/counters/bytes_out")));
    line("traffic", traffic);
    let checks = status.get("health").and_then(Value::as_array).cloned().unwrap_or_default();
    if checks.is_empty() {
        line("health", "not sampled yet (every 5 s)".into());
    }
    for (i, check) in checks.iter().enumerate() {
        let verdict = if check["pass"].as_bool() == Some(true) { "pass" } else { "FAIL" };
        let label = if i == 0 { "health" } else { "" };
        line(label, format!("{verdict}  {:<10} {}", s(check, "/check"), s(check, "/reason")));
    }
    line("timestamp", format!("{} ms since the epoch", n(status, "/timestamp")));
    out
}

/// `mynet status [--json] [--watch]`.
pub fn status(dir: &DataDir, json_out: bool, watch: bool) -> Result<()> {
    let api = Api::new(dir)?;
    if !watch {
        let status = api.json("GET", "/status")?;
        if json_out {
            outln!("{}", serde_json::to_string_pretty(&status)?);
        } else {
            crate::out::out(&status_table(&status));
        }
        return Ok(());
    }
    let terminal = std::io::stdout().is_terminal();
    loop {
        let status = api.json("GET", "/status")?;
        let text = if json_out { format!("{status}\n") } else { status_table(&status) };
        if terminal {
            // Home the cursor and clear the screen: the table is redrawn in place.
            crate::out::out(&format!("\x1b[H\x1b[2J{text}(every {} s; Ctrl-C to stop)\n", WATCH_EVERY.as_secs()));
        } else {
            crate::out::out(&format!("{text}\n"));
        }
        let _ = std::io::stdout().flush();
        std::thread::sleep(WATCH_EVERY);
    }
}

/// `mynet metrics [--history] [--json]`: Prometheus text, or the sample history.
pub fn metrics(dir: &DataDir, history: bool, json_out: bool) -> Result<()> {
    let api = Api::new(dir)?;
    if !history {
        crate::out::out(&api.text("/metrics")?);
        return Ok(());
    }
    let history = api.json("GET", "/metrics/history")?;
    if json_out {
        outln!("{}", serde_json::to_string_pretty(&history)?);
        return Ok(());
    }
    let samples = history["samples"].as_array().cloned().unwrap_or_default();
    outln!(
        "{:<13}  {:>5}  {:>6}  {:>9}  {:>12}  {:>12}  {:>8}  {:>8}  {:>6}",
        "TIMESTAMP_MS",
        "PEERS",
        "CPU%",
        "MEMORY",
        "IN/s",
        "OUT/s",
        "RTT_P50",
        "RTT_P99",
        "ITEMS"
    );
    let ms = |v: &Value| v.as_u64().map_or("-".to_string(), |v| format!("{v} ms"));
    for sample in &samples {
        outln!(
            "{:<13}  {:>5}  {:>6.1}  {:>9}  {:>12}  {:>12}  {:>8}  {:>8}  {:>6}",
            n(sample, "/timestamp_ms"),
            n(sample, "/peers"),
            sample["cpu_percent"].as_f64().unwrap_or(0.0),
            human(n(sample, "/memory_bytes")),
            human(sample["bandwidth_in"].as_f64().unwrap_or(0.0) as u64),
            human(sample["bandwidth_out"].as_f64().unwrap_or(0.0) as u64),
            ms(&sample["rtt_p50_ms"]),
            ms(&sample["rtt_p99_ms"]),
            n(sample, "/items")
        );
    }
    outln!(
        "{} (one every {} s, at most {})",
        plural(samples.len(), "sample", "samples"),
        n(&history, "/interval_s"),
        n(&history, "/max")
    );
    Ok(())
}

/// A command-line value: JSON if it parses as JSON, else the text as a string (so
/// `listen_addr 127.0.0.1:7401` and `replicate none` need no quotes).
pub fn parse_value(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_string()))
}

/// `mynet config set FIELD VALUE [--json]`: through the running node, or, with no node
/// running, into the file (checked the same way) for the next start.
pub fn config_set(dir: &DataDir, field: &str, value: &str, json_out: bool) -> Result<()> {
    let value = parse_value(value);
    let report = match Api::new(dir).and_then(|api| api.reachable().map(|()| api)) {
        Ok(api) => api.post_json("/config", &json!({ "field": field, "value": value }))?,
        Err(_) => {
            let (text, config) = crate::live_config::prepare(dir, field, value)?;
            let path = dir.root().join(mynet_core::config::NODE_CONFIG_FILE);
            crate::datadir::replace_file(&path, &text)?;
            let value = serde_json::to_value(&config)?.get(field).cloned().unwrap_or(Value::Null);
            let applies = if mynet_core::Config::applies_live(field) { "live" } else { "restart" };
            json!({ "field": field, "value": value, "applies": applies, "applied": false,
                    "file": path.display().to_string(), "node_running": false })
        }
    };
    if json_out {
        outln!("{report}");
        return Ok(());
    }
    let (value, file) = (report["value"].to_string(), s(&report, "/file").to_string());
    if report["applied"].as_bool() == Some(true) {
        outln!("{field} = {value}: applied to the running node and saved in {file}");
    } else if report["node_running"].as_bool() == Some(false) {
        outln!("{field} = {value}: saved in {file}; no node is running, it applies at the next start");
    } else {
        outln!("{field} = {value}: saved in {file}; this field needs a restart to apply");
    }
    Ok(())
}

/// `mynet dashboard`: the dashboard's address, with the token in its fragment.
pub fn dashboard(dir: &DataDir, json_out: bool) -> Result<()> {
    let api = Api::new(dir)?;
    let url = format!("http://{}/#token={}", api.addr(), api.token());
    if json_out {
        outln!("{}", json!({ "url": url }));
    } else {
        outln!("{url}");
    }
    Ok(())
}

/// `mynet network [--json]`: what the peers reported in their signed status broadcasts.
pub fn network(dir: &DataDir, json_out: bool) -> Result<()> {
    let api = Api::new(dir)?;
    let network = api.json("GET", "/network")?;
    if json_out {
        outln!("{}", serde_json::to_string_pretty(&network)?);
        return Ok(());
    }
    let reports = network["reports"].as_array().cloned().unwrap_or_default();
    outln!(
        "{:<16}  {:<9}  {:>7}  {:>5}  {:>7}  {:>10}  {:>9}  {:>6}",
        "NODE",
        "PHASE",
        "UPTIME",
        "PEERS",
        "ITEMS",
        "STORED",
        "CATALOGUE",
        "AGE(s)"
    );
    for r in &reports {
        outln!(
            "{:<16}  {:<9}  {:>6}h  {:>5}  {:>7}  {:>10}  {:>9}  {:>6}",
            &s(r, "/node_id")[..16.min(s(r, "/node_id").len())],
            s(r, "/phase"),
            n(r, "/uptime_s") / 3600,
            n(r, "/peers"),
            n(r, "/items"),
            human(n(r, "/bytes_stored")),
            n(r, "/catalogue_items"),
            n(r, "/age_s")
        );
    }
    outln!("{} reported in the last {} s", plural(reports.len(), "node", "nodes"), n(&network, "/max_age_s"));
    Ok(())
}
