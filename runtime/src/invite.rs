//! Joining is one line: `mynet invite` prints a peer address that carries the node's key, its
//! listen address and its network, and `mynet bootstrap add ADDRESS` (or `mynet init --join
//! ADDRESS`) checks it and puts it into `bootstrap.json`.
//!
//! The format: `mynet://PUBLIC_KEY@HOST:PORT/NETWORK_ID`, the key as 64 hex characters, an
//! IPv6 host in brackets. The node id is the key's hash, so it need not travel.

use std::fmt;
use std::fs;
use std::net::SocketAddr;
use std::str::FromStr;

use anyhow::{Context, Result, anyhow, bail};
use mynet_core::config::{BOOTSTRAP_FILE, Config, Layer};
use mynet_core::{NodeId, PublicKey};
use serde_json::{Value, json};

use crate::datadir::DataDir;
use crate::out::outln;

const SCHEME: &str = "mynet://";

/// A peer address, as `mynet invite` prints it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invite {
    pub public_key: PublicKey,
    pub address: SocketAddr,
    pub network_id: String,
}

impl Invite {
    pub fn node_id(&self) -> NodeId {
        NodeId::from_public_key(&self.public_key)
    }
}

impl fmt::Display for Invite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SCHEME}{}@{}/{}", self.public_key, self.address, self.network_id)
    }
}

impl FromStr for Invite {
    type Err = anyhow::Error;

    fn from_str(text: &str) -> Result<Invite> {
        let text = text.trim();
        let rest = text.strip_prefix(SCHEME).ok_or_else(|| {
            anyhow!("{text:?} is not a peer address: it must start with {SCHEME} (see `mynet invite`)")
        })?;
        let (key, rest) =
            rest.split_once('@').ok_or_else(|| anyhow!("{text:?}: no '@' between the key and the address"))?;
        let (address, network_id) =
            rest.split_once('/').ok_or_else(|| anyhow!("{text:?}: no '/NETWORK_ID' after the address"))?;
        let public_key =
            PublicKey::from_hex(key).map_err(|e| anyhow!("{text:?}: the key is not 64 hex characters ({e})"))?;
        let address: SocketAddr =
            address.parse().map_err(|_| anyhow!("{text:?}: {address:?} is not HOST:PORT (IPv6 in brackets)"))?;
        if address.port() == 0 || address.ip().is_unspecified() || address.ip().is_multicast() {
            bail!("{text:?}: {address} is not an address a node can be dialled at");
        }
        if network_id.is_empty() {
            bail!("{text:?}: the network id is empty");
        }
        Ok(Invite { public_key, address, network_id: network_id.to_string() })
    }
}

/// `mynet invite`: this node's peer address, from the running node's status.
pub fn invite(dir: &DataDir, address: Option<SocketAddr>, json: bool) -> Result<()> {
    let status = crate::api::get(dir, "/status")?;
    let field = |name: &str| status[name].as_str().map(str::to_string).ok_or_else(|| anyhow!("status lacks {name}"));
    let public_key = PublicKey::from_hex(&field("public_key")?).map_err(|e| anyhow!("status public_key: {e}"))?;
    let listen: SocketAddr = field("listen_addr")?.parse().context("status listen_addr")?;
    let address = match address {
        Some(address) => address,
        None if listen.ip().is_unspecified() => bail!(
            "the node listens on {listen}, every address of this host: say which one peers should dial with --address IP:{}",
            listen.port()
        ),
        None => listen,
    };
    let invite = Invite { public_key, address, network_id: field("network_id")? };
    // The printed line must parse back.
    let line = invite.to_string();
    line.parse::<Invite>()?;
    if json {
        outln!(
            "{}",
            json!({ "invite": line, "node_id": invite.node_id(), "address": address, "network_id": invite.network_id })
        );
    } else {
        outln!("{line}");
    }
    Ok(())
}

