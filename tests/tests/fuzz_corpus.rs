//! The fuzz targets' seed corpora, run as ordinary tests on stable Rust.

use std::path::Path;

use mynet_tests::fuzz;

fn target(name: &str) -> fn(&[u8]) {
    match name {
        "frames" => fuzz::frames,
        "handshake" => fuzz::handshake,
        "log_record" => fuzz::log_record,
        "node_inputs" => fuzz::node_inputs,
        other => panic!("unknown fuzz target {other}"),
    }
}

#[test]
fn every_corpus_file_runs_clean() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
    let mut ran = 0;
    for name in ["frames", "handshake", "log_record", "node_inputs"] {
        let run = target(name);
        let dir = corpus.join(name);
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.expect("entry").path();
            run(&std::fs::read(&path).expect("read"));
            ran += 1;
        }
    }
    assert!(ran >= 12, "the seed corpora are missing files ({ran} ran)");
}

#[test]
fn builtin_seeds_run_clean() {
    for (name, data) in fuzz::seeds() {
        target(name)(&data);
    }
}

/// Writes the built-in seeds into `fuzz/corpus` (run with `--ignored` after changing them).
#[test]
#[ignore]
fn regenerate_seed_corpus() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
    for (i, (name, data)) in fuzz::seeds().into_iter().enumerate() {
        let dir = corpus.join(name);
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(dir.join(format!("seed-{i:02}")), data).expect("write");
    }
}
