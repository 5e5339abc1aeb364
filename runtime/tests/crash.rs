//! A real node killed with SIGKILL at arbitrary moments restarts from its snapshot and log
//! tail every time, and its log still replays cleanly.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{RunningNode, configure, last_json, mynet};
use serde_json::json;

#[cfg(unix)]
#[test]
fn kill_9_in_a_loop_restarts_and_replays_cleanly() {
    let root = tempfile::tempdir().expect("tempdir");
    let (hub_dir, dir) = (root.path().join("hub"), root.path().join("victim"));
    configure(&hub_dir, json!({}), &[]);
    let mut hub = RunningNode::start(&hub_dir);
    hub.wait_ready(Duration::from_secs(20));
    let entry = hub.bootstrap_entry();
    // Snapshots and log cuts happen often, so kills land around them too.
    configure(
        &dir,
        json!({ "snapshot_interval_events": 7, "checkpoint_interval_events": 3, "log_retain_bytes": 2000, "discovery_interval_ms": 100 }),
        &[entry],
    );
    for round in 0..6u64 {
        let mut node = RunningNode::start(&dir);
        let status = node.wait_status(Duration::from_secs(20), |s| s["phase"] == "ready" && s["peer_count"] == 1);
        assert_eq!(status["counters"]["restarts"], json!(round), "round {round}: restarts counted from the log");
        std::thread::sleep(Duration::from_millis(37 * round));
        let pid = node.child.id().to_string();
        assert!(Command::new("kill").args(["-KILL", &pid]).status().expect("kill").success());
        node.wait_exit(Duration::from_secs(10));
    }
    let mut node = RunningNode::start(&dir);
    node.wait_status(Duration::from_secs(20), |s| s["phase"] == "ready" && s["peer_count"] == 1);
    assert!(node.stop().success());
    let out = mynet(&dir, &["replay"]);
    let report = last_json(&out);
    assert!(out.status.success(), "replay after kills: {report}");
    assert_eq!(report["reproduced"], true);
    assert!(hub.stop().success());
}
