//! The core must stay pure: no I/O, clocks, OS randomness, threads or random-order maps, in its
//! own source or anywhere in its dependency tree. This is what makes simulation and replay
//! possible, so it is a test, not a convention.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Crates that do I/O, spawn threads or read OS entropy.
const FORBIDDEN_CRATES: &[&str] = &[
    "tokio",
    "mio",
    "socket2",
    "fjall",
    "lsm-tree",
    "getrandom",
    "async-std",
    "smol",
    "rayon",
    "crossbeam",
    "libc",
    "nix",
    "hyper",
    "reqwest",
];

/// Source patterns the core must not contain.
const FORBIDDEN_SOURCE: &[&str] = &[
    "std::fs",
    "std::net",
    "std::thread",
    "std::process",
    "std::env",
    "std::time",
    "Instant::now",
    "SystemTime",
    "thread_rng",
    "OsRng",
    "SysRng",
    "getrandom",
    "tokio",
    "HashMap",
    "HashSet",
    "static mut",
    "std::sync",
    "RandomState",
];

/// Every `.rs` file under `dir`, at any depth (protocol modules may grow submodules).
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// Lines of `text` that contain a forbidden pattern outside comments.
fn offences_in(path: &Path, text: &str) -> Vec<String> {
    let mut offences = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let code = line.split("//").next().unwrap_or_default();
        for pattern in FORBIDDEN_SOURCE {
            if code.contains(pattern) {
                offences.push(format!("{}:{}: {pattern}: {}", path.display(), n + 1, line.trim()));
            }
        }
    }
    offences
}

#[test]
fn core_source_reaches_for_no_io_clock_entropy_threads_or_random_order_maps() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let files = rust_files(&src);
    assert!(files.len() >= 10, "found only {} files under {}", files.len(), src.display());
    let offences: Vec<String> =
        files.iter().flat_map(|path| offences_in(path, &std::fs::read_to_string(path).expect("read"))).collect();
    assert!(offences.is_empty(), "core must stay pure:\n{}", offences.join("\n"));
}

/// The guard itself: a new submodule two levels down that imports I/O is caught.
#[test]
fn the_guard_walks_nested_submodules() {
    let root = std::env::temp_dir().join(format!("mynet-purity-{}", std::process::id()));
    let nested = root.join("dht").join("routing");
    std::fs::create_dir_all(&nested).expect("mkdir");
    std::fs::write(nested.join("table.rs"), "use std::net::UdpSocket; // a socket in core\n").expect("write");
    std::fs::write(root.join("clean.rs"), "// std::fs in a comment is fine\n").expect("write");
    let files = rust_files(&root);
    let offences: Vec<String> =
        files.iter().flat_map(|path| offences_in(path, &std::fs::read_to_string(path).expect("read"))).collect();
    let _ = std::fs::remove_dir_all(&root);
    assert_eq!(files.len(), 2);
    assert_eq!(offences.len(), 1, "{offences:?}");
    assert!(offences[0].contains("table.rs:1: std::net"));
}

#[test]
fn core_dependency_tree_has_no_io_or_entropy_crates() {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
    let output = Command::new(env!("CARGO"))
        .args(["tree", "--offline", "-p", "mynet-core", "-e", "normal,build", "--prefix", "none", "--manifest-path"])
        .arg(&manifest)
        .output()
        .expect("run cargo tree");
    let tree = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && tree.contains("mynet-core"),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let crates: Vec<&str> = tree.lines().filter_map(|line| line.split_whitespace().next()).collect();
    let found: Vec<&&str> = FORBIDDEN_CRATES.iter().filter(|bad| crates.contains(bad)).collect();
    assert!(found.is_empty(), "mynet-core depends on {found:?}:\n{tree}");
}
