//! Streaming import (`mynet add`): a file goes in piece by piece, its id computed on the way;
//! see the parent module's documentation for the memory bound.

use super::*;

impl ContentStore {
    /// Starts an import: bytes are streamed in with [`Importer::write`].
    pub fn importer(&self) -> Result<Importer<'_>, StoreError> {
        let n = self.next_tmp.fetch_add(1, Ordering::Relaxed);
        let path = self.data.join(format!("{TMP_PREFIX}{n}"));
        let cvs_path = self.data.join(format!("{TMP_PREFIX}{n}.cvs"));
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(io_error(&path, "create an import file"))?;
        Ok(Importer {
            store: self,
            path,
            cvs_path,
            file,
            cvs_file: None,
            buf: Vec::with_capacity(PIECE_LEN as usize),
            hasher: blake3::Hasher::new(),
            size: 0,
            pieces_done: 0,
            page_cvs: Vec::new(),
            page_list: Vec::new(),
            finished: false,
        })
    }
}

/// Streams a file into the store; see the module documentation for its memory bound.
pub struct Importer<'a> {
    store: &'a ContentStore,
    path: PathBuf,
    /// Side file of the piece chaining values of filled pages (created when a page fills).
    cvs_path: PathBuf,
    file: File,
    cvs_file: Option<File>,
    /// The piece being filled (at most `PIECE_LEN` bytes).
    buf: Vec<u8>,
    /// The id: the plain BLAKE3 hash of all bytes.
    hasher: blake3::Hasher,
    size: u64,
    /// Complete pieces written so far.
    pieces_done: u64,
    /// Chaining values of the pieces of the page being filled.
    page_cvs: Vec<[u8; 32]>,
    /// Chaining values of the filled pages.
    page_list: Vec<[u8; 32]>,
    finished: bool,
}

impl std::fmt::Debug for Importer<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Importer({}, {} bytes)", self.path.display(), self.size)
    }
}

