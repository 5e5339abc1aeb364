//! Reconciliation between real `mynet` processes on loopback: items added on two nodes while
//! they are apart reach all three nodes, with equal metadata, once a third connects them.

mod common;

use std::time::{Duration, Instant};

use common::{RunningNode, configure, first_node, last_json, mynet};
use serde_json::{Value, json};

const READY: Duration = Duration::from_secs(20);

fn add(node: &RunningNode, root: &std::path::Path, name: &str, len: usize) -> String {
    let file = root.join(name);
    let mut data = vec![0u8; len];
    blake3::Hasher::new().update(name.as_bytes()).finalize_xof().fill(&mut data);
    std::fs::write(&file, &data).expect("write");
    let added = last_json(&mynet(&node.dir, &["add", file.to_str().expect("path"), "--json"]));
    added["id"].as_str().expect("id").to_string()
}

fn reconcile(node: &RunningNode) -> Value {
    node.try_status().map(|s| s["reconcile"].clone()).unwrap_or(Value::Null)
}

#[test]
fn items_added_on_two_nodes_apart_reach_all_three_with_equal_metadata() {
    let root = tempfile::tempdir().expect("tempdir");
    // Two first nodes: neither knows the other.
    let mut a = first_node(root.path(), READY);
    let b_dir = root.path().join("b");
    configure(&b_dir, json!({}), &[]);
    let mut b = RunningNode::start(&b_dir);
    b.wait_ready(READY);
    let x = add(&a, root.path(), "x", 3 * 1024 * 1024 + 7);
    let y = add(&b, root.path(), "y", 200_000);
    let (ra, rb) = (reconcile(&a), reconcile(&b));
    assert_eq!((ra["items"].as_u64(), rb["items"].as_u64()), (Some(1), Some(1)), "{ra} {rb}");
    assert_ne!(ra["digest"], rb["digest"], "apart, they differ");
    assert_eq!(ra["published"], 1, "{ra}");

    // A third node joins through both.
    let c_dir = root.path().join("c");
    configure(&c_dir, json!({}), &[a.bootstrap_entry(), b.bootstrap_entry()]);
    let mut c = RunningNode::start(&c_dir);
    c.wait_ready(READY);

    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let states: Vec<(Value, Value)> = [&a, &b, &c]
            .iter()
            .map(|n| {
                let status = n.try_status().unwrap_or(Value::Null);
                (status["reconcile"].clone(), status["content"].clone())
            })
            .collect();
        let digest = &states[0].0["digest"];
        let done = states.iter().all(|(r, content)| {
            r["items"] == 2 && r["digest"] == *digest && !digest.is_null() && content["complete"] == 2
        });
        if done {
            break;
        }
        assert!(Instant::now() < deadline, "not converged in 60 s: {states:?}\nc's log:\n{}", c.log_text());
        std::thread::sleep(Duration::from_millis(200));
    }
    // Equal metadata: every node lists both items, signed by the node that added each.
    for node in [&a, &b, &c] {
        let ls = last_json(&mynet(&node.dir, &["ls", "--json"]));
        let ids: Vec<&str> = ls.as_array().expect("list").iter().filter_map(|i| i["id"].as_str()).collect();
        assert!(ids.contains(&x.as_str()) && ids.contains(&y.as_str()), "{ls}");
    }
    for node in [&mut a, &mut b, &mut c] {
        assert!(node.stop().success());
    }
    for node in [&a, &b, &c] {
        let replayed = mynet(&node.dir, &["replay"]);
        assert!(replayed.status.success(), "{}", String::from_utf8_lossy(&replayed.stdout));
    }
}
