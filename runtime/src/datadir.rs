//! The data directory: where a node keeps its key, configs, event log and API handshake files.

use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow};
use mynet_core::config::{BOOTSTRAP_FILE, Layered, NODE_CONFIG_FILE};
use mynet_core::{Config, ConfigError, Identity, Layer};
use mynet_storage::keyfile;

/// Default data directory, relative to the working directory.
pub const DEFAULT_DATA_DIR: &str = "mynet-data";
const DEFAULT_BOOTSTRAP: &str =
    "{\n  \"network_id\": \"mynet-dev\",\n  \"protocol_version\": \"1.0.0\",\n  \"bootstrap_nodes\": []\n}\n";
const DEFAULT_NODE_CONFIG: &str = "{\n  \"listen_addr\": \"127.0.0.1:7401\"\n}\n";

/// Paths inside one data directory.
#[derive(Clone, Debug)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    /// The data dir at `root`.
    pub fn new(root: impl Into<PathBuf>) -> DataDir {
        DataDir { root: root.into() }
    }

    /// Its root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The ed25519 key file.
    pub fn key_path(&self) -> PathBuf {
        self.root.join("node.key")
    }

    /// The event log (a fjall database).
    pub fn log_path(&self) -> PathBuf {
        self.root.join("events")
    }

    /// The content store (fjall metadata and piece files).
    pub fn store_path(&self) -> PathBuf {
        self.root.join("store")
    }

    /// Where a running node writes its API address.
    pub fn api_addr_path(&self) -> PathBuf {
        self.root.join("api.addr")
    }

    /// Where a running node writes its API token (owner-only).
    pub fn api_token_path(&self) -> PathBuf {
        self.root.join("api.token")
    }

    /// Creates the directory (owner-only) if needed and checks it is writable.
    pub fn ensure(&self) -> Result<()> {
        if !self.root.exists() {
            let mut builder = fs::DirBuilder::new();
            builder.recursive(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::DirBuilderExt;
                builder.mode(0o700);
            }
            builder
                .create(&self.root)
                .with_context(|| format!("cannot create data directory {}", self.root.display()))?;
        }
        if !self.root.is_dir() {
            return Err(anyhow!("data directory {} is not a directory", self.root.display()));
        }
        let probe = self.root.join(format!(".write-probe.{}", std::process::id()));
        fs::write(&probe, b"probe")
            .with_context(|| format!("data directory {} is not writable", self.root.display()))?;
        let _ = fs::remove_file(&probe);
        Ok(())
    }

    /// Creates the key and default config files that are missing; never overwrites.
    /// Returns the identity and whether the key was created now.
    pub fn init(&self) -> Result<(Identity, bool)> {
        self.ensure()?;
        self.write_default_configs()?;
        let (identity, created) = keyfile::load_or_create_key(&self.key_path(), os_random_32)?;
        self.write_node_id(&identity)?;
        Ok((identity, created))
    }

    /// Writes `bootstrap.json` and `node_config.json` with defaults where they are missing.
    pub fn write_default_configs(&self) -> Result<()> {
        for (name, contents) in [(BOOTSTRAP_FILE, DEFAULT_BOOTSTRAP), (NODE_CONFIG_FILE, DEFAULT_NODE_CONFIG)] {
            let path = self.root.join(name);
            if !path.exists() {
                fs::write(&path, contents).with_context(|| format!("cannot write {}", path.display()))?;
            }
        }
        Ok(())
    }

    /// Writes the `node_id` file (a convenience copy; the key file is the truth).
    pub fn write_node_id(&self, identity: &Identity) -> Result<()> {
        let id_path = self.root.join("node_id");
        let id_text = format!("{}\n", identity.node_id());
        if fs::read_to_string(&id_path).ok().as_deref() != Some(id_text.as_str()) {
            fs::write(&id_path, id_text).with_context(|| format!("cannot write {}", id_path.display()))?;
        }
        Ok(())
    }

    /// Reads and merges the config layers.
    pub fn load_config(&self) -> Result<Layered, ConfigError> {
        let bootstrap = self.read_layer(BOOTSTRAP_FILE)?;
        let node = self.read_layer(NODE_CONFIG_FILE)?;
        Config::load(Layer { text: bootstrap.as_deref() }, Layer { text: node.as_deref() })
    }

    fn read_layer(&self, name: &str) -> Result<Option<String>, ConfigError> {
        let path = self.root.join(name);
        match fs::read_to_string(&path) {
            Ok(text) => Ok(Some(text)),
            Err(err) if err.kind() == ErrorKind::NotFound => Ok(None),
            Err(err) => Err(ConfigError {
                file: name.to_string(),
                path: "(file)".into(),
                message: format!("cannot read {}: {err}", path.display()),
            }),
        }
    }
}

/// 32 bytes from the operating system's generator.
pub fn os_random_32() -> [u8; 32] {
    let mut out = [0u8; 32];
    // Without OS randomness no key or token can be made safely; there is nothing to fall back to.
    getrandom::fill(&mut out).expect("the operating system's random generator failed");
    out
}

/// A u64 from the operating system's generator (the node's RNG seed).
pub fn os_random_u64() -> u64 {
    let bytes = os_random_32();
    u64::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3], bytes[4], bytes[5], bytes[6], bytes[7]])
}

/// Replaces `path` with `text` atomically: a temporary file beside it, flushed to disk, renamed
/// over it, and the directory flushed, so a crash leaves the old file or the new one.
pub fn replace_file(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let write = || -> std::io::Result<()> {
        let mut file = fs::File::create(&tmp)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        if let Some(parent) = path.parent() {
            fs::File::open(parent)?.sync_all()?;
        }
        Ok(())
    };
    write().map_err(|err| {
        let _ = fs::remove_file(&tmp);
        anyhow::anyhow!("cannot replace {}: {err}", path.display())
    })
}
