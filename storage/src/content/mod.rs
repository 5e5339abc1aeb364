//! The content store: the bytes of the content a node holds, their metadata, and which pieces
//! of each item are held (SPEC R7).
//!
//! # On disk
//!
//! `DIR/db/` is a fjall database with three keyspaces (kept in its own directory so fjall and
//! the data files never share one), plus one data file per item in `DIR/data/`:
//!
//! - `items`: `id` (32 bytes) → format byte `1`, size (u64 little-endian), then the page list:
//!   one 32-byte page chaining value per page for a file of more than one page; **empty for a
//!   one-page file** (its head is its piece chaining values, kept as page 0 in `pages`).
//! - `pages`: `id ‖ page` (page as u64 big-endian) → the page's piece chaining values, 32 bytes
//!   each, concatenated (at most [`PIECES_PER_PAGE`]). For a one-piece file the single "chaining
//!   value" is the id itself, as in [`verify_piece`].
//! - `held`: `id ‖ page` → a 128-byte bitfield: bit `i % 1024` (byte `i / 8 % 128`, least
//!   significant bit first) is set when piece `i` is held. A missing entry means no piece of
//!   the page is held.
//! - `DIR/data/<64 hex id>`: the item's bytes, a sparse file; piece `i` is at `i * PIECE_LEN`.
//!   `DIR/data/tmp-*` are files being imported; they are deleted when the store opens.
//!
//! # Durability
//!
//! A piece is *held* once [`ContentStore::write_pieces`] returned `Ok`: its bytes were written
//! and `fdatasync`ed, then its bit was set in one fjall batch persisted with
//! `PersistMode::SyncAll`. A crash in between leaves bytes without a bit, which is simply a
//! piece that is not held. fjall has one journal for all keyspaces, so that persist also makes
//! every earlier [`ContentStore::begin`] and [`ContentStore::put_page`] durable; those two do
//! not sync on their own (losing them in a crash loses no held piece). Every read of a piece
//! ([`ContentStore::read_piece`], [`ContentStore::verify_all`], [`ContentStore::export`])
//! re-hashes it against its chaining value, and a piece that no longer matches loses its bit.
//!
//! # Memory
//!
//! The [`Importer`] holds at most one piece buffer ([`PIECE_LEN`], 1 MiB), the chaining values
//! of the page being filled (at most 32 KiB), and the page list (32 bytes per GiB, at most
//! about 60 KiB); pages already filled go to a side file `tmp-<n>.cvs` and are copied into
//! `pages` one at a time at the end. Finishing also builds the held bitfields in one batch
//! (128 bytes per GiB). No call of the store holds more than one piece and one page of
//! chaining values at a time, except [`ContentStore::write_pieces`], which is handed its pieces.

mod import;

pub use import::{Importer, import_reader};

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use mynet_core::content::verify::{
    PAGE_LEN, PIECES_PER_PAGE, SIZE_MAX, page_cv, piece_cv, verify_page, verify_page_list, verify_piece, verify_pieces,
};
use mynet_core::content::{ContentId, Layout, PIECE_LEN, VerifyError};
use thiserror::Error;

const ITEMS: &str = "items";
const PAGES: &str = "pages";
const HELD: &str = "held";
const DATA: &str = "data";
const TMP_PREFIX: &str = "tmp-";
/// Format byte in front of every item record.
const ITEM_FORMAT: u8 = 1;
/// Bytes of a page's held bitfield.
const BITFIELD_LEN: usize = (PIECES_PER_PAGE / 8) as usize;

type Bitfield = [u8; BITFIELD_LEN];

/// An item's size and head: its page list (more than one page) or its piece chaining values.
pub type Head = (u64, Vec<[u8; 32]>);

