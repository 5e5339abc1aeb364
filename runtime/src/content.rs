//! The node's content store in production: a storage thread that makes pieces durable in
//! groups (one fdatasync per file and one fjall persist per group) and reports them to the
//! node, and serving from the store (each piece re-verified as it is read).

use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc as std_mpsc;
use std::thread::JoinHandle;

use anyhow::{Context, Result};
use mynet_core::content::proto::{self, PieceHeader};
use mynet_core::content::{ContentId, PieceRef, Serve};
use mynet_core::wire::{self, Message};
use mynet_core::{ConnId, Input, RequestId};
use mynet_storage::content::{ContentStore, ReadError};
use tokio::sync::{Semaphore, mpsc};

/// Pieces read from the store for one connection at once (each 1 MiB in memory until queued).
pub const SERVING_PER_CONN_MAX: usize = 4;

/// Pieces written in one group at most (32 MiB).
pub const GROUP_PIECES_MAX: usize = 32;
/// Jobs queued for the storage thread; the driver holds at most this many pieces in memory
/// beyond what the transport buffers.
pub const STORE_QUEUE_MAX: usize = 32;

/// Work for the storage thread, applied in order.
enum Job {
    Piece(PieceRef, Vec<u8>),
    Head { id: ContentId, size: u64, cvs: Vec<[u8; 32]> },
    Page { id: ContentId, page: u64, cvs: Vec<[u8; 32]> },
    Delete(ContentId),
}

/// The storage thread and the store it shares with serving and the API.
pub struct Store {
    store: Arc<ContentStore>,
    jobs: Option<std_mpsc::SyncSender<Job>>,
    thread: Option<JoinHandle<()>>,
}

impl Store {
    /// Opens the store in `dir` and starts its thread; what it learns goes to `inputs`.
    pub fn open(dir: &Path, inputs: mpsc::UnboundedSender<Input>) -> Result<Store> {
        let store = Arc::new(
            ContentStore::open(dir).with_context(|| format!("opening the content store in {}", dir.display()))?,
        );
        let (jobs, queue) = std_mpsc::sync_channel(STORE_QUEUE_MAX);
        let worker = store.clone();
        let thread = std::thread::Builder::new()
            .name("mynet-store".into())
            .spawn(move || run(&worker, &queue, &inputs))
            .context("starting the storage thread")?;
        Ok(Store { store, jobs: Some(jobs), thread: Some(thread) })
    }

    /// The store (serving, the API).
    pub fn shared(&self) -> Arc<ContentStore> {
        self.store.clone()
    }

    fn submit(&self, job: Job) {
        if let Some(jobs) = &self.jobs {
            // Blocks the driver only when the disk is this far behind (back-pressure).
            let _ = jobs.send(job);
        }
    }

    pub fn store_piece(&self, piece: PieceRef, data: Vec<u8>) {
        self.submit(Job::Piece(piece, data));
    }

    pub fn store_head(&self, id: ContentId, size: u64, cvs: Vec<[u8; 32]>) {
        self.submit(Job::Head { id, size, cvs });
    }

    pub fn store_page(&self, id: ContentId, page: u64, cvs: Vec<[u8; 32]>) {
        self.submit(Job::Page { id, page, cvs });
    }

    pub fn delete(&self, id: ContentId) {
        self.submit(Job::Delete(id));
    }

