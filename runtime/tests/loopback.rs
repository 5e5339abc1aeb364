//! Real `mynet` processes on loopback: the mesh, start-up phases and failures, bad peers,
//! the local API, and replay of what each process recorded.

mod common;

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use common::{RunningNode, configure, first_node, joiner, last_json, mynet};
use serde_json::json;

const READY: Duration = Duration::from_secs(20);

#[test]
fn three_processes_form_a_full_mesh_stop_cleanly_and_replay() {
    let root = tempfile::tempdir().expect("tempdir");
    let mut a = first_node(root.path(), READY);
    let a_dir = a.dir.clone();
    let (b_dir, c_dir) = (joiner(root.path(), "b", &a, json!({})), joiner(root.path(), "c", &a, json!({})));
    let started = Instant::now();
    let mut b = RunningNode::start(&b_dir);
    let mut c = RunningNode::start(&c_dir);
    let mut ids = Vec::new();
    for node in [&mut a, &mut b, &mut c] {
        let status = node.wait_status(READY, |s| s["peer_count"] == 2);
        ids.push(status["node_id"].as_str().expect("id").to_string());
        assert_eq!(status["phase"], "ready");
    }
    eprintln!("3-node mesh formed in {:?}", started.elapsed());
    // Everyone sees the other two, with directions and listen addresses.
    for (node, me) in [(&a, &ids[0]), (&b, &ids[1]), (&c, &ids[2])] {
        let status = node.try_status().expect("status");
        let mut seen: Vec<&str> = status["peers"]
            .as_array()
            .expect("peers")
            .iter()
            .map(|p| p["node_id"].as_str().expect("peer id"))
            .collect();
        seen.sort();
        let mut others: Vec<&str> = ids.iter().map(String::as_str).filter(|id| id != me).collect();
        others.sort();
        assert_eq!(seen, others);
        let peers_table = String::from_utf8_lossy(&mynet(&node.dir, &["peers"]).stdout).to_string();
        assert!(peers_table.contains("2 peers"), "{peers_table}");
    }
    // The start-up phases are logged in order.
    let log = c.log_text();
    let phases = [
        "phase 1/8: core check",
        "phase 2/8: configuration",
        "phase 3/8: cryptography",
        "phase 4/8: network services",
        "phase 5/8: bootstrap",
        "phase 6/8: peer discovery",
        "phase 7/8: initial sync",
        "phase 8/8: background services",
        "node initialized",
    ];
    let positions: Vec<usize> =
        phases.iter().map(|p| log.find(p).unwrap_or_else(|| panic!("{p:?} missing in:\n{log}"))).collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "phases out of order:\n{log}");
    assert!(log.contains(&format!("bootstrap node {} at", ids[0])), "bootstrap success logged by node id");

    for node in [&mut c, &mut b, &mut a] {
        assert!(node.stop().success(), "clean exit on SIGTERM; log:\n{}", node.log_text());
    }
    for dir in [&a_dir, &b_dir, &c_dir] {
        let out = mynet(dir, &["replay"]);
        let report = last_json(&out);
        assert!(out.status.success(), "replay of {}: {report}", dir.display());
        assert_eq!(report["reproduced"], true);
        assert!(report["events"].as_u64().expect("events") > 3);
        assert!(report["checkpoints"].as_u64().expect("checkpoints") >= 1, "shutdown writes a checkpoint");
    }

    // A restarted node continues from its log, and the longer log still replays.
    let mut a = RunningNode::start(&a_dir);
    let status = a.wait_ready(READY);
    assert_eq!(status["node_id"], ids[0].as_str(), "identity is stable across restarts");
    assert_eq!(status["counters"]["restarts"], 1);
    assert!(a.stop().success());
    let report = last_json(&mynet(&a_dir, &["replay"]));
    assert_eq!((report["reproduced"].clone(), report["restarts"].clone()), (json!(true), json!(1)));
}