/// A content store failure. Messages name the path or item and what was being done.
#[derive(Debug, Error)]
pub enum StoreError {
    #[error(
        "content store: {path}: the disk is full (no space left on device); free some space or move the store to a larger disk"
    )]
    DiskFull { path: PathBuf },
    #[error("content store: {path}: cannot {action}: {source}")]
    Io { path: PathBuf, action: &'static str, source: std::io::Error },
    #[error("content store database {path}: {message}")]
    Database { path: PathBuf, message: String },
    #[error("content store database {path}: record {key} is corrupt: {reason}")]
    Corrupt { path: PathBuf, key: String, reason: String },
    #[error("content {id}: {source}")]
    Verify { id: ContentId, source: VerifyError },
    #[error("content {id} is not in the store")]
    UnknownItem { id: ContentId },
    #[error("content {id} is already in the store with {existing}; refused {offered}")]
    Conflict { id: ContentId, existing: String, offered: String },
    #[error("content {id}: page {page} of chaining values is not known yet (put_page it first)")]
    NoPage { id: ContentId, page: u64 },
    #[error("content {id}: piece {index} is not held; the item is incomplete")]
    Incomplete { id: ContentId, index: u64 },
    #[error("content {id}: piece {index} in {path} is damaged (it does not match its chaining value); it was dropped")]
    Damaged { id: ContentId, index: u64, path: PathBuf },
    #[error("import: {size} bytes is larger than the largest supported file ({SIZE_MAX} bytes)")]
    ImportTooLarge { size: u64 },
    #[error("content {id}: cannot write the export: {source}")]
    Export { id: ContentId, source: std::io::Error },
}

/// Why [`ContentStore::read_piece`] returned no bytes.
#[derive(Debug, Error)]
pub enum ReadError {
    #[error("content {id}: piece {index} is not held")]
    NotHeld { id: ContentId, index: u64 },
    #[error("content {id}: piece {index} in {path} is damaged (it does not match its chaining value); it was dropped")]
    Damaged { id: ContentId, index: u64, path: PathBuf },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// One item as [`ContentStore::items`] lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ItemInfo {
    pub id: ContentId,
    pub size: u64,
    pub pieces: u64,
    pub pieces_held: u64,
}

impl ItemInfo {
    /// Whether every piece is held.
    pub fn complete(&self) -> bool {
        self.pieces_held == self.pieces
    }
}

/// What [`Importer::finish`] stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Imported {
    pub id: ContentId,
    pub size: u64,
    pub pieces: u64,
    /// The head, as [`ContentStore::begin`] takes it: the page list for a file of more than one
    /// page, the piece chaining values for a one-page file.
    pub head: Vec<[u8; 32]>,
}

/// What [`ContentStore::verify_all`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Items looked at.
    pub items: u64,
    /// Held pieces re-hashed.
    pub pieces_checked: u64,
    /// Bytes of those pieces.
    pub bytes_checked: u64,
    /// Pieces that did not match (or could not be read); their held bits were cleared.
    pub damaged: Vec<(ContentId, u64)>,
}

/// The node's content store. See the module documentation for the layout on disk.
pub struct ContentStore {
    dir: PathBuf,
    data: PathBuf,
    db: fjall::Database,
    items: fjall::Keyspace,
    pages: fjall::Keyspace,
    held: fjall::Keyspace,
    /// Serialises read-modify-writes of held bitfields and item creation/removal.
    lock: Mutex<()>,
    next_tmp: AtomicU64,
}

impl std::fmt::Debug for ContentStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ContentStore({})", self.dir.display())
    }
}

/// An item's record.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Item {
    layout: Layout,
    /// Page list for files of more than one page; empty otherwise.
    page_list: Vec<[u8; 32]>,
}

fn is_disk_full(err: &std::io::Error) -> bool {
    matches!(err.kind(), ErrorKind::StorageFull | ErrorKind::QuotaExceeded) || err.raw_os_error() == Some(28)
}

