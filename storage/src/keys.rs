//! The key registry (SPEC R9): key material for sealed items, one owner-only file per key id
//! in `keys/` under the data dir (the directory owner-only too).
//!
//! Key material stays here. The node's state, its event log, its snapshots and the wire carry
//! only key *records* (id, algorithm, validity, revocation), signed by a publisher; the runtime
//! reads a key from here when the operator seals (`mynet add --encrypt`) or opens
//! (`mynet get --decrypt`) an item.

use std::fs;
use std::path::{Path, PathBuf};

use mynet_core::hex;

use crate::keyfile::{KeyError, check_private, write_private};
use crate::sealed::SealKey;

const HEADER: &str = "mynet-seal-key-v1";
/// Longest key id (bytes), as in item metadata.
pub const KEY_ID_MAX: usize = 64;

/// Checks a key id: 1 to 64 printable ASCII characters, no spaces.
pub fn check_key_id(key_id: &str) -> Result<(), String> {
    if key_id.is_empty() || key_id.len() > KEY_ID_MAX {
        return Err(format!("key id must be 1 to {KEY_ID_MAX} characters, got {}", key_id.len()));
    }
    if let Some(c) = key_id.chars().find(|c| !c.is_ascii_graphic()) {
        return Err(format!("key id {key_id:?} contains {c:?}; use printable ASCII without spaces"));
    }
    Ok(())
}

/// The registry in one data dir.
#[derive(Debug, Clone)]
pub struct KeyRegistry {
    dir: PathBuf,
}

impl KeyRegistry {
    /// The registry under `data_dir` (its directory is made on first use).
    pub fn new(data_dir: &Path) -> KeyRegistry {
        KeyRegistry { dir: data_dir.join("keys") }
    }

    fn path(&self, key_id: &str) -> PathBuf {
        // Hex of the id: any id is a safe file name.
        self.dir.join(format!("{}.key", hex::encode(key_id.as_bytes())))
    }

    fn io(&self, path: &Path) -> impl Fn(std::io::Error) -> KeyError {
        let path = path.to_path_buf();
        move |source| KeyError::Io { path: path.clone(), source }
    }

    fn ensure_dir(&self) -> Result<(), KeyError> {
        let io = self.io(&self.dir);
        fs::create_dir_all(&self.dir).map_err(&io)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&self.dir, fs::Permissions::from_mode(0o700)).map_err(&io)?;
        }
        Ok(())
    }

    /// Stores `key` under `key_id`; an existing key is never replaced.
    pub fn add(&self, key_id: &str, key: &SealKey) -> Result<(), KeyError> {
        check_key_id(key_id).map_err(|reason| KeyError::Contents { path: self.dir.clone(), reason })?;
        self.ensure_dir()?;
        let path = self.path(key_id);
        let text = zeroize::Zeroizing::new(format!("{HEADER}\n{key_id}\n{}\n", hex::encode(key.as_bytes())));
        write_private(&path, text.as_bytes(), false).map_err(self.io(&path))
    }

    /// The key stored under `key_id`, if any (its file checked: owner-only, well formed).
    pub fn get(&self, key_id: &str) -> Result<Option<SealKey>, KeyError> {
        let path = self.path(key_id);
        let meta = match fs::metadata(&path) {
            Ok(meta) => meta,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(KeyError::Io { path, source }),
        };
        check_private(&path, &meta)?;
        let bytes = zeroize::Zeroizing::new(fs::read(&path).map_err(self.io(&path))?);
        let contents = |reason: &str| KeyError::Contents { path: path.clone(), reason: reason.to_string() };
        let text = std::str::from_utf8(&bytes).map_err(|_| contents("not text"))?;
        let mut lines = text.lines();
        if lines.next() != Some(HEADER) {
            return Err(contents("not a mynet key file"));
        }
        if lines.next() != Some(key_id) {
            return Err(contents("the file names another key id"));
        }
        let key = hex::decode_array::<32>(lines.next().unwrap_or_default().trim())
            .map_err(|_| contents("the key is not 64 hex digits"))?;
        Ok(Some(SealKey::from_bytes(key)))
    }

    /// Deletes the key; false if there was none.
    pub fn remove(&self, key_id: &str) -> Result<bool, KeyError> {
        let path = self.path(key_id);
        match fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(source) => Err(KeyError::Io { path, source }),
        }
    }

    /// Key ids held, sorted.
    pub fn list(&self) -> Result<Vec<String>, KeyError> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(KeyError::Io { path: self.dir.clone(), source }),
        };
        let mut ids = Vec::new();
        for entry in entries {
            let entry = entry.map_err(self.io(&self.dir))?;
            let name = entry.file_name();
            let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".key")) else { continue };
            if let Some(id) = hex::decode(stem).ok().and_then(|b| String::from_utf8(b).ok()) {
                ids.push(id);
            }
        }
        ids.sort();
        Ok(ids)
    }
}

