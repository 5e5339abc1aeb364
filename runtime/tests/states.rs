//! Content states and groups between real `mynet` processes on loopback (SPEC R9): an
//! encrypted original, its decrypted form and two previews added as one group on one node are
//! held by the other nodes; `mynet get --decrypt` gives the plaintext on a node that was given
//! the key, and names the key on one that was not; key material stays in the registry.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{RunningNode, first_node, joiner, last_json, mynet};
use serde_json::{Value, json};

const READY: Duration = Duration::from_secs(20);

fn ok(output: &std::process::Output) -> String {
    assert!(
        output.status.success(),
        "mynet failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

fn add(node: &RunningNode, file: &Path, extra: &[&str]) -> String {
    let mut args = vec!["add", file.to_str().expect("path")];
    args.extend_from_slice(extra);
    ok(&mynet(&node.dir, &args))
}

fn data(name: &str, len: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; len];
    blake3::Hasher::new().update(name.as_bytes()).finalize_xof().fill(&mut bytes);
    bytes
}

/// Every file under `dir` except the key registry, searched for `needle`.
fn found_outside_registry(dir: &Path, needle: &[u8]) -> Option<String> {
    for entry in std::fs::read_dir(dir).expect("read dir").flatten() {
        let path = entry.path();
        if path.file_name().is_some_and(|n| n == "keys") {
            continue;
        }
        if path.is_dir() {
            if let Some(hit) = found_outside_registry(&path, needle) {
                return Some(hit);
            }
        } else if let Ok(bytes) = std::fs::read(&path)
            && bytes.windows(needle.len()).any(|w| w == needle)
        {
            return Some(path.display().to_string());
        }
    }
    None
}

#[test]
fn a_group_with_an_encrypted_original_replicates_and_decrypts_where_the_key_was_given() {
    let root = tempfile::tempdir().expect("tempdir");
    let key_file = root.path().join("album.key");
    let key = [0x5au8; 32];
    std::fs::write(&key_file, key).expect("write key");
    let plain = data("original", 300_000 + 7);
    let plain_path = root.path().join("original.bin");
    std::fs::write(&plain_path, &plain).expect("write");
    let (p1, p2) = (root.path().join("p1.jpg"), root.path().join("p2.jpg"));
    std::fs::write(&p1, data("p1", 20_000)).expect("write");
    std::fs::write(&p2, data("p2", 30_000)).expect("write");

    let mut a = first_node(root.path(), READY);
    ok(&mynet(&a.dir, &["key", "add", "album", "--from-file", key_file.to_str().expect("path")]));
    let original = add(&a, &plain_path, &["--encrypt", "--key-id", "album"]);
    let decrypted = add(&a, &plain_path, &["--group", &original, "--relation", "decrypted"]);
    assert_eq!(decrypted, blake3::hash(&plain).to_hex().to_string(), "the decrypted form's id is the plaintext's hash");
    let preview1 = add(&a, &p1, &["--group", &original, "--relation", "preview"]);
    let preview2 = add(&a, &p2, &["--group", &original, "--relation", "preview"]);
    let group = last_json(&mynet(&a.dir, &["group", &original, "--json"]));
    assert_eq!(group["root"], original.as_str(), "{group}");
    assert_eq!(group["members"].as_array().map(Vec::len), Some(4), "{group}");
    let table = ok(&mynet(&a.dir, &["group", &original]));
    assert!(table.contains("encrypted") && table.contains("preview") && table.contains("4 members"), "{table}");

    // b is given the key; c is not.
    let mut b = RunningNode::start(&joiner(root.path(), "b", &a, json!({})));
    let mut c = RunningNode::start(&joiner(root.path(), "c", &a, json!({})));
    b.wait_ready(READY);
    c.wait_ready(READY);
    ok(&mynet(&b.dir, &["key", "add", "album", "--from-file", key_file.to_str().expect("path")]));

    let deadline = Instant::now() + Duration::from_secs(60);
    for node in [&b, &c] {
        loop {
            let view = last_json(&mynet(&node.dir, &["group", &original, "--json"]));
            let members = view["members"].as_array().cloned().unwrap_or_default();
            if members.len() == 4 && members.iter().all(|m| m["held"] == true) {
                let flags: Vec<&Value> =
                    members.iter().flat_map(|m| m["flags"].as_array().into_iter().flatten()).collect();
                assert!(flags.is_empty(), "the key record is known and valid, the forms are right: {view}");
                let root_member = &members[0];
                assert_eq!(
                    (root_member["root"].as_bool(), root_member["state"].as_str()),
                    (Some(true), Some("encrypted"))
                );
                break;
            }
            assert!(Instant::now() < deadline, "group not held in 60 s: {view}\n{}", node.log_text());
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    let status = b.try_status().expect("status");
    assert_eq!(status["states"]["by_state"], json!({"encrypted": 1, "decrypted": 1, "preview": 2}), "{status}");

    // The plaintext where the key was given; an error naming the key where it was not.
    let out = root.path().join("plain-from-b.bin");
    ok(&mynet(&b.dir, &["get", &original, "--decrypt", "-o", out.to_str().expect("path")]));
    assert_eq!(std::fs::read(&out).expect("read"), plain);
    let refused = mynet(&c.dir, &["get", &original, "--decrypt", "-o", root.path().join("x").to_str().expect("path")]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("\"album\""), "the error names the key: {stderr}");
    // Without --decrypt, c serves the sealed bytes as they are.
    let sealed = root.path().join("sealed-from-c.bin");
    ok(&mynet(&c.dir, &["get", &original, "-o", sealed.to_str().expect("path")]));
    assert_eq!(blake3::hash(&std::fs::read(&sealed).expect("read")).to_hex().to_string(), original);
    let keys = last_json(&mynet(&c.dir, &["key", "ls", "--json"]));
    assert_eq!(
        keys,
        json!([{"key_id": "album", "held": false, "record": true, "status": "valid", "valid_until_ms": null}])
    );
    let _ = (&preview1, &preview2);

    // Revoking flags the original everywhere; nothing is dropped.
    ok(&mynet(&a.dir, &["key", "rm", "album", "--revoke"]));
    let flagged = c.wait_status(Duration::from_secs(60), |s| s["states"]["by_flag"]["key_revoked"] == 1);
    assert_eq!(flagged["content"]["complete"], 4, "{flagged}");

    // A wrong decrypted form: flagged from the signed plaintext hash everywhere, and found by
    // decrypting the original where the key is held (its publisher is penalised there).
    let wrong = root.path().join("wrong.bin");
    std::fs::write(&wrong, data("wrong", 5_000)).expect("write");
    add(&a, &wrong, &["--group", &original, "--relation", "decrypted"]);
    b.wait_log("does not give its decrypted form", Duration::from_secs(60));
    let flagged = c.wait_status(Duration::from_secs(60), |s| s["states"]["by_flag"]["relation_mismatch"] == 1);
    assert_eq!(flagged["states"]["by_state"]["decrypted"], 2, "{flagged}");

    for node in [&mut a, &mut b, &mut c] {
        assert!(node.stop().success());
    }
    for node in [&a, &b, &c] {
        let hex = mynet_core_hex(&key);
        assert_eq!(found_outside_registry(&node.dir, &key), None, "raw key bytes outside the registry");
        assert_eq!(found_outside_registry(&node.dir, hex.as_bytes()), None, "hex key outside the registry");
        let replayed = mynet(&node.dir, &["replay"]);
        assert!(replayed.status.success(), "{}", String::from_utf8_lossy(&replayed.stdout));
    }
}

fn mynet_core_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
