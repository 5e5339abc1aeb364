//! Helpers to run real `mynet` processes on loopback.

#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// The binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_mynet")
}

/// Runs `mynet --data-dir dir ARGS` to completion.
pub fn mynet(dir: &Path, args: &[&str]) -> Output {
    mynet_in(None, dir, args)
}

/// `mynet` itself, or run inside network namespace `netns` (`ip netns exec`).
fn command_in(netns: Option<&str>) -> Command {
    match netns {
        Some(ns) => {
            let mut command = Command::new("ip");
            command.args(["netns", "exec", ns, bin()]);
            command
        }
        None => Command::new(bin()),
    }
}

/// [`mynet`] inside network namespace `netns`, if given.
pub fn mynet_in(netns: Option<&str>, dir: &Path, args: &[&str]) -> Output {
    command_in(netns).arg("--data-dir").arg(dir).args(args).env_remove("RUST_LOG").output().expect("run mynet")
}

/// stdout of a command as JSON (its last line).
pub fn last_json(output: &Output) -> Value {
    let stdout = String::from_utf8_lossy(&output.stdout);
    if let Ok(whole) = serde_json::from_str(&stdout) {
        return whole;
    }
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .unwrap_or_else(|| panic!("no JSON in {stdout:?} / {}", String::from_utf8_lossy(&output.stderr)));
    serde_json::from_str(line).expect("JSON")
}

/// Writes a data dir's `node_config.json` (listen on any free loopback port) and `bootstrap.json`.
pub fn configure(dir: &Path, node_config: Value, bootstrap: &[Value]) {
    fs::create_dir_all(dir).expect("mkdir");
    let mut config = json!({ "listen_addr": "127.0.0.1:0" });
    if let (Some(base), Some(extra)) = (config.as_object_mut(), node_config.as_object()) {
        base.extend(extra.clone());
    }
    fs::write(dir.join("node_config.json"), config.to_string()).expect("write node config");
    let network = json!({ "network_id": "mynet-test", "protocol_version": "1.0.0", "bootstrap_nodes": bootstrap });
    fs::write(dir.join("bootstrap.json"), network.to_string()).expect("write bootstrap");
}

/// Starts the network's first node in `root/a` (no bootstrap list) and waits until it is ready.
pub fn first_node(root: &Path, within: Duration) -> RunningNode {
    let dir = root.join("a");
    configure(&dir, json!({}), &[]);
    let mut node = RunningNode::start(&dir);
    node.wait_ready(within);
    node
}

/// Configures `root/name` to join through `first`, with `node_config` on top; returns the dir.
pub fn joiner(root: &Path, name: &str, first: &RunningNode, node_config: Value) -> PathBuf {
    let dir = root.join(name);
    configure(&dir, node_config, &[first.bootstrap_entry()]);
    dir
}

/// A running node process; killed on drop if still running.
pub struct RunningNode {
    pub dir: PathBuf,
    pub child: Child,
    pub log: PathBuf,
    /// The network namespace it runs in, if not ours.
    pub netns: Option<String>,
}

impl RunningNode {
    /// Starts `mynet run` on `dir`, logging to `dir/../NAME.log`.
    pub fn start(dir: &Path) -> RunningNode {
        RunningNode::start_in(dir, None)
    }

    /// [`RunningNode::start`] inside network namespace `netns` (`ip netns exec` execs mynet,
    /// so the child is the node itself).
    pub fn start_in(dir: &Path, netns: Option<&str>) -> RunningNode {
        let log = dir.with_extension("log");
        let file = fs::File::create(&log).expect("log file");
        let _ = fs::remove_file(dir.join("api.addr"));
        let child = command_in(netns)
            .arg("--data-dir")
            .arg(dir)
            .arg("run")
            .env("RUST_LOG", "info,fjall=warn,lsm_tree=warn")
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("spawn mynet run");
        RunningNode { dir: dir.to_path_buf(), child, log, netns: netns.map(str::to_string) }
    }

    /// Waits until the node answers `mynet status` in phase `ready`.
    pub fn wait_ready(&mut self, within: Duration) -> Value {
        self.wait_status(within, |s| s["phase"] == "ready")
    }

    /// Waits until `pred(status)` holds.
    pub fn wait_status(&mut self, within: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.try_status()
                && pred(&status)
            {
                return status;
            }
            if let Ok(Some(exit)) = self.child.try_wait() {
                panic!("node exited with {exit} while waiting; log:\n{}", self.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "condition not reached in {within:?}; last status {:?}\nlog:\n{}",
                self.try_status(),
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `mynet status`, if the node answers.
    pub fn try_status(&self) -> Option<Value> {
        let out = mynet_in(self.netns.as_deref(), &self.dir, &["status", "--json"]);
        out.status.success().then(|| serde_json::from_slice(&out.stdout).ok()).flatten()
    }

    /// The bootstrap entry other nodes use to reach this one.
    pub fn bootstrap_entry(&self) -> Value {
        let status = self.try_status().expect("status");
        json!({ "node_id": status["node_id"], "address": status["listen_addr"], "public_key": status["public_key"] })
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn stop(&mut self) -> ExitStatus {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            assert!(Instant::now() < deadline, "node did not stop on SIGTERM; log:\n{}", self.log_text());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the process to exit by itself.
    pub fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            assert!(Instant::now() < deadline, "node still running after {within:?}; log:\n{}", self.log_text());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Everything the node logged so far.
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log contains `needle`.
    pub fn wait_log(&self, needle: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            let text = self.log_text();
            if text.contains(needle) {
                return text;
            }
            assert!(Instant::now() < deadline, "log never contained {needle:?}:\n{text}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for RunningNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
