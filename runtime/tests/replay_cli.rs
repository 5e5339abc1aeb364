//! `mynet replay` as an inspection tool: filtered event listings, the state at a stop point,
//! and `replay diff` between two logs, on logs written by `mynet sim --dump-log`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::{last_json, mynet};
use mynet_core::{Node, Time};
use mynet_storage::log::{EventLog, LogRecord};
use mynet_storage::{FjallLog, keyfile, read_records};
use serde_json::{Value, json};

/// Runs `mynet sim --seed 5 --nodes 5 --duration 2m --dump-log NODE root/NAME` and returns the
/// data dir it wrote. The run's own verdict does not matter here, only the log it leaves.
fn sim_dump(root: &Path, node: usize, name: &str) -> PathBuf {
    let dir = root.join(name);
    let target = dir.to_str().expect("utf-8 temp path");
    let node = node.to_string();
    let args = ["sim", "--seed", "5", "--nodes", "5", "--duration", "2m", "--dump-log", &node, target];
    let out = mynet(root, &args);
    assert!(dir.join("events").is_dir(), "sim wrote no log: {}", String::from_utf8_lossy(&out.stderr));
    dir
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `mynet replay ARGS` on `dir`, which must succeed.
fn replay_ok(dir: &Path, args: &[&str]) -> String {
    let mut full = vec!["replay"];
    full.extend_from_slice(args);
    let out = mynet(dir, &full);
    assert!(out.status.success(), "replay {args:?}: {}{}", stdout(&out), String::from_utf8_lossy(&out.stderr));
    stdout(&out)
}

/// The printed records: each a record line (`#seq ...`) with its indented output lines.
fn blocks(text: &str) -> Vec<String> {
    let mut blocks: Vec<String> = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') {
            blocks.push(format!("{line}\n"));
        } else if line.starts_with("    ")
            && let Some(last) = blocks.last_mut()
        {
            last.push_str(line);
            last.push('\n');
        }
    }
    blocks
}

/// The record kind on a record line: `#12 t=0.3s received in#0 ...` -> `received`.
fn kind(block: &str) -> &str {
    let mut words = block.split_whitespace();
    let _seq = words.next();
    let second = words.next().unwrap_or_default();
    if second.starts_with("t=") { words.next().unwrap_or_default() } else { second }
}

/// The sequence number on a record line.
fn seq(block: &str) -> u64 {
    let word = block.split_whitespace().next().unwrap_or_default();
    word.trim_start_matches('#').parse().expect("record line starts with #seq")
}

/// Whether `text` mentions connection `conn` (so `out#1` does not match `out#10`).
fn mentions_conn(text: &str, conn: &str) -> bool {
    text.match_indices(conn).any(|(i, _)| !text[i + conn.len()..].starts_with(|c: char| c.is_ascii_digit()))
}

#[test]
fn events_can_be_filtered_by_kind() {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = sim_dump(root.path(), 1, "n1");
    let all = blocks(&replay_ok(&dir, &["--events"]));
    assert!(kind(&all[0]) == "genesis", "first record is the genesis: {}", all[0]);
    let received_total = all.iter().filter(|b| kind(b) == "received").count();
    assert!(received_total > 0, "node 1 received something in 2 minutes");

    let received = blocks(&replay_ok(&dir, &["--events", "--kind", "received"]));
    assert_eq!(received.len(), received_total);
    assert!(received.iter().all(|b| kind(b) == "received"), "only received records: {received:?}");
    // Received bytes are shown as the messages they carry, starting with the peer's handshake.
    assert!(received.iter().any(|b| b.contains("hello_ack from ") || b.contains("hello from ")), "{received:?}");

    let two = blocks(&replay_ok(&dir, &["--kind", "received", "--kind", "genesis"]));
    assert_eq!(two.len(), received_total + 1, "--kind is repeatable and implies --events");
    assert!(two.iter().all(|b| ["received", "genesis"].contains(&kind(b))));

    let out = mynet(&dir, &["replay", "--kind", "handshake"]);
    assert!(!out.status.success(), "an unknown kind is refused");
}

