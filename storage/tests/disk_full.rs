//! A full disk: the write fails with a clear error, nothing is counted as held that is not on
//! disk, and the store reopens with every piece it had. Runs on a small tmpfs the test mounts
//! (skipped with a message where mounting is not allowed).

use std::path::Path;
use std::process::Command;

use mynet_core::content::ContentId;
use mynet_core::content::verify::{Layout, PIECE_LEN, piece_cvs};
use mynet_storage::content::{ContentStore, StoreError};

struct Mount<'a>(&'a Path);

impl Drop for Mount<'_> {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0).status();
    }
}

#[test]
fn a_full_disk_fails_the_write_clearly_and_corrupts_nothing() {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path().join("small");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let mounted = Command::new("mount").args(["-t", "tmpfs", "-o", "size=24m", "tmpfs"]).arg(&dir).output();
    if !mounted.as_ref().is_ok_and(|o| o.status.success()) {
        eprintln!("skipped: cannot mount a tmpfs here ({mounted:?})");
        return;
    }
    let _mount = Mount(&dir);
    let data: Vec<u8> = (0..(40 * PIECE_LEN as usize)).map(|i| (i * 7 % 251) as u8).collect();
    let id = ContentId::of(&data);
    let cvs = piece_cvs(&data);
    let layout = Layout::new(data.len() as u64).expect("layout");
    let store = ContentStore::open(&dir.join("store")).expect("open");
    store.begin(id, layout.size, &cvs).expect("begin");
    let mut held = 0;
    let mut failure = None;
    for (index, piece) in data.chunks(PIECE_LEN as usize).enumerate() {
        match store.write_pieces(&[(id, index as u64, piece)]) {
            Ok(()) => held += 1,
            Err(err) => {
                failure = Some(err);
                break;
            }
        }
    }
    let failure = failure.expect("a 40 MiB item does not fit a 24 MiB disk");
    assert!(matches!(failure, StoreError::DiskFull { .. }), "{failure:?}");
    let message = failure.to_string();
    assert!(message.contains("full") || message.contains("space"), "the error says why: {message}");
    assert!(held > 0, "some pieces fit before the disk filled");
    assert_eq!(store.held(id).expect("held").len(), held, "only pieces that were written are held");
    drop(store);
    // Reopened (after space is freed elsewhere it would go on): every held piece reads back verified.
    let store = ContentStore::open(&dir.join("store")).expect("reopen");
    let indexes = store.held(id).expect("held");
    assert_eq!(indexes.len(), held);
    for index in indexes {
        let piece = store.read_piece(id, index).expect("a held piece reads back");
        let start = (index * PIECE_LEN) as usize;
        assert_eq!(piece, data[start..start + piece.len()]);
    }
}
