//! Property tests of configuration merging: the highest layer that sets a field wins, and the
//! provenance says which layer that was.

use mynet_core::config::Source;
use mynet_core::{Config, Layer};
use proptest::prelude::*;
use serde_json::json;

proptest! {
    #[test]
    fn highest_layer_wins_and_provenance_matches(
        net_in_bootstrap in proptest::option::of("[a-z]{1,8}"),
        net_in_node in proptest::option::of("[a-z]{1,8}"),
        max_inbound in proptest::option::of(1u32..500),
        per_ip in proptest::option::of(1u32..10),
        skew in proptest::option::of(1_000u64..100_000),
    ) {
        let mut bootstrap = serde_json::Map::new();
        if let Some(net) = &net_in_bootstrap { bootstrap.insert("network_id".into(), json!(net)); }
        let mut node = serde_json::Map::new();
        if let Some(net) = &net_in_node { node.insert("network_id".into(), json!(net)); }
        if let Some(v) = max_inbound { node.insert("max_inbound".into(), json!(v)); }
        if let Some(v) = per_ip { node.insert("max_per_ip".into(), json!(v)); }
        if let Some(v) = skew { node.insert("max_clock_skew_ms".into(), json!(v)); }
        let (b, n) = (serde_json::Value::Object(bootstrap).to_string(), serde_json::Value::Object(node).to_string());
        let layered = Config::load(Layer { text: Some(&b) }, Layer { text: Some(&n) }).expect("valid layers");
        let defaults = Config::default();
        let expected_net = net_in_node.clone().or(net_in_bootstrap.clone()).unwrap_or(defaults.network_id.clone());
        prop_assert_eq!(&layered.config.network_id, &expected_net);
        let expected_source = if net_in_node.is_some() { Source::NodeConfig } else if net_in_bootstrap.is_some() { Source::Bootstrap } else { Source::Default };
        prop_assert_eq!(layered.sources["network_id"], expected_source);
        prop_assert_eq!(layered.config.max_inbound, max_inbound.unwrap_or(defaults.max_inbound));
        prop_assert_eq!(layered.config.max_per_ip, per_ip.unwrap_or(defaults.max_per_ip));
        prop_assert_eq!(layered.config.max_clock_skew_ms, skew.unwrap_or(defaults.max_clock_skew_ms));
        prop_assert_eq!(layered.sources["max_inbound"], if max_inbound.is_some() { Source::NodeConfig } else { Source::Default });
        // The merged config survives the log's encoding unchanged.
        let bytes = postcard::to_allocvec(&layered.config).expect("encode");
        prop_assert_eq!(postcard::from_bytes::<Config>(&bytes).expect("decode"), layered.config);
    }
}
