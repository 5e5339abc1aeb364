//! Configuration: built-in defaults < `bootstrap.json` < `node_config.json` (SPEC R2).
//!
//! Parsing and validation are pure functions over the files' text, so the driver only reads
//! files and every error can name the file, the field path and what is wrong.

use core::net::SocketAddr;
use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::id::{NodeId, PublicKey};
use crate::reconcile::meta::ItemState;

/// File name of the network-wide layer.
pub const BOOTSTRAP_FILE: &str = "bootstrap.json";
/// File name of this node's layer.
pub const NODE_CONFIG_FILE: &str = "node_config.json";
/// Most bootstrap nodes a config may list.
pub const BOOTSTRAP_NODES_MAX: usize = 64;
/// Most keys `publishers` may name.
pub const PUBLISHERS_MAX: usize = 1024;
/// Most interfaces named in `lan_interfaces`.
pub const LAN_INTERFACES_MAX: usize = 32;

/// One entry of `bootstrap_nodes`: who to contact first and the key it must prove.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootstrapNode {
    /// BLAKE3 of `public_key`, 64 hex characters.
    pub node_id: NodeId,
    /// Where it listens, `ip:port`.
    pub address: SocketAddr,
    /// Its ed25519 public key, 64 hex characters.
    pub public_key: PublicKey,
}

/// Which layer a merged value came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Source {
    /// Built into the binary.
    #[serde(rename = "default")]
    Default,
    /// `bootstrap.json` in the data dir.
    #[serde(rename = "bootstrap.json")]
    Bootstrap,
    /// `node_config.json` in the data dir.
    #[serde(rename = "node_config.json")]
    NodeConfig,
}

impl Source {
    /// The file (or "built-in defaults") a user should look at.
    pub fn file(self) -> &'static str {
        match self {
            Source::Default => "built-in defaults",
            Source::Bootstrap => BOOTSTRAP_FILE,
            Source::NodeConfig => NODE_CONFIG_FILE,
        }
    }
}

/// A configuration error that names the file, the field path and what is wrong.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("{file}: field `{path}`: {message}")]
pub struct ConfigError {
    /// The file the bad value came from.
    pub file: String,
    /// Dotted path to the field, e.g. `bootstrap_nodes[0].address`.
    pub path: String,
    /// What is wrong and, where it helps, what would be right.
    pub message: String,
}

impl ConfigError {
    /// The field path and what is wrong, without the file (for a value not yet in a file).
    pub fn message_for_operator(&self) -> String {
        format!("field `{}`: {}", self.path, self.message)
    }

    fn new(source: Source, path: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError { file: source.file().to_string(), path: path.into(), message: message.into() }
    }
}

/// Where each merged field came from, keyed by field name.
pub type Sources = BTreeMap<&'static str, Source>;

/// Which items a node replicates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Replicate {
    /// Every item its peers hold, within `storage_max_bytes`.
    All,
    /// Only what is added here or asked for with `mynet get`.
    None,
}

