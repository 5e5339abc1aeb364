//! `mynet devnet`: real nodes on distinct loopback addresses, wired to each other, all stopped
//! together on SIGTERM.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{bin, mynet};
use serde_json::Value;

/// Stops the devnet if the test ends early, so no node outlives it.
struct Devnet(Child);

impl Devnet {
    fn terminate(&self) {
        let _ = Command::new("kill").args(["-TERM", &self.0.id().to_string()]).status();
    }

    fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.0.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Devnet {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            self.terminate();
            if self.wait_exit(Duration::from_secs(30)).is_none() {
                let _ = self.0.kill();
                let _ = self.0.wait();
            }
        }
    }
}

fn alive(pid: u64) -> bool {
    Command::new("kill").args(["-0", &pid.to_string()]).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

#[test]
fn a_devnet_of_five_forms_a_network_and_stops_on_sigterm() {
    let root = tempfile::tempdir().expect("tempdir");
    let err = std::fs::File::create(root.path().join("devnet.err")).expect("log");
    let child = Command::new(bin())
        .args(["devnet", "--nodes", "5", "--json", "--dir"])
        .arg(root.path().join("net"))
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(err)
        .spawn()
        .expect("spawn mynet devnet");
    let mut devnet = Devnet(child);
    let stdout = devnet.0.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let errors = || std::fs::read_to_string(root.path().join("devnet.err")).unwrap_or_default();
    let line = rx.recv_timeout(Duration::from_secs(90)).unwrap_or_else(|_| panic!("no node list; {}", errors()));
    let started: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}; {}", errors()));
    let nodes = started["nodes"].as_array().expect("nodes").clone();
    assert_eq!(nodes.len(), 5);
    for (i, node) in nodes.iter().enumerate() {
        let address = node["address"].as_str().expect("address");
        assert!(address.starts_with(&format!("127.0.0.{}:", i + 1)), "node {i} at {address}");
    }

    // Every node sees the four others.
    let deadline = Instant::now() + Duration::from_secs(90);
    for node in &nodes {
        let dir = std::path::PathBuf::from(node["data_dir"].as_str().expect("data dir"));
        loop {
            let out = mynet(&dir, &["status", "--json"]);
            let status: Option<Value> = serde_json::from_slice(&out.stdout).ok();
            if status.as_ref().is_some_and(|s| s["peer_count"] == 4) {
                break;
            }
            assert!(Instant::now() < deadline, "{}: {status:?}; devnet: {}", dir.display(), errors());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    // SIGTERM stops every node, then the devnet, which exits 0.
    let pids: Vec<u64> = nodes.iter().map(|n| n["pid"].as_u64().expect("pid")).collect();
    assert!(pids.iter().all(|pid| alive(*pid)));
    devnet.terminate();
    let status = devnet.wait_exit(Duration::from_secs(60)).expect("devnet stopped");
    assert!(status.success(), "{status}; {}", errors());
    assert!(pids.iter().all(|pid| !alive(*pid)), "a node outlived the devnet");
    assert!(errors().contains("stopped 5 of 5 nodes"), "{}", errors());
}

#[test]
fn a_devnet_refuses_a_size_it_cannot_run() {
    let root = tempfile::tempdir().expect("tempdir");
    for n in ["0", "201"] {
        let out = Command::new(bin()).args(["devnet", "--nodes", n, "--dir"]).arg(root.path()).output().expect("run");
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("--nodes must be between 1 and 200"), "{err}");
    }
}

/// A node that cannot start is named, with the end of its log; the others are stopped.
#[test]
fn a_node_that_dies_at_start_is_named_with_its_log_and_the_rest_stop() {
    let root = tempfile::tempdir().expect("tempdir");
    let net = root.path().join("net");
    // Node 1's event log path is a file: its start-up fails in phase configuration.
    std::fs::create_dir_all(net.join("node-001")).expect("mkdir");
    std::fs::write(net.join("node-001").join("events"), b"not a database").expect("write");
    let out = Command::new(bin())
        .args(["devnet", "--nodes", "3", "--dir"])
        .arg(&net)
        .env_remove("RUST_LOG")
        .output()
        .expect("run mynet devnet");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("during start-up, node 1 (127.0.0.2:"), "{err}");
    assert!(err.contains("  | error: start-up failed in phase configuration"), "{err}");
    // The devnet waits for (or kills) the nodes it stops before it exits.
    assert!(err.contains("stopped the 2 other running nodes"), "{err}");
}
