//! Where should piece bytes live? Writes N MiB of 1 MiB pieces durably two ways, then reads them
//! all back, in the same run:
//!
//! - **files**: [`ContentStore::write_pieces`] in groups of 16 pieces: positional writes into
//!   the item's sparse data file, one `fdatasync`, then the 16 held bits in one fjall batch
//!   persisted with `SyncAll`. Read back with `read_piece` (which re-hashes each piece).
//! - **fjall**: one keyspace with key-value separation (blob files, no compression: piece bytes
//!   are incompressible), 1 MiB values, `persist(SyncAll)` per group of 16. Read back with
//!   `get` and the same `verify_piece` check, so both read paths do the same hashing.
//!
//! `cargo run --release -p mynet-storage --example piece_store [MIB] [DIR]`
//!
//! MIB defaults to 256; DIR (where the two stores are made, then deleted) to the system temp
//! dir. Only the write and read calls are timed, not making the piece bytes. Reads right after
//! writes are mostly served from the page cache, for both paths alike. Prints one JSON line.

use std::time::{Duration, Instant};

use mynet_core::content::verify::{PIECES_PER_PAGE, page_cv, piece_cv, verify_piece};
use mynet_core::content::{ContentId, Layout, PIECE_LEN};
use mynet_storage::ContentStore;

const GROUP: u64 = 16;

/// Piece `index` of the benchmark file (BLAKE3 in XOF mode: incompressible, non-repeating).
fn piece(index: u64) -> Vec<u8> {
    let mut out = vec![0u8; PIECE_LEN as usize];
    blake3::Hasher::new().update(&index.to_le_bytes()).finalize_xof().fill(&mut out);
    out
}

fn mib_per_s(mib: u64, took: Duration) -> f64 {
    mib as f64 / took.as_secs_f64().max(1e-9)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let mib: u64 = args.next().map_or(Ok(256), |s| s.parse())?;
    let base = args.next().map_or_else(std::env::temp_dir, std::path::PathBuf::from);
    if mib < 2 {
        return Err("MIB must be at least 2 (a file of more than one piece)".into());
    }
    let layout = Layout::new(mib * PIECE_LEN)?;
    let pieces = layout.pieces();

    // The file's metadata: piece chaining values by page, the page list and the id.
    let mut hasher = blake3::Hasher::new();
    let mut pages: Vec<Vec<[u8; 32]>> = Vec::new();
    for index in 0..pieces {
        let bytes = piece(index);
        hasher.update(&bytes);
        if index % PIECES_PER_PAGE == 0 {
            pages.push(Vec::new());
        }
        if let Some(page) = pages.last_mut() {
            page.push(piece_cv(index, &bytes));
        }
    }
    let id = ContentId(*hasher.finalize().as_bytes());
    let cv_of = |index: u64| pages[(index / PIECES_PER_PAGE) as usize][(index % PIECES_PER_PAGE) as usize];

    // (a) files + held bits in fjall, through the content store.
    let dir = tempfile::tempdir_in(&base)?;
    let store = ContentStore::open(dir.path())?;
    if pages.len() == 1 {
        store.begin(id, layout.size, &pages[0])?;
    } else {
        let list: Vec<[u8; 32]> = pages.iter().enumerate().map(|(p, cvs)| page_cv(layout, p as u64, cvs)).collect();
        store.begin(id, layout.size, &list)?;
        for (p, cvs) in pages.iter().enumerate() {
            store.put_page(id, p as u64, cvs)?;
        }
    }
    let mut files_write = Duration::ZERO;
    for start in (0..pieces).step_by(GROUP as usize) {
        let group: Vec<(u64, Vec<u8>)> = (start..(start + GROUP).min(pieces)).map(|i| (i, piece(i))).collect();
        let batch: Vec<(ContentId, u64, &[u8])> = group.iter().map(|(i, b)| (id, *i, b.as_slice())).collect();
        let started = Instant::now();
        store.write_pieces(&batch)?;
        files_write += started.elapsed();
    }
    let started = Instant::now();
    let mut read_bytes = 0u64;
    for index in 0..pieces {
        read_bytes += store.read_piece(id, index)?.len() as u64;
    }
    let files_read = started.elapsed();
    assert_eq!(read_bytes, layout.size);
    drop(store);
    drop(dir);

    // (b) 1 MiB values in fjall (key-value separation), persisted per group.
    let dir = tempfile::tempdir_in(&base)?;
    let db = fjall::Database::builder(dir.path()).open()?;
    let blobs = db.keyspace("pieces", || {
        fjall::KeyspaceCreateOptions::default()
            .with_kv_separation(Some(fjall::KvSeparationOptions::default().compression(fjall::CompressionType::None)))
    })?;
    let mut fjall_write = Duration::ZERO;
    for start in (0..pieces).step_by(GROUP as usize) {
        let group: Vec<(u64, Vec<u8>)> = (start..(start + GROUP).min(pieces)).map(|i| (i, piece(i))).collect();
        let started = Instant::now();
        for (index, bytes) in group {
            blobs.insert(index.to_be_bytes(), bytes)?;
        }
        db.persist(fjall::PersistMode::SyncAll)?;
        fjall_write += started.elapsed();
    }
    let started = Instant::now();
    let mut read_bytes = 0u64;
    for index in 0..pieces {
        let bytes = blobs.get(index.to_be_bytes())?.ok_or("a piece is missing from fjall")?;
        verify_piece(layout, index, &cv_of(index), &bytes)?;
        read_bytes += bytes.len() as u64;
    }
    let fjall_read = started.elapsed();
    assert_eq!(read_bytes, layout.size);
    drop(blobs);
    drop(db);
    drop(dir);

    let (fw, fr) = (mib_per_s(mib, files_write), mib_per_s(mib, files_read));
    let (jw, jr) = (mib_per_s(mib, fjall_write), mib_per_s(mib, fjall_read));
    println!(
        "{{\"mib\":{mib},\"group\":{GROUP},\"pages\":{},\"files_write_mib_s\":{fw:.1},\"files_read_mib_s\":{fr:.1},\"fjall_write_mib_s\":{jw:.1},\"fjall_read_mib_s\":{jr:.1},\"write_ratio_files_over_fjall\":{:.2},\"read_ratio_files_over_fjall\":{:.2}}}",
        pages.len(),
        fw / jw,
        fr / jr
    );
    Ok(())
}