macro_rules! config_schema {
    (
        network { $( $(#[doc = $ndoc:literal])* $nf:ident : $nt:ty = $nv:expr, )* }
        node { $( $(#[doc = $ddoc:literal])* $df:ident : $dt:ty = $dv:expr, )* }
    ) => {
        /// The merged configuration a node runs with.
        #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
        pub struct Config {
            $( $(#[doc = $ndoc])* pub $nf: $nt, )*
            $( $(#[doc = $ddoc])* pub $df: $dt, )*
        }

        impl Default for Config {
            fn default() -> Config {
                Config { $( $nf: $nv, )* $( $df: $dv, )* }
            }
        }

        /// `bootstrap.json`: network-wide fields only.
        #[derive(Debug, Default, Deserialize)]
        #[serde(deny_unknown_fields)]
        struct NetworkLayer { $( $nf: Option<$nt>, )* }

        /// `node_config.json`: this node's fields, and may override network-wide ones.
        #[derive(Debug, Default, Deserialize)]
        #[serde(deny_unknown_fields)]
        struct NodeLayer { $( $nf: Option<$nt>, )* $( $df: Option<$dt>, )* }

        impl Config {
            /// Every field name, in declaration order.
            pub const FIELDS: &'static [&'static str] = &[ $( stringify!($nf), )* $( stringify!($df), )* ];

            fn apply_network(&mut self, layer: NetworkLayer, sources: &mut Sources) {
                $( if let Some(value) = layer.$nf { self.$nf = value; sources.insert(stringify!($nf), Source::Bootstrap); } )*
            }

            fn apply_node(&mut self, layer: NodeLayer, sources: &mut Sources) {
                $( if let Some(value) = layer.$nf { self.$nf = value; sources.insert(stringify!($nf), Source::NodeConfig); } )*
                $( if let Some(value) = layer.$df { self.$df = value; sources.insert(stringify!($df), Source::NodeConfig); } )*
            }
        }
    };
}

config_schema! {
    network {
        /// Peers on another network id are refused at handshake.
        network_id: String = "mynet-dev".to_string(),
        /// Protocol version spoken, `major.minor.patch`; peers must share the major.
        protocol_version: String = crate::PROTOCOL_VERSION.to_string(),
        /// Nodes contacted at start-up; empty means this is the network's first node.
        bootstrap_nodes: Vec<BootstrapNode> = Vec::new(),
        /// ed25519 public keys (hex) allowed to publish item metadata; empty: any node may
        /// (development networks).
        publishers: Vec<PublicKey> = Vec::new(),
    }
    node {
        /// Address the peer listener binds; port 0 picks any free port.
        listen_addr: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 7401)),
        /// Address the local HTTP API binds; must be loopback.
        api_addr: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 0)),
        /// Most outbound connections, handshaking ones included (SPEC R6.1).
        max_outbound: u32 = 50,
        /// Most inbound connections, handshaking ones included (SPEC R6.1).
        max_inbound: u32 = 100,
        /// Most connections to or from one IP address (SPEC R6.1).
        max_per_ip: u32 = 3,
        /// Established peers the node dials towards; past it, bootstrap links are released.
        target_peers: u32 = 8,
        /// Most peers remembered from discovery.
        max_known_peers: u32 = 1000,
        /// Time from opening a connection to a verified handshake (SPEC R6.2: 10 s).
        handshake_timeout_ms: u64 = 10_000,
        /// Largest accepted difference between a peer's handshake timestamp and our clock.
        max_clock_skew_ms: u64 = 60_000,
        /// Period of peer discovery rounds (SPEC R5.4): peer exchange, the DHT, LAN multicast.
        discovery_interval_ms: u64 = 60_000,
        /// Take part in the Kademlia DHT (SPEC R5.2): routing table, lookups, provider records.
        dht: bool = true,
        /// How often the provider records of held items are published again (they expire
        /// after twice this).
        provider_republish_ms: u64 = 22 * 3_600_000,
        /// Announce this node on the local network and listen for others' announcements (SPEC
        /// R5.3): signed, on an IPv4 and an IPv6 multicast group, on each real interface.
        /// Needs a listen address a LAN can reach (not loopback).
        lan_discovery: bool = true,
        /// Interfaces to announce on, by name; empty: every interface that is up, multicast
        /// capable and not loopback or virtual (docker, veth, bridges, VPN tunnels).
        lan_interfaces: Vec<String> = Vec::new(),
        /// Rounds of dialling the bootstrap list before start-up gives up.
        bootstrap_attempts: u32 = 4,
        /// Pause before the second bootstrap round; it doubles for each later round.
        bootstrap_retry_ms: u64 = 2_000,
        /// How long a peer that crossed the misbehaviour threshold stays blacklisted.
        ban_duration_ms: u64 = 600_000,
        /// Inputs between two state/output-hash checkpoints in the event log.
        checkpoint_interval_events: u64 = 1_000,
        /// Inputs between two snapshots of the node's state.
        snapshot_interval_events: u64 = 20_000,
        /// Longest time between two snapshots while inputs arrive.
        snapshot_interval_ms: u64 = 600_000,
        /// Event log kept behind the latest snapshot, in bytes; older segments are cut.
        log_retain_bytes: u64 = 256 * 1024 * 1024,
        /// Age past which log segments behind a later snapshot are cut.
        log_retain_ms: u64 = 7 * 24 * 3_600_000,
        /// What the node replicates: `all` items peers hold, or `none` (serve only what was
        /// added here and what the operator fetched).
        replicate: Replicate = Replicate::All,
        /// Item states the node replicates (SPEC R9): e.g. `["preview"]` on an edge node.
        /// Items the operator adds or asks for are held whatever their state.
        replicate_states: Vec<ItemState> = vec![ItemState::Encrypted, ItemState::Decrypted, ItemState::Preview],
        /// Most bytes of content the node stores; replication never goes past it.
        storage_max_bytes: u64 = 100 * 1024 * 1024 * 1024,
        /// Items fetched at once (SPEC R7: sync workers).
        sync_workers: u32 = 3,
        /// Longest the start-up initial sync (phase 7) waits for its first queue to drain.
        initial_sync_max_ms: u64 = 60_000,
        /// Period of the reconciliation rounds a node starts with each peer (SPEC R8).
        reconcile_interval_ms: u64 = 30_000,
    }
}

/// Fields a running node takes without a restart (`mynet config set`, `Input::Configure`);
/// every other field is read at start-up only (sockets, the event log, the network's identity).
pub const LIVE_FIELDS: &[&str] = &[
    "max_outbound",
    "max_inbound",
    "max_per_ip",
    "target_peers",
    "max_known_peers",
    "handshake_timeout_ms",
    "max_clock_skew_ms",
    "discovery_interval_ms",
    "provider_republish_ms",
    "ban_duration_ms",
    "replicate",
    "replicate_states",
    "storage_max_bytes",
    "sync_workers",
    "reconcile_interval_ms",
];

impl Config {
    /// Whether `field` applies to a running node (else it needs a restart).
    pub fn applies_live(field: &str) -> bool {
        LIVE_FIELDS.contains(&field)
    }

    /// This config with the live fields of `new` and every other field kept: what a running
    /// node takes from a changed config.
    pub fn with_live_fields_of(&self, new: &Config) -> Config {
        Config {
            max_outbound: new.max_outbound,
            max_inbound: new.max_inbound,
            max_per_ip: new.max_per_ip,
            target_peers: new.target_peers,
            max_known_peers: new.max_known_peers,
            handshake_timeout_ms: new.handshake_timeout_ms,
            max_clock_skew_ms: new.max_clock_skew_ms,
            discovery_interval_ms: new.discovery_interval_ms,
            provider_republish_ms: new.provider_republish_ms,
            ban_duration_ms: new.ban_duration_ms,
            replicate: new.replicate,
            replicate_states: new.replicate_states.clone(),
            storage_max_bytes: new.storage_max_bytes,
            sync_workers: new.sync_workers,
            reconcile_interval_ms: new.reconcile_interval_ms,
            ..self.clone()
        }
    }

    /// The live fields whose values differ between `self` and `other`, in declaration order.
    pub fn live_changes(&self, other: &Config) -> Vec<&'static str> {
        let (a, b) = (serde_json::to_value(self).ok(), serde_json::to_value(other).ok());
        LIVE_FIELDS
            .iter()
            .copied()
            .filter(|f| a.as_ref().and_then(|a| a.get(f)) != b.as_ref().and_then(|b| b.get(f)))
            .collect()
    }
}

/// A merged config and where each field came from.
#[derive(Clone, Debug)]
pub struct Layered {
    /// The configuration in force.
    pub config: Config,
    /// Provenance of every field.
    pub sources: Sources,
}

/// A config layer's text, or its absence.
#[derive(Clone, Copy, Debug)]
pub struct Layer<'a> {
    /// The file's contents, `None` if the file does not exist.
    pub text: Option<&'a str>,
}

impl Config {
    /// Merges defaults, `bootstrap.json` and `node_config.json`, then validates the result.
    pub fn load(bootstrap: Layer<'_>, node: Layer<'_>) -> Result<Layered, ConfigError> {
        let mut config = Config::default();
        let mut sources: Sources = Config::FIELDS.iter().map(|field| (*field, Source::Default)).collect();
        if let Some(text) = bootstrap.text {
            let layer: NetworkLayer = parse_layer(Source::Bootstrap, text)?;
            config.apply_network(layer, &mut sources);
        }
        if let Some(text) = node.text {
            let layer: NodeLayer = parse_layer(Source::NodeConfig, text)?;
            config.apply_node(layer, &mut sources);
        }
        config.validate(&sources)?;
        Ok(Layered { config, sources })
    }

    /// Checks the values the types cannot, naming the file each came from.
    pub fn validate(&self, sources: &Sources) -> Result<(), ConfigError> {
        let src = |field: &'static str| sources.get(field).copied().unwrap_or(Source::Default);
        let fail =
            |field: &'static str, path: String, message: String| Err(ConfigError::new(src(field), path, message));
        if self.network_id.is_empty()
            || self.network_id.len() > 64
            || !self.network_id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return fail(
                "network_id",
                "network_id".into(),
                format!("{:?} must be 1-64 characters of a-z, 0-9, '-', '_', '.'", self.network_id),
            );
        }
        match parse_version(&self.protocol_version) {
            None => {
                return fail(
                    "protocol_version",
                    "protocol_version".into(),
                    format!("{:?} is not a version of the form 1.2.3", self.protocol_version),
                );
            }
            Some(version) if !versions_compatible(version, ours()) => {
                return fail(
                    "protocol_version",
                    "protocol_version".into(),
                    format!(
                        "{} is not compatible with this build's {}",
                        self.protocol_version,
                        crate::PROTOCOL_VERSION
                    ),
                );
            }
            Some(_) => {}
        }
        self.validate_bootstrap(&src)?;
        if self.publishers.len() > PUBLISHERS_MAX {
            return fail(
                "publishers",
                "publishers".into(),
                format!("{} keys; at most {PUBLISHERS_MAX}", self.publishers.len()),
            );
        }
        if let Some(i) = (1..self.publishers.len()).find(|i| self.publishers[..*i].contains(&self.publishers[*i])) {
            return fail("publishers", format!("publishers[{i}]"), "listed twice".into());
        }
        let states = &self.replicate_states;
        if let Some(i) = (1..states.len()).find(|i| states[..*i].contains(&states[*i])) {
            return fail("replicate_states", format!("replicate_states[{i}]"), "listed twice".into());
        }
        if self.lan_interfaces.len() > LAN_INTERFACES_MAX {
            return fail(
                "lan_interfaces",
                "lan_interfaces".into(),
                format!("{} interfaces; at most {LAN_INTERFACES_MAX}", self.lan_interfaces.len()),
            );
        }
        if let Some(i) = self.lan_interfaces.iter().position(|n| n.is_empty() || n.len() > 15 || n.contains('/')) {
            return fail(
                "lan_interfaces",
                format!("lan_interfaces[{i}]"),
                format!("{:?} is not an interface name (1-15 characters, no '/')", self.lan_interfaces[i]),
            );
        }
        self.validate_limits(&src)
    }

    fn validate_bootstrap(&self, src: &dyn Fn(&'static str) -> Source) -> Result<(), ConfigError> {
        let source = src("bootstrap_nodes");
        if self.bootstrap_nodes.len() > BOOTSTRAP_NODES_MAX {
            return Err(ConfigError::new(
                source,
                "bootstrap_nodes",
                format!("{} entries; at most {BOOTSTRAP_NODES_MAX}", self.bootstrap_nodes.len()),
            ));
        }
        for (i, node) in self.bootstrap_nodes.iter().enumerate() {
            let derived = NodeId::from_public_key(&node.public_key);
            if derived != node.node_id {
                return Err(ConfigError::new(
                    source,
                    format!("bootstrap_nodes[{i}].node_id"),
                    format!("does not match public_key (BLAKE3 of that key is {derived})"),
                ));
            }
            if node.address.port() == 0 || node.address.ip().is_unspecified() {
                return Err(ConfigError::new(
                    source,
                    format!("bootstrap_nodes[{i}].address"),
                    format!("{} is not a dialable address", node.address),
                ));
            }
            if self.bootstrap_nodes[..i].iter().any(|other| other.node_id == node.node_id) {
                return Err(ConfigError::new(
                    source,
                    format!("bootstrap_nodes[{i}].node_id"),
                    "listed twice".to_string(),
                ));
            }
        }
        Ok(())
    }

    fn validate_limits(&self, src: &dyn Fn(&'static str) -> Source) -> Result<(), ConfigError> {
        let ranges: [(&'static str, u64, u64, u64); 21] = [
            ("reconcile_interval_ms", self.reconcile_interval_ms, 100, 86_400_000),
            ("sync_workers", u64::from(self.sync_workers), 1, 64),
            ("initial_sync_max_ms", self.initial_sync_max_ms, 0, 86_400_000),
            ("storage_max_bytes", self.storage_max_bytes, 0, u64::MAX),
            ("max_outbound", u64::from(self.max_outbound), 1, 10_000),
            ("max_inbound", u64::from(self.max_inbound), 1, 10_000),
            ("max_per_ip", u64::from(self.max_per_ip), 1, 10_000),
            ("target_peers", u64::from(self.target_peers), 1, 10_000),
            ("max_known_peers", u64::from(self.max_known_peers), 16, 1_000_000),
            ("handshake_timeout_ms", self.handshake_timeout_ms, 100, 600_000),
            ("max_clock_skew_ms", self.max_clock_skew_ms, 1_000, 86_400_000),
            ("discovery_interval_ms", self.discovery_interval_ms, 100, 86_400_000),
            ("provider_republish_ms", self.provider_republish_ms, 10_000, 30 * 86_400_000),
            ("bootstrap_attempts", u64::from(self.bootstrap_attempts), 1, 1_000),
            ("bootstrap_retry_ms", self.bootstrap_retry_ms, 10, 3_600_000),
            ("ban_duration_ms", self.ban_duration_ms, 0, 31_536_000_000),
            ("checkpoint_interval_events", self.checkpoint_interval_events, 1, 100_000_000),
            ("snapshot_interval_events", self.snapshot_interval_events, 1, 1_000_000_000),
            ("snapshot_interval_ms", self.snapshot_interval_ms, 1, 31_536_000_000),
            ("log_retain_bytes", self.log_retain_bytes, 0, u64::MAX),
            ("log_retain_ms", self.log_retain_ms, 0, u64::MAX),
        ];
        for (field, value, min, max) in ranges {
            if value < min || value > max {
                return Err(ConfigError::new(src(field), field, format!("{value} is out of range {min}..={max}")));
            }
        }
        if !self.api_addr.ip().is_loopback() {
            return Err(ConfigError::new(
                src("api_addr"),
                "api_addr",
                format!("{} is not a loopback address; the API only binds loopback", self.api_addr),
            ));
        }
        Ok(())
    }

    /// The merged config as JSON, each field with its value and the layer it came from.
    pub fn provenance_json(&self, sources: &Sources) -> serde_json::Value {
        let values = serde_json::to_value(self).unwrap_or(serde_json::Value::Null);
        let mut out = serde_json::Map::new();
        for field in Config::FIELDS {
            let value = values.get(*field).cloned().unwrap_or(serde_json::Value::Null);
            let source = sources.get(field).copied().unwrap_or(Source::Default);
            let applies = if Config::applies_live(field) { "live" } else { "restart" };
            out.insert(
                (*field).to_string(),
                serde_json::json!({ "value": value, "source": source, "applies": applies }),
            );
        }
        serde_json::Value::Object(out)
    }
}

fn parse_layer<T: for<'de> Deserialize<'de>>(source: Source, text: &str) -> Result<T, ConfigError> {
    let mut de = serde_json::Deserializer::from_str(text);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        let message = if inner.is_syntax() || inner.is_eof() {
            format!("invalid JSON: {inner}")
        } else {
            strip_position(&inner.to_string())
        };
        ConfigError::new(source, if path == "." { "(top level)".to_string() } else { path }, message)
    })?;
    de.end().map_err(|err| ConfigError::new(source, "(top level)", format!("invalid JSON: {err}")))?;
    Ok(value)
}

fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(pos) => message[..pos].to_string(),
        None => message.to_string(),
    }
}

/// `(major, minor, patch)` of a version string, `None` if malformed.
pub fn parse_version(text: &str) -> Option<(u32, u32, u32)> {
    let mut parts = text.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    let patch = parts.next()?.parse().ok()?;
    if parts.next().is_some() || text.len() > 32 {
        return None;
    }
    Some((major, minor, patch))
}

/// Two versions interoperate when their majors agree.
pub fn versions_compatible(a: (u32, u32, u32), b: (u32, u32, u32)) -> bool {
    a.0 == b.0
}

fn ours() -> (u32, u32, u32) {
    parse_version(crate::PROTOCOL_VERSION).unwrap_or((1, 0, 0))
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.file())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Identity;

    fn load(bootstrap: Option<&str>, node: Option<&str>) -> Result<Layered, ConfigError> {
        Config::load(Layer { text: bootstrap }, Layer { text: node })
    }

    #[test]
    fn defaults_without_files() {
        let layered = load(None, None).expect("defaults are valid");
        assert_eq!(layered.config, Config::default());
        assert!(layered.sources.values().all(|s| *s == Source::Default));
    }

    #[test]
    fn layers_override_in_order_and_record_provenance() {
        let id = Identity::from_secret_bytes(&[1; 32]);
        let bootstrap = format!(
            r#"{{"network_id":"net-a","protocol_version":"1.0.0","bootstrap_nodes":[{{"node_id":"{}","address":"127.0.0.1:7401","public_key":"{}"}}]}}"#,
            id.node_id(),
            id.public_key()
        );
        let node = r#"{"network_id":"net-b","max_per_ip":5}"#;
        let layered = load(Some(&bootstrap), Some(node)).expect("valid");
        assert_eq!(layered.config.network_id, "net-b");
        assert_eq!(layered.config.max_per_ip, 5);
        assert_eq!(layered.config.bootstrap_nodes.len(), 1);
        assert_eq!(layered.sources["network_id"], Source::NodeConfig);
        assert_eq!(layered.sources["bootstrap_nodes"], Source::Bootstrap);
        assert_eq!(layered.sources["max_inbound"], Source::Default);
        let shown = layered.config.provenance_json(&layered.sources);
        assert_eq!(shown["max_per_ip"]["source"], "node_config.json");
        assert_eq!(shown["bootstrap_nodes"]["value"][0]["node_id"], id.node_id().to_string());
    }

    #[test]
    fn publishers_come_from_bootstrap_json_and_are_checked() {
        let (a, b) = (Identity::from_secret_bytes(&[1; 32]), Identity::from_secret_bytes(&[2; 32]));
        let bootstrap = format!(r#"{{"publishers":["{}","{}"]}}"#, a.public_key(), b.public_key());
        let layered = load(Some(&bootstrap), None).expect("valid");
        assert_eq!(layered.config.publishers, vec![a.public_key(), b.public_key()]);
        assert_eq!(layered.sources["publishers"], Source::Bootstrap);
        assert!(load(None, None).expect("defaults").config.publishers.is_empty(), "empty: anyone may publish");
        let twice = format!(r#"{{"publishers":["{}","{}"]}}"#, a.public_key(), a.public_key());
        let err = load(Some(&twice), None).expect_err("listed twice");
        assert_eq!((err.file.as_str(), err.path.as_str()), ("bootstrap.json", "publishers[1]"));
        let err = load(Some(r#"{"publishers":["abc"]}"#), None).expect_err("not a key");
        assert!(err.path.starts_with("publishers"), "{err}");
    }

    #[test]
    fn errors_name_file_and_field() {
        let err = load(None, Some(r#"{"max_inbound": "many"}"#)).expect_err("bad type");
        assert_eq!((err.file.as_str(), err.path.as_str()), ("node_config.json", "max_inbound"));
        let err = load(Some(r#"{"listen_addr": "127.0.0.1:1"}"#), None).expect_err("node field in bootstrap.json");
        assert_eq!(err.file, "bootstrap.json");
        assert!(err.message.contains("unknown field `listen_addr`"), "{err}");
        let err = load(None, Some(r#"{"colour": 1}"#)).expect_err("unknown field");
        assert!(err.message.contains("unknown field `colour`"), "{err}");
        let err =
            load(Some(r#"{"bootstrap_nodes":[{"node_id":"zz","address":"127.0.0.1:1","public_key":"00"}]}"#), None)
                .expect_err("bad hex");
        assert_eq!(err.path, "bootstrap_nodes[0].node_id");
        let err = load(None, Some(r#"{"max_per_ip": 0}"#)).expect_err("zero");
        assert_eq!(err.to_string(), "node_config.json: field `max_per_ip`: 0 is out of range 1..=10000");
        let err = load(None, Some("{")).expect_err("syntax");
        assert!(err.message.starts_with("invalid JSON"), "{err}");
        let err = load(Some(r#"{"protocol_version":"2.0.0"}"#), None).expect_err("major");
        assert_eq!(err.path, "protocol_version");
    }

    #[test]
    fn bootstrap_node_id_must_match_key() {
        let a = Identity::from_secret_bytes(&[1; 32]);
        let b = Identity::from_secret_bytes(&[2; 32]);
        let text = format!(
            r#"{{"bootstrap_nodes":[{{"node_id":"{}","address":"127.0.0.1:7401","public_key":"{}"}}]}}"#,
            a.node_id(),
            b.public_key()
        );
        let err = load(Some(&text), None).expect_err("mismatch");
        assert_eq!(err.path, "bootstrap_nodes[0].node_id");
        assert!(err.message.contains(&b.node_id().to_string()));
    }
}