/// Maps an I/O error on `path` while doing `action`, singling out a full disk.
fn io_error<'a>(path: &'a Path, action: &'static str) -> impl FnOnce(std::io::Error) -> StoreError + 'a {
    move |source| {
        if is_disk_full(&source) {
            StoreError::DiskFull { path: path.to_path_buf() }
        } else {
            StoreError::Io { path: path.to_path_buf(), action, source }
        }
    }
}

fn page_key(id: &ContentId, page: u64) -> [u8; 40] {
    let mut key = [0u8; 40];
    key[..32].copy_from_slice(&id.0);
    key[32..].copy_from_slice(&page.to_be_bytes());
    key
}

fn cvs_bytes(cvs: &[[u8; 32]]) -> Vec<u8> {
    cvs.concat()
}

fn bit_index(index: u64) -> (u64, usize, u8) {
    let page = index / PIECES_PER_PAGE;
    let in_page = (index % PIECES_PER_PAGE) as usize;
    (page, in_page / 8, 1u8 << (in_page % 8))
}

/// Syncs a directory so a file created or renamed in it survives a crash.
fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_error(dir, "sync the directory"))
}

impl ContentStore {
    /// Opens (creating if needed) the store in `dir`. Deletes leftover import temp files and
    /// data files of items that have no record (a removal interrupted by a crash).
    pub fn open(dir: &Path) -> Result<ContentStore, StoreError> {
        fs::create_dir_all(dir).map_err(io_error(dir, "create the store directory"))?;
        let data = dir.join(DATA);
        fs::create_dir_all(&data).map_err(io_error(&data, "create the data directory"))?;
        let backend = |e: fjall::Error| db_error(dir, e);
        let db = fjall::Database::builder(dir.join("db")).open().map_err(backend)?;
        let items = db.keyspace(ITEMS, fjall::KeyspaceCreateOptions::default).map_err(backend)?;
        let pages = db.keyspace(PAGES, fjall::KeyspaceCreateOptions::default).map_err(backend)?;
        let held = db.keyspace(HELD, fjall::KeyspaceCreateOptions::default).map_err(backend)?;
        let store = ContentStore {
            dir: dir.to_path_buf(),
            data,
            db,
            items,
            pages,
            held,
            lock: Mutex::new(()),
            next_tmp: AtomicU64::new(0),
        };
        store.clean_data_dir()?;
        Ok(store)
    }

    fn clean_data_dir(&self) -> Result<(), StoreError> {
        let entries = fs::read_dir(&self.data).map_err(io_error(&self.data, "list the data directory"))?;
        for entry in entries {
            let entry = entry.map_err(io_error(&self.data, "list the data directory"))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let stale = if name.starts_with(TMP_PREFIX) {
                true
            } else if let Ok(id) = ContentId::from_hex(name) {
                self.item(&id)?.is_none()
            } else {
                false
            };
            if stale {
                let path = entry.path();
                fs::remove_file(&path).map_err(io_error(&path, "delete a stale file"))?;
            }
        }
        Ok(())
    }

