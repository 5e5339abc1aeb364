//! mynet-storage: what a node keeps on disk.
//!
//! - [`log`]: the event log every input is appended to before the node handles it, with a
//!   fjall implementation for production and an in-memory one for the simulator.
//! - [`group_commit`]: the log moved to a storage thread that fsyncs many appends at once.
//! - [`retention`]: which old log segments a snapshot lets the log cut.
//! - [`content`]: the content store: item metadata, held pieces (fjall) and data files.
//! - [`keyfile`]: the node's ed25519 key file and other owner-only files in the data dir.
//! - [`sealed`]: the encrypted-item format (XChaCha20-Poly1305 STREAM, 64 KiB segments).
//! - [`keys`]: the key registry (key material for sealed items, owner-only, never logged).

pub mod content;
pub mod group_commit;
pub mod journal;
pub mod keyfile;
pub mod keys;
pub mod log;
pub mod retention;
pub mod sealed;

pub use content::{ContentStore, Head, Imported, Importer, ItemInfo, ReadError, StoreError, VerifyReport};
pub use group_commit::{Durable, GroupCommitLog};
pub use journal::{Divergence, Journaled, Recovery, ReplayError, ReplayReport, Start, replay, verify_against_log};
pub use keyfile::{KeyError, load_or_create_key, write_private};
pub use log::{
    EventLog, FjallLog, LogError, LogRecord, MemLog, StorageError, decode_record, encode_record, read_records,
};
pub use retention::Retention;
