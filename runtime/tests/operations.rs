//! Operating a node (issue 12): live configuration, status with resources and health,
//! Prometheus metrics and their history, the dashboard page, `--json` everywhere.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::*;
use serde_json::{Value, json};

const READY: Duration = Duration::from_secs(30);

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

fn peer_ids(status: &Value) -> Vec<String> {
    let mut ids: Vec<String> = status["peers"]
        .as_array()
        .map(|p| p.iter().map(|p| p["node_id"].as_str().unwrap_or("").to_string()).collect())
        .unwrap_or_default();
    ids.sort();
    ids
}

/// Three nodes; `mynet config set target_peers 1` on a running node takes effect without a
/// restart (it now has enough peers and releases its bootstrap link), is saved, and shows in
/// `config show`; invalid values are refused and the node keeps running on the old config;
/// the change is a logged input that replay reproduces.
///
/// A (the first node) wants 1 peer and C 2, so neither dials B again once B lets A go: B's
/// peers are then B's target's doing alone.
#[test]
fn config_set_changes_target_peers_on_a_running_node() {
    let root = tempfile::tempdir().expect("tempdir");
    let a_dir = root.path().join("a");
    configure(&a_dir, json!({ "target_peers": 1 }), &[]);
    let mut a = RunningNode::start(&a_dir);
    let a_id = a.wait_ready(READY)["node_id"].as_str().expect("id").to_string();
    let mut b = RunningNode::start(&joiner(root.path(), "b", &a, json!({})));
    b.wait_ready(READY);
    let mut c = RunningNode::start(&joiner(root.path(), "c", &a, json!({ "target_peers": 2 })));
    let c_id = c.wait_ready(READY)["node_id"].as_str().expect("id").to_string();
    let before = b.wait_status(READY, |s| s["peer_count"] == 2);
    assert!(peer_ids(&before).contains(&a_id), "b keeps its bootstrap link while short of its target");

    let out = mynet(&b.dir, &["config", "set", "target_peers", "1", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report = last_json(&out);
    assert_eq!(report["applies"], "live");
    assert_eq!(report["applied"], true);
    let after = b.wait_status(Duration::from_secs(10), |s| s["peer_count"] == 1);
    assert_eq!(peer_ids(&after), vec![c_id.clone()], "the bootstrap link was released, live");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(peer_ids(&b.try_status().expect("status")), vec![c_id], "and it stays released");
    b.wait_log("configuration changed: target_peers", Duration::from_secs(5));
    let shown = last_json(&mynet(&b.dir, &["config", "show"]));
    assert_eq!(shown["target_peers"], json!({ "value": 1, "source": "node_config.json", "applies": "live" }));
    assert_eq!(shown["listen_addr"]["applies"], "restart");
    let file: Value =
        serde_json::from_str(&std::fs::read_to_string(b.dir.join("node_config.json")).expect("file")).expect("json");
    assert_eq!(file["target_peers"], 1);

    // Refusals change nothing and say why; the node keeps running on the old value.
    let saved = std::fs::read_to_string(b.dir.join("node_config.json")).expect("file");
    for (value, why) in [("0", "out of range 1..=10000"), ("many", "invalid type"), ("-3", "invalid value")] {
        let out = mynet(&b.dir, &["config", "set", "target_peers", value]);
        assert!(!out.status.success(), "target_peers {value} must be refused");
        assert!(stderr(&out).contains("refused") && stderr(&out).contains(why), "{value}: {}", stderr(&out));
    }
    let out = mynet(&b.dir, &["config", "set", "target_peer", "3"]);
    assert!(!out.status.success() && stderr(&out).contains("did you mean target_peers"), "{}", stderr(&out));
    assert_eq!(std::fs::read_to_string(b.dir.join("node_config.json")).expect("file"), saved);
    let running: Value = api_get(&b, "/config/running").1;
    assert_eq!(running["target_peers"], 1, "the node runs on the last good value");
    assert!(b.child.try_wait().expect("wait").is_none(), "the node is still running");

    // A start-up-only field is saved for the next start, and says so.
    let out = mynet(&b.dir, &["config", "set", "dht", "false"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("needs a restart"));
    assert_eq!(api_get(&b, "/config/running").1["dht"], true, "not applied live");

    // Replay reproduces the live change (it is a logged input).
    let stopped = b.stop();
    assert!(stopped.success(), "{stopped}: {}", b.log_text());
    let out = mynet(&b.dir, &["replay"]);
    assert!(out.status.success(), "replay: {}\n{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    let out = mynet(&b.dir, &["replay", "--events", "--kind", "configure"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("target_peers=1"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    drop(c);
}

/// GET `path` on the node's API with its token; returns the status code and JSON body.
fn api_get(node: &RunningNode, path: &str) -> (u16, Value) {
    let (code, body) = raw_get(node, path, true);
    (code, serde_json::from_str(&body).unwrap_or(Value::Null))
}

fn raw_get(node: &RunningNode, path: &str, with_token: bool) -> (u16, String) {
    let addr = std::fs::read_to_string(node.dir.join("api.addr")).expect("api.addr");
    let token = std::fs::read_to_string(node.dir.join("api.token")).expect("api.token");
    let mut stream = TcpStream::connect(addr.trim()).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let auth = if with_token { format!("Authorization: Bearer {}\r\n", token.trim()) } else { String::new() };
    write!(stream, "GET {path} HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n").expect("write");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    let (head, body) = response.split_once("\r\n\r\n").expect("response");
    let code = head.split(' ').nth(1).and_then(|c| c.parse().ok()).expect("status code");
    (code, body.to_string())
}

/// Status has resources and health checks; the table reads well; `/metrics` needs the token
/// and speaks Prometheus text; the history grows; the dashboard page is served; every data
/// command has `--json`.
#[test]
fn status_metrics_history_and_dashboard() {
    let root = tempfile::tempdir().expect("tempdir");
    let mut a = first_node(root.path(), READY);
    let mut b = RunningNode::start(&joiner(root.path(), "b", &a, json!({})));
    b.wait_status(READY, |s| s["peer_count"] == 1);
    // The first sample is taken at start, the second 5 s later.
    let status = b.wait_status(Duration::from_secs(15), |s| s["health"].as_array().is_some_and(|h| !h.is_empty()));
    for key in ["cpu_percent", "memory_bytes", "disk_bytes", "disk_free_bytes", "open_connections"] {
        assert!(status["resources"].get(key).is_some(), "resources.{key}: {status}");
    }
    assert!(status["resources"]["memory_bytes"].as_u64().unwrap_or(0) > 1 << 20);
    assert!(status["resources"]["disk_bytes"].as_u64().unwrap_or(0) > 0);
    let checks: Vec<&str> =
        status["health"].as_array().expect("health").iter().filter_map(|c| c["check"].as_str()).collect();
    assert_eq!(checks, ["startup", "peers", "event_log", "storage", "disk"]);
    for check in status["health"].as_array().expect("health") {
        assert!(check["checks"].as_str().is_some_and(|c| !c.is_empty()) && check["reason"].is_string(), "{check}");
    }
    let peers_check = &status["health"][1];
    assert_eq!(peers_check["pass"], true, "{peers_check}");
    assert_eq!(peers_check["reason"], "1 peer");

    let out = mynet(&b.dir, &["status"]);
    let table = String::from_utf8_lossy(&out.stdout);
    for label in ["node id", "uptime", "peers", "content", "storage", "sync", "resources", "health", "timestamp"] {
        assert!(table.lines().any(|l| l.starts_with(label)), "no {label:?} row in\n{table}");
    }
    assert!(table.contains("1 connected"), "{table}");

    let (code, _) = raw_get(&b, "/metrics", false);
    assert_eq!(code, 401, "metrics need the token");
    let out = mynet(&b.dir, &["metrics"]);
    let text = String::from_utf8_lossy(&out.stdout);
    for name in [
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "mynet_network_sent_bytes_total",
        "mynet_network_received_messages_total{kind=",
        "mynet_peers_connected 1",
        "mynet_peer_rtt_seconds_bucket{le=",
        "mynet_connections_handshakes_total{result=\"ok\"}",
        "mynet_content_items",
        "mynet_reconcile_rounds_total",
        "mynet_health_check{check=\"peers\"} 1",
    ] {
        assert!(text.contains(name), "{name} missing from\n{text}");
    }
    let b_dir = b.dir.clone();
    b.wait_status(Duration::from_secs(15), |_| {
        last_json(&mynet(&b_dir, &["metrics", "--history", "--json"]))["samples"]
            .as_array()
            .is_some_and(|s| s.len() >= 2)
    });
    let history = last_json(&mynet(&b.dir, &["metrics", "--history", "--json"]));
    assert_eq!(history["max"], 1000);
    let last = history["samples"].as_array().and_then(|s| s.last()).expect("a sample").clone();
    assert_eq!(last["peers"], 1);
    assert!(last["bytes_in"].as_u64().unwrap_or(0) > 0);
    let out = mynet(&b.dir, &["metrics", "--history"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("samples (one every 5 s, at most 1000)"));

    let (code, page) = raw_get(&b, "/", false);
    assert_eq!(code, 200);
    assert!(page.contains("<title>mynet node</title>") && !page.contains("<script src"));
    let url = last_json(&mynet(&b.dir, &["dashboard", "--json"]))["url"].as_str().expect("url").to_string();
    assert!(url.starts_with("http://127.0.0.1:") && url.contains("/#token="), "{url}");
    let peers = last_json(&mynet(&b.dir, &["peers", "--json"]));
    assert_eq!(peers["peer_count"], 1);

    // The signed status broadcast: A shows what B reported of itself.
    let b_id = status["node_id"].clone();
    let a_dir = a.dir.clone();
    a.wait_status(Duration::from_secs(10), |_| {
        last_json(&mynet(&a_dir, &["network", "--json"]))["reports"].as_array().is_some_and(|r| !r.is_empty())
    });
    let network = last_json(&mynet(&a.dir, &["network", "--json"]));
    let report = &network["reports"][0];
    assert_eq!(report["node_id"], b_id);
    assert_eq!(report["phase"], "ready");
    assert_eq!(report["items"], 0);
    assert_eq!(network["max_age_s"], 90);
    let out = mynet(&a.dir, &["network"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains(&b_id.as_str().expect("id")[..16]) && table.contains("1 node reported"), "{table}");
}