    fn db_error(&self, e: fjall::Error) -> StoreError {
        db_error(&self.dir, e)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.lock.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn persist(&self) -> Result<(), StoreError> {
        self.db.persist(fjall::PersistMode::SyncAll).map_err(|e| self.db_error(e))
    }

    /// The data file of `id`.
    pub fn data_path(&self, id: &ContentId) -> PathBuf {
        self.data.join(id.to_string())
    }

    fn item(&self, id: &ContentId) -> Result<Option<Item>, StoreError> {
        let Some(value) = self.items.get(id.0).map_err(|e| self.db_error(e))? else { return Ok(None) };
        let corrupt =
            |reason: String| StoreError::Corrupt { path: self.dir.clone(), key: format!("items/{id}"), reason };
        let (&format, rest) = value.split_first().ok_or_else(|| corrupt("empty".into()))?;
        if format != ITEM_FORMAT {
            return Err(corrupt(format!("unknown format byte {format}")));
        }
        if rest.len() < 8 || (rest.len() - 8) % 32 != 0 {
            return Err(corrupt(format!("{} bytes", value.len())));
        }
        let (size, list) = rest.split_at(8);
        let size = u64::from_le_bytes(size.try_into().map_err(|_| corrupt("size".into()))?);
        let layout = Layout::new(size).map_err(|e| corrupt(e.to_string()))?;
        let page_list = split_cvs(list);
        let expected = if layout.pages() > 1 { layout.pages() as usize } else { 0 };
        if page_list.len() != expected {
            return Err(corrupt(format!("{} page entries for {} pages", page_list.len(), layout.pages())));
        }
        Ok(Some(Item { layout, page_list }))
    }

    fn item_value(item: &Item) -> Vec<u8> {
        let mut value = Vec::with_capacity(9 + 32 * item.page_list.len());
        value.push(ITEM_FORMAT);
        value.extend_from_slice(&item.layout.size.to_le_bytes());
        value.extend_from_slice(&cvs_bytes(&item.page_list));
        value
    }

    fn known_item(&self, id: &ContentId) -> Result<Item, StoreError> {
        self.item(id)?.ok_or(StoreError::UnknownItem { id: *id })
    }

    fn load_page(&self, id: &ContentId, page: u64) -> Result<Option<Vec<[u8; 32]>>, StoreError> {
        let Some(value) = self.pages.get(page_key(id, page)).map_err(|e| self.db_error(e))? else { return Ok(None) };
        if value.len() % 32 != 0 || value.len() as u64 > 32 * PIECES_PER_PAGE {
            return Err(StoreError::Corrupt {
                path: self.dir.clone(),
                key: format!("pages/{id}/{page}"),
                reason: format!("{} bytes", value.len()),
            });
        }
        Ok(Some(split_cvs(&value)))
    }

    fn load_bits(&self, id: &ContentId, page: u64) -> Result<Bitfield, StoreError> {
        match self.held.get(page_key(id, page)).map_err(|e| self.db_error(e))? {
            None => Ok([0; BITFIELD_LEN]),
            Some(value) => value.as_ref().try_into().map_err(|_| StoreError::Corrupt {
                path: self.dir.clone(),
                key: format!("held/{id}/{page}"),
                reason: format!("{} bytes, expected {BITFIELD_LEN}", value.len()),
            }),
        }
    }

    /// Held bitfields of `id`, by page.
    fn all_bits(&self, id: &ContentId) -> Result<Vec<(u64, Bitfield)>, StoreError> {
        let mut out = Vec::new();
        for guard in self.held.prefix(id.0) {
            let (key, value) = guard.into_inner().map_err(|e| self.db_error(e))?;
            let corrupt =
                |reason: String| StoreError::Corrupt { path: self.dir.clone(), key: format!("held/{id}"), reason };
            let page: [u8; 8] = key.get(32..).and_then(|k| k.try_into().ok()).ok_or_else(|| corrupt("key".into()))?;
            let bits: Bitfield = value.as_ref().try_into().map_err(|_| corrupt(format!("{} bytes", value.len())))?;
            out.push((u64::from_be_bytes(page), bits));
        }
        Ok(out)
    }

    /// Sets (or clears) the held bits of `pieces` in one batch and persists it. Takes the lock.
    fn set_bits(&self, pieces: &[(ContentId, u64)], held: bool) -> Result<(), StoreError> {
        if pieces.is_empty() {
            return Ok(());
        }
        let _guard = self.lock();
        let mut pages: BTreeMap<(ContentId, u64), Bitfield> = BTreeMap::new();
        for &(id, index) in pieces {
            if held && self.item(&id)?.is_none() {
                // Removed while its pieces were being written.
                return Err(StoreError::UnknownItem { id });
            }
            let (page, byte, mask) = bit_index(index);
            let bits = match pages.entry((id, page)) {
                std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::btree_map::Entry::Vacant(e) => e.insert(self.load_bits(&id, page)?),
            };
            if held {
                bits[byte] |= mask;
            } else {
                bits[byte] &= !mask;
            }
        }
        let mut batch = self.db.batch();
        for ((id, page), bits) in &pages {
            if bits.iter().all(|&b| b == 0) {
                batch.remove(&self.held, page_key(id, *page));
            } else {
                batch.insert(&self.held, page_key(id, *page), bits.as_slice());
            }
        }
        batch.commit().map_err(|e| self.db_error(e))?;
        self.persist()
    }

    /// Registers an item being downloaded: its size and its verified head (the page list of a
    /// file of more than one page, the piece chaining values of a one-page file). The head is
    /// checked against `id` again. Idempotent; a different size or head for a known id is an
    /// error.
    pub fn begin(&self, id: ContentId, size: u64, head: &[[u8; 32]]) -> Result<(), StoreError> {
        let verify = |source| StoreError::Verify { id, source };
        let layout = Layout::new(size).map_err(verify)?;
        let multi_page = layout.pages() > 1;
        if multi_page {
            verify_page_list(&id, layout, head).map_err(verify)?;
        } else {
            verify_pieces(&id, layout, head).map_err(verify)?;
        }
        let _guard = self.lock();
        if let Some(existing) = self.item(&id)? {
            if existing.layout.size != size {
                return Err(StoreError::Conflict {
                    id,
                    existing: format!("size {}", existing.layout.size),
                    offered: format!("size {size}"),
                });
            }
            // A verified head of the same size is the same head (both merge to the id).
            return Ok(());
        }
        let item = Item { layout, page_list: if multi_page { head.to_vec() } else { Vec::new() } };
        let mut batch = self.db.batch();
        if !multi_page {
            batch.insert(&self.pages, page_key(&id, 0), cvs_bytes(head));
        }
        batch.insert(&self.items, id.0, Self::item_value(&item));
        batch.commit().map_err(|e| self.db_error(e))
    }

    /// Stores page `page` of piece chaining values of a file of more than one page, after
    /// checking it against its entry in the page list. (For a one-page file the page is the
    /// head; offering it again is accepted if it matches.)
    pub fn put_page(&self, id: ContentId, page: u64, cvs: &[[u8; 32]]) -> Result<(), StoreError> {
        let verify = |source| StoreError::Verify { id, source };
        let item = self.known_item(&id)?;
        if item.layout.pages() == 1 {
            if page != 0 {
                return Err(verify(VerifyError::WrongCount { expected: 1, got: page + 1 }));
            }
            return verify_pieces(&id, item.layout, cvs).map_err(verify);
        }
        let entry = item
            .page_list
            .get(page as usize)
            .ok_or(verify(VerifyError::WrongCount { expected: item.layout.pages(), got: page + 1 }))?;
        verify_page(item.layout, page, entry, cvs).map_err(verify)?;
        self.pages.insert(page_key(&id, page), cvs_bytes(cvs)).map_err(|e| self.db_error(e))
    }

    /// The size and head of `id` (as given to [`begin`](Self::begin) or computed at import).
    pub fn head(&self, id: ContentId) -> Result<Option<Head>, StoreError> {
        let Some(item) = self.item(&id)? else { return Ok(None) };
        if item.layout.pages() > 1 {
            return Ok(Some((item.layout.size, item.page_list)));
        }
        let cvs = self.load_page(&id, 0)?.ok_or(StoreError::NoPage { id, page: 0 })?;
        Ok(Some((item.layout.size, cvs)))
    }

    /// Page `page` of piece chaining values of `id`, if known.
    pub fn page(&self, id: ContentId, page: u64) -> Result<Option<Vec<[u8; 32]>>, StoreError> {
        if self.item(&id)?.is_none() {
            return Ok(None);
        }
        self.load_page(&id, page)
    }

    /// The chaining value of piece `index` of `id`.
    fn piece_cv_of(&self, id: &ContentId, index: u64) -> Result<[u8; 32], StoreError> {
        let page = index / PIECES_PER_PAGE;
        let cvs = self.load_page(id, page)?.ok_or(StoreError::NoPage { id: *id, page })?;
        cvs.get((index % PIECES_PER_PAGE) as usize).copied().ok_or(StoreError::Corrupt {
            path: self.dir.clone(),
            key: format!("pages/{id}/{page}"),
            reason: format!("no entry for piece {index}"),
        })
    }

    /// Writes pieces durably: positional writes, one `fdatasync` per touched data file, then
    /// the held bits in one fjall batch persisted with `SyncAll`. The pieces must have been
    /// verified by the caller (`verify_piece`); here their index, length and that their page
    /// of chaining values is known are checked, and every later read re-hashes them. On error
    /// no held bit is set for any of them.
    pub fn write_pieces(&self, pieces: &[(ContentId, u64, &[u8])]) -> Result<(), StoreError> {
        let mut items: BTreeMap<ContentId, Item> = BTreeMap::new();
        let mut known_pages: BTreeMap<(ContentId, u64), ()> = BTreeMap::new();
        for &(id, index, bytes) in pieces {
            let item = match items.entry(id) {
                std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::btree_map::Entry::Vacant(e) => e.insert(self.known_item(&id)?),
            };
            let pieces = item.layout.pieces();
            let verify = |source| StoreError::Verify { id, source };
            if index >= pieces {
                return Err(verify(VerifyError::NoSuchPiece { index, pieces }));
            }
            let expected = item.layout.piece_len(index);
            if bytes.len() as u64 != expected {
                return Err(verify(VerifyError::PieceLength { index, expected, got: bytes.len() as u64 }));
            }
            let page = index / PIECES_PER_PAGE;
            if let std::collections::btree_map::Entry::Vacant(e) = known_pages.entry((id, page)) {
                let stored = self.pages.contains_key(page_key(&id, page)).map_err(|e| self.db_error(e))?;
                if !stored {
                    return Err(StoreError::NoPage { id, page });
                }
                e.insert(());
            }
        }
        let mut created = false;
        for id in items.keys() {
            let path = self.data_path(id);
            let file = match File::options().write(true).open(&path) {
                Ok(file) => Ok(file),
                Err(e) if e.kind() == ErrorKind::NotFound => {
                    created = true;
                    File::options().write(true).create(true).truncate(false).open(&path)
                }
                Err(e) => Err(e),
            }
            .map_err(io_error(&path, "open the data file"))?;
            for &(_, index, bytes) in pieces.iter().filter(|(pid, _, _)| pid == id) {
                file.write_all_at(bytes, index * PIECE_LEN).map_err(io_error(&path, "write a piece"))?;
            }
            file.sync_data().map_err(io_error(&path, "sync the data file"))?;
        }
        if created {
            sync_dir(&self.data)?;
        }
        let bits: Vec<(ContentId, u64)> = pieces.iter().map(|&(id, index, _)| (id, index)).collect();
        self.set_bits(&bits, true)
    }

    /// Reads a held piece back and re-verifies it against its stored chaining value. A damaged
    /// piece (changed, short or missing on disk) loses its held bit, durably, and is reported.
    pub fn read_piece(&self, id: ContentId, index: u64) -> Result<Vec<u8>, ReadError> {
        let mut out = Vec::new();
        self.read_piece_into(id, index, &mut out)?;
        Ok(out)
    }

    /// Like [`ContentStore::read_piece`], appending the piece to `out` (so a caller can put a
    /// header in front without copying the piece). On error `out` is left as it was.
    pub fn read_piece_into(&self, id: ContentId, index: u64, out: &mut Vec<u8>) -> Result<(), ReadError> {
        let not_held = ReadError::NotHeld { id, index };
        let Some(item) = self.item(&id)? else { return Err(not_held) };
        if index >= item.layout.pieces() {
            return Err(not_held);
        }
        let (page, byte, mask) = bit_index(index);
        if self.load_bits(&id, page)?[byte] & mask == 0 {
            return Err(not_held);
        }
        let path = self.data_path(&id);
        let file = match File::open(&path) {
            Ok(file) => Some(file),
            Err(e) if e.kind() == ErrorKind::NotFound => None,
            Err(e) => return Err(io_error(&path, "open the data file")(e).into()),
        };
        let start = out.len();
        if self.check_piece_into(&id, &item, file.as_ref(), &path, index, out)? {
            return Ok(());
        }
        out.truncate(start);
        self.set_bits(&[(id, index)], false)?;
        Err(ReadError::Damaged { id, index, path })
    }

    /// Reads piece `index` from `file` and checks it: `Some(bytes)` if it matches, `None` if it
    /// does not or is missing or short.
    fn check_piece(
        &self,
        id: &ContentId,
        item: &Item,
        file: Option<&File>,
        path: &Path,
        index: u64,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let mut bytes = Vec::new();
        Ok(self.check_piece_into(id, item, file, path, index, &mut bytes)?.then_some(bytes))
    }

    /// Appends piece `index` read from `file` to `out` and checks it: true if it matches.
    fn check_piece_into(
        &self,
        id: &ContentId,
        item: &Item,
        file: Option<&File>,
        path: &Path,
        index: u64,
        out: &mut Vec<u8>,
    ) -> Result<bool, StoreError> {
        let cv = if item.layout.pieces() == 1 { id.0 } else { self.piece_cv_of(id, index)? };
        let Some(file) = file else { return Ok(false) };
        let start = out.len();
        out.resize(start + item.layout.piece_len(index) as usize, 0);
        match file.read_exact_at(&mut out[start..], index * PIECE_LEN) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => return Ok(false),
            Err(e) => return Err(io_error(path, "read a piece")(e)),
        }
        Ok(verify_piece(item.layout, index, &cv, &out[start..]).is_ok())
    }