#[test]
fn events_can_be_filtered_by_peer() {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = sim_dump(root.path(), 1, "n1");
    let all = blocks(&replay_ok(&dir, &["--events"]));

    // By connection id: every record shown mentions out#0, and every one that does is shown.
    let by_conn = blocks(&replay_ok(&dir, &["--events", "--peer", "out#0"]));
    let expected: Vec<&String> = all.iter().filter(|b| mentions_conn(b, "out#0")).collect();
    assert!(!by_conn.is_empty() && by_conn.len() < all.len(), "{} of {}", by_conn.len(), all.len());
    assert_eq!(by_conn.iter().collect::<Vec<_>>(), expected);

    // By node id prefix: the bootstrap node, which node 1 always dials first.
    let bootstrap_id = all
        .iter()
        .flat_map(|b| b.lines())
        .find_map(|l| l.split("bootstrap node ").nth(1).and_then(|rest| rest.split(' ').next()))
        .expect("a bootstrap event names the bootstrap node")
        .to_string();
    let by_id = blocks(&replay_ok(&dir, &["--events", "--peer", &bootstrap_id[..6]]));
    assert!(!by_id.is_empty() && by_id.len() < all.len(), "{} of {}", by_id.len(), all.len());
    for block in all.iter().filter(|b| b.contains(&bootstrap_id)) {
        assert!(by_id.contains(block), "a record naming the node is shown: {block}");
    }

    // By address: the bootstrap node's address, and the connections dialled to it.
    let by_addr = blocks(&replay_ok(&dir, &["--events", "--peer", "10.1.0.1:"]));
    let dialled: Vec<String> = all
        .iter()
        .flat_map(|b| b.lines())
        .filter_map(|l| l.trim().strip_prefix("dial "))
        .filter(|rest| rest.contains("10.1.0.1:"))
        .filter_map(|rest| rest.split(' ').next().map(str::to_string))
        .collect();
    // Connections from it too (a dial-back of the DHT's address check): `incoming in#N from ADDR`.
    let incoming: Vec<String> = all
        .iter()
        .flat_map(|b| b.lines())
        .filter_map(|l| l.split(" incoming ").nth(1))
        .filter(|rest| rest.contains("10.1.0.1:"))
        .filter_map(|rest| rest.split(' ').next().map(str::to_string))
        .collect();
    let dialled: Vec<String> = dialled.into_iter().chain(incoming).collect();
    assert!(!dialled.is_empty() && !by_addr.is_empty());
    for block in &by_addr {
        assert!(
            block.contains("10.1.0.1:") || dialled.iter().any(|c| mentions_conn(block, c)),
            "shown without mentioning the address or a connection to it: {block}"
        );
    }

    let out = mynet(&dir, &["replay", "--peer", "out#x"]);
    assert!(!out.status.success(), "a malformed connection id is refused");
}

#[test]
fn until_stops_and_state_shows_the_node_there() {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = sim_dump(root.path(), 1, "n1");

    // Without --events, stdout is just the summary line.
    let plain = replay_ok(&dir, &[]);
    assert_eq!(plain.lines().count(), 1, "{plain}");
    let summary: Value = serde_json::from_str(&plain).expect("JSON summary");
    assert_eq!((summary["reproduced"].clone(), summary["from_snapshot"].clone()), (json!(true), Value::Null));
    assert!(summary["events_per_s"].as_f64().is_some_and(|r| r > 0.0), "{summary}");
    assert!(summary["records"].as_u64().is_some_and(|r| r > 11), "the log is longer than 11 records");

    let text = replay_ok(&dir, &["--until", "10", "--events"]);
    let shown = blocks(&text);
    assert_eq!(shown.iter().map(|b| seq(b)).collect::<Vec<_>>(), (0..=10).collect::<Vec<_>>());
    let summary = last_json(&mynet(&dir, &["replay", "--until", "10"]));
    assert_eq!((summary["stopped_at"].clone(), summary["records"].clone()), (json!(10), json!(11)));

    let text = replay_ok(&dir, &["--until", "10", "--state"]);
    let (state, last) = text.trim_end().rsplit_once('\n').expect("state JSON, then the summary");
    let state: Value = serde_json::from_str(state).expect("state is JSON");
    let conns = state["conns"]["table"].as_object().expect("the state has a connection table");
    assert!(conns.keys().all(|k| k.starts_with("in#") || k.starts_with("out#")), "readable conn ids: {conns:?}");
    assert_eq!(serde_json::from_str::<Value>(last).expect("summary")["stopped_at"], 10);
}

#[test]
fn diff_of_a_log_with_itself_or_a_rerun_is_identical() {
    let root = tempfile::tempdir().expect("tempdir");
    let a = sim_dump(root.path(), 1, "a");
    let b = sim_dump(root.path(), 1, "b");
    for other in [&a, &b] {
        let out = diff(root.path(), &a, other);
        assert!(out.status.success(), "{}", stdout(&out));
        assert!(stdout(&out).starts_with("identical: "), "{}", stdout(&out));
        assert_eq!(last_json(&out)["identical"], true);
    }
}

#[test]
fn diff_of_two_nodes_names_the_first_difference() {
    let root = tempfile::tempdir().expect("tempdir");
    let one = sim_dump(root.path(), 1, "n1");
    let two = sim_dump(root.path(), 2, "n2");
    let out = diff(root.path(), &one, &two);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let text = stdout(&out);
    assert!(text.starts_with("first difference at the start (A #0, B #0): the inputs differ"), "{text}");
    assert!(text.lines().any(|l| l.starts_with("  A #0 ") && l.contains(" genesis node ")), "{text}");
    assert!(text.lines().any(|l| l.starts_with("  B #0 ") && l.contains(" genesis node ")), "{text}");
    let summary = last_json(&out);
    assert_eq!((summary["position"].clone(), summary["inputs_differ"].clone()), (json!(0), json!(true)));
    assert_eq!(summary["state_differs"], true, "two identities are two states");
    let fields = summary["state_fields"].as_array().expect("differing fields");
    assert!(fields.contains(&json!("node_id")), "{summary}");
    assert!(
        text.contains(&format!("state: first difference at {}: A ", summary["state_path"].as_str().unwrap_or("?")))
    );
}

