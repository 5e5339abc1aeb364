//! Benchmark: sealing and opening items ("mynet sealed v1") against hashing the same bytes
//! with BLAKE3 (what `mynet add` does to every byte anyway), measured in the same run.
//!
//! ```text
//! cargo run --release -p mynet-storage --example sealed [-- MIB]
//! ```
//!
//! Prints one JSON line: MiB/s for BLAKE3, seal, open, and a 1 MiB range opened from the middle
//! of the sealed item (only its segments are read), with the ratios seal/BLAKE3 and open/BLAKE3.

use std::io::Cursor;
use std::time::Instant;

use mynet_storage::sealed::{self, SealKey};

fn main() {
    let mib: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(256);
    let len = mib << 20;
    let plain: Vec<u8> = (0..len).map(|i| ((i.wrapping_mul(2_654_435_761usize)) >> 13) as u8).collect();
    let key = SealKey::from_bytes([7; 32]);
    let rate = |secs: f64| (mib as f64 / secs * 10.0).round() / 10.0;

    let t = Instant::now();
    let hash = blake3::hash(&plain);
    let blake3_s = t.elapsed().as_secs_f64();

    let t = Instant::now();
    let sealed = sealed::seal_to_vec(&key, [1; sealed::NONCE_PREFIX_LEN], &plain);
    let seal_s = t.elapsed().as_secs_f64();

    let t = Instant::now();
    let mut opened = Vec::with_capacity(len);
    sealed::open(&key, &sealed[..], &mut opened).expect("opens");
    let open_s = t.elapsed().as_secs_f64();
    assert_eq!(blake3::hash(&opened), hash);

    let t = Instant::now();
    let start = (len / 2) as u64;
    let range = sealed::open_range(&key, Cursor::new(&sealed), start, 1 << 20).expect("range");
    let range_us = t.elapsed().as_secs_f64() * 1e6;
    assert_eq!(&range[..], &plain[start as usize..start as usize + (1 << 20)]);

    println!(
        "{}",
        serde_json::json!({
            "mib": mib,
            "blake3_mib_s": rate(blake3_s),
            "seal_mib_s": rate(seal_s),
            "open_mib_s": rate(open_s),
            "seal_vs_blake3": ((blake3_s / seal_s) * 100.0).round() / 100.0,
            "open_vs_blake3": ((blake3_s / open_s) * 100.0).round() / 100.0,
            "range_1mib_us": range_us.round(),
            "overhead_bytes": sealed.len() - len,
        })
    );
}
