//! `mynet devnet --nodes N [--dir D] [--json]`: a real network on one machine. N data dirs,
//! node i listening on 127.0.0.(i+1) (a distinct IP each, so per-IP limits see N hosts, and
//! dials leave from the listen address), node 0 the network's first node and every other
//! bootstrapping from node 0 and its parent in a binary tree (so no node takes every newcomer
//! at once), N child `mynet run` processes, a table of what started, and all of them stopped on
//! Ctrl-C or SIGTERM.
//!
//! Linux routes all of 127.0.0.0/8 to the loopback interface; other systems need the addresses
//! added first (macOS: `sudo ifconfig lo0 alias 127.0.0.2 up`, ...), which devnet checks.

use std::fs;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use mynet_core::Identity;
use mynet_core::config::{BOOTSTRAP_FILE, NODE_CONFIG_FILE};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};

use crate::datadir::DataDir;

/// Most nodes a devnet runs: 127.0.0.1 to 127.0.0.200.
pub const NODES_MAX: usize = 200;
/// The network every devnet node belongs to.
pub const NETWORK_ID: &str = "mynet-devnet";
/// How long the nodes have to write their API address (phase 4 of start-up).
pub const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the nodes have to stop after SIGTERM before they are killed.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(20);
/// Lines of a dead node's log shown.
pub const LOG_TAIL_LINES: usize = 20;
/// How often the children are looked at.
const POLL: Duration = Duration::from_millis(100);

/// `mynet devnet` options.
#[derive(clap::Args, Debug)]
pub struct DevnetArgs {
    /// How many nodes (1 to 200).
    #[arg(long, value_name = "N")]
    pub nodes: usize,
    /// Where the nodes' data dirs go (`D/node-000`, ...; their logs beside them); reused if it
    /// exists, so identities survive a restart. Default: a new temporary directory.
    #[arg(long, value_name = "D")]
    pub dir: Option<PathBuf>,
    /// Print the started nodes as one JSON line instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// One node of the devnet.
struct DevNode {
    index: usize,
    dir: DataDir,
    log: PathBuf,
    identity: Identity,
    listen: SocketAddr,
    child: Option<Child>,
    api_addr: Option<String>,
}

impl DevNode {
    fn name(&self) -> String {
        format!("node {} ({})", self.index, self.listen)
    }
}

/// Runs the devnet until Ctrl-C or SIGTERM (then stops every node and returns Ok), or until a
/// node fails to start (then stops the others and says which, with the end of its log).
pub fn run(args: &DevnetArgs) -> Result<()> {
    if !(1..=NODES_MAX).contains(&args.nodes) {
        bail!("--nodes must be between 1 and {NODES_MAX}, got {}", args.nodes);
    }
    let root = root_dir(args.dir.as_deref())?;
    let mut nodes = prepare(&root, args.nodes)?;
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().context("cannot start the async runtime")?;
    runtime.block_on(supervise(&root, &mut nodes, args.json))
}

/// The devnet's directory: `dir` (created if needed), or a new temporary one.
fn root_dir(dir: Option<&Path>) -> Result<PathBuf> {
    let root = match dir {
        Some(dir) => dir.to_path_buf(),
        None => {
            let stamp = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis());
            std::env::temp_dir().join(format!("mynet-devnet-{}-{stamp}", std::process::id()))
        }
    };
    fs::create_dir_all(&root).with_context(|| format!("cannot create the devnet directory {}", root.display()))?;
    Ok(fs::canonicalize(&root).unwrap_or(root))
}

/// Data dirs with keys, free ports on distinct loopback addresses, and configs wired to node 0
/// and a parent.
fn prepare(root: &Path, n: usize) -> Result<Vec<DevNode>> {
    let mut nodes = Vec::with_capacity(n);
    for index in 0..n {
        let ip = IpAddr::V4(Ipv4Addr::new(127, 0, 0, index as u8 + 1));
        let listen = free_port(ip)?;
        let dir = DataDir::new(root.join(format!("node-{index:03}")));
        let (identity, _) = dir.init().with_context(|| format!("node {index}: cannot set up its data dir"))?;
        let log = root.join(format!("node-{index:03}.log"));
        nodes.push(DevNode { index, dir, log, identity, listen, child: None, api_addr: None });
    }
    for node in &nodes {
        write_configs(node, &nodes)?;
    }
    Ok(nodes)
}

/// A port nobody listens on at `ip`, or why `ip` cannot be used.
fn free_port(ip: IpAddr) -> Result<SocketAddr> {
    let listener = TcpListener::bind(SocketAddr::new(ip, 0)).with_context(|| {
        format!(
            "cannot listen on {ip}: devnet gives each node its own loopback address (Linux routes 127.0.0.0/8 to \
             loopback; elsewhere add the address first, e.g. `sudo ifconfig lo0 alias {ip} up` on macOS)"
        )
    })?;
    listener.local_addr().context("address of a probe listener")
}

