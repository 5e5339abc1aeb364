//! Benchmark: reconciling two catalogues of `--items` entries that differ in `--diff` entries
//! (split evenly: half only on the asker's side, half only on the answerer's), with our
//! protocol (rateless IBLT rounds, `mynet_core::reconcile::session`), the negentropy crate,
//! and the naive exchange of whole state maps, all measured in the same run.
//!
//! ```text
//! cargo run --release -p mynet-core --example reconcile -- --items 1000000 --diff 100
//! ```
//!
//! Prints one JSON line: `{"items","diff","bytes","round_trips","naive_bytes",
//! "negentropy_bytes","negentropy_round_trips"}`. Bytes are whole frames as they go on the
//! wire before encryption (our envelope and frame header included); negentropy's are its raw
//! messages. Round trips count request waves with our per-peer in-flight bound. Both
//! protocols' results are checked against the true difference. Details go to stderr.

mod baseline;

use std::collections::BTreeSet;
use std::time::Instant;

use mynet_core::reconcile::catalogue::KeySet;
use mynet_core::reconcile::session;
use mynet_core::reconcile::sketch::Key;

fn arg(args: &[String], name: &str, default: u64) -> u64 {
    match args.iter().position(|a| a == name) {
        Some(i) => match args.get(i + 1).map(|v| v.replace('_', "").parse()) {
            Some(Ok(v)) => v,
            _ => {
                eprintln!("{name} needs a number");
                std::process::exit(2)
            }
        },
        None => default,
    }
}

fn key(n: u64, seed: u64) -> Key {
    let mut input = [0u8; 16];
    input[..8].copy_from_slice(&n.to_le_bytes());
    input[8..].copy_from_slice(&seed.to_le_bytes());
    let id = *blake3::hash(&input).as_bytes();
    let mut tag = [0u8; 8];
    tag.copy_from_slice(&blake3::hash(&id).as_bytes()[..8]);
    Key { id, tag }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let items = arg(&args, "--items", 1_000_000);
    let diff = arg(&args, "--diff", 100);
    let seed = arg(&args, "--seed", 1);
    if diff > items {
        eprintln!("--diff must not exceed --items");
        std::process::exit(2);
    }
    let (only_a, only_b) = (diff.div_ceil(2), diff / 2);
    let shared = items - only_a;
    let a_keys: Vec<Key> = (0..shared + only_a).map(|n| key(n, seed)).collect();
    let b_keys: Vec<Key> = (0..shared).chain(items..items + only_b).map(|n| key(n, seed)).collect();

    let started = Instant::now();
    let mut a = KeySet::default();
    for k in &a_keys {
        a.put(*k);
    }
    let mut b = KeySet::default();
    for k in &b_keys {
        b.put(*k);
    }
    let built = started.elapsed();

    let started = Instant::now();
    let run = session::in_memory(&a, &b).expect("a valid round");
    let took = started.elapsed();
    let want_ours: BTreeSet<Key> = a_keys[shared as usize..].iter().copied().collect();
    let want_theirs: BTreeSet<Key> = b_keys[shared as usize..].iter().copied().collect();
    assert_eq!(run.ours, want_ours, "our protocol found the wrong keys of ours");
    assert_eq!(run.theirs, want_theirs, "our protocol found the wrong keys of theirs");

    let a_ids: Vec<[u8; 32]> = a_keys.iter().map(|k| k.id).collect();
    let b_ids: Vec<[u8; 32]> = b_keys.iter().map(|k| k.id).collect();
    let started = Instant::now();
    let neg = baseline::negentropy(&a_ids, &b_ids);
    let neg_took = started.elapsed();
    assert_eq!((neg.have, neg.need), (only_a as usize, only_b as usize));
    let naive = baseline::naive(&a_ids, &b_ids);

    eprintln!(
        "items {items} diff {diff}: ours {} B in {} round trips{} ({:.1} ms; both key sets built in {:.2} s, \
         {} cells each); negentropy {} B in {} round trips ({:.1} ms); naive {naive} B",
        run.bytes,
        run.round_trips,
        if run.bulk { ", bulk path" } else { "" },
        took.as_secs_f64() * 1e3,
        built.as_secs_f64(),
        a.sketch().len(),
        neg.bytes,
        neg.round_trips,
        neg_took.as_secs_f64() * 1e3,
    );
    println!(
        "{}",
        serde_json::json!({
            "items": items,
            "diff": diff,
            "bytes": run.bytes,
            "round_trips": run.round_trips,
            "naive_bytes": naive,
            "negentropy_bytes": neg.bytes,
            "negentropy_round_trips": neg.round_trips,
        })
    );
}