/// `mynet bootstrap add ADDRESS`: checks the peer address and adds it to `bootstrap.json`
/// (atomically; the rest of the file is kept). A node whose list is empty joins the invite's
/// network; otherwise the networks must match.
pub fn bootstrap_add(dir: &DataDir, text: &str, json: bool) -> Result<()> {
    let invite: Invite = text.parse()?;
    dir.ensure()?;
    dir.write_default_configs()?;
    let path = dir.root().join(BOOTSTRAP_FILE);
    let original = fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut file: Value =
        serde_json::from_str(&original).with_context(|| format!("{} is not valid JSON", path.display()))?;
    let Some(object) = file.as_object_mut() else { bail!("{} is not a JSON object", path.display()) };
    let list = object.entry("bootstrap_nodes").or_insert_with(|| json!([]));
    let Some(nodes) = list.as_array_mut() else { bail!("{}: bootstrap_nodes is not a list", path.display()) };
    let ours = fs::read_to_string(dir.root().join("node_id")).unwrap_or_default();
    let node_id = invite.node_id();
    if ours.trim() == node_id.to_string() {
        bail!("{invite} is this node's own address");
    }
    let empty = nodes.is_empty();
    let entry = json!({ "node_id": node_id, "address": invite.address, "public_key": invite.public_key });
    let existing = nodes.iter().position(|n| n["node_id"] == json!(node_id));
    let verb = match existing {
        Some(i) if nodes[i] == entry => "already listed",
        Some(i) => {
            nodes[i] = entry;
            "updated"
        }
        None => {
            nodes.push(entry);
            "added"
        }
    };
    let count = nodes.len();
    let network = object.get("network_id").and_then(Value::as_str).unwrap_or("mynet-dev").to_string();
    if network != invite.network_id {
        if !empty {
            bail!(
                "{invite} is a node of network {:?}; this node's {} is for {network:?}",
                invite.network_id,
                path.display()
            );
        }
        object.insert("network_id".into(), json!(invite.network_id));
    }
    // The whole config must still load before the file is replaced.
    let text = serde_json::to_string_pretty(&file)? + "\n";
    let node = fs::read_to_string(dir.root().join(mynet_core::config::NODE_CONFIG_FILE)).ok();
    Config::load(Layer { text: Some(&text) }, Layer { text: node.as_deref() })
        .map_err(|e| anyhow!("the new {} would not load: {e}", path.display()))?;
    if verb != "already listed" {
        let tmp = path.with_extension("json.tmp");
        fs::write(&tmp, &text).with_context(|| format!("cannot write {}", tmp.display()))?;
        fs::rename(&tmp, &path).with_context(|| format!("cannot replace {}", path.display()))?;
    }
    if json {
        outln!(
            "{}",
            json!({ "result": verb, "node_id": node_id, "address": invite.address, "bootstrap_nodes": count })
        );
    } else {
        let nodes = crate::out::plural(count, "bootstrap node", "bootstrap nodes");
        outln!("{verb}: {} at {} ({nodes} in {})", node_id.short(), invite.address, path.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_addresses_round_trip_and_bad_ones_say_why() {
        let key = mynet_core::Identity::from_secret_bytes(&[4; 32]).public_key();
        for address in ["192.168.1.5:7401", "[fd00::5]:7401", "127.0.0.3:9000"] {
            let invite =
                Invite { public_key: key, address: address.parse().expect("addr"), network_id: "net-a".into() };
            assert_eq!(invite.to_string().parse::<Invite>().expect("parses"), invite);
        }
        let good = format!("mynet://{key}@10.0.0.1:7401/net-a");
        for (bad, why) in [
            (good.replace("mynet://", "http://"), "must start with"),
            (good.replace('@', "#"), "no '@'"),
            (good.replace("/net-a", ""), "no '/NETWORK_ID'"),
            (good.replace(&key.to_string(), "abcd"), "64 hex"),
            (good.replace("10.0.0.1:7401", "10.0.0.1"), "HOST:PORT"),
            (good.replace("10.0.0.1:7401", "0.0.0.0:7401"), "cannot be dialled"),
            (good.replace("10.0.0.1:7401", "10.0.0.1:0"), "cannot be dialled"),
            (good.replace("/net-a", "/"), "empty"),
        ] {
            let err = bad.parse::<Invite>().expect_err(&bad).to_string();
            assert!(err.contains(why.trim_start_matches("cannot be ")), "{bad}: {err}");
        }
    }
}