/// The bootstrap nodes of node `i`: node 0 and its parent in a binary tree.
fn bootstrap_of(i: usize) -> Vec<usize> {
    match i {
        0 => Vec::new(),
        _ if (i - 1) / 2 == 0 => vec![0],
        _ => vec![0, (i - 1) / 2],
    }
}

fn write_configs(node: &DevNode, nodes: &[DevNode]) -> Result<()> {
    let node_config = json!({
        "listen_addr": node.listen,
        "api_addr": SocketAddr::new(node.listen.ip(), 0),
        "lan_discovery": false,
    });
    let bootstrap: Vec<Value> = bootstrap_of(node.index)
        .into_iter()
        .map(|b| {
            let peer = &nodes[b];
            json!({
                "node_id": peer.identity.node_id(),
                "address": peer.listen,
                "public_key": peer.identity.public_key(),
            })
        })
        .collect();
    let network = json!({
        "network_id": NETWORK_ID,
        "protocol_version": mynet_core::PROTOCOL_VERSION,
        "bootstrap_nodes": bootstrap,
    });
    for (name, value) in [(NODE_CONFIG_FILE, node_config), (BOOTSTRAP_FILE, network)] {
        let path = node.dir.root().join(name);
        let text = serde_json::to_string_pretty(&value).context("config as JSON")?;
        fs::write(&path, format!("{text}\n")).with_context(|| format!("cannot write {}", path.display()))?;
    }
    // A config devnet cannot load would only fail later, in the child.
    node.dir.load_config().map_err(|e| anyhow!("{}: generated config does not load: {e}", node.name()))?;
    Ok(())
}

/// Starts the nodes (node 0 first), prints them, and waits for a signal or a failure.
async fn supervise(root: &Path, nodes: &mut [DevNode], json: bool) -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
    let started = tokio::select! {
        started = start_all(nodes) => started,
        _ = term.recv() => Err(anyhow!("stopped by SIGTERM while starting")),
        _ = int.recv() => Err(anyhow!("stopped by SIGINT while starting")),
    };
    if let Err(err) = started {
        let stopped = stop_all(nodes).await;
        eprintln!("devnet: stopped the {stopped} other running nodes; data dirs kept in {}", root.display());
        return Err(err);
    }
    announce(root, nodes, json);
    let mut tick = tokio::time::interval(POLL);
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = tick.tick() => {
                report_deaths(nodes);
                if nodes.iter().all(|n| n.child.is_none()) {
                    bail!("every node of the devnet has exited; their logs are in {}", root.display());
                }
            }
        }
    }
    let stopped = stop_all(nodes).await;
    eprintln!("devnet: stopped {stopped} of {} nodes; data dirs kept in {}", nodes.len(), root.display());
    Ok(())
}

/// Spawns node 0, waits until it serves, spawns the rest, and waits until every node wrote its
/// API address. A node that exits meanwhile fails the start, named with the end of its log.
async fn start_all(nodes: &mut [DevNode]) -> Result<()> {
    let exe = std::env::current_exe().context("cannot find the mynet executable")?;
    let deadline = Instant::now() + START_TIMEOUT;
    for stage in [0..1, 1..nodes.len()] {
        for node in &mut nodes[stage.clone()] {
            let _ = fs::remove_file(node.dir.api_addr_path());
            node.child = Some(spawn(&exe, node)?);
        }
        while nodes[stage.clone()].iter().any(|n| n.api_addr.is_none()) {
            for node in &mut nodes[stage.clone()] {
                if node.api_addr.is_none() {
                    check_alive(node)?;
                    node.api_addr = fs::read_to_string(node.dir.api_addr_path()).ok().map(|a| a.trim().to_string());
                }
            }
            if Instant::now() > deadline {
                let late: Vec<String> = nodes.iter().filter(|n| n.api_addr.is_none()).map(DevNode::name).collect();
                bail!("{} did not start within {START_TIMEOUT:?}; see their logs", late.join(", "));
            }
            tokio::time::sleep(POLL).await;
        }
    }
    Ok(())
}

fn spawn(exe: &Path, node: &DevNode) -> Result<Child> {
    let log = fs::File::create(&node.log).with_context(|| format!("cannot create {}", node.log.display()))?;
    Command::new(exe)
        .arg("--data-dir")
        .arg(node.dir.root())
        .arg("run")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .with_context(|| format!("{}: cannot start {}", node.name(), exe.display()))
}