    /// Drops piece `index` of `id` (it is no longer held), durably.
    pub fn drop_piece(&self, id: ContentId, index: u64) -> Result<(), StoreError> {
        self.set_bits(&[(id, index)], false)
    }

    /// Removes `id`: its record, pages and held bits (one persisted batch), then its data file.
    /// Returns whether it was in the store.
    pub fn remove(&self, id: ContentId) -> Result<bool, StoreError> {
        {
            let _guard = self.lock();
            if self.item(&id)?.is_none() {
                return Ok(false);
            }
            let mut batch = self.db.batch();
            batch.remove(&self.items, id.0);
            for keyspace in [&self.pages, &self.held] {
                for guard in keyspace.prefix(id.0) {
                    let key = guard.key().map_err(|e| self.db_error(e))?;
                    batch.remove(keyspace, key);
                }
            }
            batch.commit().map_err(|e| self.db_error(e))?;
            self.persist()?;
        }
        let path = self.data_path(&id);
        match fs::remove_file(&path) {
            Ok(()) => sync_dir(&self.data)?,
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(io_error(&path, "delete the data file")(e)),
        }
        Ok(true)
    }

    fn info_of(&self, id: ContentId, item: &Item) -> Result<ItemInfo, StoreError> {
        let pieces_held =
            self.all_bits(&id)?.iter().flat_map(|(_, bits)| bits.iter()).map(|b| b.count_ones() as u64).sum();
        Ok(ItemInfo { id, size: item.layout.size, pieces: item.layout.pieces(), pieces_held })
    }

