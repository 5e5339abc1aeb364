//! Live configuration (SPEC R2.3): `Input::Configure` takes the live fields, refuses an invalid
//! config whole, keeps start-up-only fields, and the modules react (limits that shrink close
//! the connections past them).

mod common;

use common::*;
use mynet_core::config::{Config, LIVE_FIELDS};
use mynet_core::handshake::Binding;
use mynet_core::{CloseReason, ConnId, Event, Input, Output};

fn events(outputs: &[Output]) -> Vec<Event> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::Event(e) => Some(e.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn every_live_field_is_a_field_and_with_live_fields_of_takes_exactly_those() {
    for field in LIVE_FIELDS {
        assert!(Config::FIELDS.contains(field), "{field} is not a config field");
    }
    // A config that differs from the defaults in every field.
    let old = Config::default();
    let mut new: Config = serde_json::from_value(serde_json::json!({
        "network_id": "other", "protocol_version": "1.0.1", "bootstrap_nodes": [], "publishers": [],
        "listen_addr": "127.0.0.9:9", "api_addr": "127.0.0.9:10", "max_outbound": 5, "max_inbound": 6,
        "max_per_ip": 7, "target_peers": 9, "max_known_peers": 99, "handshake_timeout_ms": 999,
        "max_clock_skew_ms": 9999, "discovery_interval_ms": 9998, "dht": false,
        "provider_republish_ms": 99_999, "lan_discovery": false, "lan_interfaces": ["eth9"],
        "bootstrap_attempts": 9, "bootstrap_retry_ms": 99, "ban_duration_ms": 9, "checkpoint_interval_events": 9,
        "snapshot_interval_events": 9, "snapshot_interval_ms": 9, "log_retain_bytes": 9, "log_retain_ms": 9,
        "replicate": "none", "replicate_states": ["preview"], "storage_max_bytes": 9, "sync_workers": 9,
        "initial_sync_max_ms": 9, "reconcile_interval_ms": 999,
    }))
    .expect("every field");
    new.bootstrap_nodes = old.bootstrap_nodes.clone();
    let taken = serde_json::to_value(old.with_live_fields_of(&new)).expect("json");
    let (old_json, new_json) = (serde_json::to_value(&old).expect("json"), serde_json::to_value(&new).expect("json"));
    for field in Config::FIELDS {
        let expect = if Config::applies_live(field) { &new_json[field] } else { &old_json[field] };
        if !["bootstrap_nodes", "publishers"].contains(field) {
            assert_ne!(old_json[field], new_json[field], "{field}: the test config must differ");
        }
        assert_eq!(&taken[field], expect, "{field}");
    }
    assert_eq!(old.live_changes(&new), LIVE_FIELDS.to_vec());
}

#[test]
fn a_lower_per_ip_limit_closes_the_newest_connections_past_it_and_is_logged() {
    let mut config = Config { max_per_ip: 3, ..Config::default() };
    let mut node = first_node(config.clone());
    for i in 1..=3 {
        open(&mut node, ConnId::inbound(i), peer_addr(2), Binding([i as u8; 32]));
    }
    drain(&mut node);
    config.max_per_ip = 1;
    node.handle(at(5), Input::Configure { config: Box::new(config.clone()) });
    let outputs = drain(&mut node);
    assert!(events(&outputs).contains(&Event::ConfigChanged { fields: vec!["max_per_ip".into()] }), "{outputs:?}");
    for i in [3, 2] {
        let reason = closed_reason(&outputs, ConnId::inbound(i));
        assert!(matches!(reason, Some(CloseReason::PerIpLimit { max: 1, .. })), "conn {i}: {reason:?}");
    }
    assert_eq!(closed_reason(&outputs, ConnId::inbound(1)), None);
    assert_eq!(node.config().max_per_ip, 1);
    node.check_invariants().expect("limits hold after the change");
    // A fourth connection from that IP is now refused.
    let out = open(&mut node, ConnId::inbound(4), peer_addr(2), Binding([4; 32]));
    assert!(matches!(closed_reason(&out, ConnId::inbound(4)), Some(CloseReason::PerIpLimit { max: 1, .. })));
}

#[test]
fn an_invalid_config_is_refused_whole_and_the_node_keeps_the_old_one() {
    let mut node = first_node(Config::default());
    let config = Config { target_peers: 0, sync_workers: 5, ..Config::default() };
    node.handle(at(5), Input::Configure { config: Box::new(config) });
    let outputs = drain(&mut node);
    let refused = events(&outputs).into_iter().find_map(|e| match e {
        Event::ConfigRefused { reason } => Some(reason),
        _ => None,
    });
    assert!(refused.as_deref().is_some_and(|r| r.contains("target_peers")), "{outputs:?}");
    assert_eq!(node.config(), &Config::default(), "nothing of the refused config is taken");
}

#[test]
fn start_up_only_fields_wait_for_a_restart_and_an_unchanged_config_is_silent() {
    let mut node = first_node(Config::default());
    let config = Config { listen_addr: "127.0.0.1:9999".parse().expect("addr"), dht: false, ..Config::default() };
    node.handle(at(5), Input::Configure { config: Box::new(config) });
    assert!(events(&drain(&mut node)).is_empty());
    assert_eq!(node.config(), &Config::default());
}