/// If the node's process has exited (it is then forgotten): which node, how, and the end of
/// its log.
fn exited(node: &mut DevNode) -> Option<String> {
    let child = node.child.as_mut()?;
    let status = match child.try_wait() {
        Ok(None) => return None,
        Ok(Some(status)) => status.to_string(),
        Err(err) => format!("its process cannot be checked: {err}"),
    };
    node.child = None;
    Some(format!("{} exited ({status}); the end of {}:\n{}", node.name(), node.log.display(), tail(&node.log)))
}

/// An error if the node exited during start-up.
fn check_alive(node: &mut DevNode) -> Result<()> {
    match exited(node) {
        Some(what) => Err(anyhow!("during start-up, {what}")),
        None => Ok(()),
    }
}

/// Says which nodes exited since the last look, with the end of their logs; the others run on.
fn report_deaths(nodes: &mut [DevNode]) {
    for node in nodes.iter_mut() {
        if let Some(what) = exited(node) {
            eprintln!("devnet: {what}");
        }
    }
}

/// The last [`LOG_TAIL_LINES`] lines of `log`.
fn tail(log: &Path) -> String {
    let text = fs::read_to_string(log).unwrap_or_else(|e| format!("(cannot read the log: {e})"));
    let lines: Vec<&str> = text.lines().collect();
    let from = lines.len().saturating_sub(LOG_TAIL_LINES);
    lines[from..].iter().map(|l| format!("  | {l}")).collect::<Vec<_>>().join("\n")
}

/// Prints the started nodes: a table, or one JSON line.
fn announce(root: &Path, nodes: &[DevNode], json: bool) {
    if json {
        let list: Vec<Value> = nodes
            .iter()
            .map(|n| {
                json!({
                    "index": n.index,
                    "node_id": n.identity.node_id(),
                    "address": n.listen,
                    "api_addr": n.api_addr,
                    "data_dir": n.dir.root(),
                    "log": n.log,
                    "pid": n.child.as_ref().map(Child::id),
                })
            })
            .collect();
        say(&json!({ "dir": root, "network_id": NETWORK_ID, "nodes": list }).to_string());
        return;
    }
    let mut text = format!("devnet: {} nodes of network {NETWORK_ID} in {}\n", nodes.len(), root.display());
    text.push_str(&format!("{:>4}  {:<64}  {:<21}  {:<21}  {}\n", "NODE", "NODE ID", "ADDRESS", "API", "DATA DIR"));
    for n in nodes {
        text.push_str(&format!(
            "{:>4}  {:<64}  {:<21}  {:<21}  {}\n",
            n.index,
            n.identity.node_id().to_string(),
            n.listen.to_string(),
            n.api_addr.as_deref().unwrap_or("-"),
            n.dir.root().display()
        ));
    }
    text.push_str(&format!(
        "inspect one with: mynet --data-dir {} status; logs: {}/node-NNN.log; Ctrl-C stops them all",
        nodes[0].dir.root().display(),
        root.display()
    ));
    say(&text);
}

/// Writes to stdout; a reader that went away does not stop the devnet (its nodes still need
/// stopping), so write errors are ignored.
fn say(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{text}").and_then(|()| out.flush());
}

/// SIGTERM to every running node, then SIGKILL to those still running after
/// [`STOP_TIMEOUT`]; returns how many stopped on SIGTERM.
async fn stop_all(nodes: &mut [DevNode]) -> usize {
    for node in nodes.iter() {
        if let Some(child) = &node.child
            && let Ok(pid) = i32::try_from(child.id())
        {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
    }
    let deadline = Instant::now() + STOP_TIMEOUT;
    let mut stopped = 0;
    while Instant::now() < deadline {
        for node in nodes.iter_mut() {
            if let Some(child) = node.child.as_mut()
                && !matches!(child.try_wait(), Ok(None))
            {
                node.child = None;
                stopped += 1;
            }
        }
        if nodes.iter().all(|n| n.child.is_none()) {
            return stopped;
        }
        tokio::time::sleep(POLL).await;
    }
    for node in nodes.iter_mut() {
        if let Some(mut child) = node.child.take() {
            eprintln!("devnet: {} did not stop within {STOP_TIMEOUT:?}; killed", node.name());
            let _ = child.kill();
            let _ = child.wait();
        }
    }
    stopped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bootstrap_tree_spreads_newcomers() {
        assert_eq!(bootstrap_of(0), Vec::<usize>::new());
        assert_eq!(bootstrap_of(1), vec![0]);
        assert_eq!(bootstrap_of(2), vec![0]);
        assert_eq!(bootstrap_of(3), vec![0, 1]);
        assert_eq!(bootstrap_of(6), vec![0, 2]);
        // No node is a parent of more than two.
        let mut children = vec![0; NODES_MAX];
        for i in 1..NODES_MAX {
            if let Some(&parent) = bootstrap_of(i).get(1) {
                children[parent] += 1;
            }
        }
        assert!(children.iter().all(|c| *c <= 2));
    }
}