/// Reads a key from a file given by the operator (`mynet key add --from-file`): 32 raw bytes,
/// or 64 hex digits (surrounding whitespace ignored).
pub fn key_from_file(path: &Path) -> Result<SealKey, String> {
    let bytes = zeroize::Zeroizing::new(fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?);
    if bytes.len() == 32 {
        let mut key = [0u8; 32];
        key.copy_from_slice(&bytes);
        return Ok(SealKey::from_bytes(key));
    }
    let text = std::str::from_utf8(&bytes).map(str::trim).unwrap_or("");
    hex::decode_array::<32>(text).map(SealKey::from_bytes).map_err(|_| {
        format!("{}: a key file holds 32 raw bytes or 64 hex digits ({} bytes found)", path.display(), bytes.len())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_stored_owner_only_listed_and_never_replaced() {
        let dir = tempfile::tempdir().expect("tempdir");
        let registry = KeyRegistry::new(dir.path());
        assert!(registry.list().expect("list").is_empty());
        registry.add("album/2026 key", &SealKey::from_bytes([1; 32])).expect_err("a space is refused");
        registry.add("album-2026", &SealKey::from_bytes([1; 32])).expect("add");
        registry.add("../etc", &SealKey::from_bytes([2; 32])).expect("any printable id is a safe name");
        assert!(registry.add("album-2026", &SealKey::from_bytes([3; 32])).is_err(), "never replaced");
        assert_eq!(registry.get("album-2026").expect("get").expect("held").as_bytes(), &[1; 32]);
        assert!(registry.get("other").expect("get").is_none());
        assert_eq!(registry.list().expect("list"), vec!["../etc".to_string(), "album-2026".to_string()]);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &Path| fs::metadata(p).expect("meta").permissions().mode() & 0o777;
            assert_eq!(mode(&dir.path().join("keys")), 0o700);
            assert_eq!(mode(&registry.path("album-2026")), 0o600);
            fs::set_permissions(registry.path("album-2026"), fs::Permissions::from_mode(0o644)).expect("chmod");
            assert!(matches!(registry.get("album-2026"), Err(KeyError::Permissions { .. })));
        }
        assert!(registry.remove("album-2026").expect("rm"));
        assert!(!registry.remove("album-2026").expect("rm again"));
    }

    #[test]
    fn operator_key_files_are_raw_or_hex() {
        let dir = tempfile::tempdir().expect("tempdir");
        let raw = dir.path().join("raw");
        fs::write(&raw, [5u8; 32]).expect("write");
        assert_eq!(key_from_file(&raw).expect("raw").as_bytes(), &[5; 32]);
        let text = dir.path().join("hex");
        fs::write(&text, format!("  {}\n", hex::encode(&[6u8; 32]))).expect("write");
        assert_eq!(key_from_file(&text).expect("hex").as_bytes(), &[6; 32]);
        fs::write(&text, "short").expect("write");
        assert!(key_from_file(&text).expect_err("short").contains("32 raw bytes or 64 hex digits"));
    }
}
