//! `mynet config set FIELD VALUE` (and `POST /config`): live configuration (SPEC R2.3).
//!
//! The new value is written into `node_config.json`'s layer and the whole config must still
//! load and validate; the file is then replaced atomically, and a field that applies live
//! (`config::LIVE_FIELDS`) goes to the running node as `Input::Configure`, a logged input (so
//! replay reproduces it), where each module reacts. Any failure keeps the old configuration,
//! the file included, and says why. Other fields are saved and take effect at the next start.

use anyhow::{Context, Result, anyhow, bail};
use mynet_core::Input;
use mynet_core::config::{BOOTSTRAP_FILE, Config, Layer, NODE_CONFIG_FILE};
use serde_json::{Map, Value, json};
use tokio::sync::mpsc;

use crate::datadir::{DataDir, replace_file};
use crate::driver::ApiRequest;

/// The new node layer's text and the config it gives, checked; `Err` says why not.
pub fn prepare(dir: &DataDir, field: &str, value: Value) -> Result<(String, Config)> {
    if !Config::FIELDS.contains(&field) {
        let near: Vec<&str> =
            Config::FIELDS.iter().copied().filter(|f| f.contains(field) || field.contains(*f)).collect();
        let hint = if near.is_empty() { String::new() } else { format!(" (did you mean {}?)", near.join(", ")) };
        bail!("there is no config field `{field}`{hint}; `mynet config show` lists them");
    }
    let read = |name: &str| -> Result<Option<String>> {
        match std::fs::read_to_string(dir.root().join(name)) {
            Ok(text) => Ok(Some(text)),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(anyhow!("cannot read {name}: {err}")),
        }
    };
    let bootstrap = read(BOOTSTRAP_FILE)?;
    let node = read(NODE_CONFIG_FILE)?;
    let mut layer: Map<String, Value> = match node.as_deref() {
        Some(text) => serde_json::from_str(text).with_context(|| format!("{NODE_CONFIG_FILE} is not a JSON object"))?,
        None => Map::new(),
    };
    layer.insert(field.to_string(), value);
    let text = serde_json::to_string_pretty(&Value::Object(layer))? + "\n";
    let layered = Config::load(Layer { text: bootstrap.as_deref() }, Layer { text: Some(&text) })
        .map_err(|err| anyhow!("refused, the configuration is unchanged: {}", err.message_for_operator()))?;
    Ok((text, layered.config))
}

/// Checks, saves and (for a live field) applies one change; returns what happened as JSON.
pub async fn set(dir: &DataDir, requests: &mpsc::Sender<ApiRequest>, field: &str, value: Value) -> Result<Value> {
    let (text, config) = prepare(dir, field, value)?;
    let path = dir.root().join(NODE_CONFIG_FILE);
    let old = std::fs::read_to_string(&path).ok();
    replace_file(&path, &text).context("refused, the configuration is unchanged")?;
    let live = Config::applies_live(field);
    let new_value = serde_json::to_value(&config)?.get(field).cloned().unwrap_or(Value::Null);
    if live {
        let input = Input::Configure { config: Box::new(config) };
        let running = crate::api::forward_json(requests, "/config/running", Some(input)).await;
        let applied = running.as_ref().and_then(|r| r.get(field)) == Some(&new_value);
        if !applied {
            // Put the file back as it was: the node did not take the change.
            let restored = match &old {
                Some(old) => replace_file(&path, old),
                None => std::fs::remove_file(&path).map_err(anyhow::Error::from),
            };
            let why = match running {
                None => "the node did not answer (is it shutting down?)".to_string(),
                Some(_) => "the running node refused it (see its log for the reason)".to_string(),
            };
            let restored = restored.err().map_or(String::new(), |e| format!("; restoring the file failed: {e:#}"));
            bail!("refused, the configuration is unchanged: {why}{restored}");
        }
    }
    Ok(json!({
        "field": field,
        "value": new_value,
        "applies": if live { "live" } else { "restart" },
        "applied": live,
        "file": path.display().to_string(),
    }))
}