    /// Finishes queued work and stops the thread.
    pub fn close(mut self) {
        self.jobs = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn run(store: &ContentStore, queue: &std_mpsc::Receiver<Job>, inputs: &mpsc::UnboundedSender<Input>) {
    let mut next = None;
    loop {
        let job = match next.take() {
            Some(job) => job,
            None => match queue.recv() {
                Ok(job) => job,
                Err(_) => return,
            },
        };
        match job {
            Job::Piece(piece, data) => {
                // Group the pieces queued behind this one: one sync covers them all.
                let mut group = vec![(piece, data)];
                while group.len() < GROUP_PIECES_MAX {
                    match queue.try_recv() {
                        Ok(Job::Piece(piece, data)) => group.push((piece, data)),
                        Ok(other) => {
                            next = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                let refs: Vec<(ContentId, u64, &[u8])> =
                    group.iter().map(|(p, d)| (p.id, p.index, d.as_slice())).collect();
                let pieces: Vec<PieceRef> = group.iter().map(|(p, _)| *p).collect();
                let input = match store.write_pieces(&refs) {
                    Ok(()) => Input::Stored { pieces },
                    Err(err) => {
                        tracing::error!("storing {} pieces failed: {err}", pieces.len());
                        Input::StoreFailed { pieces, error: err.to_string() }
                    }
                };
                if inputs.send(input).is_err() {
                    return;
                }
            }
            Job::Head { id, size, cvs } => {
                if let Err(err) = store.begin(id, size, &cvs) {
                    tracing::error!("storing the metadata of {id} failed: {err}");
                }
            }
            Job::Page { id, page, cvs } => {
                if let Err(err) = store.put_page(id, page, &cvs) {
                    tracing::error!("storing page {page} of {id} failed: {err}");
                }
            }
            Job::Delete(id) => {
                if let Err(err) = store.remove(id) {
                    tracing::error!("removing {id} failed: {err}");
                }
            }
        }
    }
}

/// Answers a peer's request from the store: reads (and re-verifies) the piece or metadata on
/// a blocking thread and queues the answer, at most [`SERVING_PER_CONN_MAX`] reads per
/// connection at once. A damaged piece is answered `NotHeld` and reported to the node.
#[allow(clippy::too_many_arguments)]
pub async fn serve(
    store: Arc<ContentStore>,
    conn: ConnId,
    request: RequestId,
    what: Serve,
    writer: mpsc::Sender<Vec<u8>>,
    pieces: mpsc::Sender<Vec<u8>>,
    serving: Arc<Semaphore>,
    inputs: mpsc::UnboundedSender<Input>,
) {
    let Ok(_permit) = serving.acquire_owned().await else { return };
    let read = tokio::task::spawn_blocking(move || read_answer(&store, request, what, &inputs)).await;
    let Ok((bytes, is_piece)) = read else { return };
    match bytes {
        Ok(bytes) if is_piece => {
            let _ = pieces.send(bytes).await;
        }
        Ok(bytes) => {
            let _ = writer.send(bytes).await;
        }
        Err(err) => tracing::error!("answer to {conn} not sent: {err}"),
    }
}

fn read_answer(
    store: &ContentStore,
    request: RequestId,
    what: Serve,
    inputs: &mpsc::UnboundedSender<Input>,
) -> (Result<Vec<u8>, wire::WireError>, bool) {
    let answer = |body: proto::Response| {
        wire::encode_frame(&Message::Response { id: request, body: wire::Response::Content(body) })
    };
    match what {
        Serve::Head { id } => match store.head(id) {
            Ok(Some((size, cvs))) => (answer(proto::Response::Head { size, cvs }), false),
            _ => (answer(proto::Response::NotHeld), false),
        },
        Serve::Page { id, page } => match store.page(id, page) {
            Ok(Some(cvs)) => (answer(proto::Response::Page { cvs }), false),
            _ => (answer(proto::Response::NotHeld), false),
        },
        Serve::Piece { id, index, size } => {
            // The header frame, then the piece read straight behind it (no copy).
            let header = PieceHeader { id, index, size };
            let mut bytes = match wire::encode_frame(&Message::Piece { id: request, header }) {
                Ok(bytes) => bytes,
                Err(err) => return (Err(err), false),
            };
            bytes.reserve(header.piece_len().unwrap_or(0) as usize);
            match store.read_piece_into(id, index, &mut bytes) {
                Ok(()) => (Ok(bytes), true),
                Err(err) => {
                    if let ReadError::Damaged { .. } = err {
                        tracing::warn!("{err}");
                        let _ = inputs.send(Input::Damaged { piece: PieceRef { id, index } });
                    }
                    (answer(proto::Response::NotHeld), false)
                }
            }
        }
    }
}

/// Reads a complete item from the store, piece by piece, each piece re-verified as it is read.
struct ItemReader {
    store: Arc<ContentStore>,
    id: ContentId,
    pieces: u64,
    next: u64,
    buf: Vec<u8>,
    at: usize,
}

impl std::io::Read for ItemReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.at == self.buf.len() {
            if self.next == self.pieces {
                return Ok(0);
            }
            self.buf.clear();
            self.at = 0;
            self.store
                .read_piece_into(self.id, self.next, &mut self.buf)
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            self.next += 1;
        }
        let n = out.len().min(self.buf.len() - self.at);
        out[..n].copy_from_slice(&self.buf[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// The decrypt check of SPEC R9: opens the sealed `parent` with `key` and compares the
/// plaintext's hash with `child` (the id of its claimed decrypted form). `None` if the parent
/// could not be read (not held completely, or damaged: that has its own path).
pub fn decrypt_check(
    store: &Arc<ContentStore>,
    key: &mynet_storage::sealed::SealKey,
    parent: ContentId,
    child: ContentId,
) -> Option<bool> {
    let info = store.info(parent).ok().flatten().filter(|i| i.complete())?;
    let pieces = mynet_core::content::Layout { size: info.size }.pieces();
    let reader = ItemReader { store: store.clone(), id: parent, pieces, next: 0, buf: Vec::new(), at: 0 };
    let mut hasher = blake3::Hasher::new();
    match mynet_storage::sealed::open(key, std::io::BufReader::new(reader), &mut hasher) {
        Ok(_) => Some(*hasher.finalize().as_bytes() == child.0),
        // Sealed bytes that do not open with the named key cannot give the child either.
        Err(mynet_storage::sealed::SealError::Io(_)) => None,
        Err(_) => Some(false),
    }
}