    /// Every item, sorted by id.
    pub fn items(&self) -> Result<Vec<ItemInfo>, StoreError> {
        let mut out = Vec::new();
        for id in self.item_ids()? {
            if let Some(item) = self.item(&id)? {
                out.push(self.info_of(id, &item)?);
            }
        }
        Ok(out)
    }

    fn item_ids(&self) -> Result<Vec<ContentId>, StoreError> {
        let mut ids = Vec::new();
        for guard in self.items.iter() {
            let key = guard.key().map_err(|e| self.db_error(e))?;
            let id: [u8; 32] = key.as_ref().try_into().map_err(|_| StoreError::Corrupt {
                path: self.dir.clone(),
                key: "items".into(),
                reason: format!("a key of {} bytes", key.len()),
            })?;
            ids.push(ContentId(id));
        }
        Ok(ids)
    }

    /// One item's size and how many of its pieces are held.
    pub fn info(&self, id: ContentId) -> Result<Option<ItemInfo>, StoreError> {
        match self.item(&id)? {
            None => Ok(None),
            Some(item) => self.info_of(id, &item).map(Some),
        }
    }

    /// Indexes of the held pieces of `id`, ascending.
    pub fn held(&self, id: ContentId) -> Result<Vec<u64>, StoreError> {
        let mut out = Vec::new();
        for (page, bits) in self.all_bits(&id)? {
            for (i, byte) in bits.iter().enumerate() {
                for bit in 0..8 {
                    if byte & (1 << bit) != 0 {
                        out.push(page * PIECES_PER_PAGE + (i * 8 + bit) as u64);
                    }
                }
            }
        }
        Ok(out)
    }