#[test]
fn unreachable_bootstrap_fails_startup_with_a_clear_error() {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path().join("lonely");
    // A port nobody listens on: bind, note the port, release it.
    let port = TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let ghost = mynet_core::Identity::from_secret_bytes(&[9; 32]);
    let entry =
        json!({ "node_id": ghost.node_id(), "address": format!("127.0.0.1:{port}"), "public_key": ghost.public_key() });
    configure(&dir, json!({ "bootstrap_attempts": 2, "bootstrap_retry_ms": 50 }), &[entry]);
    let mut node = RunningNode::start(&dir);
    let exit = node.wait_exit(READY);
    assert!(!exit.success());
    let log = node.log_text();
    assert!(log.contains("failed to connect to any bootstrap node"), "{log}");
    assert!(log.contains(&format!("bootstrap node {} at", ghost.node_id())), "failure logged by node id:\n{log}");
    assert!(log.contains("start-up failed in phase bootstrap"), "{log}");
}

#[test]
fn failing_phases_name_themselves_and_exit_nonzero() {
    let root = tempfile::tempdir().expect("tempdir");
    // Port in use.
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let dir = root.path().join("port");
    configure(&dir, json!({ "listen_addr": taken.local_addr().expect("addr").to_string() }), &[]);
    let out = mynet(&dir, &["run"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("start-up failed in phase network services") && stderr.contains("cannot listen on"),
        "{stderr}"
    );

    // Bad config field.
    let dir = root.path().join("config");
    configure(&dir, json!({ "max_inbound": "lots" }), &[]);
    let out = mynet(&dir, &["run"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("phase configuration") && stderr.contains("node_config.json: field `max_inbound`"),
        "{stderr}"
    );

    // Data dir that is not a directory.
    let file = root.path().join("plain-file");
    std::fs::write(&file, "x").expect("write");
    let out = mynet(&file, &["run"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("phase configuration") && stderr.contains("is not a directory"), "{stderr}");

    // Key file with wrong permissions is an error, never replaced.
    let dir = root.path().join("key");
    configure(&dir, json!({}), &[]);
    assert!(mynet(&dir, &["init"]).status.success());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let key = dir.join("node.key");
        let before = std::fs::read(&key).expect("key");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let out = mynet(&dir, &["run"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(stderr.contains("phase cryptography") && stderr.contains("chmod 600"), "{stderr}");
        assert_eq!(std::fs::read(&key).expect("key"), before);
    }
}

#[test]
fn bad_peers_are_cut_off_with_a_reason_and_the_node_carries_on() {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path().join("n");
    configure(&dir, json!({ "handshake_timeout_ms": 500 }), &[]);
    let mut node = RunningNode::start(&dir);
    let status = node.wait_ready(READY);
    let addr = status["listen_addr"].as_str().expect("addr").to_string();

    // Garbage instead of a Noise handshake.
    let mut garbage = TcpStream::connect(&addr).expect("connect");
    let local = garbage.local_addr().expect("local").to_string();
    garbage.write_all(&[0, 4, 0xde, 0xad, 0xbe, 0xef]).expect("write");
    node.wait_log(&format!("{local}: transport: noise handshake failed"), READY);

    // Silence: connect and say nothing until the handshake deadline.
    let silent = TcpStream::connect(&addr).expect("connect");
    let local = silent.local_addr().expect("local").to_string();
    node.wait_log(&format!("{local}: "), READY);
    let log = node.wait_log("handshake not completed in time", READY);
    assert!(
        log.lines()
            .any(|l| l.contains(&local) && (l.contains("handshake not completed in time") || l.contains("timed out"))),
        "{log}"
    );

    // The node is still fine.
    let status = node.try_status().expect("still answers");
    assert_eq!(status["phase"], "ready");
    drop((garbage, silent));
    assert!(node.stop().success());
}

#[test]
fn init_status_config_and_api_token() {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path().join("n");
    let first = last_json(&mynet(&dir, &["init"]));
    assert_eq!(first["node_id"].as_str().expect("id").len(), 64);
    assert_eq!(first["created"], true);
    let second = last_json(&mynet(&dir, &["init"]));
    assert_eq!(second["node_id"], first["node_id"], "init never replaces a key");
    assert_eq!(second["created"], false);

    let shown = last_json(&mynet(&dir, &["config", "show"]));
    assert_eq!(shown["network_id"]["source"], "bootstrap.json");
    assert_eq!(shown["listen_addr"]["source"], "node_config.json");
    assert_eq!(shown["max_per_ip"], json!({ "value": 3, "source": "default", "applies": "live" }));

    configure(&dir, json!({}), &[]);
    let out = mynet(&dir, &["status"]);
    assert!(!out.status.success(), "no node running yet");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no running node"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let mut node = RunningNode::start(&dir);
    let status = node.wait_ready(READY);
    for field in ["node_id", "public_key", "listen_addr", "phase", "uptime_s", "peer_count", "peers"] {
        assert!(status.get(field).is_some(), "status lacks {field}: {status}");
    }
    // What `mynet peers` reads (found_by per peer, the blacklist), the DHT, and LAN discovery,
    // which is inactive on a loopback listen address. (The blacklist and dht were once absent
    // from the JSON: `mynet peers` then showed no blacklist at all.)
    assert!(status["blacklist"].is_array(), "{status}");
    assert!(status["dht"]["table_size"].is_u64(), "{status}");
    assert_eq!(status["lan"]["active"], false, "{status}");
    assert_eq!(status["lan"]["interfaces"], json!([]), "{status}");
    assert_ne!(status["listen_addr"], "127.0.0.1:0", "the real bound address");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join("api.token")).expect("token").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    // Without the token the API refuses.
    let api = std::fs::read_to_string(dir.join("api.addr")).expect("api.addr");
    let mut stream = TcpStream::connect(api.trim()).expect("connect");
    stream.write_all(b"GET /status HTTP/1.1\r\nAuthorization: Bearer wrong\r\n\r\n").expect("write");
    let mut answer = String::new();
    std::io::Read::read_to_string(&mut stream, &mut answer).expect("read");
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    assert!(node.stop().success());
    assert!(!dir.join("api.addr").exists(), "api.addr removed on clean shutdown");
}

/// `mynet config show | head`: a reader that closes its end early ends the command quietly
/// with success (it used to panic on the broken pipe).
#[test]
fn cli_output_survives_a_closed_pipe() {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path().join("n");
    assert!(mynet(&dir, &["init"]).status.success());
    for args in [&["config", "show"][..], &["replay", "--events"][..]] {
        let mut child = std::process::Command::new(common::bin())
            .arg("--data-dir")
            .arg(&dir)
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn");
        // Close the read end before the command writes (it loads its config first).
        drop(child.stdout.take());
        let out = child.wait_with_output().expect("wait");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(out.status.success() || !args.contains(&"show"), "{args:?}: {stderr}");
    }
}

/// Nodes on distinct loopback addresses dial from them, so a bootstrap node counts them as
/// distinct IPs: with `max_per_ip` 1 at the bootstrap node, two joiners on 127.0.0.2 and
/// 127.0.0.3 both get in (their dials used to leave from 127.0.0.1, and the second was
/// refused by the per-IP limit).
#[test]
fn dials_leave_from_the_listen_address() {
    let root = tempfile::tempdir().expect("tempdir");
    let a_dir = root.path().join("a");
    configure(&a_dir, json!({ "max_per_ip": 1 }), &[]);
    let mut a = RunningNode::start(&a_dir);
    a.wait_ready(READY);
    let joiners: Vec<RunningNode> = ["127.0.0.2", "127.0.0.3"]
        .iter()
        .enumerate()
        .map(|(i, ip)| {
            let dir = joiner(root.path(), &format!("j{i}"), &a, json!({ "listen_addr": format!("{ip}:0") }));
            RunningNode::start(&dir)
        })
        .collect();
    let status = a.wait_status(READY, |s| s["peer_count"] == 2);
    let mut seen: Vec<String> = status["peers"]
        .as_array()
        .expect("peers")
        .iter()
        .map(|p| p["address"].as_str().unwrap_or("").to_string())
        .collect();
    seen.sort();
    assert!(seen[0].starts_with("127.0.0.2:") && seen[1].starts_with("127.0.0.3:"), "{seen:?}");
    drop(joiners);
}

/// Joining is one line: `mynet invite` on a running node, `mynet init --join` on a new one,
/// which then connects; `mynet bootstrap add` refuses bad addresses and other networks
/// without touching the file, and lists a node once.
#[test]
fn joining_is_one_line() {
    let root = tempfile::tempdir().expect("tempdir");
    let a = first_node(root.path(), READY);
    let out = mynet(&a.dir, &["invite"]);
    let line = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(out.status.success() && line.starts_with("mynet://") && line.ends_with("/mynet-test"), "{line}");
    let a_status = a.try_status().expect("status");
    let invite_json = last_json(&mynet(&a.dir, &["invite", "--json"]));
    assert_eq!(invite_json["node_id"], a_status["node_id"]);
    assert_eq!(invite_json["invite"], line.as_str());

    let b_dir = root.path().join("b");
    let out = mynet(&b_dir, &["init", "--join", &line]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    std::fs::write(b_dir.join("node_config.json"), r#"{"listen_addr":"127.0.0.1:0"}"#).expect("node config");
    let bootstrap = std::fs::read_to_string(b_dir.join("bootstrap.json")).expect("bootstrap.json");
    let mut b = RunningNode::start(&b_dir);
    let status = b.wait_status(READY, |s| s["peer_count"] == 1);
    assert_eq!(status["peers"][0]["node_id"], a_status["node_id"]);
    assert_eq!(status["network_id"], "mynet-test", "joined the invite's network");

    // Bad input changes nothing and says why.
    let other_net = line.replace("/mynet-test", "/elsewhere");
    for (bad, why) in [("garbage", "must start with mynet://"), (other_net.as_str(), "network")] {
        let out = mynet(&b_dir, &["bootstrap", "add", bad]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains(why), "{bad}: {stderr}");
        assert_eq!(std::fs::read_to_string(b_dir.join("bootstrap.json")).expect("file"), bootstrap);
    }
    let again = last_json(&mynet(&b_dir, &["bootstrap", "add", &line, "--json"]));
    assert_eq!((again["result"].as_str(), again["bootstrap_nodes"].as_u64()), (Some("already listed"), Some(1)));
    drop(b);
}

/// Refusals explain themselves (issue 12, point 8): a bootstrap node with `max_per_ip` 1 and
/// two joiners on one IP. The second is refused, hears why over the secure channel, and its
/// log and start-up failure name the per-IP limit with a retry hint, not only "connection
/// closed by peer".
#[test]
fn a_refused_joiner_names_the_refusal_in_its_start_up_failure() {
    let root = tempfile::tempdir().expect("tempdir");
    let a_dir = root.path().join("a");
    configure(&a_dir, json!({ "max_per_ip": 1 }), &[]);
    let mut a = RunningNode::start(&a_dir);
    let a_id = a.wait_ready(READY)["node_id"].as_str().expect("id").to_string();
    let first = RunningNode::start(&joiner(root.path(), "j1", &a, json!({})));
    a.wait_status(READY, |s| s["peer_count"] == 1);
    let mut second = RunningNode::start(&joiner(root.path(), "j2", &a, json!({ "bootstrap_attempts": 1 })));
    let exit = second.wait_exit(READY);
    assert!(!exit.success());
    let log = second.log_text();
    assert!(log.contains("refused by the peer: per-IP connection limit (1) reached (retry after "), "{log}");
    let failure = format!(
        "error: start-up failed in phase bootstrap: failed to connect to any bootstrap node: bootstrap node {a_id} at "
    );
    assert!(log.contains(&failure), "{log}");
    assert!(log.contains("refused: per-IP connection limit (1) reached (retry after "), "{log}");
    let status = a.try_status().expect("status");
    assert!(status["counters"]["refusals_explained"].as_u64() >= Some(1), "{status}");
    assert_eq!(status["peer_count"], 1, "the first joiner stays");
    drop(first);
}
