//! Content between real `mynet` processes on loopback: an item added on one node is held,
//! byte-identical, by the others; `mynet get` matches the plain BLAKE3 hash (what `b3sum`
//! prints); a node killed with `kill -9` in the middle of a download resumes from what it held.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{RunningNode, first_node, joiner, last_json, mynet};
use mynet_core::content::ContentId;
use serde_json::{Value, json};

const READY: Duration = Duration::from_secs(20);
const PIECE: usize = 1 << 20;

/// Non-repeating bytes (BLAKE3 in XOF mode).
fn bytes(len: usize, seed: u8) -> Vec<u8> {
    let mut out = vec![0u8; len];
    let mut xof = blake3::Hasher::new().update(&[seed]).finalize_xof();
    xof.fill(&mut out);
    out
}

fn item(node: &RunningNode, id: &str) -> Option<Value> {
    let out = mynet(&node.dir, &["ls", "--json"]);
    let items: Value = serde_json::from_slice(&out.stdout).ok()?;
    items.as_array()?.iter().find(|i| i["id"] == id).cloned()
}

fn wait_complete(node: &RunningNode, id: &str, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        if let Some(item) = item(node, id).filter(|i| i["state"] == "complete") {
            return item;
        }
        assert!(Instant::now() < deadline, "{id} not complete on {}; log:\n{}", node.dir.display(), node.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn an_item_added_on_one_node_is_held_by_the_other_two_and_get_matches_its_hash() {
    let root = tempfile::tempdir().expect("tempdir");
    let mut a = first_node(root.path(), READY);
    let (b_dir, c_dir) = (joiner(root.path(), "b", &a, json!({})), joiner(root.path(), "c", &a, json!({})));
    let mut b = RunningNode::start(&b_dir);
    let mut c = RunningNode::start(&c_dir);
    b.wait_ready(READY);
    c.wait_ready(READY);

    let data = bytes(5 * 1024 * 1024 + 12_345, 1);
    let file = root.path().join("original");
    std::fs::write(&file, &data).expect("write");
    let added = last_json(&mynet(&a.dir, &["add", file.to_str().expect("path"), "--json"]));
    let id = ContentId::of(&data).to_string();
    assert_eq!(added, json!({"id": id, "size": data.len(), "pieces": 6}), "the id is the plain BLAKE3 hash");
    let plain = mynet(&a.dir, &["add", file.to_str().expect("path")]);
    assert_eq!(String::from_utf8_lossy(&plain.stdout).trim(), id, "one line: the id");

    for node in [&b, &c] {
        let held = wait_complete(node, &id, Duration::from_secs(30));
        assert_eq!(held["pieces_held"], 6);
        let out = root.path().join(format!("copy-{}", node.dir.file_name().and_then(|n| n.to_str()).unwrap_or("x")));
        let got = mynet(&node.dir, &["get", &id, "-o", out.to_str().expect("path")]);
        assert!(got.status.success(), "{}", String::from_utf8_lossy(&got.stderr));
        let copy = std::fs::read(&out).expect("copy");
        assert_eq!(ContentId::of(&copy).to_string(), id, "byte-identical");
    }
    let status = b.try_status().expect("status");
    assert_eq!(status["content"]["complete"], 1, "{status}");
    assert_eq!(status["sync"]["synced_content"], 1, "{status}");

    // An id nobody holds fails with a clear error, and a malformed one is refused.
    let missing = mynet(&c.dir, &["get", &"ab".repeat(32), "--timeout", "20s"]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("not held"), "{:?}", missing);
    let bad = mynet(&c.dir, &["get", "xyz"]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("not a content id"));

    // A piece damaged on disk: `mynet verify` finds it, drops it, and the node fetches it again.
    let data_file = b.dir.join("store").join("data").join(&id);
    let mut damaged = std::fs::read(&data_file).expect("data file");
    damaged[PIECE * 2 + 5] ^= 0x40;
    std::fs::write(&data_file, &damaged).expect("damage");
    let verify = mynet(&b.dir, &["verify", "--json"]);
    assert!(!verify.status.success(), "damage is an error exit");
    let report = last_json(&verify);
    assert_eq!(report["damaged"], json!([{"id": id, "piece": 2}]), "{report}");
    let healed = wait_complete(&b, &id, Duration::from_secs(30));
    assert_eq!(healed["pieces_held"], 6);
    let again = root.path().join("healed");
    assert!(mynet(&b.dir, &["get", &id, "-o", again.to_str().expect("path")]).status.success());
    assert_eq!(std::fs::read(&again).expect("healed copy"), data, "fetched again, byte-identical");
    let status = b.try_status().expect("status");
    assert_eq!(status["sync"]["damaged_pieces"], 1, "{status}");

    // Dropping the local copy.
    assert!(mynet(&c.dir, &["rm", &id]).status.success());
    assert!(item(&c, &id).is_none(), "removed");
    let verify = mynet(&b.dir, &["verify", "--json"]);
    assert!(verify.status.success(), "{}", String::from_utf8_lossy(&verify.stderr));
    assert_eq!(last_json(&verify)["pieces_checked"], 6, "the healed store verifies clean");
    for node in [&mut a, &mut b, &mut c] {
        assert!(node.stop().success());
    }
    // Each node's event log (pieces logged by reference) replays to every checkpoint.
    for node in [&a, &b, &c] {
        let replayed = mynet(&node.dir, &["replay"]);
        assert!(replayed.status.success(), "{}", String::from_utf8_lossy(&replayed.stdout));
    }
}

#[test]
fn a_download_killed_halfway_resumes_without_refetching_what_it_held() {
    let root = tempfile::tempdir().expect("tempdir");
    let mut a = first_node(root.path(), READY);
    // B fetches only what it is asked for, so the download starts when the test says.
    let b_dir = joiner(root.path(), "b", &a, json!({"replicate": "none"}));
    let mut b = RunningNode::start(&b_dir);
    b.wait_ready(READY);

    let data = bytes(400 * 1024 * 1024, 2);
    let file = root.path().join("large");
    std::fs::write(&file, &data).expect("write");
    let id = ContentId::of(&data).to_string();
    drop(data);
    assert!(mynet(&a.dir, &["add", file.to_str().expect("path")]).status.success());

    let out = root.path().join("fetched");
    let mut get = Command::new(common::bin())
        .args(["--data-dir", b.dir.to_str().expect("dir"), "get", &id, "-o", out.to_str().expect("path")])
        .spawn()
        .expect("spawn get");
    // Kill -9 once some but not all pieces are held.
    let deadline = Instant::now() + Duration::from_secs(60);
    let held_before = loop {
        let held = item(&b, &id).and_then(|i| i["pieces_held"].as_u64()).unwrap_or(0);
        if held >= 20 {
            break held;
        }
        assert!(Instant::now() < deadline, "download did not start; log:\n{}", b.log_text());
        std::thread::sleep(Duration::from_millis(10));
    };
    let _ = Command::new("kill").args(["-KILL", &b.child.id().to_string()]).status();
    let _ = b.child.wait();
    let _ = get.kill();
    let _ = get.wait();
    assert!(held_before < 400, "the kill landed before the end ({held_before} of 400 pieces)");

    let mut b = RunningNode::start(&b_dir);
    b.wait_ready(READY);
    let after = item(&b, &id).expect("the item survived the crash");
    let held_after = after["pieces_held"].as_u64().unwrap_or(0);
    assert!(held_after >= held_before, "pieces reported held were durable: {held_after} < {held_before}");
    let synced_before = b.try_status().expect("status")["sync"]["bytes_synced"].as_u64().unwrap_or(0);
    let got = mynet(&b.dir, &["get", &id, "-o", out.to_str().expect("path")]);
    assert!(got.status.success(), "{}", String::from_utf8_lossy(&got.stderr));
    let status = b.try_status().expect("status");
    let synced = status["sync"]["bytes_synced"].as_u64().unwrap_or(0) - synced_before;
    assert!(synced <= (400 - held_after) * 1024 * 1024, "after the restart only missing pieces were fetched");
    let copy = std::fs::read(&out).expect("copy");
    assert_eq!(ContentId::of(&copy).to_string(), id);
    // What A served: every piece once, plus at most what was in flight or being stored when
    // B died (pieces B reported held were never asked for again).
    let served = a.try_status().expect("status")["sync"]["pieces_served"].as_u64().unwrap_or(0);
    let in_flight_max = 12 + 64;
    assert!(served <= 400 + in_flight_max, "A served {served} pieces for a 400-piece item");
    eprintln!(
        "killed at {held_before} pieces held, {held_after} held after restart, {synced} bytes fetched after, {served} served"
    );
    for node in [&mut a, &mut b] {
        assert!(node.stop().success());
    }
    // The killed node's log, across the crash and the restart, replays to every checkpoint.
    let replayed = mynet(&b.dir, &["replay"]);
    assert!(replayed.status.success(), "{}", String::from_utf8_lossy(&replayed.stdout));
}
