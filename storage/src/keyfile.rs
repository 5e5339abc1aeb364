//! The key file and other owner-only files in the data dir (SPEC R3.1).
//!
//! A key file that exists is never replaced: wrong permissions or wrong contents are errors the
//! operator must look at, because silently making a new key would change the node's identity.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use mynet_core::{Identity, hex};
use thiserror::Error;

const KEY_HEADER: &str = "mynet-ed25519-secret-v1";

/// A key file that could not be used.
#[derive(Debug, Error)]
pub enum KeyError {
    #[error("key file {path}: permissions are {mode:o}; it must be readable by its owner only (run: chmod 600 {path})")]
    Permissions { path: PathBuf, mode: u32 },
    #[error("key file {path}: {reason}; restore the original file or move it away to create a new identity")]
    Contents { path: PathBuf, reason: String },
    #[error("key file {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

/// Loads the key at `path`, or creates it from `secret` if the file does not exist.
/// Returns the identity and whether it was created now.
pub fn load_or_create_key(path: &Path, secret: impl FnOnce() -> [u8; 32]) -> Result<(Identity, bool), KeyError> {
    match fs::symlink_metadata(path) {
        Ok(_) => load_key(path).map(|identity| (identity, false)),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            let identity = Identity::from_secret_bytes(&secret());
            let text = format!("{KEY_HEADER}\n{}\n", hex::encode(&identity.secret_bytes()));
            write_private(path, text.as_bytes(), false)
                .map_err(|source| KeyError::Io { path: path.to_path_buf(), source })?;
            Ok((identity, true))
        }
        Err(source) => Err(KeyError::Io { path: path.to_path_buf(), source }),
    }
}

/// Loads an existing key file, checking its permissions and format.
pub fn load_key(path: &Path) -> Result<Identity, KeyError> {
    let io = |source| KeyError::Io { path: path.to_path_buf(), source };
    let meta = fs::metadata(path).map_err(io)?;
    check_private(path, &meta)?;
    let bytes = fs::read(path).map_err(io)?;
    let contents = |reason: String| KeyError::Contents { path: path.to_path_buf(), reason };
    let text = std::str::from_utf8(&bytes).map_err(|_| contents("not text".into()))?;
    let mut lines = text.lines();
    if lines.next() != Some(KEY_HEADER) {
        return Err(contents(format!("first line must be {KEY_HEADER:?}")));
    }
    let secret_hex = lines.next().unwrap_or_default().trim();
    let secret = hex::decode_array::<32>(secret_hex).map_err(|err| contents(format!("secret key: {err}")))?;
    if lines.any(|line| !line.trim().is_empty()) {
        return Err(contents("unexpected lines after the secret key".into()));
    }
    Ok(Identity::from_secret_bytes(&secret))
}

#[cfg(unix)]
pub(crate) fn check_private(path: &Path, meta: &fs::Metadata) -> Result<(), KeyError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyError::Permissions { path: path.to_path_buf(), mode });
    }
    Ok(())
}

#[cfg(not(unix))]
pub(crate) fn check_private(_path: &Path, _meta: &fs::Metadata) -> Result<(), KeyError> {
    Ok(())
}

/// Writes `contents` to `path` with owner-only permissions, atomically (temp file + rename).
/// With `replace` false an existing file is an error.
pub fn write_private(path: &Path, contents: &[u8], replace: bool) -> std::io::Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(&tmp)?;
    file.write_all(contents)?;
    file.sync_all()?;
    drop(file);
    if !replace && path.exists() {
        let _ = fs::remove_file(&tmp);
        return Err(std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            format!("{} already exists", path.display()),
        ));
    }
    fs::rename(&tmp, path)?;
    if let Ok(dir) = fs::File::open(dir) {
        let _ = dir.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_then_loaded_never_replaced() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("node.key");
        let (a, created) = load_or_create_key(&path, || [3; 32]).expect("create");
        assert!(created);
        let (b, created) = load_or_create_key(&path, || [4; 32]).expect("load");
        assert!(!created);
        assert_eq!(a.node_id(), b.node_id());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(fs::metadata(&path).expect("meta").permissions().mode() & 0o777, 0o600);
        }
    }

    #[cfg(unix)]
    #[test]
    fn wrong_permissions_and_contents_are_errors() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("node.key");
        load_or_create_key(&path, || [3; 32]).expect("create");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).expect("chmod");
        let err = load_or_create_key(&path, || [4; 32]).expect_err("world-readable");
        assert!(matches!(err, KeyError::Permissions { mode: 0o644, .. }), "{err}");
        assert!(err.to_string().contains("chmod 600"));
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).expect("chmod");
        fs::write(&path, "garbage\n").expect("write");
        let err = load_or_create_key(&path, || [4; 32]).expect_err("garbage");
        assert!(matches!(err, KeyError::Contents { .. }), "{err}");
        assert_eq!(fs::read_to_string(&path).expect("read"), "garbage\n", "never replaced");
    }
}