#[test]
fn diff_finds_a_changed_input_and_a_shorter_log() {
    let root = tempfile::tempdir().expect("tempdir");
    let a = sim_dump(root.path(), 1, "a");
    let records = read_log(&a);
    let inputs: Vec<u64> =
        records.iter().filter(|(_, r)| matches!(r, LogRecord::Input { .. })).map(|(seq, _)| *seq).collect();
    assert!(inputs.len() > 10, "enough inputs to cut in the middle");
    let target = inputs[inputs.len() / 2];
    let position = inputs.iter().position(|s| *s == target).expect("target is an input") as u64 + 1;

    // One input 1 ms later: the inputs differ there, and so does the node's clock.
    let changed = records.iter().cloned().map(|(seq, record)| match record {
        LogRecord::Input { time, input } if seq == target => {
            (seq, LogRecord::Input { time: Time::new(time.mono.0 + 1000, time.wall_ms + 1), input })
        }
        other => (seq, other),
    });
    let b = write_copy(&a, &root.path().join("changed"), changed.collect(), None);
    let out = diff(root.path(), &a, &b);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let text = stdout(&out);
    let head = format!("first difference at input {position} (A #{target}, B #{target}): the inputs differ");
    assert!(text.starts_with(&head), "expected {head:?} in\n{text}");
    let summary = last_json(&out);
    assert_eq!((summary["a_seq"].clone(), summary["b_seq"].clone()), (json!(target), json!(target)));
    assert_eq!(summary["state_differs"], true);

    // The same log cut after that input: B ends, A goes on.
    let cut: Vec<(u64, LogRecord)> = records.iter().filter(|(seq, _)| *seq <= target).cloned().collect();
    let b = write_copy(&a, &root.path().join("cut"), cut, None);
    let out = diff(root.path(), &a, &b);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(stdout(&out).starts_with(&format!("B ends before input {}; A continues with:", position + 1)));
    assert_eq!(last_json(&out)["ended"], "B");
}

#[test]
fn a_log_cut_at_a_snapshot_replays_and_diffs_from_it() {
    let root = tempfile::tempdir().expect("tempdir");
    let a = sim_dump(root.path(), 1, "a");
    let records = read_log(&a);
    let cut_at = records.len() as u64 / 2;
    let b = write_copy(&a, &root.path().join("cut"), records, Some(cut_at));

    let summary = last_json(&mynet(&b, &["replay"]));
    assert_eq!((summary["from_snapshot"].clone(), summary["reproduced"].clone()), (json!(cut_at), json!(true)));
    let shown = blocks(&replay_ok(&b, &["--events"]));
    assert_eq!(shown.first().map(|block| seq(block)), Some(cut_at), "the listing starts where the log does");

    let out = diff(root.path(), &b, &b);
    assert!(out.status.success(), "{}", stdout(&out));
}

fn diff(root: &Path, a: &Path, b: &Path) -> Output {
    let (a, b) = (a.to_str().expect("utf-8"), b.to_str().expect("utf-8"));
    mynet(root, &["replay", "diff", a, b])
}

fn read_log(dir: &Path) -> Vec<(u64, LogRecord)> {
    let log = FjallLog::open(&dir.join("events")).expect("open log");
    read_records(&log).map(|r| r.expect("record decodes")).collect()
}

/// A data dir with `source`'s key and the given records. With `snapshot_at`, the node's state
/// before that record is stored as a snapshot and the records before it are cut.
fn write_copy(source: &Path, dir: &Path, records: Vec<(u64, LogRecord)>, snapshot_at: Option<u64>) -> PathBuf {
    std::fs::create_dir_all(dir).expect("mkdir");
    let identity = keyfile::load_key(&source.join("node.key")).expect("key");
    keyfile::load_or_create_key(&dir.join("node.key"), || identity.secret_bytes()).expect("copy key");
    let mut log = FjallLog::open(&dir.join("events")).expect("open log");
    let mut node: Option<Node> = None;
    for (seq, record) in records {
        if Some(seq) == snapshot_at {
            let node = node.as_ref().expect("genesis before the snapshot");
            let entry = mynet_storage::log::SnapshotEntry { taken_at: node.now(), log_bytes: 0, node: node.snapshot() };
            log.put_snapshot(seq, &entry).expect("snapshot");
        }
        match &record {
            LogRecord::Genesis { config, rng_seed, time, .. } => {
                node = Some(Node::new((**config).clone(), identity.clone(), *rng_seed, *time));
            }
            LogRecord::Input { time, input } => {
                let n = node.as_mut().expect("genesis first");
                n.handle(*time, input.clone());
            }
            LogRecord::Checkpoint { .. } => {}
        }
        if let Some(n) = node.as_mut() {
            while n.poll_output().is_some() {}
        }
        log.append(&record).expect("append");
    }
    if let Some(seq) = snapshot_at {
        log.truncate_before(seq).expect("cut");
    }
    log.sync().expect("sync");
    dir.to_path_buf()
}
