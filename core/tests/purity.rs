//! The core must stay pure: no I/O, clocks, OS randomness, threads or random-order maps, in its
//! own source or anywhere in its dependency tree. This is what makes simulation and replay
//! possible, so it is a test, not a convention.

use std::path::Path;
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

#[test]
fn core_source_reaches_for_no_io_clock_entropy_threads_or_random_order_maps() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut offences = Vec::new();
    for entry in std::fs::read_dir(&src).expect("core/src") {
        let path = entry.expect("entry").path();
        let text = std::fs::read_to_string(&path).expect("read");
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or_default();
            for pattern in FORBIDDEN_SOURCE {
                if code.contains(pattern) {
                    offences.push(format!("{}:{}: {pattern}: {}", path.display(), n + 1, line.trim()));
                }
            }
        }
    }
    assert!(offences.is_empty(), "core must stay pure:\n{}", offences.join("\n"));
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