impl Importer<'_> {
    /// Adds `bytes` (any length) to the file being imported.
    pub fn write(&mut self, mut bytes: &[u8]) -> Result<(), StoreError> {
        let size = self.size + bytes.len() as u64;
        if Layout::new(size).is_err() {
            return Err(StoreError::ImportTooLarge { size });
        }
        self.hasher.update(bytes);
        self.size = size;
        while !bytes.is_empty() {
            let take = (PIECE_LEN as usize - self.buf.len()).min(bytes.len());
            self.buf.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.buf.len() as u64 == PIECE_LEN {
                self.end_piece()?;
            }
        }
        Ok(())
    }

    /// Writes the buffered piece and records its chaining value (as a piece of a file of more
    /// than one piece; `finish` replaces it with the id for a one-piece file).
    fn end_piece(&mut self) -> Result<(), StoreError> {
        let index = self.pieces_done;
        self.file.write_all_at(&self.buf, index * PIECE_LEN).map_err(io_error(&self.path, "write an import file"))?;
        // An empty piece is only the whole of an empty file, whose "cv" is the id (set later).
        self.page_cvs.push(if self.buf.is_empty() { [0; 32] } else { piece_cv(index, &self.buf) });
        self.buf.clear();
        self.pieces_done += 1;
        if self.page_cvs.len() as u64 == PIECES_PER_PAGE {
            // A full page, not known yet to be the last: its chaining value as a page of a
            // larger file (a full page's subtree is the same wherever the file ends).
            let page = self.page_list.len() as u64;
            let larger = Layout { size: (page + 2) * PAGE_LEN };
            self.page_list.push(page_cv(larger, page, &self.page_cvs));
            let bytes = cvs_bytes(&self.page_cvs);
            let cvs_file = match &mut self.cvs_file {
                Some(file) => file,
                None => self.cvs_file.insert(
                    File::options()
                        .read(true)
                        .write(true)
                        .create(true)
                        .truncate(true)
                        .open(&self.cvs_path)
                        .map_err(io_error(&self.cvs_path, "create an import side file"))?,
                ),
            };
            cvs_file.write_all(&bytes).map_err(io_error(&self.cvs_path, "write an import side file"))?;
            self.page_cvs.clear();
        }
        Ok(())
    }

    /// Piece chaining values of filled page `page`, read back from the side file.
    fn filled_page(&self, page: u64) -> Result<Vec<[u8; 32]>, StoreError> {
        let file = self.cvs_file.as_ref().ok_or(StoreError::Io {
            path: self.cvs_path.clone(),
            action: "read an import side file",
            source: ErrorKind::NotFound.into(),
        })?;
        let mut bytes = vec![0u8; (32 * PIECES_PER_PAGE) as usize];
        file.read_exact_at(&mut bytes, page * 32 * PIECES_PER_PAGE)
            .map_err(io_error(&self.cvs_path, "read an import side file"))?;
        Ok(split_cvs(&bytes))
    }

    /// Finishes the import: syncs the file, moves it to the id's name (or deletes it if the
    /// item is already complete), then stores the metadata and sets every held bit (persisted).
    pub fn finish(mut self) -> Result<Imported, StoreError> {
        if !self.buf.is_empty() || self.size == 0 {
            self.end_piece()?;
        }
        let id = ContentId(*self.hasher.finalize().as_bytes());
        let verify = |source| StoreError::Verify { id, source };
        let layout = Layout::new(self.size).map_err(verify)?;
        let pages = layout.pages();
        if !self.page_cvs.is_empty() {
            let last = self.page_list.len() as u64;
            self.page_list.push(page_cv(layout, last, &self.page_cvs));
        }
        // The head, checked against the id (a self-check of the streaming computation).
        let head = if pages == 1 {
            let mut cvs =
                if self.page_cvs.is_empty() { self.filled_page(0)? } else { std::mem::take(&mut self.page_cvs) };
            if layout.pieces() == 1 {
                cvs = vec![id.0];
            }
            verify_pieces(&id, layout, &cvs).map_err(verify)?;
            cvs
        } else {
            verify_page_list(&id, layout, &self.page_list).map_err(verify)?;
            self.page_list.clone()
        };
        self.file.sync_data().map_err(io_error(&self.path, "sync an import file"))?;
        let store = self.store;
        let imported = Imported { id, size: self.size, pieces: layout.pieces(), head: head.clone() };
        if store.info(id)?.is_some_and(|info| info.complete()) {
            // Already held in full: the temp files go when `self` drops.
            return Ok(imported);
        }
        // Pages of a multi-page file, one at a time (the last one is still in memory).
        if pages > 1 {
            for page in 0..pages {
                let cvs = if page == pages - 1 && !self.page_cvs.is_empty() {
                    std::mem::take(&mut self.page_cvs)
                } else {
                    self.filled_page(page)?
                };
                store.pages.insert(page_key(&id, page), cvs_bytes(&cvs)).map_err(|e| store.db_error(e))?;
            }
        }
        let _guard = store.lock();
        let target = store.data_path(&id);
        fs::rename(&self.path, &target).map_err(io_error(&target, "move an imported file into place"))?;
        self.finished = true;
        sync_dir(&store.data)?;
        let item = Item { layout, page_list: if pages > 1 { head.clone() } else { Vec::new() } };
        let mut batch = store.db.batch();
        if pages == 1 {
            batch.insert(&store.pages, page_key(&id, 0), cvs_bytes(&head));
        }
        for page in 0..pages {
            let range = layout.page_pieces(page);
            let mut bits = [0u8; BITFIELD_LEN];
            for i in 0..(range.end - range.start) as usize {
                bits[i / 8] |= 1 << (i % 8);
            }
            batch.insert(&store.held, page_key(&id, page), bits.as_slice());
        }
        batch.insert(&store.items, id.0, ContentStore::item_value(&item));
        batch.commit().map_err(|e| store.db_error(e))?;
        store.persist()?;
        Ok(imported)
    }
}

impl Drop for Importer<'_> {
    fn drop(&mut self) {
        if !self.finished {
            let _ = fs::remove_file(&self.path);
        }
        if self.cvs_file.is_some() {
            let _ = fs::remove_file(&self.cvs_path);
        }
    }
}

/// Reads all of `reader` into an importer (a convenience for files and tests).
pub fn import_reader(store: &ContentStore, reader: &mut dyn Read) -> Result<Imported, StoreError> {
    let mut importer = store.importer()?;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(source) => {
                return Err(StoreError::Io { path: PathBuf::from("<input>"), action: "read the input", source });
            }
        };
        importer.write(&buf[..n])?;
    }
    importer.finish()
}