    /// Re-hashes every held piece of every item, one piece in memory at a time; pieces that no
    /// longer match (or cannot be read) lose their held bits (durably, once per item) and are
    /// reported.
    pub fn verify_all(&self) -> Result<VerifyReport, StoreError> {
        let mut report = VerifyReport::default();
        for id in self.item_ids()? {
            let Some(item) = self.item(&id)? else { continue };
            report.items += 1;
            let path = self.data_path(&id);
            let file = match File::open(&path) {
                Ok(file) => Some(file),
                Err(e) if e.kind() == ErrorKind::NotFound => None,
                Err(e) => return Err(io_error(&path, "open the data file")(e)),
            };
            let mut damaged = Vec::new();
            for index in self.held(id)? {
                if index >= item.layout.pieces() {
                    damaged.push((id, index));
                    continue;
                }
                report.pieces_checked += 1;
                report.bytes_checked += item.layout.piece_len(index);
                if self.check_piece(&id, &item, file.as_ref(), &path, index)?.is_none() {
                    damaged.push((id, index));
                }
            }
            self.set_bits(&damaged, false)?;
            report.damaged.extend(damaged);
        }
        Ok(report)
    }

    /// Copies complete item `id` to `out`, re-verifying each piece. Returns the bytes written.
    pub fn export(&self, id: ContentId, out: &mut dyn Write) -> Result<u64, StoreError> {
        let item = self.known_item(&id)?;
        let mut written = 0;
        for index in 0..item.layout.pieces() {
            let bytes = match self.read_piece(id, index) {
                Ok(bytes) => bytes,
                Err(ReadError::NotHeld { .. }) => return Err(StoreError::Incomplete { id, index }),
                Err(ReadError::Damaged { id, index, path }) => return Err(StoreError::Damaged { id, index, path }),
                Err(ReadError::Store(e)) => return Err(e),
            };
            out.write_all(&bytes).map_err(|source| StoreError::Export { id, source })?;
            written += bytes.len() as u64;
        }
        out.flush().map_err(|source| StoreError::Export { id, source })?;
        Ok(written)
    }
}

fn db_error(dir: &Path, e: fjall::Error) -> StoreError {
    let io = match &e {
        fjall::Error::Io(io) => Some(io),
        fjall::Error::Storage(fjall::LsmError::Io(io)) => Some(io),
        _ => None,
    };
    if io.is_some_and(is_disk_full) {
        return StoreError::DiskFull { path: dir.to_path_buf() };
    }
    StoreError::Database { path: dir.to_path_buf(), message: e.to_string() }
}

fn split_cvs(bytes: &[u8]) -> Vec<[u8; 32]> {
    bytes.chunks_exact(32).map(|c| <[u8; 32]>::try_from(c).unwrap_or_default()).collect()
}

#[cfg(test)]
mod tests;
