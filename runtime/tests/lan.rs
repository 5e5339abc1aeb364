//! LAN discovery between real `mynet` processes, each in a network namespace this test creates,
//! joined by veth pairs to one bridge (a LAN). Nodes have an empty bootstrap list: they find
//! each other only by their multicast announcements. Skipped, with the reason, where network
//! namespaces cannot be made (not root, no iproute2, no CAP_NET_ADMIN).

mod common;

use std::process::Command;
use std::time::Duration;

use common::{RunningNode, configure, mynet_in};
use serde_json::{Value, json};

const FOUND: Duration = Duration::from_secs(30);

/// Runs `ip ARGS`, returning stderr on failure.
fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip").args(args).output().map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// Namespaces and links made by the test; deleted on drop (deleting a namespace deletes its
/// interfaces, and a veth goes with its peer).
struct Lan {
    namespaces: Vec<String>,
}

impl Drop for Lan {
    fn drop(&mut self) {
        for ns in &self.namespaces {
            let _ = ip(&["netns", "del", ns]);
        }
    }
}

impl Lan {
    /// A hub namespace with a bridge, and `n` host namespaces each with `eth0` on the bridge,
    /// 10.77.0.(i+1)/24 and fd77::(i+1)/64; hosts from `late` on get no address yet.
    fn build(n: usize, late: usize) -> Result<Lan, String> {
        let tag = std::process::id() % 100_000;
        let hub = format!("mynl{tag}h");
        let mut lan = Lan { namespaces: vec![hub.clone()] };
        ip(&["netns", "add", &hub])?;
        ip(&["-n", &hub, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &hub, "link", "set", "br0", "up"])?;
        for i in 0..n {
            let ns = format!("mynl{tag}n{i}");
            ip(&["netns", "add", &ns])?;
            lan.namespaces.push(ns.clone());
            let port = format!("p{i}");
            ip(&["-n", &hub, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &ns])?;
            ip(&["-n", &hub, "link", "set", &port, "master", "br0", "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            if i < late {
                lan.address(i)?;
            }
        }
        Ok(lan)
    }

    /// Gives host `i` its addresses.
    fn address(&self, i: usize) -> Result<(), String> {
        let ns = self.host(i);
        ip(&["-n", ns, "addr", "add", &format!("10.77.0.{}/24", i + 1), "dev", "eth0"])?;
        ip(&["-n", ns, "addr", "add", &format!("fd77::{}/64", i + 1), "dev", "eth0", "nodad"])
    }

    fn host(&self, i: usize) -> &str {
        &self.namespaces[i + 1]
    }
}

/// Three hosts on one LAN, empty bootstrap lists: two listen on every IPv4 address (found at
/// the datagram's source), one on its IPv6 address only (found at the address it announces on
/// the IPv6 group). Nodes 0 and 2 name their interface in `lan_interfaces`, as an operator
/// would on a host with several; node 1 lets the node choose (loopback is passed over). Every
/// node connects to both others, and status and `mynet peers` say they were found on the LAN.
#[test]
fn nodes_on_one_lan_with_no_bootstrap_list_find_each_other() {
    let lan = match Lan::build(4, 3) {
        Ok(lan) => lan,
        Err(why) => {
            eprintln!("SKIPPED: cannot create network namespaces here (needs root and iproute2): {why}");
            return;
        }
    };
    let root = tempfile::tempdir().expect("tempdir");
    let listens = ["0.0.0.0:7401", "0.0.0.0:7401", "[fd77::3]:7401"];
    let mut nodes: Vec<RunningNode> = listens
        .iter()
        .enumerate()
        .map(|(i, listen)| {
            let dir = root.path().join(format!("n{i}"));
            let names = if i == 1 { json!([]) } else { json!(["eth0"]) };
            configure(&dir, json!({ "listen_addr": listen, "lan_interfaces": names }), &[]);
            RunningNode::start_in(&dir, Some(lan.host(i)))
        })
        .collect();
    // Connected to both, and heard both (the repeats 1 s and 3 s after start reach a node that
    // started after the first announcement).
    let statuses: Vec<Value> = nodes
        .iter_mut()
        .map(|n| n.wait_status(FOUND, |s| s["peer_count"] == 2 && s["lan"]["accepted"].as_u64() >= Some(2)))
        .collect();
    for (i, status) in statuses.iter().enumerate() {
        let l = &status["lan"];
        assert_eq!(l["active"], true, "node {i}: {l}");
        assert_eq!(l["interfaces"][0]["name"], "eth0", "node {i}: {l}");
        assert!(l["sent"].as_u64() >= Some(1) && l["datagrams_sent"].as_u64() >= Some(1), "node {i}: {l}");
        let lo = if i == 1 { "lo: loopback" } else { "lo: not in lan_interfaces" };
        assert!(l["skipped"].as_array().is_some_and(|s| s.iter().any(|x| x == lo)), "node {i}: {l}");
        let found: Vec<&str> =
            status["peers"].as_array().expect("peers").iter().filter_map(|p| p["found_by"].as_str()).collect();
        assert_eq!(found.len(), 2, "node {i}: {status}");
        assert!(found.iter().all(|f| *f == "lan" || *f == "inbound"), "node {i}: {found:?}");
    }
    // The IPv6-only node was dialled at its announced address by at least one IPv4 listener.
    let v6_peer_seen = statuses[..2]
        .iter()
        .any(|s| s["peers"].as_array().is_some_and(|ps| ps.iter().any(|p| p["address"] == "[fd77::3]:7401")));
    assert!(v6_peer_seen, "{statuses:?}");
    // `mynet peers` says how each was found: the dialler found the other on the LAN (the
    // dialled end says `inbound`, whichever end dialled first).
    let tables: Vec<String> = (0..3)
        .map(|i| String::from_utf8_lossy(&mynet_in(Some(lan.host(i)), &nodes[i].dir, &["peers"]).stdout).to_string())
        .collect();
    assert!(tables.iter().all(|t| t.contains("FOUND BY") && t.contains("2 peers")), "{tables:?}");
    assert!(tables.iter().any(|t| t.contains(" lan ")), "{tables:?}");
    // A fourth host whose interface gets its IPv4 address only after the node started (a
    // node up before DHCP): the interface is joined again when its address appears, given
    // the last announcement, and the others answer.
    let dir = root.path().join("n3");
    configure(&dir, json!({ "listen_addr": "0.0.0.0:7401", "lan_interfaces": ["eth0"] }), &[]);
    let mut late = RunningNode::start_in(&dir, Some(lan.host(3)));
    late.wait_ready(FOUND);
    std::thread::sleep(Duration::from_secs(2));
    lan.address(3).expect("address the late host");
    // (Peer exchange may connect it first: wait for the interface to be joined as well.)
    let status = late.wait_status(FOUND, |s| s["peer_count"] == 3 && s["lan"]["interfaces"][0]["ipv4"] == "10.77.0.4");
    assert!(status["lan"]["datagrams_sent"].as_u64() >= Some(1), "{}", status["lan"]);
    nodes.push(late);
    for node in &mut nodes {
        assert!(node.stop().success(), "clean exit; log:\n{}", node.log_text());
    }
    drop(lan);
}
